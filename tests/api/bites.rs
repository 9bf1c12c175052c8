//! bites over the wire: WebRTC peers (the `webrtc` crate) joined to conversations through
//! `/webrtc`, hearing each other and nobody else; the bites cut from their speech, stored as
//! Ogg Opus and read back through `/store`; retention; and who may read.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::auth::{Tokens, login_as};
use beep::platform::bus::durable_stream_name;
use beep::services::bites::BiteStored;

use crate::helpers::{
    Column, NATS, TestApp, columns, conversation_of, env, error_code, target, targets, unique_phone,
};
use crate::peer::{Peer, synthetic_opus};

/// Speech and silence as the RFC 6464 levels a browser puts on its packets.
pub(crate) const SPEECH: Option<u8> = Some(20);
const SILENCE: Option<u8> = Some(127);

pub(crate) struct Member {
    pub(crate) tokens: Tokens,
    client: String,
}

impl Member {
    /// The track id the SFU gives this member's audio.
    fn track(&self) -> String {
        format!("{}:{}", self.tokens.user_id, self.client)
    }
}

pub(crate) async fn member(app: &TestApp, client: &str) -> Member {
    Member {
        tokens: login_as(app, &unique_phone(), client).await,
        client: client.to_owned(),
    }
}

fn call(app: &TestApp, method: &str, path: &str, who: &Tokens) -> reqwest::RequestBuilder {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    app.client
        .request(method, app.url(path))
        .bearer_auth(&who.access)
}

/// A request as a logged-in client sends it, sent.
pub(crate) async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    who: &Tokens,
) -> reqwest::Response {
    call(app, method, path, who).send().await.unwrap()
}

pub(crate) async fn join(app: &TestApp, who: &Tokens, conversation: &str) -> reqwest::Response {
    call(app, "POST", &format!("/webrtc/join/{conversation}"), who)
        .send()
        .await
        .unwrap()
}

pub(crate) fn ws_base(app: &TestApp) -> String {
    app.url("").replacen("http://", "ws://", 1)
}

/// Waits up to `within` for `condition`.
async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends 20 ms packets of speech from `peer` for `ms`.
/// Both talk in turn, `first` first, until each has heard the other (at most 10 turns).
async fn talk_until_heard(first: &mut Peer, first_id: &str, second: &mut Peer, second_id: &str) {
    for _ in 0..10 {
        talk(first, 100).await;
        talk(second, 100).await;
        if first.heard_from(second_id) > 0 && second.heard_from(first_id) > 0 {
            break;
        }
    }
}

async fn talk(peer: &mut Peer, ms: usize) {
    let packets: Vec<Vec<u8>> = (0..ms / 20).map(|i| synthetic_opus(i as u8, 60)).collect();
    peer.speak(&packets, SPEECH).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_hear_each_other_and_nobody_else() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let ws = ws_base(&app);
        let alice = member(&app, "alice-phone").await;
        let bob = member(&app, "bob-phone").await;
        let carol = member(&app, "carol-phone").await;
        let mallory = member(&app, "mallory-phone").await;
        let conversation =
            conversation_of(&app, &alice.tokens, &[&bob.tokens, &carol.tokens]).await;
        let elsewhere = conversation_of(&app, &mallory.tokens, &[]).await;

        // Alice joins before connecting (the join waits for her socket); Bob after.
        assert_eq!(join(&app, &alice.tokens, &conversation).await.status(), 200);
        let mut a = Peer::connect(&ws, &alice.tokens.access).await;
        let mut b = Peer::connect(&ws, &bob.tokens.access).await;
        assert_eq!(join(&app, &bob.tokens, &conversation).await.status(), 200);
        let mut m = Peer::connect(&ws, &mallory.tokens.access).await;
        let refused = join(&app, &mallory.tokens, &conversation).await;
        assert_eq!(error_code(refused, 403).await, "not_a_member", "{column:?}");
        assert_eq!(join(&app, &mallory.tokens, &elsewhere).await.status(), 200);

        // Both speak; each hears the other, never itself; Mallory, in her own room, nothing.
        for _ in 0..3 {
            talk(&mut a, 200).await;
            if b.heard_from(&alice.tokens.user_id) > 0 {
                break;
            }
        }
        talk(&mut b, 400).await;
        talk(&mut m, 200).await;
        eventually(
            Duration::from_secs(5),
            "Alice and Bob to hear each other",
            || b.heard_from(&alice.tokens.user_id) > 0 && a.heard_from(&bob.tokens.user_id) > 0,
        )
        .await;
        assert_eq!(b.speakers(), vec![alice.track()], "{column:?}");
        assert_eq!(a.speakers(), vec![bob.track()], "{column:?}");
        assert!(m.speakers().is_empty(), "{column:?}: {:?}", m.speakers());
        let heard = b.heard.lock().unwrap()[&alice.track()].clone();
        assert!(
            heard
                .iter()
                .all(|p| p.payload.len() == 60 && p.payload[0] == 0xfc)
        );
        assert!(
            heard.iter().all(|p| p.level == Some(20)),
            "levels are forwarded"
        );

        // Carol joins: both are renegotiated and hear her; she hears both.
        let offers_before = (
            a.offers.load(std::sync::atomic::Ordering::SeqCst),
            b.offers.load(std::sync::atomic::Ordering::SeqCst),
        );
        let mut c = Peer::connect(&ws, &carol.tokens.access).await;
        assert_eq!(join(&app, &carol.tokens, &conversation).await.status(), 200);
        eventually(Duration::from_secs(5), "renegotiation", || {
            a.offers.load(std::sync::atomic::Ordering::SeqCst) > offers_before.0
                && b.offers.load(std::sync::atomic::Ordering::SeqCst) > offers_before.1
        })
        .await;
        for _ in 0..10 {
            talk(&mut a, 100).await;
            talk(&mut b, 100).await;
            talk(&mut c, 100).await;
            if c.speakers().len() == 2
                && a.heard_from(&carol.tokens.user_id) > 0
                && b.heard_from(&carol.tokens.user_id) > 0
            {
                break;
            }
        }
        assert_eq!(c.speakers(), {
            let mut both = vec![alice.track(), bob.track()];
            both.sort();
            both
        });
        assert!(a.heard_from(&carol.tokens.user_id) > 0, "{column:?}");
        assert!(b.heard_from(&carol.tokens.user_id) > 0, "{column:?}");

        // Bob is removed from the conversation: within a second he hears nothing more.
        let removed = send(
            &app,
            "DELETE",
            &format!(
                "/core/user/conversation/{conversation}/member/{}",
                bob.tokens.user_id
            ),
            &alice.tokens,
        )
        .await;
        assert_eq!(removed.status(), 200);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (bob_heard, alice_heard_bob) = (
            b.heard_from(&alice.tokens.user_id),
            a.heard_from(&bob.tokens.user_id),
        );
        talk(&mut a, 300).await;
        talk(&mut b, 300).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            b.heard_from(&alice.tokens.user_id),
            bob_heard,
            "{column:?}: removed member still hears"
        );
        assert_eq!(
            a.heard_from(&bob.tokens.user_id),
            alice_heard_bob,
            "{column:?}: removed member still heard"
        );
        let rejoin = join(&app, &bob.tokens, &conversation).await;
        assert_eq!(error_code(rejoin, 403).await, "not_a_member");

        // Bad signalling is answered, not fatal.
        a.signal("shout::hello");
        a.signal("ice::udp4 host 1.2.3.4:5000");
        eventually(Duration::from_secs(5), "error messages", || {
            a.errors.lock().unwrap().len() == 2
        })
        .await;
        let errors = a.errors.lock().unwrap().clone();
        assert!(errors[0].contains("unknown_message"), "{errors:?}");
        assert!(errors[1].contains("invalid_candidate"), "{errors:?}");

        for peer in [a, b, c, m] {
            peer.close().await;
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn signalling_needs_a_token_and_a_websocket() {
    let app = TestApp::spawn(target()).await;
    let alice = member(&app, "phone").await;
    let response = app
        .client
        .get(app.url("/webrtc/connect"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = send(&app, "GET", "/webrtc/connect", &alice.tokens).await;
    assert_eq!(error_code(response, 400).await, "websocket_required");
    let response = send(&app, "POST", "/webrtc/join/c-nope", &alice.tokens).await;
    assert_eq!(error_code(response, 400).await, "invalid_id");
    let config: Value = send(&app, "GET", "/webrtc/config", &alice.tokens)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(config, json!({"iceServers": []}));
    app.stop().await;
}

/// Real Opus from Debian's opus-tools when installed (CI installs it), else synthetic packets.
fn opus_packets(count: usize) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("tone.wav");
    let opus = dir.path().join("tone.opus");
    std::fs::write(&wav, tone_wav(count * 20)).unwrap();
    let encoded = Command::new("opusenc")
        .args(["--quiet", "--framesize", "20", "--bitrate", "32"])
        .arg(&wav)
        .arg(&opus)
        .status();
    match encoded {
        Ok(status) if status.success() => {
            let packets = ogg_packets(&std::fs::read(&opus).unwrap());
            // Skip OpusHead and OpusTags.
            packets.into_iter().skip(2).take(count).collect()
        }
        _ => (0..count).map(|i| synthetic_opus(i as u8, 60)).collect(),
    }
}

/// A 48 kHz mono 16-bit WAV of a 440 Hz tone.
fn tone_wav(ms: usize) -> Vec<u8> {
    let samples = ms * 48;
    let mut wav = Vec::with_capacity(44 + samples * 2);
    let data_len = (samples * 2) as u32;
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&48_000u32.to_le_bytes());
    wav.extend_from_slice(&96_000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..samples {
        let t = i as f64 / 48_000.0;
        let sample = (f64::sin(2.0 * std::f64::consts::PI * 440.0 * t) * 8000.0) as i16;
        wav.extend_from_slice(&sample.to_le_bytes());
    }
    wav
}

/// The packets of an Ogg stream, with page CRCs left unchecked; pages' granules alongside.
fn ogg_pages(mut file: &[u8]) -> Vec<(u64, u8, Vec<Vec<u8>>)> {
    let mut pages = Vec::new();
    let mut partial = Vec::new();
    while file.len() >= 27 {
        assert_eq!(&file[..4], b"OggS", "not an Ogg page");
        let flags = file[5];
        let granule = u64::from_le_bytes(file[6..14].try_into().unwrap());
        let segments = usize::from(file[26]);
        let lacing = &file[27..27 + segments];
        let mut body = &file[27 + segments..];
        let mut packets = Vec::new();
        for &len in lacing {
            partial.extend_from_slice(&body[..usize::from(len)]);
            body = &body[usize::from(len)..];
            if len < 255 {
                packets.push(std::mem::take(&mut partial));
            }
        }
        let consumed = file.len() - body.len();
        file = &file[consumed..];
        pages.push((granule, flags, packets));
    }
    assert!(file.is_empty(), "trailing bytes after the last page");
    pages
}

fn ogg_packets(file: &[u8]) -> Vec<Vec<u8>> {
    ogg_pages(file)
        .into_iter()
        .flat_map(|page| page.2)
        .collect()
}

pub(crate) async fn json_of(response: reqwest::Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_becomes_bites_that_members_read() {
    let packets = opus_packets(130);
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let ws = ws_base(&app);
        let alice = member(&app, "alice-phone").await;
        let bob = member(&app, "bob-phone").await;
        let mallory = member(&app, "mallory-phone").await;
        let conversation = conversation_of(&app, &alice.tokens, &[&bob.tokens]).await;
        let store = format!("/store/bite/{conversation}");

        // Bob listens to new bites as they are stored.
        let mut stream = send(&app, "GET", &format!("{store}/subscribe"), &bob.tokens).await;
        assert_eq!(stream.status(), 200);

        let mut stored = app.platform().bus.subscribe::<BiteStored>().await.unwrap();
        app.platform().bus.confirm_subscriptions().await.unwrap();
        let mut a = Peer::connect(&ws, &alice.tokens.access).await;
        assert_eq!(join(&app, &alice.tokens, &conversation).await.status(), 200);
        // Speech 1 s, silence 1 s, speech 0.6 s.
        let began = app.clock().now_millis() as u64;
        a.speak(&packets[..50], SPEECH).await;
        a.speak(&packets[50..100], SILENCE).await;
        a.speak(&packets[100..130], SPEECH).await;

        // Two `bite` events reach Bob's stream.
        let mut announced: Vec<Value> = Vec::new();
        let mut buffer = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while announced.len() < 2 {
            let chunk = tokio::time::timeout_at(deadline.into(), stream.chunk())
                .await
                .expect("two bites announced")
                .unwrap()
                .unwrap();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                if event.contains("event: bite") {
                    let data = event
                        .lines()
                        .find_map(|l| l.strip_prefix("data: "))
                        .unwrap();
                    announced.push(serde_json::from_str(data).unwrap());
                }
            }
        }
        let starts: Vec<u64> = announced
            .iter()
            .map(|b| b["start"].as_u64().unwrap())
            .collect();
        let durations: Vec<u64> = announced
            .iter()
            .map(|b| b["duration"].as_u64().unwrap())
            .collect();
        assert_eq!(durations, vec![1000, 600], "{column:?}");
        assert_eq!(
            starts[1] - starts[0],
            2000,
            "{column:?}: starts follow the RTP clock"
        );
        assert!(
            starts[0] >= began.saturating_sub(100) && starts[0] <= began + 500,
            "{column:?}: start {} vs speaking at {began}",
            starts[0]
        );
        assert_eq!(announced[0]["user"], alice.tokens.user_id);
        assert_eq!(announced[0]["client"], "alice-phone");
        assert_eq!(announced[0]["conversation"], conversation);

        // Each is also an event on the bus; on NATS it is kept in a JetStream stream, so a
        // consumer that starts later still gets every bite.
        for start in &starts {
            let event = tokio::time::timeout(Duration::from_secs(5), stored.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(event.data.bite.start, *start);
        }
        if column == Column::Real
            && let Some(url) = env(NATS)
        {
            assert_eq!(
                kept_in_jetstream(&app, &url).await,
                starts,
                "JetStream holds every bite"
            );
        }

        // The original scan, in milliseconds, and the new list.
        let scan = json_of(
            send(
                &app,
                "GET",
                &format!("{store}/scan?from=0&to={}", u64::MAX),
                &bob.tokens,
            )
            .await,
            200,
        )
        .await;
        assert_eq!(scan, json!({"previous": 0, "starts": starts, "next": 0}));
        let scan = json_of(
            send(
                &app,
                "GET",
                &format!("{store}/scan?from={}&to={}", starts[0] + 1, starts[1]),
                &bob.tokens,
            )
            .await,
            200,
        )
        .await;
        assert_eq!(
            scan,
            json!({"previous": starts[0], "starts": [starts[1]], "next": 0})
        );
        let empty = json_of(
            send(
                &app,
                "GET",
                &format!("{store}/scan?from=1&to=2"),
                &bob.tokens,
            )
            .await,
            200,
        )
        .await;
        assert_eq!(
            empty,
            json!({"previous": 0, "starts": [], "next": starts[0]})
        );
        let page = send(&app, "GET", &format!("{store}?limit=1"), &bob.tokens).await;
        let link = page.headers()["link"].to_str().unwrap().to_owned();
        let first = json_of(page, 200).await;
        assert_eq!(first.as_array().unwrap().len(), 1);
        assert_eq!(first[0], announced[0]);
        let next = link.trim_start_matches('<').split('>').next().unwrap();
        let second = json_of(send(&app, "GET", next, &bob.tokens).await, 200).await;
        assert_eq!(second, json!([announced[1]]));

        // Each bite is a valid Ogg Opus file of its duration.
        for (bite, start) in announced.iter().zip(&starts) {
            let response = send(&app, "GET", &format!("{store}/start/{start}"), &bob.tokens).await;
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "audio/ogg");
            let file = response.bytes().await.unwrap();
            assert_eq!(file.len() as u64, bite["size"].as_u64().unwrap());
            let pages = ogg_pages(&file);
            assert_eq!(&pages[0].2[0][..8], b"OpusHead");
            let pre_skip = u64::from(u16::from_le_bytes([pages[0].2[0][10], pages[0].2[0][11]]));
            let last = pages.last().unwrap();
            assert_eq!(last.1 & 0x04, 0x04, "end of stream");
            assert_eq!((last.0 - pre_skip) / 48, bite["duration"].as_u64().unwrap());
            check_with_opusinfo(&file);
        }
        // Range requests, for seeking players.
        let part = call(
            &app,
            "GET",
            &format!("{store}/start/{}", starts[0]),
            &bob.tokens,
        )
        .header("range", "bytes=0-3")
        .send()
        .await
        .unwrap();
        assert_eq!(part.status(), 206);
        assert!(
            part.headers()["content-range"]
                .to_str()
                .unwrap()
                .starts_with("bytes 0-3/")
        );
        assert_eq!(&part.bytes().await.unwrap()[..], b"OggS");
        let missing = send(
            &app,
            "GET",
            &format!("{store}/start/{}", starts[0] + 1),
            &bob.tokens,
        )
        .await;
        assert_eq!(error_code(missing, 404).await, "bite_not_found");

        // Strangers read nothing; bad input is a clear 400.
        for path in [
            format!("{store}/scan?from=0&to=1"),
            store.clone(),
            format!("{store}/start/{}", starts[0]),
            format!("{store}/subscribe"),
        ] {
            let refused = send(&app, "GET", &path, &mallory.tokens).await;
            assert_eq!(error_code(refused, 403).await, "not_a_member", "{path}");
        }
        let bad = send(&app, "GET", &format!("{store}/scan?from=x"), &bob.tokens).await;
        assert_eq!(bad.status(), 400);
        let bad = send(
            &app,
            "GET",
            &format!("{store}/scan?from=5&to=1"),
            &bob.tokens,
        )
        .await;
        assert_eq!(error_code(bad, 400).await, "invalid_range");
        let bad = send(&app, "GET", &format!("{store}?limit=0"), &bob.tokens).await;
        assert_eq!(error_code(bad, 400).await, "invalid_limit");
        let bad = send(&app, "GET", "/store/bite/c-x/scan", &bob.tokens).await;
        assert_eq!(error_code(bad, 400).await, "invalid_id");

        a.close().await;
        app.stop().await;
    }
}

/// `opusinfo` (opus-tools) checks the stream structure and decodes it; skipped when the tool
/// is not installed (CI installs it).
fn check_with_opusinfo(file: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bite.opus");
    std::fs::write(&path, file).unwrap();
    let Ok(output) = Command::new("opusinfo").arg(&path).output() else {
        return;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "opusinfo: {text}");
    assert!(
        !text.contains("WARNING") && !text.contains("ERROR"),
        "opusinfo: {text}"
    );
}

/// The starts of the `bite_stored` events a new JetStream consumer reads from the beginning.
async fn kept_in_jetstream(app: &TestApp, url: &str) -> Vec<u64> {
    use async_nats::jetstream::{self, consumer::pull};
    use futures_util::StreamExt as _;
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let subject = app.platform().bus.subject::<BiteStored>();
    let stream = js.get_stream(durable_stream_name(&subject)).await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut starts = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let event: Value = serde_json::from_slice(&message.payload).unwrap();
        starts.push(event["data"]["start"].as_u64().unwrap());
        message.ack().await.unwrap();
    }
    starts
}

/// Speaks one short bite into the peer's room and returns its start, once stored.
pub(crate) async fn one_bite(
    peer: &mut Peer,
    stored: &mut beep::platform::bus::Subscription<BiteStored>,
) -> u64 {
    talk(peer, 300).await;
    let event = tokio::time::timeout(Duration::from_secs(5), stored.next())
        .await
        .expect("a bite was stored")
        .unwrap();
    event.data.bite.start
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_bites_expire() {
    for column in columns() {
        let app = TestApp::spawn_with(
            column,
            |config| {
                config.bites.retention_secs = 2;
                config.bites.retention_sweep_secs = 1;
            },
            Vec::new(),
        )
        .await;
        let alice = member(&app, "phone").await;
        let conversation = conversation_of(&app, &alice.tokens, &[]).await;
        let mut stored = app.platform().bus.subscribe::<BiteStored>().await.unwrap();
        app.platform().bus.confirm_subscriptions().await.unwrap();
        let mut peer = Peer::connect(&ws_base(&app), &alice.tokens.access).await;
        assert_eq!(join(&app, &alice.tokens, &conversation).await.status(), 200);
        let start = one_bite(&mut peer, &mut stored).await;
        let scan = format!("/store/bite/{conversation}/scan");
        let starts = |body: Value| body["starts"].as_array().unwrap().len();
        let body = json_of(send(&app, "GET", &scan, &alice.tokens).await, 200).await;
        assert_eq!(body["starts"], json!([start]), "{column:?}");
        let deadline = Instant::now() + Duration::from_secs(6);
        loop {
            let body = json_of(send(&app, "GET", &scan, &alice.tokens).await, 200).await;
            if starts(body) == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{column:?}: the bite outlived its retention"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let gone = send(
            &app,
            "GET",
            &format!("/store/bite/{conversation}/start/{start}"),
            &alice.tokens,
        )
        .await;
        assert_eq!(error_code(gone, 404).await, "bite_not_found");
        peer.close().await;
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_conversation_deletes_its_bites() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let alice = member(&app, "phone").await;
        let doomed = conversation_of(&app, &alice.tokens, &[]).await;
        let kept = conversation_of(&app, &alice.tokens, &[]).await;
        let mut stored = app.platform().bus.subscribe::<BiteStored>().await.unwrap();
        app.platform().bus.confirm_subscriptions().await.unwrap();
        let mut peer = Peer::connect(&ws_base(&app), &alice.tokens.access).await;
        assert_eq!(join(&app, &alice.tokens, &doomed).await.status(), 200);
        one_bite(&mut peer, &mut stored).await;
        one_bite(&mut peer, &mut stored).await;
        assert_eq!(join(&app, &alice.tokens, &kept).await.status(), 200);
        let kept_start = one_bite(&mut peer, &mut stored).await;
        let deleted = send(
            &app,
            "DELETE",
            &format!("/core/user/conversation/{doomed}"),
            &alice.tokens,
        )
        .await;
        assert_eq!(deleted.status(), 200);
        peer.close().await;
        // The deletion is heard on the bus; give it a moment, then look in the store itself.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let data = app.stop_keeping_data().await;
        // A peer connection's last task may hold the store a moment after the stop returns
        // (seen once under a loaded machine): wait for sled's lock rather than fail on it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let store = loop {
            match beep::services::bites::store::SledStore::open(&data.path().join("bites")) {
                Ok(store) => break store,
                Err(err) if std::time::Instant::now() > deadline => panic!("{err}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        use beep::services::bites::store::BiteStore as _;
        assert!(
            store
                .scan(&doomed, 0, u64::MAX, 100)
                .unwrap()
                .starts
                .is_empty(),
            "{column:?}"
        );
        assert_eq!(
            store.scan(&kept, 0, u64::MAX, 100).unwrap().starts,
            vec![kept_start]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_keeps_every_bite_it_announced() {
    use crate::served::Served;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("BEEP_AUTH__DEV_BYPASS", "true"),
        ("BEEP_BITES__FLUSH_INTERVAL_MS", "50"),
    ];
    let served = Served::start(dir.path(), &env);
    let base = format!("http://127.0.0.1:{}", served.port);
    let client = reqwest::Client::new();
    let (token, _) = crate::login::token_and_user(&base, &unique_phone(), "phone").await;
    let conversation = crate::login::new_conversation(&base, &token, "crash", &[]).await;
    let store = format!("{base}/store/bite/{conversation}");

    let mut stream = client
        .get(format!("{store}/subscribe"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut peer = Peer::connect(&base.replacen("http://", "ws://", 1), &token).await;
    crate::login::join_call(&base, &token, &conversation).await;

    // Short bites until a few are announced, then SIGKILL in the middle of the next one.
    let announced = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let reader = {
        let announced = std::sync::Arc::clone(&announced);
        tokio::spawn(async move {
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = stream.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let event: String = buffer.drain(..end + 2).collect();
                    if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                        let bite: Value = serde_json::from_str(data).unwrap();
                        announced
                            .lock()
                            .unwrap()
                            .push(bite["start"].as_u64().unwrap());
                    }
                }
            }
        })
    };
    while announced.lock().unwrap().len() < 3 {
        talk(&mut peer, 200).await;
        peer.speak(&vec![synthetic_opus(0, 60); 30], SILENCE).await;
    }
    talk(&mut peer, 200).await;
    served.kill();
    reader.abort();
    let announced = announced.lock().unwrap().clone();
    peer.close().await;

    let served = Served::start(dir.path(), &env);
    let store = format!("http://127.0.0.1:{}/store/bite/{conversation}", served.port);
    let scan: Value = client
        .get(format!("{store}/scan"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let starts: Vec<u64> = scan["starts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    for start in &announced {
        assert!(
            starts.contains(start),
            "bite {start} announced before the kill is gone: {starts:?}"
        );
        let file = client
            .get(format!("{store}/start/{start}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(file.status(), 200);
        assert_eq!(&file.bytes().await.unwrap()[..4], b"OggS");
    }
    let (status, _) = served.stop();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_ports_and_addresses_follow_the_configuration() {
    // Two free ports in a row for the range (bound and released again).
    let (low, high) = loop {
        let first = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            break (port, port + 1);
        }
    };
    let app = TestApp::spawn_with(
        Column::Embedded,
        |config| {
            config.bites.sfu.port_min = low;
            config.bites.sfu.port_max = high;
            // Two media threads: each binds one port of the range, shared by its connections.
            config.bites.sfu.threads = 2;
            config.bites.sfu.ice_servers = vec![beep::config::IceServer {
                urls: vec!["turn:turn.example.org:3478".into()],
                username: "beep".into(),
                credential: "secret".into(),
            }];
        },
        Vec::new(),
    )
    .await;
    let alice = member(&app, "phone").await;
    let bob = member(&app, "tablet").await;
    let carol = member(&app, "laptop").await;
    let ws = ws_base(&app);
    let a = Peer::connect(&ws, &alice.tokens.access).await;
    let b = Peer::connect(&ws, &bob.tokens.access).await;
    // More connections than ports: they share them.
    let c = Peer::connect(&ws, &carol.tokens.access).await;
    let mut ports = Vec::new();
    for peer in [&a, &b, &c] {
        let sdp = peer.pc.remote_description().await.unwrap().sdp;
        // One host address (the SDP may list it for RTP and RTCP, multiplexed on it).
        let mut addresses: Vec<(String, u16)> = sdp
            .lines()
            .filter(|line| line.starts_with("a=candidate:"))
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(fields[7], "host", "{line}");
                (fields[4].to_owned(), fields[5].parse().unwrap())
            })
            .collect();
        addresses.dedup();
        assert_eq!(addresses.len(), 1, "one host address: {sdp}");
        assert_eq!(addresses[0].0, "127.0.0.1");
        assert!(sdp.contains("a=ice-lite"), "the server is ICE-lite");
        ports.push(addresses[0].1);
    }
    assert_eq!(
        ports[0], ports[2],
        "connections on one thread share its port"
    );
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports,
        vec![low, high],
        "one port per media thread, from the range"
    );
    // Media flows on the shared ports.
    let conversation = conversation_of(&app, &alice.tokens, &[&bob.tokens, &carol.tokens]).await;
    for who in [&alice, &bob, &carol] {
        assert_eq!(join(&app, &who.tokens, &conversation).await.status(), 200);
    }
    let mut a = a;
    for _ in 0..3 {
        talk(&mut a, 200).await;
        if b.heard_from(&alice.tokens.user_id) > 0 && c.heard_from(&alice.tokens.user_id) > 0 {
            break;
        }
    }
    eventually(
        Duration::from_secs(5),
        "Bob and Carol to hear Alice",
        || b.heard_from(&alice.tokens.user_id) > 0 && c.heard_from(&alice.tokens.user_id) > 0,
    )
    .await;
    // Clients are handed the ICE servers.
    let config: Value = send(&app, "GET", "/webrtc/config", &alice.tokens)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        config,
        json!({"iceServers": [{"urls": ["turn:turn.example.org:3478"], "username": "beep", "credential": "secret"}]})
    );
    a.close().await;
    b.close().await;
    c.close().await;
    app.stop().await;
}

/// A bare signalling socket, for clients that misbehave.
async fn raw_socket(
    app: &TestApp,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}/webrtc/connect?token={token}", ws_base(app));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// Sends `frames` (stopping when the server has closed), then reads until the server closes:
/// the `error::` codes it sent and its close code. Fails if it does not close within 10 s.
async fn flood_until_closed(
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    frames: impl Iterator<Item = String> + Send + 'static,
) -> (Vec<String>, Option<u16>) {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let (mut sink, mut stream) = socket.split();
    let sender = tokio::spawn(async move {
        for frame in frames {
            if sink.send(Message::text(frame)).await.is_err() {
                break;
            }
        }
    });
    let mut codes = Vec::new();
    let mut closed = None;
    let read = async {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(text) => {
                    if let Some(error) = text.strip_prefix("error::") {
                        let error: Value = serde_json::from_str(error).unwrap();
                        codes.push(error["code"].as_str().unwrap().to_owned());
                    }
                }
                Message::Close(frame) => {
                    closed = Some(frame.map_or(1005, |f| u16::from(f.code)));
                    break;
                }
                _ => {}
            }
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(10), read).await;
    sender.abort();
    assert!(
        finished.is_ok(),
        "the server kept the socket open; errors so far: {codes:?}"
    );
    (codes, closed)
}

/// Sends candidates ten at a time, each batch followed by an offer that cannot be parsed, whose
/// refusal says the batch was taken; stops at the first other refusal, which it returns with the
/// number of candidates sent, once the server has closed the socket.
async fn candidates_until_refused(
    mut socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    candidate: impl Fn(usize) -> String,
) -> (String, usize) {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let mut sent = 0;
    let refusal = 'batches: loop {
        for _ in 0..10 {
            sent += 1;
            socket
                .send(Message::text(format!("ice::{}", candidate(sent))))
                .await
                .unwrap();
        }
        socket.send(Message::text("offer::x")).await.unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("a reply")
                .unwrap()
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let error: Value = serde_json::from_str(text.strip_prefix("error::").unwrap()).unwrap();
            match error["code"].as_str().unwrap() {
                "invalid_offer" => break,
                other => break 'batches other.to_owned(),
            }
        }
        assert!(sent < 1000, "no limit on candidates");
    };
    let mut closed = None;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(10), socket.next()).await
    {
        if let Message::Close(frame) = message {
            closed = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(closed, Some(1008));
    (refusal, sent)
}

/// The resident memory of this process (the app runs in it), in kB.
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalling_floods_are_bounded_and_closed() {
    let app = TestApp::spawn(Column::Embedded).await;
    let alice = member(&app, "phone").await;
    let before = rss_kb();

    // The audit's flood: 3,000 candidates of ~65 KB before any offer. The first is refused and
    // the socket closed; nothing is kept.
    let socket = raw_socket(&app, &alice.tokens.access).await;
    let big = format!("ice::candidate:{}", "x".repeat(65_000));
    let (codes, closed) = flood_until_closed(socket, std::iter::repeat_n(big, 3000)).await;
    assert_eq!(codes, vec!["candidate_too_large"]);
    assert_eq!(closed, Some(1008), "closed as a policy violation");

    // Candidates of honest size, but without end: refused past the limit, then closed.
    let socket = raw_socket(&app, &alice.tokens.access).await;
    let frames = (0..3000).map(|i| {
        format!(
            "ice::candidate:{i} 1 udp 2130706431 10.{}.{}.{} 5000 typ host",
            i / 65536 % 256,
            i / 256 % 256,
            i % 256
        )
    });
    let (codes, closed) = flood_until_closed(socket, frames).await;
    // Past the candidate limit, or faster than the server reads them: either bound.
    assert!(
        codes == ["too_many_candidates"] || codes == ["too_many_messages"],
        "{codes:?}"
    );
    assert_eq!(closed, Some(1008));
    // Paced, so the queue never fills: the count limit (100), then the byte limit before the
    // offer (32 KB, here 1,000-byte candidates).
    let socket = raw_socket(&app, &alice.tokens.access).await;
    let (refusal, sent) = candidates_until_refused(socket, |i| {
        format!(
            "candidate:{i} 1 udp 2130706431 10.0.{}.{} 5000 typ host",
            i / 256,
            i % 256
        )
    })
    .await;
    assert_eq!((refusal.as_str(), sent), ("too_many_candidates", 110));
    let socket = raw_socket(&app, &alice.tokens.access).await;
    let (refusal, sent) = candidates_until_refused(socket, |i| {
        format!(
            "candidate:{i} 1 udp 2130706431 10.0.0.1 5000 typ host generation 0 ufrag {}",
            "u".repeat(940)
        )
    })
    .await;
    assert_eq!((refusal.as_str(), sent), ("too_many_candidates", 40));
    let grown_mb = rss_kb().saturating_sub(before) / 1024;
    eprintln!("RSS growth over the candidate floods: {grown_mb} MB");

    // An offer of more m-lines than any client needs is refused; the socket stays.
    let mut socket = raw_socket(&app, &alice.tokens.access).await;
    let mut sdp = String::from(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n",
    );
    for mid in 0..300 {
        sdp.push_str(&format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n"
        ));
    }
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    socket
        .send(Message::text(format!("offer::{sdp}")))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("a reply to the offer")
        .unwrap()
        .unwrap();
    let text = reply.into_text().unwrap();
    assert!(text.contains("too_many_media"), "{text}");

    // A frame over bites.sfu.max_message_bytes (an SDP included) closes the socket.
    socket
        .send(Message::text(format!("offer::{}", "v".repeat(70 * 1024))))
        .await
        .unwrap();
    let mut closed = None;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(10), socket.next()).await
    {
        if let Message::Close(frame) = message {
            closed = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(closed, Some(1009), "closed as too big");
    app.stop().await;
}

/// The first offer of `sdp` without its ICE credentials: it parses, but cannot be applied.
fn without_ice_credentials(sdp: &str) -> Vec<String> {
    let stripped: String = sdp
        .split_inclusive('\n')
        .filter(|line| !line.starts_with("a=ice-ufrag:") && !line.starts_with("a=ice-pwd:"))
        .collect();
    vec![format!("offer::{stripped}")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_offer_does_not_wedge_the_connection() {
    let app = TestApp::spawn(target()).await;
    let ws = ws_base(&app);
    let alice = member(&app, "alice-phone").await;
    let bob = member(&app, "bob-phone").await;
    let conversation = conversation_of(&app, &alice.tokens, &[&bob.tokens]).await;

    // Alice's first offer is refused; her next one, on the same socket, is answered.
    let mut a = Peer::connect_after(&ws, &alice.tokens.access, without_ice_credentials).await;
    let errors = a.errors.lock().unwrap().clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("invalid_offer"), "{errors:?}");
    let mut b = Peer::connect(&ws, &bob.tokens.access).await;
    assert_eq!(join(&app, &alice.tokens, &conversation).await.status(), 200);
    assert_eq!(join(&app, &bob.tokens, &conversation).await.status(), 200);

    // Both hear each other once the joins' renegotiation has settled.
    talk_until_heard(&mut a, &alice.tokens.user_id, &mut b, &bob.tokens.user_id).await;
    assert!(a.heard_from(&bob.tokens.user_id) > 0, "Alice hears Bob");
    let (heard_by_a, heard_by_b) = (
        a.heard_from(&bob.tokens.user_id),
        b.heard_from(&alice.tokens.user_id),
    );

    // Later, a bad renegotiation: refused, and the next offer is answered.
    let answers = a.answers.load(std::sync::atomic::Ordering::SeqCst);
    let sdp = a.pc.local_description().await.unwrap().sdp;
    a.signal(&without_ice_credentials(&sdp)[0]);
    eventually(Duration::from_secs(10), "the bad offer refused", || {
        a.errors.lock().unwrap().len() == 2
    })
    .await;
    a.offer().await;
    eventually(Duration::from_secs(5), "the good offer answered", || {
        a.answers.load(std::sync::atomic::Ordering::SeqCst) > answers
    })
    .await;

    // And audio still flows both ways.
    for _ in 0..10 {
        talk(&mut a, 100).await;
        talk(&mut b, 100).await;
        if a.heard_from(&bob.tokens.user_id) > heard_by_a
            && b.heard_from(&alice.tokens.user_id) > heard_by_b
        {
            break;
        }
    }
    assert!(
        a.heard_from(&bob.tokens.user_id) > heard_by_a,
        "Alice hears Bob"
    );
    assert!(
        b.heard_from(&alice.tokens.user_id) > heard_by_b,
        "Bob hears Alice"
    );
    a.close().await;
    b.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_crossing_are_resolved() {
    let app = TestApp::spawn(target()).await;
    let ws = ws_base(&app);
    let alice = member(&app, "alice-phone").await;
    let bob = member(&app, "bob-phone").await;
    let conversation = conversation_of(&app, &alice.tokens, &[&bob.tokens]).await;
    let mut a = Peer::connect(&ws, &alice.tokens.access).await;
    let mut b = Peer::connect(&ws, &bob.tokens.access).await;
    assert_eq!(join(&app, &alice.tokens, &conversation).await.status(), 200);

    // Bob joins: the server offers Alice his track, and she offers at the same moment.
    a.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(join(&app, &bob.tokens, &conversation).await.status(), 200);
    eventually(Duration::from_secs(5), "the server's offer", || {
        !a.held.lock().unwrap().is_empty()
    })
    .await;
    a.hold.store(false, std::sync::atomic::Ordering::SeqCst);
    let answers = a.answers.load(std::sync::atomic::Ordering::SeqCst);
    a.offer().await;

    // The server answers hers, then offers again: she hears Bob.
    eventually(Duration::from_secs(5), "Alice's offer answered", || {
        a.answers.load(std::sync::atomic::Ordering::SeqCst) > answers
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "the server's offer made again",
        || a.offers.load(std::sync::atomic::Ordering::SeqCst) > 0,
    )
    .await;
    talk_until_heard(&mut b, &bob.tokens.user_id, &mut a, &alice.tokens.user_id).await;
    assert!(a.heard_from(&bob.tokens.user_id) > 0, "Alice hears Bob");
    assert!(b.heard_from(&alice.tokens.user_id) > 0, "Bob hears Alice");
    assert!(a.errors.lock().unwrap().is_empty());
    a.close().await;
    b.close().await;
    app.stop().await;
}
