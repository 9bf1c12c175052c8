//! The web client: served at `/` from files inside the binary, with their types, validators
//! and a policy that allows only the page's own files.

use crate::helpers::{TestApp, error_code, target};

/// The accessible names the issue gives every control (and the browser test uses).
const CONTROLS: [&str; 12] = [
    "Phone number",
    "Email",
    "Send code",
    "Code",
    "Sign in",
    "Sign out",
    "New conversation",
    "Title",
    "Create",
    "Add member",
    "Talk",
    "Search",
];

/// `GET path` with these request headers.
async fn get_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_web_client_is_served_with_its_types_validators_and_policy() {
    // Files inside the binary: one column is enough (or the deployment, behind its proxy).
    let app = TestApp::spawn(target()).await;
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains("default-src 'none'")
            && policy.contains("script-src 'self'")
            && !policy.contains("unsafe"),
        "{policy}"
    );
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let html = page.text().await.unwrap();
    for name in CONTROLS {
        assert!(
            html.contains(&format!(">{name}")),
            "no control named {name}"
        );
    }
    // What the policy would block: inline script and style.
    assert!(!html.contains("<script>") && !html.contains(" style="));

    let again = get_with(&app, "/", &[("If-None-Match", &etag)]).await;
    assert_eq!(again.status(), 304, "an unchanged page is not sent again");
    assert_eq!(again.headers()["etag"], etag.as_str());

    for (path, kind) in [
        ("/web/app.js", "text/javascript; charset=utf-8"),
        ("/web/app.css", "text/css; charset=utf-8"),
    ] {
        let file = app.get(path).await;
        assert_eq!(file.status(), 200, "{path}");
        assert_eq!(file.headers()["content-type"], kind, "{path}");
        assert_ne!(file.headers()["etag"], etag.as_str(), "{path}");
        assert!(!file.bytes().await.unwrap().is_empty(), "{path}");
    }
    // Gzipped for a client that takes it: a representation of its own, with its own ETag.
    let plain = app.get("/web/app.js").await;
    let plain_etag = plain.headers()["etag"].to_str().unwrap().to_owned();
    let script = plain.bytes().await.unwrap();
    let gzipped = get_with(
        &app,
        "/web/app.js",
        &[("Accept-Encoding", "gzip, deflate, br")],
    )
    .await;
    assert_eq!(gzipped.status(), 200);
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    assert_eq!(gzipped.headers()["vary"], "Accept-Encoding");
    let gzip_etag = gzipped.headers()["etag"].to_str().unwrap().to_owned();
    let compressed = gzipped.bytes().await.unwrap();
    assert!(
        compressed.len() * 2 < script.len(),
        "{} of {}",
        compressed.len(),
        script.len()
    );
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&compressed[..]),
        &mut unzipped,
    )
    .unwrap();
    assert_eq!(unzipped, script, "the same file");
    // Each form has its validator: the other form's does not match, so that client gets the file.
    for (validator, status) in [(&gzip_etag, 304), (&plain_etag, 200)] {
        let again = get_with(
            &app,
            "/web/app.js",
            &[("Accept-Encoding", "gzip"), ("If-None-Match", validator)],
        )
        .await;
        assert_eq!(again.status(), status);
        assert_eq!(again.headers()["vary"], "Accept-Encoding");
    }
    let refused = get_with(
        &app,
        "/web/app.js",
        &[("Accept-Encoding", "gzip;q=0, identity")],
    )
    .await;
    assert!(refused.headers().get("content-encoding").is_none());

    assert_eq!(
        error_code(app.get("/web/nope.js").await, 404).await,
        "not_found"
    );
    assert_eq!(
        error_code(app.get("/web/..%2Fapp.js").await, 404).await,
        "not_found"
    );
    app.stop().await;
}

/// Two people through the whole client in a real browser (`tests/browser/walk-web.mjs`): sign-in
/// with codes from the server (one wrong first), a profile picture, a contact online, a
/// conversation, push-to-talk each way, the bite in the timeline and playing, where the
/// offline engine runs (`--features whisper` and `BEEP_TEST_WHISPER_MODEL`, as in CI) its
/// transcript found by search and played from the match, a reload, a device revoked, a removed
/// member's page following, and signing out; no console error or warning. Screenshots go to
/// `target/tmp/web-walk/`. Runs when `BEEP_TEST_CHROMIUM` is set, as the call test does.
#[cfg(all(feature = "bites", feature = "pictures"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_walk_through_beep_web() {
    use std::time::Duration;

    use crate::browser::{browser_setup, run_driver};
    use crate::helpers::{sent_code, unique_phone};

    const SAID: &str = "Please call me back when you land at the airport tonight.";
    const OTHER_DEVICE: &str = "walk-phone";
    let Some(browser) = browser_setup() else {
        println!("skipped: set BEEP_TEST_CHROMIUM (and run `npm ci --prefix tests/browser`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("said.wav");
    let spoken = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&wav)
        .arg(SAID)
        .status();
    assert!(
        spoken.is_ok_and(|status| status.success()),
        "espeak-ng makes the microphone's speech (apt-get install espeak-ng)"
    );
    let picture = dir.path().join("picture.png");
    std::fs::write(&picture, crate::pictures::png(96, 96, 7)).unwrap();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-walk");
    std::fs::create_dir_all(&shots).unwrap();

    // The engine, where this build has it and a model is named: then search is walked too.
    let model = std::env::var("BEEP_TEST_WHISPER_MODEL")
        .ok()
        .filter(|_| cfg!(feature = "whisper"));
    let searched = model.as_ref().map(|_| "airport");
    let app = TestApp::spawn_with(
        target(),
        |config| {
            // Ada's code for the web follows the one for her other device at once.
            config.auth.limits.resend.first_secs = 0;
            if let Some(model) = &model {
                config.transcription.engine = beep::config::TranscriptionEngine::Whisper;
                config.transcription.whisper.model_path = Some(model.into());
            }
        },
        Vec::new(),
    )
    .await;
    // Ada has signed in elsewhere before: a device for her to revoke on the sessions page.
    let ada = unique_phone();
    crate::auth::login_as(&app, &ada, OTHER_DEVICE).await;
    let mut args = vec![
        app.url(""),
        ada,
        unique_phone(),
        OTHER_DEVICE.to_owned(),
        wav.display().to_string(),
        picture.display().to_string(),
        shots.display().to_string(),
    ];
    args.extend(searched.map(str::to_owned));

    let report = run_driver(
        browser,
        "walk-web.mjs",
        args,
        Duration::from_secs(240),
        |line| {
            let asked: serde_json::Value = serde_json::from_str(line).ok()?;
            Some(sent_code(asked["codeFor"].as_str()?))
        },
        "walk through Beep web",
    )
    .await;
    assert_eq!(report["problems"], serde_json::json!([]), "console errors");
    assert_eq!(
        report["overflow"], false,
        "the 390 px page scrolls sideways"
    );
    assert!(report["interactiveMs"].as_u64().is_some(), "{report}");
    let mut walked = vec![
        "signed in",
        "picture",
        "contact online",
        "conversation",
        "talked",
        "bite played",
        "still signed in after a reload",
        "a device revoked",
        "removed, and the page followed",
        "signed out, still after a reload",
    ];
    walked.extend(searched.map(|_| "found by search"));
    for step in walked {
        assert!(
            report["steps"][step].is_u64(),
            "step {step:?} not reached: {report}"
        );
    }
    println!(
        "screenshots in {}; search {}",
        shots.display(),
        if searched.is_some() {
            "walked"
        } else {
            "skipped: no transcription engine"
        }
    );
    app.stop().await;
}
