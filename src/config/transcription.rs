//! `[transcription]`.

use serde::{Deserialize, Serialize};

use super::Secret;

/// Which engine transcribes bites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TranscriptionEngine {
    /// Bites are stored untranscribed.
    Off,
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
    pub openai: OpenAiConfig,
    pub google: GoogleConfig,
}

impl Default for TranscriptionConfig {
    fn default() -> Self {
        Self {
            engine: TranscriptionEngine::Off,
            language: "en".into(),
            max_attempts: 5,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            concurrency: 1,
            openai: OpenAiConfig::default(),
            google: GoogleConfig::default(),
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
