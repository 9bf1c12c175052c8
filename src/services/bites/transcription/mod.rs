//! Every stored bite transcribed: a durable queue of jobs kept beside the bites (the sled
//! store writes a bite and its job together), a worker that takes due jobs to the configured
//! engine, retries with backoff and gives up into dead letters, and the transcripts stored
//! beside their bites (deleted with them).

pub mod engine;
mod google;
pub mod import;
mod openai;
pub mod search;
#[cfg(feature = "whisper")]
pub mod whisper;
mod worker;

use std::path::Path;
use std::sync::Arc;

pub use self::engine::{Engine, EngineError, Transcript, Word};
pub use self::search::{Hit, TranscriptIndex};
pub use self::worker::Transcriber;
use crate::config::{TranscriptionConfig, TranscriptionEngine};

/// The configured engine, or `None` when transcription is off (said in the log, with why).
pub fn engine(
    config: &TranscriptionConfig,
    data_dir: &Path,
) -> Result<Option<Arc<dyn Engine>>, String> {
    let engine: Arc<dyn Engine> = match config.engine {
        TranscriptionEngine::Off => {
            tracing::info!("transcription is off (transcription.engine = \"off\")");
            return Ok(None);
        }
        TranscriptionEngine::Whisper => {
            let model = config.whisper_model(data_dir);
            if config.whisper.model_path.is_some() && !model.exists() {
                // Named but absent: a typo, not a choice to run without transcripts.
                return Err(format!(
                    "transcription.whisper.model_path: {} does not exist",
                    model.display()
                ));
            }
            if !model.exists() {
                tracing::info!(
                    model = %model.display(),
                    "transcription is off: no whisper model (beep transcription import-model \
                     <dir>, or set transcription.whisper.model_path)"
                );
                return Ok(None);
            }
            match whisper(&model, config)? {
                Some(engine) => engine,
                None => return Ok(None),
            }
        }
        TranscriptionEngine::Openai => Arc::new(
            openai::OpenAi::new(&config.openai)
                .map_err(|err| format!("transcription.openai: {err}"))?,
        ),
        TranscriptionEngine::Google => Arc::new(
            google::Google::new(&config.google)
                .map_err(|err| format!("transcription.google: {err}"))?,
        ),
    };
    tracing::info!(engine = engine.name(), "bites are transcribed");
    Ok(Some(engine))
}

#[cfg(feature = "whisper")]
fn whisper(model: &Path, config: &TranscriptionConfig) -> Result<Option<Arc<dyn Engine>>, String> {
    Ok(Some(Arc::new(whisper::Whisper::load(
        model,
        &config.whisper,
    )?)))
}

#[cfg(not(feature = "whisper"))]
fn whisper(model: &Path, _: &TranscriptionConfig) -> Result<Option<Arc<dyn Engine>>, String> {
    tracing::warn!(
        model = %model.display(),
        "transcription is off: this binary was built without the whisper engine \
         (cargo build --release --features whisper; it needs cmake)"
    );
    Ok(None)
}
