//! Bites transcribed through the durable queue: the OpenAI-compatible engine against a local
//! server that checks what it is sent, retries, dead letters, and jobs surviving a restart.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::bites::{Member, join, json_of, member, one_bite, send, ws_base};
use crate::helpers::{TestApp, columns, conversation_of, error_code};
use crate::peer::Peer;
use beep::config::{Config, Secret, TranscriptionEngine};
use beep::services::bites::BiteStored;

const KEY: &str = "test-key-3b9f";

/// What the fake server answers: a transcript with word times, as OpenAI's verbose_json.
fn canned() -> Value {
    json!({
        "task": "transcribe",
        "language": "english",
        "duration": 0.3,
        "text": " Hello beep world.",
        "words": [
            {"word": "Hello", "start": 0.0, "end": 0.12},
            {"word": "beep", "start": 0.12, "end": 0.2},
            {"word": "world.", "start": 0.2, "end": 0.3}
        ]
    })
}

/// A local OpenAI-compatible server: the first `failures` requests get a 503, the rest the
/// canned transcript. Keeps every request, whole.
struct SpeechApi {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl SpeechApi {
    async fn start(failures: usize) -> Self {
        Self::answering(failures, canned()).await
    }

    /// Answers `answer` once past the `failures`.
    async fn answering(failures: usize, answer: Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let kept = Arc::clone(&requests);
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let kept = Arc::clone(&kept);
                let answer = answer.to_string();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut socket).await else {
                        return;
                    };
                    let seen = {
                        let mut kept = kept.lock().unwrap();
                        kept.push(request);
                        kept.len()
                    };
                    let (status, body) = if seen <= failures {
                        ("503 Service Unavailable", r#"{"error":"busy"}"#.to_owned())
                    } else {
                        ("200 OK", answer)
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        Self { addr, requests }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 request, head and body (by Content-Length), as bytes.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        request.extend_from_slice(&chunk[..read]);
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..read]);
    }
    Some(request)
}

fn with_engine(config: &mut Config, api: &SpeechApi) {
    let transcription = &mut config.transcription;
    transcription.engine = TranscriptionEngine::Openai;
    transcription.openai.base_url = api.base_url();
    transcription.openai.api_key = Secret::new(KEY);
    transcription.openai.timeout_secs = 5;
    transcription.retry_base_ms = 50;
    transcription.max_attempts = 3;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The transcript route's answer once it is no longer `transcript_pending`.
async fn settled(app: &TestApp, who: &Member, conversation: &str, start: u64) -> reqwest::Response {
    settled_within(app, who, conversation, start, Duration::from_secs(10)).await
}

async fn settled_within(
    app: &TestApp,
    who: &Member,
    conversation: &str,
    start: u64,
    wait: Duration,
) -> reqwest::Response {
    let path = format!("/store/transcription/{conversation}/start/{start}");
    let deadline = Instant::now() + wait;
    loop {
        let response = send(app, "GET", &path, &who.tokens).await;
        if response.status() != 404 {
            return response;
        }
        let body: Value = response.json().await.unwrap();
        let code = body["error"]["code"].as_str().unwrap().to_owned();
        if code != "transcript_pending" {
            return send(app, "GET", &path, &who.tokens).await;
        }
        assert!(Instant::now() < deadline, "still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bite's file as stored.
async fn stored_ogg(app: &TestApp, who: &Member, conversation: &str, start: u64) -> bytes::Bytes {
    let path = format!("/store/bite/{conversation}/start/{start}");
    send(app, "GET", &path, &who.tokens)
        .await
        .bytes()
        .await
        .unwrap()
}

/// A member of a new conversation, connected, with a stream of stored bites.
async fn talker(
    app: &TestApp,
) -> (
    Member,
    String,
    Peer,
    beep::platform::bus::Subscription<BiteStored>,
) {
    let alice = member(app, "phone").await;
    let conversation = conversation_of(app, &alice.tokens, &[]).await;
    let stored = app.platform().bus.subscribe::<BiteStored>().await.unwrap();
    app.platform().bus.confirm_subscriptions().await.unwrap();
    let peer = Peer::connect(&ws_base(app), &alice.tokens.access).await;
    assert_eq!(join(app, &alice.tokens, &conversation).await.status(), 200);
    (alice, conversation, peer, stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bites_are_transcribed_by_an_openai_compatible_engine() {
    for column in columns() {
        // One failure first: the job is retried, not lost.
        let api = SpeechApi::start(1).await;
        let app = TestApp::spawn_with(column, |config| with_engine(config, &api), Vec::new()).await;
        let (alice, conversation, mut peer, mut stored) = talker(&app).await;
        let mut events = send(
            &app,
            "GET",
            &format!("/store/bite/{conversation}/subscribe"),
            &alice.tokens,
        )
        .await;
        assert_eq!(events.status(), 200);
        let start = one_bite(&mut peer, &mut stored).await;

        // The bite stream announces the transcript when it is stored.
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen.contains("event: transcript") {
            let chunk = tokio::time::timeout_at(deadline.into(), events.chunk())
                .await
                .expect("a transcript event")
                .unwrap()
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        let line = seen
            .split("event: transcript\n")
            .nth(1)
            .and_then(|rest| rest.lines().find(|line| line.starts_with("data: ")))
            .unwrap();
        let announced: Value = serde_json::from_str(&line["data: ".len()..]).unwrap();
        assert_eq!(announced["start"], start);
        assert_eq!(announced["user"], alice.tokens.user_id.as_str());
        assert_eq!(announced["text"], "Hello beep world.");
        drop(events);

        // The list carries each bite's transcript text.
        let listed = json_of(
            send(
                &app,
                "GET",
                &format!("/store/bite/{conversation}"),
                &alice.tokens,
            )
            .await,
            200,
        )
        .await;
        assert_eq!(listed[0]["start"], start);
        assert_eq!(listed[0]["transcript"], "Hello beep world.");

        let response = settled(&app, &alice, &conversation, start).await;
        let transcript = json_of(response, 200).await;
        assert_eq!(
            transcript,
            json!({
                "text": "Hello beep world.",
                "language": "en",
                "engine": "openai",
                "words": [
                    {"word": "Hello", "start_ms": 0, "end_ms": 120},
                    {"word": "beep", "start_ms": 120, "end_ms": 200},
                    {"word": "world.", "start_ms": 200, "end_ms": 300}
                ]
            }),
            "{column:?}"
        );

        // What the engine was sent: the stored Ogg, as a multipart form OpenAI accepts.
        let ogg = stored_ogg(&app, &alice, &conversation, start).await;
        assert!(ogg.starts_with(b"OggS"));
        let requests = api.requests();
        assert_eq!(requests.len(), 2, "one failure, one success");
        for request in &requests {
            let head =
                String::from_utf8_lossy(&request[..request.len().min(2048)]).to_ascii_lowercase();
            assert!(
                head.starts_with("post /v1/audio/transcriptions http/1.1"),
                "{head}"
            );
            assert!(
                head.contains(&format!("authorization: bearer {KEY}")),
                "{head}"
            );
            assert!(
                head.contains("content-type: multipart/form-data; boundary="),
                "{head}"
            );
            for field in [
                &b"name=\"model\"\r\n\r\nwhisper-1\r\n"[..],
                b"name=\"language\"\r\n\r\nen\r\n",
                b"name=\"response_format\"\r\n\r\nverbose_json\r\n",
                b"name=\"timestamp_granularities[]\"\r\n\r\nword\r\n",
                b"name=\"file\"; filename=\"bite.ogg\"",
                b"content-type: audio/ogg",
            ] {
                assert!(
                    contains(&request.to_ascii_lowercase(), &field.to_ascii_lowercase()),
                    "{} not sent",
                    String::from_utf8_lossy(field)
                );
            }
            assert!(contains(request, &ogg), "the stored Ogg was not sent whole");
        }

        // Found by search, in another word form, with the match marked and where it is said.
        let search = |q: &str| format!("/store/transcription/{conversation}/search?q={q}");
        let hits = json_of(
            send(&app, "GET", &search("worlds"), &alice.tokens).await,
            200,
        )
        .await;
        assert_eq!(hits.as_array().unwrap().len(), 1, "{column:?}: {hits}");
        assert_eq!(hits[0]["start"], start);
        assert_eq!(hits[0]["user"], alice.tokens.user_id.as_str());
        assert_eq!(hits[0]["offset_ms"], 200);
        let snippet = hits[0]["snippet"].as_str().unwrap();
        assert!(snippet.contains("<mark>world</mark>"), "{snippet}");
        let hits = json_of(
            send(&app, "GET", &search("absent"), &alice.tokens).await,
            200,
        )
        .await;
        assert_eq!(hits, json!([]));
        for bad in ["%2A%2A%2A", "", &"a".repeat(300)] {
            let response = send(&app, "GET", &search(bad), &alice.tokens).await;
            assert_eq!(error_code(response, 400).await, "invalid_query", "{bad:?}");
        }
        let response = send(
            &app,
            "GET",
            &format!("/store/transcription/{conversation}/search"),
            &alice.tokens,
        )
        .await;
        assert_eq!(response.status(), 400);

        // Members only; bad input is a 4xx.
        let stranger = member(&app, "phone").await;
        let response = send(&app, "GET", &search("world"), &stranger.tokens).await;
        assert_eq!(error_code(response, 403).await, "not_a_member");
        let path = format!("/store/transcription/{conversation}/start/{start}");
        let response = send(&app, "GET", &path, &stranger.tokens).await;
        assert_eq!(error_code(response, 403).await, "not_a_member");
        let response = send(
            &app,
            "GET",
            "/store/transcription/nope/start/1",
            &alice.tokens,
        )
        .await;
        assert_eq!(error_code(response, 400).await, "invalid_id");
        let response = send(
            &app,
            "GET",
            &format!("/store/transcription/{conversation}/start/{}", start + 1),
            &alice.tokens,
        )
        .await;
        assert_eq!(error_code(response, 404).await, "transcript_not_found");
        let response = send(&app, "GET", &format!("{path}?user=u-1"), &alice.tokens).await;
        assert_eq!(error_code(response, 400).await, "invalid_speaker");
        peer.close().await;
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_keeps_failing_sends_the_job_to_the_dead_letters() {
    for column in columns() {
        let api = SpeechApi::start(usize::MAX).await;
        let app = TestApp::spawn_with(column, |config| with_engine(config, &api), Vec::new()).await;
        let (alice, conversation, mut peer, mut stored) = talker(&app).await;
        let start = one_bite(&mut peer, &mut stored).await;
        let response = settled(&app, &alice, &conversation, start).await;
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "transcript_failed", "{column:?}");
        // The engine's address and answer are the operator's to read, not the members'.
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("503") && !message.contains("127.0.0.1"),
            "{body}"
        );
        // max_attempts, and not one more.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(api.requests().len(), 3);
        peer.close().await;

        // The operator sees the dead letter, and can queue it again.
        let data = app.stop_keeping_data().await;
        let cli = |command: &str| {
            crate::served::run_ok(crate::served::beep(data.path()).args([
                "transcription",
                command,
                "--data-dir",
                data.path().to_str().unwrap(),
            ]))
        };
        let dead = cli("dead-letters");
        let lines: Vec<Value> = dead
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{dead}");
        assert_eq!(lines[0]["bite"]["start"], start);
        assert_eq!(lines[0]["attempts"], 3);
        assert!(lines[0]["error"].as_str().unwrap().contains("503"));
        assert_eq!(cli("retry").trim(), "1 job(s) queued again");
        assert_eq!(cli("dead-letters"), "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_survive_a_restart() {
    for column in columns() {
        // Nothing listens at first: every attempt fails to connect, with a long wait between.
        let unreachable = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_url = format!("http://{}/v1", unreachable.local_addr().unwrap());
        drop(unreachable);
        let app = TestApp::spawn_with(
            column,
            |config| {
                config.transcription.engine = TranscriptionEngine::Openai;
                config.transcription.openai.base_url = dead_url;
                config.transcription.retry_base_ms = 60_000;
            },
            Vec::new(),
        )
        .await;
        let (alice, conversation, mut peer, mut stored) = talker(&app).await;
        let start = one_bite(&mut peer, &mut stored).await;
        let path = format!("/store/transcription/{conversation}/start/{start}");
        let response = send(&app, "GET", &path, &alice.tokens).await;
        assert_eq!(error_code(response, 404).await, "transcript_pending");
        peer.close().await;

        // Back with a working engine and a retry soon: the same job is done.
        let api = SpeechApi::start(0).await;
        let app = app
            .restart(
                |config| {
                    with_engine(config, &api);
                    config.transcription.retry_base_ms = 50;
                },
                Vec::new(),
            )
            .await;
        // The job kept its wait from before the restart (60 s): move the clock past it.
        app.clock().advance(Duration::from_secs(61));
        let response = settled(&app, &alice, &conversation, start).await;
        let transcript = json_of(response, 200).await;
        assert_eq!(transcript["text"], "Hello beep world.", "{column:?}");
        assert_eq!(api.requests().len(), 1);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bites_are_transcribed_by_google_speech_to_text() {
    use base64::Engine as _;
    for column in columns() {
        let api = SpeechApi::answering(
            0,
            json!({
                "results": [
                    {"alternatives": [{"transcript": "Hello beep", "confidence": 0.9, "words": [
                        {"word": "Hello", "startTime": "0s", "endTime": "0.100s"},
                        {"word": "beep", "startTime": "0.100s", "endTime": "0.200s"}]}],
                     "languageCode": "en-us"},
                    {"alternatives": [{"transcript": " world", "words": [
                        {"word": "world", "startTime": "0.200s", "endTime": "0.300s"}]}]}
                ],
                "totalBilledTime": "1s"
            }),
        )
        .await;
        let app = TestApp::spawn_with(
            column,
            |config| {
                config.transcription.engine = TranscriptionEngine::Google;
                config.transcription.google.base_url = format!("http://{}", api.addr);
                config.transcription.google.api_key = Secret::new(KEY);
            },
            Vec::new(),
        )
        .await;
        let (alice, conversation, mut peer, mut stored) = talker(&app).await;
        let start = one_bite(&mut peer, &mut stored).await;
        let transcript = json_of(settled(&app, &alice, &conversation, start).await, 200).await;
        assert_eq!(transcript["text"], "Hello beep world", "{column:?}");
        assert_eq!(transcript["engine"], "google");
        assert_eq!(transcript["language"], "en");
        assert_eq!(
            transcript["words"][2],
            json!({"word": "world", "start_ms": 200, "end_ms": 300})
        );

        let ogg = stored_ogg(&app, &alice, &conversation, start).await;
        let requests = api.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
        assert!(
            head.starts_with(&format!("post /v1/speech:recognize?key={KEY} http/1.1")),
            "{head}"
        );
        assert!(head.contains("content-type: application/json"), "{head}");
        let body: Value = serde_json::from_slice(&request[head_end..]).unwrap();
        // As the file's OpusHead says (the first page holds only it: a 28-byte page header).
        assert_eq!(&ogg[28..36], b"OpusHead");
        let channels = ogg[37];
        assert_eq!(
            body["config"],
            json!({
                "encoding": "OGG_OPUS",
                "sampleRateHertz": 48000,
                "audioChannelCount": channels,
                "languageCode": "en",
                "enableWordTimeOffsets": true,
                "enableAutomaticPunctuation": true
            })
        );
        let audio = base64::engine::general_purpose::STANDARD
            .decode(body["audio"]["content"].as_str().unwrap())
            .unwrap();
        assert_eq!(audio, ogg.to_vec(), "the stored Ogg, whole, once encoded");
        peer.close().await;
        app.stop().await;
    }
}

/// The offline engine on real speech, through the whole pipeline: a WebRTC peer speaks a
/// sentence made by espeak-ng, the bite is stored, whisper.cpp transcribes it with the model
/// `.ci/run` converts (`BEEP_TEST_WHISPER_MODEL`), and search finds it by a spoken word.
#[cfg(feature = "whisper")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_speech_is_transcribed_offline_and_found_by_search() {
    use crate::bites::SPEECH;
    const SAID: &str = "Please call me back when you land at the airport tonight.";
    let Ok(model) = std::env::var("BEEP_TEST_WHISPER_MODEL") else {
        eprintln!("skipped: BEEP_TEST_WHISPER_MODEL names no ggml model");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // With a model named (CI names one), missing tools fail rather than skip.
    let ogg = crate::speech::spoken_ogg(SAID, dir.path())
        .expect("espeak-ng, sox and opusenc make the speech");
    let packets: Vec<Vec<u8>> = beep::services::bites::ogg::packets(&ogg)
        .unwrap()
        .into_iter()
        .skip(2)
        .collect();
    for column in columns() {
        let app = TestApp::spawn_with(
            column,
            |config| {
                config.transcription.engine = TranscriptionEngine::Whisper;
                config.transcription.whisper.model_path = Some(model.clone().into());
            },
            Vec::new(),
        )
        .await;
        let (alice, conversation, mut peer, mut stored) = talker(&app).await;
        peer.speak(&packets, SPEECH).await;
        let start = tokio::time::timeout(Duration::from_secs(10), stored.next())
            .await
            .expect("the spoken bite was stored")
            .unwrap()
            .data
            .bite
            .start;

        let response =
            settled_within(&app, &alice, &conversation, start, Duration::from_secs(60)).await;
        let transcript = json_of(response, 200).await;
        assert_eq!(transcript["engine"], "whisper");
        assert_eq!(transcript["language"], "en");
        let text = transcript["text"].as_str().unwrap().to_lowercase();
        for keyword in ["call", "back", "airport", "tonight"] {
            assert!(
                text.contains(keyword),
                "{column:?}: {keyword:?} not heard in {text:?}"
            );
        }
        // Words in order, inside the bite, "airport" late in it.
        let words = transcript["words"].as_array().unwrap();
        let times: Vec<(u64, u64)> = words
            .iter()
            .map(|w| {
                (
                    w["start_ms"].as_u64().unwrap(),
                    w["end_ms"].as_u64().unwrap(),
                )
            })
            .collect();
        assert!(times.len() >= 8, "{transcript}");
        assert!(times.windows(2).all(|w| w[0].0 <= w[1].0), "{transcript}");
        assert!(
            times.iter().all(|(s, e)| s <= e && *e <= 5_000),
            "{transcript}"
        );
        let airport = words
            .iter()
            .find(|w| {
                w["word"]
                    .as_str()
                    .unwrap()
                    .to_lowercase()
                    .contains("airport")
            })
            .expect("airport timed");
        let airport_ms = airport["start_ms"].as_u64().unwrap();
        assert!((1_000..4_000).contains(&airport_ms), "{transcript}");

        // Search finds it by a spoken word, and by another form of one ("calling": "call").
        let search = |conversation: &str, q: &str| {
            format!("/store/transcription/{conversation}/search?q={q}")
        };
        // Indexed just after the transcript is stored (and before its SSE event).
        let deadline = Instant::now() + Duration::from_secs(10);
        let hits = loop {
            let path = search(&conversation, "airport");
            let hits = json_of(send(&app, "GET", &path, &alice.tokens).await, 200).await;
            if hits != json!([]) || Instant::now() > deadline {
                break hits;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(hits.as_array().unwrap().len(), 1, "{column:?}: {hits}");
        assert_eq!(hits[0]["start"], start);
        assert_eq!(hits[0]["offset_ms"], airport_ms);
        let snippet = hits[0]["snippet"].as_str().unwrap().to_lowercase();
        assert!(snippet.contains("<mark>airport</mark>"), "{snippet}");
        let hits = json_of(
            send(
                &app,
                "GET",
                &search(&conversation, "calling"),
                &alice.tokens,
            )
            .await,
            200,
        )
        .await;
        assert_eq!(
            hits[0]["start"], start,
            "{column:?}: {hits} for {transcript}"
        );

        // Only in the caller's conversations.
        let bob = member(&app, "phone").await;
        let own = conversation_of(&app, &bob.tokens, &[]).await;
        let hits = json_of(
            send(&app, "GET", &search(&own, "airport"), &bob.tokens).await,
            200,
        )
        .await;
        assert_eq!(hits, json!([]));
        let response = send(&app, "GET", &search(&conversation, "airport"), &bob.tokens).await;
        assert_eq!(error_code(response, 403).await, "not_a_member");
        peer.close().await;
        app.stop().await;
    }
}
