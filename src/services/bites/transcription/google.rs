//! Google Speech-to-Text v1 `speech:recognize`: the Ogg Opus file as it is stored
//! (`OGG_OPUS`, base64), with word time offsets. Synchronous recognition takes at most 60 s
//! and 10 MB of audio: longer bites are refused up front, with the reason, not sent.

use base64::Engine as _;
use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::engine::{Engine, EngineError, Transcript, Word, http_client, seconds_to_ms};
use crate::config::GoogleConfig;
use crate::services::bites::ogg::opus_info;

/// `speech:recognize` limits.
const MAX_SECONDS: u64 = 60;
const MAX_BYTES: usize = 10 * 1024 * 1024;
/// The rates Google accepts for OGG_OPUS; any other header value is sent as 48 kHz, the rate
/// every Opus stream decodes at.
const RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];

pub struct Google {
    client: reqwest::Client,
    url: String,
    api_key: String,
    bearer_token: String,
}

impl Google {
    pub fn new(config: &GoogleConfig) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: http_client(config.timeout_secs)?,
            url: format!(
                "{}/v1/speech:recognize",
                config.base_url.trim_end_matches('/')
            ),
            api_key: config.api_key.expose().to_owned(),
            bearer_token: config.bearer_token.expose().to_owned(),
        })
    }

    async fn request(&self, ogg: Bytes, language: &str) -> Result<Transcript, EngineError> {
        let info = opus_info(&ogg)
            .ok_or_else(|| EngineError::Refused("the bite is not an Ogg Opus file".into()))?;
        if info.duration_ms > MAX_SECONDS * 1000 {
            return Err(EngineError::Refused(format!(
                "{} ms of audio: Google's synchronous recognition takes at most {MAX_SECONDS} s",
                info.duration_ms
            )));
        }
        if ogg.len() > MAX_BYTES {
            return Err(EngineError::Refused(format!(
                "{} bytes of audio: Google's synchronous recognition takes at most 10 MB",
                ogg.len()
            )));
        }
        let rate = if RATES.contains(&info.input_rate) {
            info.input_rate
        } else {
            48_000
        };
        let body = json!({
            "config": {
                "encoding": "OGG_OPUS",
                "sampleRateHertz": rate,
                "audioChannelCount": info.channels.max(1),
                "languageCode": if language.is_empty() { "en-US" } else { language },
                "enableWordTimeOffsets": true,
                "enableAutomaticPunctuation": true,
            },
            "audio": { "content": base64::engine::general_purpose::STANDARD.encode(&ogg) },
        });
        // The key goes in the query; `self.url` (what errors name) never carries it.
        let mut request = if self.api_key.is_empty() {
            self.client.post(&self.url)
        } else {
            let key: String = form_urlencoded::byte_serialize(self.api_key.as_bytes()).collect();
            self.client.post(format!("{}?key={key}", self.url))
        };
        request = request.json(&body);
        if self.api_key.is_empty() && !self.bearer_token.is_empty() {
            request = request.bearer_auth(&self.bearer_token);
        }
        let response = request.send().await.map_err(|err| {
            EngineError::Retryable(format!("{}: {}", self.url, err.without_url()))
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let reason = format!(
                "{} answered {status}: {}",
                self.url,
                body.chars().take(300).collect::<String>()
            );
            return Err(if status == StatusCode::BAD_REQUEST {
                EngineError::Refused(reason)
            } else {
                EngineError::Retryable(reason)
            });
        }
        let answer: Answer = response.json().await.map_err(|err| {
            EngineError::Retryable(format!(
                "{}: unreadable answer: {}",
                self.url,
                err.without_url()
            ))
        })?;
        Ok(answer.into_transcript(language))
    }
}

impl Engine for Google {
    fn name(&self) -> &'static str {
        "google"
    }

    fn transcribe<'a>(
        &'a self,
        ogg: Bytes,
        language: &'a str,
    ) -> BoxFuture<'a, Result<Transcript, EngineError>> {
        self.request(ogg, language).boxed()
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    results: Vec<Result_>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Result_ {
    #[serde(default)]
    alternatives: Vec<Alternative>,
    #[serde(default)]
    language_code: Option<String>,
}

#[derive(Deserialize)]
struct Alternative {
    #[serde(default)]
    transcript: String,
    #[serde(default)]
    words: Vec<AnswerWord>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerWord {
    word: String,
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    end_time: Option<String>,
}

/// Google's durations: `"1.300s"`.
fn duration_ms(text: Option<&str>) -> u64 {
    text.and_then(|text| text.strip_suffix('s'))
        .and_then(|seconds| seconds.parse::<f64>().ok())
        .map_or(0, seconds_to_ms)
}

impl Answer {
    fn into_transcript(self, asked: &str) -> Transcript {
        let mut text = Vec::new();
        let mut words = Vec::new();
        let mut language = None;
        // Each result is a consecutive part of the audio; its first alternative is the likeliest.
        for result in self.results {
            language = language.or(result.language_code);
            let Some(best) = result.alternatives.into_iter().next() else {
                continue;
            };
            text.push(best.transcript.trim().to_owned());
            words.extend(best.words.into_iter().map(|word| Word {
                start_ms: duration_ms(word.start_time.as_deref()),
                end_ms: duration_ms(word.end_time.as_deref()),
                word: word.word,
            }));
        }
        Transcript {
            text: text.join(" ").trim().to_owned(),
            language: language
                .map(|code| {
                    code.split('-')
                        .next()
                        .unwrap_or_default()
                        .to_ascii_lowercase()
                })
                .filter(|code| !code.is_empty())
                .unwrap_or_else(|| asked.to_owned()),
            engine: "google".into(),
            words,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::bites::ogg::{Header, SAMPLES_PER_MS, TimedPacket, write};

    #[tokio::test]
    async fn bites_past_google_limits_are_refused_without_a_request() {
        crate::platform::install_crypto_provider();
        // Nothing listens there: a request would be a retryable connection error.
        let google = Google::new(&GoogleConfig {
            base_url: "http://127.0.0.1:9".into(),
            ..GoogleConfig::default()
        })
        .unwrap();
        let packets: Vec<TimedPacket> = (0..3_050u64)
            .map(|i| TimedPacket {
                offset: i * 20 * SAMPLES_PER_MS,
                payload: Bytes::from_static(&[0xf8, 1, 2]),
            })
            .collect();
        let long = write(
            Header {
                serial: 1,
                channels: 1,
                pre_skip: 312,
            },
            &packets,
        );
        let refused = google.transcribe(Bytes::from(long), "en").await;
        assert!(
            matches!(&refused, Err(EngineError::Refused(reason)) if reason.contains("60 s")),
            "{refused:?}"
        );
        let refused = google
            .transcribe(Bytes::from_static(b"not ogg"), "en")
            .await;
        assert!(matches!(refused, Err(EngineError::Refused(_))));
    }

    #[test]
    fn results_are_joined_and_offsets_read() {
        let answer: Answer = serde_json::from_str(
            r#"{"results":[
                {"alternatives":[{"transcript":"Hello beep","words":[
                    {"word":"Hello","startTime":"0s","endTime":"0.400s"},
                    {"word":"beep","startTime":"0.400s","endTime":"1.300s"}]}],
                 "languageCode":"en-us"},
                {"alternatives":[{"transcript":" world","words":[
                    {"word":"world","startTime":"1.5s","endTime":"2s"}]}]}
            ],"totalBilledTime":"3s"}"#,
        )
        .unwrap();
        let transcript = answer.into_transcript("de");
        assert_eq!(transcript.text, "Hello beep world");
        assert_eq!(transcript.language, "en");
        assert_eq!(transcript.words[1].end_ms, 1300);
        assert_eq!(transcript.words[2].start_ms, 1500);
        let empty: Answer = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.into_transcript("en").text, "");
    }
}
