//! Foundation figures, in release mode (`cargo bench --bench platform`):
//! - cold start of `beep serve` on the embedded defaults until `/readyz` answers 200;
//! - idle resident memory after start;
//! - `GET /healthz` throughput through the whole platform middleware against a bare actix-web
//!   hello-world compiled into this bench, same client, same connections, same run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use beep::app::{self, Hosting};
use beep::config::Config;

// The tests' `beep serve` helper; the bench uses only part of it.
#[allow(dead_code)]
#[path = "../tests/common/served.rs"]
mod served;
use served::Served;

// The shared load client; this bench uses part of it.
#[allow(dead_code)]
#[path = "common/load.rs"]
mod load;
use load::{CONNECTIONS, PIPELINE, ROUND, ROUNDS, load, median, wanted};

const STARTS: usize = 10;
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n";

fn main() {
    let runtime = load::client_runtime();
    println!(
        "# beep foundation bench ({} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    if wanted("start") {
        cold_start_and_memory();
    }
    if wanted("throughput") {
        runtime.block_on(throughput());
    }
}

fn cold_start_and_memory() {
    let mut first_starts = Vec::new();
    let mut restarts = Vec::new();
    let mut rss_mb = Vec::new();
    for _ in 0..STARTS {
        let dir = tempfile::tempdir().unwrap();
        for fresh in [true, false] {
            let started = Instant::now();
            let served = Served::start(dir.path(), &[]);
            let elapsed = started.elapsed().as_secs_f64() * 1e3;
            if fresh {
                first_starts.push(elapsed);
            } else {
                std::thread::sleep(Duration::from_secs(1));
                rss_mb.push(resident_mb(served.pid()));
                restarts.push(elapsed);
            }
            let (status, _) = served.stop();
            assert!(status.success());
        }
    }
    let max = |samples: &[f64]| samples.iter().copied().fold(0.0, f64::max);
    println!(
        "cold start to /readyz 200, fresh data dir (creates SQLite, runs migrations): median {:.1} ms, max {:.1} ms over {STARTS}",
        median(first_starts.clone()),
        max(&first_starts)
    );
    println!(
        "cold start to /readyz 200, existing data dir: median {:.1} ms, max {:.1} ms over {STARTS}",
        median(restarts.clone()),
        max(&restarts)
    );
    println!(
        "idle resident memory 1 s after start: median {:.1} MB, max {:.1} MB",
        median(rss_mb.clone()),
        max(&rss_mb)
    );
}

fn resident_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb / 1024.0
}

#[allow(
    clippy::disallowed_methods,
    reason = "the reference servers are not beep's API"
)]
async fn throughput() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.data_dir = data_dir.path().to_owned();
    config.server.workers = 1;
    // As `beep serve` runs by default: logs at info, metrics on.
    beep::platform::telemetry::init_logging(&config.telemetry, false).unwrap();
    let beep_app = app::start(config, beep::services::COMPILED, Hosting::default())
        .await
        .unwrap();
    let beep_addr = beep_app.addr();
    let beep_handle = beep_app.handle();
    let beep_task = tokio::spawn(beep_app.run());

    let bare = HttpServer::new(|| {
        App::new().route(
            "/healthz",
            web::get().to(|| async {
                HttpResponse::Ok()
                    .content_type("application/json")
                    .body(r#"{"status":"ok"}"#)
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let bare_addr = bare.addrs()[0];
    let bare = bare.run();
    let bare_handle = bare.handle();
    let bare_task = tokio::spawn(bare);

    load(beep_addr, HEALTHZ).await; // warm-up, both
    load(bare_addr, HEALTHZ).await;
    let (mut beep_rates, mut bare_rates) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bare_rates.push(load(bare_addr, HEALTHZ).await);
        beep_rates.push(load(beep_addr, HEALTHZ).await);
    }
    let (beep_rps, bare_rps) = (median(beep_rates), median(bare_rates));
    println!(
        "GET /healthz, 1 server worker, {CONNECTIONS} keep-alive connections x {PIPELINE} pipelined requests, median of {ROUNDS} x {ROUND:?}:"
    );
    println!("  bare actix-web hello world: {bare_rps:.0} req/s");
    println!(
        "  beep (request id, span, metrics, security headers, CORS, JSON errors): {beep_rps:.0} req/s"
    );
    println!("  ratio beep / bare: {:.3}", beep_rps / bare_rps);
    println!(
        "  platform cost per request: {:.2} us (1/beep - 1/bare, one saturated worker)",
        (1.0 / beep_rps - 1.0 / bare_rps) * 1e6
    );
    beep_handle.stop(true).await;
    bare_handle.stop(true).await;
    let _ = beep_task.await;
    let _ = bare_task.await;
}
