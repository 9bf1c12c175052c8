//! The OpenAI-compatible engine: `POST {base_url}/audio/transcriptions`, as OpenAI, speaches
//! (faster-whisper-server), LocalAI and whisper.cpp's server (`--convert`) all answer it.

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde::Deserialize;

use super::engine::{Engine, EngineError, Transcript, Word, http_client, seconds_to_ms};
use crate::config::OpenAiConfig;

pub struct OpenAi {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: String,
}

impl OpenAi {
    pub fn new(config: &OpenAiConfig) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: http_client(config.timeout_secs)?,
            url: format!(
                "{}/audio/transcriptions",
                config.base_url.trim_end_matches('/')
            ),
            model: config.model.clone(),
            api_key: config.api_key.expose().to_owned(),
        })
    }

    async fn request(&self, ogg: Bytes, language: &str) -> Result<Transcript, EngineError> {
        let file = Part::stream(ogg)
            .file_name("bite.ogg")
            .mime_str("audio/ogg")
            .map_err(|err| EngineError::Refused(err.to_string()))?;
        let mut form = Form::new()
            .part("file", file)
            .text("model", self.model.clone())
            .text("response_format", "verbose_json")
            .text("timestamp_granularities[]", "word");
        if !language.is_empty() {
            form = form.text("language", language.to_owned());
        }
        let mut request = self.client.post(&self.url).multipart(form);
        if !self.api_key.is_empty() {
            request = request.bearer_auth(&self.api_key);
        }
        let response = request
            .send()
            .await
            .map_err(|err| EngineError::Retryable(format!("{}: {err}", self.url)))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let reason = format!("{} answered {status}: {}", self.url, clipped(&body));
            return Err(if refuses_the_audio(status) {
                EngineError::Refused(reason)
            } else {
                EngineError::Retryable(reason)
            });
        }
        let answer: Answer = response.json().await.map_err(|err| {
            EngineError::Retryable(format!("{}: unreadable answer: {err}", self.url))
        })?;
        Ok(answer.into_transcript(language))
    }
}

/// The audio itself was refused: another attempt would be refused too.
fn refuses_the_audio(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
            | StatusCode::UNPROCESSABLE_ENTITY
    )
}

/// An error body in a log line, without flooding it.
fn clipped(body: &str) -> &str {
    let end = body
        .char_indices()
        .nth(300)
        .map_or(body.len(), |(index, _)| index);
    &body[..end]
}

impl Engine for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn transcribe<'a>(
        &'a self,
        ogg: Bytes,
        language: &'a str,
    ) -> BoxFuture<'a, Result<Transcript, EngineError>> {
        self.request(ogg, language).boxed()
    }
}

/// `verbose_json`: words at the top (OpenAI) or inside segments (some servers).
#[derive(Deserialize)]
struct Answer {
    text: String,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    words: Option<Vec<AnswerWord>>,
    #[serde(default)]
    segments: Option<Vec<Segment>>,
}

#[derive(Deserialize)]
struct Segment {
    #[serde(default)]
    words: Option<Vec<AnswerWord>>,
}

#[derive(Deserialize)]
struct AnswerWord {
    word: String,
    start: f64,
    end: f64,
}

impl Answer {
    fn into_transcript(self, asked: &str) -> Transcript {
        let words = match self.words {
            Some(words) if !words.is_empty() => words,
            _ => self
                .segments
                .unwrap_or_default()
                .into_iter()
                .flat_map(|segment| segment.words.unwrap_or_default())
                .collect(),
        };
        Transcript {
            text: self.text.trim().to_owned(),
            language: iso_639_1(self.language.as_deref()).unwrap_or_else(|| asked.to_owned()),
            engine: "openai".into(),
            words: words
                .into_iter()
                .map(|word| Word {
                    word: word.word.trim().to_owned(),
                    start_ms: seconds_to_ms(word.start),
                    end_ms: seconds_to_ms(word.end),
                })
                .collect(),
        }
    }
}

/// OpenAI answers the detected language by name (`english`); others by code (`en`).
fn iso_639_1(language: Option<&str>) -> Option<String> {
    let language = language?.trim().to_ascii_lowercase();
    let code = match language.as_str() {
        "" => return None,
        "english" => "en",
        "german" => "de",
        "french" => "fr",
        "spanish" => "es",
        "italian" => "it",
        "portuguese" => "pt",
        "dutch" => "nl",
        "chinese" => "zh",
        "japanese" => "ja",
        "korean" => "ko",
        "malay" => "ms",
        "indonesian" => "id",
        "russian" => "ru",
        other => other,
    };
    Some(code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_read_from_the_top_or_from_segments() {
        let top: Answer = serde_json::from_str(
            r#"{"text":" hello world ","language":"english","words":[{"word":"hello","start":0.5,"end":0.9},{"word":" world","start":1.0,"end":1.42}]}"#,
        )
        .unwrap();
        let transcript = top.into_transcript("en");
        assert_eq!(transcript.text, "hello world");
        assert_eq!(transcript.language, "en");
        assert_eq!(
            transcript.words,
            vec![
                Word {
                    word: "hello".into(),
                    start_ms: 500,
                    end_ms: 900
                },
                Word {
                    word: "world".into(),
                    start_ms: 1000,
                    end_ms: 1420
                },
            ]
        );
        let nested: Answer = serde_json::from_str(
            r#"{"text":"hi","segments":[{"words":[{"word":"hi","start":0.1,"end":0.2}]},{"id":2}]}"#,
        )
        .unwrap();
        let transcript = nested.into_transcript("de");
        assert_eq!(transcript.language, "de");
        assert_eq!(transcript.words.len(), 1);
    }
}
