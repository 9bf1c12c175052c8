//! `[transcription]`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret};

/// Which engine transcribes bites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TranscriptionEngine {
    /// Bites are stored untranscribed.
    Off,
    /// Offline, in this process: whisper.cpp with a ggml model file (the `whisper` Cargo
    /// feature). With no model file, transcription is off.
    Whisper,
    /// Any OpenAI-compatible `POST /v1/audio/transcriptions` (OpenAI, speaches,
    /// faster-whisper-server, LocalAI, whisper.cpp's server with `--convert`).
    Openai,
    /// Google Speech-to-Text v1 `speech:recognize`.
    Google,
}

/// Every stored bite transcribed, through a durable queue.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TranscriptionConfig {
    pub engine: TranscriptionEngine,
    /// The spoken language, as ISO 639-1 (`en`); empty lets the engine detect it.
    pub language: String,
    /// Attempts per bite before it goes to the dead letters.
    pub max_attempts: u32,
    /// The wait before the first retry, doubled each time up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Bites transcribed at once.
    pub concurrency: usize,
    pub whisper: WhisperConfig,
    pub openai: OpenAiConfig,
    pub google: GoogleConfig,
}

impl TranscriptionConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        // ISO 639-1 or a BCP-47 tag (Google takes `en-US`): it reaches whisper.cpp as a C
        // string and cloud engines as a form field.
        // Lower case first: whisper.cpp's language names are.
        let tag = &self.language;
        let well_formed = tag.len() <= 35
            && tag.split('-').enumerate().all(|(i, part)| {
                if i == 0 {
                    (2..=3).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_lowercase())
                } else {
                    (1..=8).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_alphanumeric())
                }
            });
        if !tag.is_empty() && !well_formed {
            return Err(ConfigError::Invalid(format!(
                "transcription.language {tag:?}: expected a lower-case ISO 639-1 code such as \"en\" (or \"en-US\"), or \"\""
            )));
        }
        if self.whisper.threads == 0 {
            return Err(ConfigError::Invalid(
                "transcription.whisper.threads must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Where the whisper engine reads its model: `whisper.model_path`, or
    /// `<data_dir>/models/whisper.bin` (where `beep transcription import-model` writes).
    pub fn whisper_model(&self, data_dir: &Path) -> PathBuf {
        self.whisper
            .model_path
            .clone()
            .unwrap_or_else(|| data_dir.join("models").join("whisper.bin"))
    }
}

impl Default for TranscriptionConfig {
    fn default() -> Self {
        Self {
            engine: TranscriptionEngine::Whisper,
            language: "en".into(),
            max_attempts: 5,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            concurrency: 1,
            whisper: WhisperConfig::default(),
            openai: OpenAiConfig::default(),
            google: GoogleConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhisperConfig {
    /// A ggml Whisper model (`ggml-tiny.en.bin`, `ggml-base.bin`, ...); unset:
    /// `<data_dir>/models/whisper.bin`.
    pub model_path: Option<PathBuf>,
    /// Threads per bite. One: two threads collapse when the other core is busy (measured), and
    /// bites queue rather than compete.
    pub threads: u16,
    /// Shrink whisper's fixed 30 s window to the bite's length: a 3 s bite is transcribed 5.5
    /// times faster, but whisper, trained on 30 s windows, then mishears more words
    /// (BENCHMARKS.md), so it is off by default.
    pub fit_window: bool,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        Self {
            model_path: None,
            threads: 1,
            fit_window: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Ends in `/v1`, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer`; empty sends none (self-hosted servers).
    pub api_key: Secret,
    /// A request that takes longer fails (and is retried).
    pub timeout_secs: u64,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            model: "whisper-1".into(),
            api_key: Secret::new(""),
            timeout_secs: 120,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoogleConfig {
    /// Without the version: `https://speech.googleapis.com`.
    pub base_url: String,
    /// An API key, sent as `?key=`; or, when empty, `bearer_token` as `Authorization: Bearer`.
    pub api_key: Secret,
    pub bearer_token: Secret,
    pub timeout_secs: u64,
}

impl Default for GoogleConfig {
    fn default() -> Self {
        Self {
            base_url: "https://speech.googleapis.com".into(),
            api_key: Secret::new(""),
            bearer_token: Secret::new(""),
            timeout_secs: 120,
        }
    }
}
