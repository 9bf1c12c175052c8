//! The HTTP platform as every service gets it: JSON errors, extractor failures, body limits,
//! request ids, security headers, CORS and metrics.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use beep::platform::service::{Routes, Service};
use serde::Deserialize;

use crate::helpers::{Column, TestApp, columns, error_code};

/// A service with the kinds of input real services take, hosted behind the real middleware.
struct Echo;

#[derive(Deserialize, serde::Serialize)]
struct Message {
    text: String,
}

#[derive(Deserialize)]
struct Page {
    limit: u32,
}

impl Service for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "test-only routes stay out of the API document"
    )]
    fn routes(&self, cfg: &mut Routes<'_>) {
        // Test-only routes: mounted, not documented.
        cfg.map(|cfg| {
            cfg.service(
                web::scope("/echo")
                    .route(
                        "/json",
                        web::post().to(|m: web::Json<Message>| async move {
                            HttpResponse::Ok().json(m.into_inner())
                        }),
                    )
                    .route(
                        "/bytes",
                        web::post().to(|b: web::Bytes| async move { HttpResponse::Ok().body(b) }),
                    )
                    .route(
                        "/page",
                        web::get().to(|p: web::Query<Page>| async move {
                            HttpResponse::Ok().body(p.limit.to_string())
                        }),
                    )
                    .route(
                        "/item/{n}",
                        web::get().to(|n: web::Path<u32>| async move {
                            HttpResponse::Ok().body(n.to_string())
                        }),
                    ),
            )
        });
    }
}

async fn spawn_echo(column: Column) -> TestApp {
    TestApp::spawn_with(
        column,
        |config| {
            config.http.json_limit_bytes = 1024;
            config.http.body_limit_bytes = 2048;
        },
        vec![Arc::new(Echo)],
    )
    .await
}

#[tokio::test]
async fn routing_errors_are_json() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let response = app.get("/no/such/route").await;
        assert_eq!(error_code(response, 404).await, "not_found");
        let response = app.post("/healthz").send().await.unwrap();
        assert_eq!(error_code(response, 405).await, "method_not_allowed");
        app.stop().await;
    }
}

#[tokio::test]
async fn bad_input_gets_a_precise_4xx_and_good_input_passes() {
    for column in columns() {
        let app = spawn_echo(column).await;
        let ok = app
            .post("/echo/json")
            .json(&serde_json::json!({"text": "hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{column:?}");
        assert_eq!(ok.json::<serde_json::Value>().await.unwrap()["text"], "hi");

        let malformed = app
            .post("/echo/json")
            .header("content-type", "application/json")
            .body("{\"text\":")
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(malformed, 400).await, "invalid_json");
        let wrong_shape = app
            .post("/echo/json")
            .json(&serde_json::json!({"txt": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(wrong_shape, 400).await, "invalid_json");
        let not_json = app
            .post("/echo/json")
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(not_json, 415).await, "unsupported_media_type");

        let big_json = serde_json::json!({"text": "x".repeat(2000)});
        let too_big = app.post("/echo/json").json(&big_json).send().await.unwrap();
        assert_eq!(error_code(too_big, 413).await, "payload_too_large");
        let too_many_bytes = app
            .post("/echo/bytes")
            .body(vec![0u8; 4096])
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(too_many_bytes, 413).await, "payload_too_large");
        let fits = app
            .post("/echo/bytes")
            .body(vec![7u8; 2000])
            .send()
            .await
            .unwrap();
        assert_eq!(fits.bytes().await.unwrap().len(), 2000);

        assert_eq!(
            error_code(app.get("/echo/page?limit=many").await, 400).await,
            "invalid_query"
        );
        assert_eq!(
            app.get("/echo/page?limit=5").await.text().await.unwrap(),
            "5"
        );
        assert_eq!(
            error_code(app.get("/echo/item/-1").await, 400).await,
            "invalid_path"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn request_ids_are_kept_or_generated() {
    let app = TestApp::spawn(Column::Embedded).await;
    let kept = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "client-42")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "client-42");
    let forged = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "a b\tc")
        .send()
        .await
        .unwrap();
    let generated = forged.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 32);
    assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
    // Errors carry one too.
    let missing = app.get("/missing").await;
    assert_eq!(missing.headers()["x-request-id"].len(), 32);
    app.stop().await;
}

#[tokio::test]
async fn security_and_cors_headers_match_the_original_traefik() {
    let app = TestApp::spawn(Column::Embedded).await;
    let from_browser = |path: &str| {
        app.client
            .get(app.url(path))
            .header("origin", "https://app.example")
            .send()
    };
    for response in [
        from_browser("/healthz").await.unwrap(),
        from_browser("/missing").await.unwrap(),
    ] {
        let h = response.headers();
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        // "*" with credentials is refused by browsers, so the origin is echoed.
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(
            h["access-control-allow-methods"],
            "GET, HEAD, POST, PUT, PATCH, DELETE"
        );
        assert_eq!(
            h["access-control-allow-headers"],
            "Content-Type, Authorization, X-User-Claim"
        );
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["vary"], "Origin");
    }
    // No Origin, no CORS: a native client gets the security headers only.
    let native = app.get("/healthz").await;
    assert_eq!(native.headers()["x-frame-options"], "DENY");
    assert!(
        native
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // A preflight is answered before routing (and before any authentication).
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/core/user"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(preflight.headers()["access-control-max-age"], "600");
    assert_eq!(preflight.headers()["x-request-id"].len(), 32);
    app.stop().await;

    let strict = TestApp::spawn_with(
        Column::Embedded,
        |config| config.http.cors.allowed_origins = vec!["https://app.example".into()],
        Vec::new(),
    )
    .await;
    let allowed = strict
        .client
        .get(strict.url("/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let refused = strict
        .client
        .get(strict.url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    strict.stop().await;

    let off = TestApp::spawn_with(
        Column::Embedded,
        |config| config.http.cors.enabled = false,
        Vec::new(),
    )
    .await;
    let response = off
        .client
        .get(off.url("/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    off.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_per_route_and_status() {
    let app = TestApp::spawn(Column::Embedded).await;
    for _ in 0..3 {
        app.get("/healthz").await;
    }
    app.get("/missing/abc").await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(r#"http_requests_total{route="/healthz",method="GET",status="200"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"http_requests_total{route="unmatched",method="GET",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
    app.stop().await;

    let quiet = TestApp::spawn_with(
        Column::Embedded,
        |c| c.telemetry.metrics = false,
        Vec::new(),
    )
    .await;
    assert_eq!(quiet.get("/metrics").await.status(), 404);
    quiet.stop().await;
}

#[tokio::test]
async fn serves_https_when_a_certificate_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let app = TestApp::spawn_with(
        Column::Embedded,
        |config| {
            config.server.tls.cert_path = Some(cert_path.clone());
            config.server.tls.key_path = Some(key_path.clone());
        },
        Vec::new(),
    )
    .await;
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let response = client
        .get(format!("https://localhost:{}/healthz", app.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    // HTTP/2 by ALPN, with bodies read through the same limits as over HTTP/1.1.
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let refused = client
        .post(format!("https://localhost:{}/login/init", app.addr.port()))
        .header("content-type", "application/json")
        .body(r#"{"phone_number":"not a number"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.version(), reqwest::Version::HTTP_2);
    assert_eq!(error_code(refused, 400).await, "invalid_phone_number");
    app.stop().await;
}

/// A body that stops arriving is answered 408 once `http.body_timeout_secs` passes without a
/// byte, on the real routes (here `POST /login/init`), and the connection is not held.
#[tokio::test]
async fn a_stalled_body_is_answered_408() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let app = TestApp::spawn_with(
        Column::Embedded,
        |config| config.http.body_timeout_secs = 1,
        Vec::new(),
    )
    .await;
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    socket
        .write_all(
            b"POST /login/init HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"phone",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buffer = [0_u8; 4096];
        loop {
            let n = socket.read(&mut buffer).await.unwrap();
            answer.extend_from_slice(&buffer[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("body_timeout") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 10 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
    let waited = started.elapsed();
    assert!(waited < std::time::Duration::from_secs(3), "{waited:?}");
    app.stop().await;
}

/// The soft open-file limit is raised to the hard one at start (the tests run in the app's
/// process, so its limit is this one).
#[tokio::test]
async fn the_open_file_limit_is_raised_at_start() {
    let app = TestApp::spawn(Column::Embedded).await;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    assert_eq!(limit.current, limit.maximum);
    app.stop().await;
}
