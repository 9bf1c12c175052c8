//! transcription figures, in release mode (`cargo bench --bench transcription [-- queue|search]`):
//! - `queue`: jobs per second through the durable queue (the sled store, the worker, the
//!   search index on SQLite) with an engine that answers at once, against the same bites
//!   inserted with no job (the store alone) in the same run; the delay from a bite stored to
//!   its transcript stored; resident memory with 10,000 jobs queued;
//! - `search`: latency of a one-word search over 100,000 transcripts in one conversation, on
//!   SQLite (FTS5) and, with `BEEP_TEST_POSTGRES_URL`, PostgreSQL;
//! - `offline` (`--features whisper`, with `BEEP_BENCH_WHISPER_MODEL` naming a ggml model):
//!   the whisper engine on real speech made here (espeak-ng, sox, opusenc), a 3 s and a 20 s
//!   bite: wall time and real-time factor with whisper's full 30 s window and with the window
//!   fitted to the bite, the words heard right, model load time and memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use beep::config::{Config, DatabaseConfig, TranscriptionConfig};
use beep::platform::clock::Clock;
use beep::platform::db::Db;
use beep::platform::telemetry::Metrics;
use beep::services::bites::store::{BiteId, BiteMeta, BiteStore, NewBite, SharedStore, SledStore};
use beep::services::bites::transcription::{
    Engine, EngineError, Transcriber, Transcript, TranscriptIndex, Word,
};
use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use sea_orm::ConnectionTrait as _;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

#[allow(dead_code)]
#[path = "common/load.rs"]
mod load;
use load::wanted;

const QUEUED: usize = 10_000;
const INDEXED: usize = 100_000;
const SEARCHES: usize = 200;

/// The words transcripts are made of: a vocabulary of 2,000, so each one is in about 1 in 40
/// transcripts of 50 words.
fn word(n: usize) -> String {
    const SYLLABLES: [&str; 20] = [
        "ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "va", "zu", "ho", "be", "gi", "fa",
        "ru", "xe", "ny", "co", "pa",
    ];
    let n = n % 2_000;
    format!(
        "{}{}{}",
        SYLLABLES[n % 20],
        SYLLABLES[(n / 20) % 20],
        SYLLABLES[(n / 400) % 20]
    )
}

/// Answers at once: what the queue costs without an engine's time.
struct Instant_;

impl Engine for Instant_ {
    fn name(&self) -> &'static str {
        "instant"
    }

    fn transcribe<'a>(
        &'a self,
        ogg: Bytes,
        _language: &'a str,
    ) -> BoxFuture<'a, Result<Transcript, EngineError>> {
        let seed = ogg.len();
        async move {
            let words: Vec<Word> = (0..12)
                .map(|i| Word {
                    word: word(seed * 31 + i * 7),
                    start_ms: i as u64 * 250,
                    end_ms: i as u64 * 250 + 200,
                })
                .collect();
            Ok(Transcript {
                text: words
                    .iter()
                    .map(|w| w.word.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                language: "en".into(),
                engine: "instant".into(),
                words,
            })
        }
        .boxed()
    }
}

fn bite(start: u64) -> NewBite {
    // About a 3 s bite: 150 packets of 60 bytes.
    let audio = Bytes::from(vec![(start % 251) as u8; 9_000 + (start % 97) as usize]);
    NewBite {
        meta: BiteMeta {
            conversation: "c-0123456789abcdef0123456789abcdef".into(),
            user: "u-0123456789abcdef0123456789abcdef".into(),
            client: "phone".into(),
            start,
            duration: 3_000,
            size: audio.len() as u64,
        },
        audio,
    }
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn sqlite_index(dir: &std::path::Path) -> (Db, Arc<TranscriptIndex>) {
    let db = Db::open(&DatabaseConfig::default(), dir).await.unwrap();
    db.migrate("bites").await.unwrap();
    let index = Arc::new(TranscriptIndex::new(db.connection().clone()));
    (db, index)
}

fn main() {
    beep::platform::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "# beep transcription bench ({} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    runtime.block_on(async {
        if wanted("queue") {
            queue().await;
        }
        if wanted("search") {
            search(None).await;
            if let Ok(url) = std::env::var("BEEP_TEST_POSTGRES_URL") {
                search(Some(&url)).await;
            }
        }
        #[cfg(feature = "whisper")]
        if wanted("offline") {
            offline::run().await;
        }
    });
}

/// Inserts `QUEUED` bites in batches of 50 into `store`; answers bites per second.
fn insert_all(store: &SledStore, offset: u64) -> f64 {
    let started = Instant::now();
    for chunk in (0..QUEUED as u64).collect::<Vec<_>>().chunks(50) {
        let bites: Vec<NewBite> = chunk
            .iter()
            .map(|&start| bite(offset + start + 1))
            .collect();
        store.insert(&bites).unwrap();
    }
    QUEUED as f64 / started.elapsed().as_secs_f64()
}

async fn queue() {
    // The reference: the same bites into a store that queues nothing, before and after.
    let dir = tempfile::tempdir().unwrap();
    let plain = SledStore::open(&dir.path().join("plain")).unwrap();
    let plain_before = insert_all(&plain, 0);
    let store = SledStore::open(&dir.path().join("queued"))
        .unwrap()
        .transcribing(true);
    let queued_rate = insert_all(&store, 0);
    let plain_after = insert_all(&plain, QUEUED as u64);
    let plain_rate = (plain_before + plain_after) / 2.0;
    let plain_disk = plain.size_on_disk().unwrap() / 2;
    drop(plain);
    let queued_disk = store.size_on_disk().unwrap();
    let store: SharedStore = Arc::new(store);
    assert_eq!(store.queued().unwrap(), QUEUED);
    println!(
        "queue: {QUEUED} bites of ~9 KB inserted in batches of 50: {plain_rate:.0}/s with no job \
         (mean of runs before and after), {queued_rate:.0}/s each with its job ({:.2} of the store alone)",
        queued_rate / plain_rate
    );
    println!(
        "  {QUEUED} jobs queued: {:.1} MB on disk beside their bites (sled, {:.0} bytes per job); \
         process RSS {} MB (jobs are read from disk as they come due, never all held)",
        queued_disk.saturating_sub(plain_disk) as f64 / 1e6,
        queued_disk.saturating_sub(plain_disk) as f64 / QUEUED as f64,
        rss_kb() / 1024
    );

    let (_db, index) = sqlite_index(dir.path()).await;
    let wake = Arc::new(Notify::new());
    let (announce, mut announced) = broadcast::channel(QUEUED + 16);
    let metrics = Metrics::new();
    let config = TranscriptionConfig {
        concurrency: 2,
        ..Config::default().transcription
    };
    let transcriber = Transcriber {
        store: Arc::clone(&store),
        engine: Arc::new(Instant_),
        index: Arc::clone(&index),
        config,
        clock: Clock::system(),
        wake: Arc::clone(&wake),
        announce,
        done: metrics.counter("done", &[]),
        retried: metrics.counter("retried", &[]),
        dead: metrics.counter("dead", &[]),
    };
    let stop = CancellationToken::new();
    let started = Instant::now();
    let worker = tokio::spawn(transcriber.run(stop.clone()));
    for _ in 0..QUEUED {
        announced.recv().await.unwrap();
    }
    let drained = started.elapsed();
    println!(
        "  drained by the worker (concurrency 2, instant engine, SQLite index): {:.0} jobs/s ({:.1} s)",
        QUEUED as f64 / drained.as_secs_f64(),
        drained.as_secs_f64()
    );

    // Delay: one bite at a time, from its insert returning to its transcript announced.
    let mut delays = Vec::new();
    for n in 0..100u64 {
        let start = 10_000_000 + n;
        let store = Arc::clone(&store);
        let inserted = tokio::task::spawn_blocking(move || store.insert(&[bite(start)]).unwrap());
        inserted.await.unwrap();
        let stored_at = Instant::now();
        wake.notify_one();
        let (done, _) = announced.recv().await.unwrap();
        assert_eq!(done, BiteId::from(&bite(start).meta));
        delays.push(stored_at.elapsed());
    }
    delays.sort();
    println!(
        "  bite stored -> transcript stored and announced (instant engine): p50 {:.2} ms, p99 {:.2} ms",
        delays[50].as_secs_f64() * 1e3,
        delays[98].as_secs_f64() * 1e3
    );
    stop.cancel();
    worker.await.unwrap();
}

async fn search(postgres: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("bench{}", &beep::platform::ids::random_hex128()[..12]);
    let (db, index) = match postgres {
        None => sqlite_index(dir.path()).await,
        Some(url) => {
            let admin = sea_orm::Database::connect(url).await.unwrap();
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            let (base, _) = url.rsplit_once('/').unwrap();
            let config = DatabaseConfig {
                url: format!("{base}/{name}"),
                ..DatabaseConfig::default()
            };
            let db = Db::open(&config, dir.path()).await.unwrap();
            db.migrate("bites").await.unwrap();
            let index = Arc::new(TranscriptIndex::new(db.connection().clone()));
            (db, index)
        }
    };
    let backend = if postgres.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let conversation = "c-0123456789abcdef0123456789abcdef";
    let engine = Instant_;
    let started = Instant::now();
    for n in 0..INDEXED {
        let transcript = engine
            .transcribe(Bytes::from(vec![0u8; n]), "en")
            .await
            .unwrap();
        let id = BiteId {
            conversation: conversation.into(),
            start: 1_000_000 + n as u64,
            user: "u-0123456789abcdef0123456789abcdef".into(),
            client: "phone".into(),
        };
        index.add(&id, &transcript).await.unwrap();
    }
    let indexing = started.elapsed();
    let mut latencies = Vec::with_capacity(SEARCHES);
    let mut found = 0;
    for n in 0..SEARCHES {
        let query = word(n * 13 + 5);
        let started = Instant::now();
        let hits = index
            .search(conversation, &query, u64::MAX, 100)
            .await
            .unwrap()
            .unwrap();
        latencies.push(started.elapsed());
        found += hits.len();
    }
    latencies.sort();
    println!(
        "search over {INDEXED} transcripts of 12 words in one conversation, {backend}: indexed at {:.0}/s; \
         one-word query, first page of 100: p50 {:.2} ms, p99 {:.2} ms ({:.0} hits per query on average)",
        INDEXED as f64 / indexing.as_secs_f64(),
        latencies[SEARCHES / 2].as_secs_f64() * 1e3,
        latencies[SEARCHES * 99 / 100].as_secs_f64() * 1e3,
        found as f64 / SEARCHES as f64
    );
    db.close().await;
    if let Some(url) = postgres {
        let admin = sea_orm::Database::connect(url).await.unwrap();
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
    }
    // Keep the directory until the database is closed.
    drop(dir);
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[cfg(feature = "whisper")]
#[path = "../tests/common/speech.rs"]
mod speech;

#[cfg(feature = "whisper")]
mod offline {
    use std::time::Instant;

    use beep::config::WhisperConfig;
    use beep::services::bites::ogg;
    use beep::services::bites::transcription::Engine as _;
    use beep::services::bites::transcription::whisper::{Whisper, decode_16k};
    use bytes::Bytes;

    use super::load::{median, spread, threads_cpu_ns};
    use super::rss_kb;

    const RUNS: usize = 5;
    const SHORTS: [&str; 8] = [
        "Please call me back when you land at the airport tonight.",
        "I left the keys under the blue flower pot by the door.",
        "Can you pick up some bread and milk on your way home?",
        "The meeting moved to Thursday at three in the afternoon.",
        "Happy birthday! I hope you have a wonderful day.",
        "Running late, the bus broke down near the bridge.",
        "Did you see the football match last night?",
        "Remember to water the plants while I am away.",
    ];
    const LONG: &str = "Good morning everyone. The train to the city is running twenty minutes \
        late because of snow on the line. I will meet you at the coffee shop next to the \
        station instead of the office. Bring the printed tickets and your passport, and do not \
        forget the charger for the camera. If the weather gets worse we can stay one more \
        night at the hotel and drive back on Sunday morning.";

    fn peak_rss_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// How many of the spoken words are found in the transcript (case and punctuation
    /// aside), and how many were spoken.
    fn heard(spoken: &str, transcript: &str) -> (usize, usize) {
        let words = |text: &str| -> Vec<String> {
            text.split_whitespace()
                .map(|w| {
                    w.chars()
                        .filter(|c| c.is_alphanumeric())
                        .collect::<String>()
                        .to_lowercase()
                })
                .filter(|w| !w.is_empty())
                .collect()
        };
        let got = words(transcript);
        let expected = words(spoken);
        let found = expected.iter().filter(|w| got.contains(w)).count();
        (found, expected.len())
    }

    struct Clip {
        text: &'static str,
        ogg: Bytes,
        audio_s: f64,
    }

    pub async fn run() {
        let Ok(model) = std::env::var("BEEP_BENCH_WHISPER_MODEL") else {
            println!("\n## offline: skipped (set BEEP_BENCH_WHISPER_MODEL to a ggml model)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let clip = |text: &'static str| {
            let ogg =
                super::speech::spoken_ogg(text, dir.path()).expect("espeak-ng, sox and opusenc");
            let audio_s = ogg::opus_info(&ogg).unwrap().duration_ms as f64 / 1e3;
            Clip {
                text,
                ogg: Bytes::from(ogg),
                audio_s,
            }
        };
        let shorts: Vec<Clip> = SHORTS.into_iter().map(clip).collect();
        let long = [clip(LONG)];

        println!(
            "\n## offline engine (whisper.cpp {}, {model})",
            whisper_rs::WHISPER_CPP_VERSION
        );
        let rss_before = rss_kb();
        let mut loads = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            let engine = Whisper::load(model.as_ref(), &WhisperConfig::default()).unwrap();
            loads.push(started.elapsed().as_secs_f64() * 1e3);
            drop(engine);
        }
        println!("model load: {} ms", spread(&loads));
        let mut rss_loaded = 0;

        println!(
            "\n| window | bites | audio s | wall s per bite | real-time factor | CPU s per bite | words heard |"
        );
        println!("|---|---|---|---|---|---|---|");
        let mut heard_lines = Vec::new();
        for fit_window in [false, true] {
            let config = WhisperConfig {
                fit_window,
                ..WhisperConfig::default()
            };
            let engine = Whisper::load(model.as_ref(), &config).unwrap();
            rss_loaded = rss_loaded.max(rss_kb());
            let mode = if fit_window {
                "fitted"
            } else {
                "full 30 s (default)"
            };
            engine.transcribe(long[0].ogg.clone(), "en").await.unwrap();
            for (set, clips, runs) in [("short", &shorts[..], 3), ("long", &long[..], RUNS)] {
                let (mut walls, mut rtfs, mut cpus, mut heard_words, mut said_words) =
                    (Vec::new(), Vec::new(), Vec::new(), 0, 0);
                for clip in clips {
                    let mut text = String::new();
                    for _ in 0..runs {
                        let cpu = threads_cpu_ns(&[""]);
                        let started = Instant::now();
                        let transcript = engine.transcribe(clip.ogg.clone(), "en").await.unwrap();
                        let wall = started.elapsed().as_secs_f64();
                        walls.push(wall);
                        rtfs.push(wall / clip.audio_s);
                        cpus.push((threads_cpu_ns(&[""]) - cpu) as f64 / 1e9);
                        text = transcript.text;
                    }
                    let (heard, said) = heard(clip.text, &text);
                    heard_words += heard;
                    said_words += said;
                    heard_lines.push(format!("{mode}: {text}"));
                }
                let audio: Vec<f64> = clips.iter().map(|c| c.audio_s).collect();
                println!(
                    "| {mode} | {} {set} | {:.1}–{:.1} | {} | {} | {:.3} | {heard_words}/{said_words} ({:.0}%) |",
                    clips.len(),
                    audio.iter().copied().fold(f64::MAX, f64::min),
                    audio.iter().copied().fold(0.0, f64::max),
                    spread(&walls),
                    spread(&rtfs),
                    median(cpus),
                    heard_words as f64 * 100.0 / said_words as f64
                );
            }
        }
        println!("\ntranscripts:");
        for line in heard_lines {
            println!("- {line}");
        }

        for (name, clip) in [("3 s", &shorts[0]), ("20 s", &long[0])] {
            let mut decodes = Vec::new();
            for _ in 0..RUNS {
                let started = Instant::now();
                decode_16k(&clip.ogg).unwrap();
                decodes.push(started.elapsed().as_secs_f64() * 1e3);
            }
            println!(
                "\nOgg Opus -> 16 kHz PCM, {name} bite: {} ms",
                spread(&decodes)
            );
        }
        println!(
            "\nmemory: RSS {} MB before loading, {} MB with the model loaded, peak {} MB",
            rss_before / 1024,
            rss_loaded / 1024,
            peak_rss_kb() / 1024
        );
    }
}
