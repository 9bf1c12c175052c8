//! auth figures, in release mode (`cargo bench --bench auth [-- throughput|verify|login]`):
//! - throughput of an authenticated `GET` (token verified, revocation checked) against the same
//!   route without the `Caller` extractor, same app, same client, same run;
//! - the cost of one verification, first sight of a token (signature) and every later request
//!   (remembered signature plus the revocation check);
//! - `POST /login/verify` latency at a fixed 200 requests/s on the embedded setup (the code is
//!   created through the development bypass, so no sender runs), against `GET /healthz` at the
//!   same rate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use beep::app::{self, Hosting, RunningApp};
use beep::platform::http::Caller;
use beep::platform::service::{Routes, Service};
use serde_json::{Value, json};

// The shared load client; this bench uses part of it.
#[allow(dead_code)]
#[path = "common/load.rs"]
mod load;
use load::{CONNECTIONS, PIPELINE, compare, wanted};

// Logging in through the development bypass.
#[allow(dead_code)]
#[path = "../tests/common/login.rs"]
mod login;
use login::{access_token, nonce, phone, verify};

/// Two routes that differ only in the extractor: the same body length, the same work.
struct BenchRoutes;

const ANONYMOUS: &str = "u-00000000000000000000000000000000";

impl Service for BenchRoutes {
    fn name(&self) -> &'static str {
        "bench"
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "test-only routes stay out of the API document"
    )]
    fn routes(&self, cfg: &mut Routes<'_>) {
        // Test-only routes: mounted, not documented.
        cfg.map(|cfg| {
            cfg.route(
                "/bench/open",
                web::get()
                    .to(|| async { HttpResponse::Ok().json(json!({ "user_id": ANONYMOUS })) }),
            )
            .route(
                "/bench/me",
                web::get().to(|caller: Caller| async move {
                    HttpResponse::Ok().json(json!({ "user_id": caller.user_id }))
                }),
            )
        });
    }
}

fn main() {
    let runtime = load::client_runtime();
    println!(
        "# beep auth bench ({} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    runtime.block_on(async {
        if wanted("throughput") {
            throughput().await;
        }
        if wanted("verify") {
            verify_cost().await;
        }
        if wanted("login") {
            login_latency().await;
        }
    });
}

async fn start(workers: usize) -> (RunningApp, tempfile::TempDir) {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = load::app_config(data_dir.path());
    config.server.workers = workers;
    // Codes through the bypass (no sender in the figure), and no limits in the way.
    login::allow_bypass(&mut config);
    let running = app::start(
        config,
        beep::services::COMPILED,
        Hosting {
            extra_services: vec![Arc::new(BenchRoutes)],
            ..Hosting::default()
        },
    )
    .await
    .unwrap();
    (running, data_dir)
}

async fn throughput() {
    let (running, _dir) = start(1).await;
    let addr = running.addr();
    let handle = running.handle();
    let task = tokio::spawn(running.run());
    let token = access_token(&format!("http://{addr}"), 1).await;
    // Both requests carry the token, so they cost the same to send and parse.
    let open =
        format!("GET /bench/open HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\r\n");
    let me = format!("GET /bench/me HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\r\n");
    const ROUNDS: usize = 21;
    const ROUND: Duration = Duration::from_secs(1);
    let comparison = compare(addr, open.as_bytes(), me.as_bytes(), ROUNDS, ROUND).await;
    println!(
        "GET with and without token verification, 1 server worker, {CONNECTIONS} connections x {PIPELINE} pipelined, {ROUNDS} rounds of {ROUND:?} each:"
    );
    comparison.print(
        "open (same route without auth)",
        "authenticated (Caller: verify, revocation check)",
    );
    println!(
        "  verification cost per request: {:.2} us of server CPU (median authenticated - median open)",
        comparison.added_cpu_us()
    );
    handle.stop(true).await;
    let _ = task.await;
}

/// The verifier alone, in-process: a token seen for the first time, then seen again.
async fn verify_cost() {
    const TOKENS: usize = 2_000;
    let (running, dir) = start(1).await;
    let identity = running.platform().identity.clone();
    let addr = running.addr();
    let handle = running.handle();
    let task = tokio::spawn(running.run());
    let token = access_token(&format!("http://{addr}"), 1).await;
    // Distinct tokens signed like the server's (same key, same claims, other iat).
    let key_path = std::fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pem"))
        .unwrap();
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(&key_path).unwrap()).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let claims: Value = {
        use base64::Engine as _;
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| {
            let mut claims = claims.clone();
            claims["iat"] = json!(claims["iat"].as_u64().unwrap() - i as u64);
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        })
        .collect();
    let started = Instant::now();
    for token in &tokens {
        identity.verify_signature(token).unwrap();
    }
    let first = started.elapsed().as_secs_f64() * 1e6 / TOKENS as f64;
    let rounds = 50;
    let started = Instant::now();
    for _ in 0..rounds {
        for token in &tokens {
            identity.verify(token).await.unwrap();
        }
    }
    let again = started.elapsed().as_secs_f64() * 1e6 / (TOKENS * rounds) as f64;
    println!("verification in-process (Ed25519, embedded cache), {TOKENS} distinct tokens:");
    println!("  first sight (signature check): {first:.2} us per token");
    println!(
        "  later requests (remembered signature + revocation lookup): {again:.3} us per token"
    );
    println!("  ratio first / later: {:.0}", first / again);
    handle.stop(true).await;
    let _ = task.await;
}

/// Open-loop load: each request is sent at its scheduled time whatever the earlier ones do, and
/// its latency counts from that time, so a stall shows in the tail instead of slowing the load.
async fn paced<F, Fut>(rate: u32, seconds: u32, mut send: F) -> Vec<f64>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = u16> + Send + 'static,
{
    let total = (rate * seconds) as usize;
    let interval = Duration::from_secs(1) / rate;
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let at = start + interval * i as u32;
        tokio::time::sleep_until(at.into()).await;
        let request = send(i);
        tasks.push(tokio::spawn(async move {
            let status = request.await;
            assert_eq!(status, 200);
            at.elapsed().as_secs_f64() * 1e3
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.push(task.await.unwrap());
    }
    latencies.sort_by(f64::total_cmp);
    latencies
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

async fn login_latency() {
    const RATE: u32 = 200;
    const SECONDS: u32 = 10;
    let (running, _dir) = start(0).await;
    let base = format!("http://{}", running.addr());
    let handle = running.handle();
    let task = tokio::spawn(running.run());
    let client = reqwest::Client::new();
    // One fresh code per verify, half of them for numbers that already have a user.
    let total = RATE * SECONDS;
    let mut nonces = Vec::with_capacity(total as usize);
    for i in 0..total {
        let number = if i % 2 == 0 { i } else { i / 2 };
        nonces.push(nonce(&client, &base, &phone(1_000 + number)).await);
    }
    let nonces = Arc::new(nonces);

    let healthz = {
        let client = client.clone();
        let url = format!("{base}/healthz");
        paced(RATE, SECONDS, move |_| {
            let request = client.get(&url).send();
            async move { request.await.unwrap().status().as_u16() }
        })
        .await
    };
    let logins = {
        let client = client.clone();
        let base = base.clone();
        paced(RATE, SECONDS, move |i| {
            let client = client.clone();
            let base = base.clone();
            let nonces = Arc::clone(&nonces);
            async move { verify(&client, &base, &nonces[i]).await.status().as_u16() }
        })
        .await
    };
    println!(
        "latency at {RATE} req/s for {SECONDS} s, open loop, embedded backends (SQLite, in-process cache), server workers = cores:"
    );
    for (name, sorted) in [
        ("GET /healthz (reference)", &healthz),
        ("POST /login/verify", &logins),
    ] {
        println!(
            "  {name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(sorted, 0.50),
            percentile(sorted, 0.99),
            percentile(sorted, 1.0)
        );
    }
    println!(
        "  ratio p99 verify / p99 healthz: {:.1}",
        percentile(&logins, 0.99) / percentile(&healthz, 0.99)
    );
    handle.stop(true).await;
    let _ = task.await;
}
