//! The offline engine: whisper.cpp in this process, through whisper-rs. The model is loaded
//! once; each bite is decoded from Ogg Opus straight to 16 kHz mono (libopus decodes at that
//! rate itself, so no resampler) and transcribed on a blocking thread.

use std::path::Path;
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

use super::engine::{Engine, EngineError, Transcript, Word};
use crate::config::WhisperConfig;
use crate::services::bites::ogg;

/// whisper's sample rate.
const RATE: usize = 16_000;
/// whisper's encoder positions per second of audio (1500 for its 30 s window).
const POSITIONS_PER_SECOND: usize = 50;
const FULL_WINDOW: usize = 1_500;
/// Positions beyond the bite's length when the window is fitted: without a margin, a window
/// shorter than the audio makes whisper invent words (measured in whisper-notes).
const WINDOW_MARGIN: usize = 64;
/// The longest Opus frame, 120 ms, at 16 kHz.
const MAX_FRAME: usize = 1_920;

pub struct Whisper {
    inner: Arc<Inner>,
}

struct Inner {
    context: WhisperContext,
    /// States kept between bites (each ~125 MB of buffers): one per concurrent job.
    states: Mutex<Vec<WhisperState>>,
    threads: i32,
    fit_window: bool,
    multilingual: bool,
}

impl Whisper {
    /// Loads the model at `path`; an unreadable or invalid model file is an error at start.
    pub fn load(path: &Path, config: &WhisperConfig) -> Result<Self, String> {
        static LOGGING: Once = Once::new();
        // whisper.cpp and ggml log through tracing (targets `whisper_rs::*`), not to stderr.
        LOGGING.call_once(whisper_rs::install_logging_hooks);
        let started = Instant::now();
        let context = WhisperContext::new_with_params(path, WhisperContextParameters::default())
            .map_err(|err| format!("{}: not a usable ggml model ({err})", path.display()))?;
        tracing::info!(
            model = %path.display(),
            load_ms = started.elapsed().as_millis() as u64,
            multilingual = context.is_multilingual(),
            "whisper model loaded"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                multilingual: context.is_multilingual(),
                context,
                states: Mutex::new(Vec::new()),
                threads: i32::from(config.threads.max(1)),
                fit_window: config.fit_window,
            }),
        })
    }
}

impl Engine for Whisper {
    fn name(&self) -> &'static str {
        "whisper"
    }

    fn transcribe<'a>(
        &'a self,
        ogg: Bytes,
        language: &'a str,
    ) -> BoxFuture<'a, Result<Transcript, EngineError>> {
        let inner = self.inner.clone();
        let language = language.to_owned();
        async move {
            tokio::task::spawn_blocking(move || inner.transcribe(&ogg, &language))
                .await
                .map_err(|err| EngineError::Retryable(format!("whisper worker: {err}")))?
        }
        .boxed()
    }
}

impl Inner {
    fn transcribe(&self, ogg: &[u8], language: &str) -> Result<Transcript, EngineError> {
        let pcm = decode_16k(ogg)?;
        // An English-only model transcribes English whatever is asked; a multilingual one is
        // told the language, or detects it when none is configured.
        let base = language.split('-').next().unwrap_or_default();
        let language = match (self.multilingual, base) {
            (false, _) => "en",
            (true, "") => "auto",
            (true, base) => base,
        };
        if language != "auto" && whisper_rs::get_lang_id(language).is_none() {
            return Err(EngineError::Refused(format!(
                "whisper does not know the language {language:?}"
            )));
        }
        let mut state = self.state()?;
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_language(Some(language));
        params.set_n_threads(self.threads);
        params.set_no_context(true);
        params.set_token_timestamps(true);
        params.set_suppress_nst(true);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        params.set_print_special(false);
        if self.fit_window {
            let seconds = pcm.len().div_ceil(RATE);
            let positions = seconds * POSITIONS_PER_SECOND + WINDOW_MARGIN;
            if positions < FULL_WINDOW {
                params.set_audio_ctx(positions.next_multiple_of(WINDOW_MARGIN) as i32);
            }
        }
        if pcm.len() < RATE / 10 {
            // Under 100 ms whisper hears nothing (and warns); nothing to store but emptiness.
            self.release(state);
            return Ok(empty(language));
        }
        state
            .full(params, &pcm)
            .map_err(|err| EngineError::Retryable(format!("whisper: {err}")))?;
        let transcript = self.read(&state, language);
        self.release(state);
        Ok(transcript)
    }

    fn state(&self) -> Result<WhisperState, EngineError> {
        let pooled = self.states.lock().ok().and_then(|mut states| states.pop());
        match pooled {
            Some(state) => Ok(state),
            None => self
                .context
                .create_state()
                .map_err(|err| EngineError::Retryable(format!("whisper state: {err}"))),
        }
    }

    fn release(&self, state: WhisperState) {
        if let Ok(mut states) = self.states.lock() {
            states.push(state);
        }
    }

    /// The text, and its words timed from their tokens: a token starting with a space starts
    /// a word, the others continue it; special tokens (timestamps, end of text) are not words.
    fn read(&self, state: &WhisperState, language: &str) -> Transcript {
        let eot = self.context.token_eot();
        let mut text = String::new();
        let mut words: Vec<(Vec<u8>, u64, u64)> = Vec::new();
        for segment in state.as_iter() {
            if let Ok(part) = segment.to_str_lossy() {
                text.push_str(&part);
            }
            // A segment starts a word even when its first token has no leading space.
            let mut first = true;
            for k in 0..segment.n_tokens() {
                let Some(token) = segment.get_token(k) else {
                    continue;
                };
                if token.token_id() >= eot {
                    continue;
                }
                let Ok(bytes) = token.to_bytes() else {
                    continue;
                };
                let data = token.token_data();
                let (start, end) = (centiseconds_to_ms(data.t0), centiseconds_to_ms(data.t1));
                let continues = !first && !bytes.starts_with(b" ");
                first = false;
                match words.last_mut() {
                    Some(word) if continues => {
                        word.0.extend_from_slice(bytes);
                        word.2 = word.2.max(end);
                    }
                    _ => words.push((bytes.to_vec(), start, end)),
                }
            }
        }
        let language = if language == "auto" {
            whisper_rs::get_lang_str(state.full_lang_id_from_state()).unwrap_or_default()
        } else {
            language
        };
        Transcript {
            text: text.trim().to_owned(),
            language: language.to_owned(),
            engine: "whisper".into(),
            words: words
                .into_iter()
                .filter_map(|(bytes, start_ms, end_ms)| {
                    let word = String::from_utf8_lossy(&bytes).trim().to_owned();
                    (!word.is_empty()).then_some(Word {
                        word,
                        start_ms,
                        end_ms,
                    })
                })
                .collect(),
        }
    }
}

fn empty(language: &str) -> Transcript {
    Transcript {
        text: String::new(),
        language: language.to_owned(),
        engine: "whisper".into(),
        words: Vec::new(),
    }
}

fn centiseconds_to_ms(cs: i64) -> u64 {
    u64::try_from(cs).unwrap_or_default() * 10
}

/// The bite as 16 kHz mono samples, the pre-skip dropped from the start and the padding of the
/// last packet from the end (both counted at 48 kHz in the file). A file that is not Ogg Opus,
/// or a packet libopus rejects, refuses the bite: another attempt would fail the same way.
pub fn decode_16k(file: &[u8]) -> Result<Vec<f32>, EngineError> {
    let refused = |why: String| EngineError::Refused(format!("the stored bite: {why}"));
    let info = ogg::opus_info(file).ok_or_else(|| refused("not an Ogg Opus file".into()))?;
    let packets = ogg::packets(file).ok_or_else(|| refused("broken Ogg pages".into()))?;
    let mut decoder = opus::Decoder::new(RATE as u32, opus::Channels::Mono)
        .map_err(|err| refused(format!("libopus: {err}")))?;
    let head = packets.first().map(Vec::as_slice).unwrap_or_default();
    if let Some(gain) = head.get(16..18) {
        let gain = i16::from_le_bytes([gain[0], gain[1]]);
        if gain != 0 {
            decoder
                .set_gain(i32::from(gain))
                .map_err(|err| refused(format!("output gain: {err}")))?;
        }
    }
    // Not from the header's granule position (anyone's file): from the packets actually here.
    let mut pcm = Vec::with_capacity(packets.len().saturating_sub(2) * MAX_FRAME);
    let mut frame = [0f32; MAX_FRAME];
    for packet in packets.iter().skip(2) {
        let n = decoder
            .decode_float(packet, &mut frame, false)
            .map_err(|err| refused(format!("libopus: {err}")))?;
        pcm.extend_from_slice(&frame[..n]);
    }
    let skip = usize::from(info.pre_skip) / 3;
    let samples =
        usize::try_from(info.duration_ms.saturating_mul(RATE as u64) / 1000).unwrap_or(usize::MAX);
    let end = skip.saturating_add(samples).min(pcm.len());
    pcm.truncate(end);
    pcm.drain(..skip.min(pcm.len()));
    Ok(pcm)
}
