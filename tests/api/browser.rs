//! A real browser in a call through the SFU: two Chromium pages (`tests/browser/call.html`,
//! driven by `tests/browser/call.mjs`) sign in as two members of a conversation, join its
//! room, and each decodes the other's microphone (Chrome's fake one, which beeps) from a track
//! whose id is the speaker's `<user>:<client>`, as the SFU names it. This proves that Chrome's
//! own offers and answers, ICE and DTLS-SRTP work with the server's signalling and media, not
//! only the `webrtc` crate's peers the other tests use.
//!
//! Runs when `BEEP_TEST_CHROMIUM` names a Chromium binary and `npm ci --prefix tests/browser`
//! has installed the driver's `playwright-core`; otherwise it says it is skipped and passes.

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::auth::{Tokens, login_as};
use crate::helpers::{Column, TestApp, conversation_of, env, unique_phone};

/// The call driver gives up after 30 s; this bounds a driver that hangs anyway.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(60);

/// The driver's folder, when Chromium and the driver's dependencies are both there.
/// With `BEEP_TEST_CHROMIUM` set, a missing driver is a failure, not a skip: CI sets it.
pub fn browser_setup() -> Option<(String, PathBuf)> {
    let chromium = env("BEEP_TEST_CHROMIUM")?;
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        folder.join("node_modules/playwright-core").is_dir(),
        "BEEP_TEST_CHROMIUM is set but the driver is not installed: npm ci --prefix tests/browser"
    );
    Some((chromium, folder))
}

/// Runs `node <folder>/<script> args…` for at most `timeout`, on a blocking thread while the
/// app keeps serving, and returns the JSON report it prints as its last line; fails the test
/// (saying it could not `what`) when the driver fails. Each line the driver prints is offered to
/// `answer`, and what that returns is written back as a line on the driver's stdin: how a
/// driver asks the test for what only the test knows, such as a sign-in code.
pub async fn run_driver(
    (chromium, folder): (String, PathBuf),
    script: &'static str,
    args: Vec<String>,
    timeout: Duration,
    answer: impl Fn(&str) -> Option<String> + Send + 'static,
    what: &str,
) -> Value {
    let started = Instant::now();
    let (success, stdout, stderr) = tokio::task::spawn_blocking(move || {
        drive(&chromium, &folder.join(script), &args, timeout, answer)
    })
    .await
    .unwrap();
    println!("{script} ran for {:?}: {stdout}", started.elapsed());
    if !stderr.is_empty() {
        eprintln!("driver stderr:\n{stderr}");
    }
    assert!(success, "could not {what}:\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|err| panic!("driver output is not JSON ({err}): {stdout}"))
}

/// The driver's run: whether it succeeded, its stdout and its stderr.
fn drive(
    chromium: &str,
    script: &Path,
    args: &[String],
    timeout: Duration,
    answer: impl Fn(&str) -> Option<String> + Send + 'static,
) -> (bool, String, String) {
    let mut child = Command::new("node")
        .arg(script)
        .args(args)
        .env("BEEP_TEST_CHROMIUM", chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (is Node.js installed?)");
    // Both pipes are drained while the driver runs, so neither can fill up and stall it.
    let mut replies = child.stdin.take();
    let stdout = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            text.push_str(&line);
            text.push('\n');
            let Some(stdin) = replies.as_mut() else {
                continue;
            };
            // An answer that panics (no code sent, say) is reported and closes the driver's
            // stdin, so the driver fails rather than waits.
            match std::panic::catch_unwind(AssertUnwindSafe(|| answer(&line))) {
                Ok(Some(reply)) => {
                    let _ = writeln!(stdin, "{reply}");
                }
                Ok(None) => {}
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("?");
                    text.push_str(&format!("(the test could not answer that: {why})\n"));
                    replies = None;
                }
            }
        }
        text
    });
    let stderr = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap_or_default();
    let mut stderr = stderr.join().unwrap_or_default();
    if status.is_none() {
        stderr.push_str("\n(killed: the driver ran past its deadline)");
    }
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

/// Reads a pipe to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Chrome's fake microphone beeps; silence adds about 1e-10 of total audio energy.
const AUDIBLE: f64 = 1e-3;

/// What `page` received on the track the SFU named after `speaker`'s client `client`.
fn stream_from<'a>(page: &'a Value, speaker: &Tokens, client: &str) -> Option<&'a Value> {
    let track = format!("{}:{client}", speaker.user_id);
    page["inbound"]
        .as_array()?
        .iter()
        .find(|stream| stream["msid"] == track.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_hears_another_through_the_sfu() {
    let Some(browser) = browser_setup() else {
        println!(
            "skipped: set BEEP_TEST_CHROMIUM (and run `npm ci --prefix tests/browser`) to run it"
        );
        return;
    };
    let app = TestApp::spawn(Column::Embedded).await;
    let a = login_as(&app, &unique_phone(), "browser-a").await;
    let b = login_as(&app, &unique_phone(), "browser-b").await;
    let conversation = conversation_of(&app, &a, &[&b]).await;

    let args = vec![
        app.url(""),
        a.access.clone(),
        b.access.clone(),
        conversation,
    ];
    let report = run_driver(
        browser,
        "call.mjs",
        args,
        DRIVER_TIMEOUT,
        |_| None,
        "have the browsers hear each other",
    )
    .await;
    for (page, speaker, client) in [("a", &b, "browser-b"), ("b", &a, "browser-a")] {
        let heard = &report[page];
        assert_eq!(
            heard["errors"],
            json!([]),
            "page {page}'s signalling errors"
        );
        // Each speaker arrives on an m-line of its own, so the browser's track id is the
        // `<user>:<client>` the server signalled (on a reused m-line Chrome keeps its own id).
        let stream = stream_from(heard, speaker, client)
            .unwrap_or_else(|| panic!("page {page} has no stream from {client}: {heard}"));
        assert_eq!(stream["track"], stream["msid"], "{stream}");
        assert_eq!(stream["streams"], json!([speaker.user_id]), "{stream}");
        assert!(stream["packets"].as_u64().unwrap() > 0, "{stream}");
        assert!(stream["energy"].as_f64().unwrap() > AUDIBLE, "{stream}");
        // One the server offers. Chromium, by default, offers only AES-CM among them (its
        // AES-GCM profiles are off unless enabled), so this is where the server's AES-GCM
        // preference does not apply.
        let profile = heard["srtpCipher"].as_str().unwrap_or_default();
        assert!(
            ["AEAD_AES_128_GCM", "SRTP_AES128_CM_HMAC_SHA1_80"].contains(&profile),
            "page {page}'s SRTP profile: {profile}"
        );
        println!("page {page} protects media with {profile}");
    }
    app.stop().await;
}
