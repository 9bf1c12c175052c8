//! What an engine answers, and the seam every engine implements.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// A bite's words as an engine heard them. Stored beside the bite and answered by
/// `GET /store/transcription/{conversation}/start/{start}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Transcript {
    pub text: String,
    /// ISO 639-1, as configured or as the engine detected it; empty if unknown.
    pub language: String,
    /// `openai`, `google` or `whisper`.
    pub engine: String,
    /// Each word with its time from the start of the bite, when the engine gives them.
    pub words: Vec<Word>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Word {
    pub word: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Worth another attempt later: the engine is down, slow or rate limiting.
    #[error("{0}")]
    Retryable(String),
    /// This bite will never be transcribed by this engine (it refused the audio).
    #[error("{0}")]
    Refused(String),
}

/// Turns one bite's Ogg Opus file into a transcript.
pub trait Engine: Send + Sync {
    fn name(&self) -> &'static str;

    /// `language` is ISO 639-1, or empty to let the engine detect it.
    fn transcribe<'a>(
        &'a self,
        ogg: Bytes,
        language: &'a str,
    ) -> BoxFuture<'a, Result<Transcript, EngineError>>;
}

/// Seconds as an engine sends them, in whole milliseconds (negative and NaN as 0).
pub fn seconds_to_ms(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        (seconds * 1000.0).round() as u64
    } else {
        0
    }
}

/// The HTTP client of a cloud engine: a request that takes longer than `timeout_secs` fails
/// (and is retried).
pub fn http_client(timeout_secs: u64) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(timeout_secs.max(1)))
        .build()
}
