//! Every stored bite transcribed: a durable queue of jobs kept beside the bites (the sled
//! store writes a bite and its job together), a worker that takes due jobs to the configured
//! engine, retries with backoff and gives up into dead letters, and the transcripts stored
//! beside their bites (deleted with them).

pub mod engine;
mod google;
mod openai;
pub mod search;
mod worker;

use std::sync::Arc;

pub use self::engine::{Engine, EngineError, Transcript, Word};
pub use self::search::{Hit, TranscriptIndex};
pub use self::worker::Transcriber;
use crate::config::{TranscriptionConfig, TranscriptionEngine};

/// The configured engine, or `None` when transcription is off.
pub fn engine(config: &TranscriptionConfig) -> Result<Option<Arc<dyn Engine>>, String> {
    Ok(match config.engine {
        TranscriptionEngine::Off => None,
        TranscriptionEngine::Openai => Some(Arc::new(
            openai::OpenAi::new(&config.openai)
                .map_err(|err| format!("transcription.openai: {err}"))?,
        )),
        TranscriptionEngine::Google => Some(Arc::new(
            google::Google::new(&config.google)
                .map_err(|err| format!("transcription.google: {err}"))?,
        )),
    })
}
