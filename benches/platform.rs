//! Foundation figures, in release mode (`cargo bench --bench platform`):
//! - cold start of `beep serve` on the embedded defaults until `/readyz` answers 200;
//! - idle resident memory after start;
//! - `GET /healthz` throughput through the whole platform middleware against a bare actix-web
//!   hello-world compiled into this bench, same client, same connections, same run;
//! - in the same rounds, the stack a user would otherwise assemble for the same features:
//!   actix-web with `tracing-actix-web`'s `TracingLogger` (request id, span per request) and
//!   `actix-web-prom` (Prometheus count and latency per route, `/metrics`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use actix_web_prom::PrometheusMetricsBuilder;
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
use load::{CONNECTIONS, PIPELINE, ROUND, ROUNDS, load, median, server_cpu_ns, spread, wanted};

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
    // As `beep serve` runs by default: logs at info, metrics on. The subscriber is
    // process-wide, so the assembled stack's spans go through it too, at the same level.
    beep::platform::telemetry::init_logging(&config.telemetry, false).unwrap();
    let beep_app = app::start(config, beep::services::COMPILED, Hosting::default())
        .await
        .unwrap();
    let beep_addr = beep_app.addr();
    let beep_handle = beep_app.handle();
    let beep_task = tokio::spawn(beep_app.run());

    // TCP_NODELAY on both references as beep's server sets it, so only the middleware differs.
    let bare = HttpServer::new(|| App::new().route("/healthz", web::get().to(healthz)))
        .workers(1)
        .tcp_nodelay(true)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
    let bare_addr = bare.addrs()[0];
    let bare = bare.run();
    let bare_handle = bare.handle();
    let bare_task = tokio::spawn(bare);

    // Each crate as its README sets it up; TracingLogger outermost so the metrics and the
    // handler run inside the request's span, as in beep's wrapper.
    let prometheus = PrometheusMetricsBuilder::new("assembled")
        .endpoint("/metrics")
        .build()
        .unwrap();
    let assembled = HttpServer::new(move || {
        App::new()
            .wrap(prometheus.clone())
            .wrap(tracing_actix_web::TracingLogger::default())
            .route("/healthz", web::get().to(healthz))
    })
    .workers(1)
    .tcp_nodelay(true)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let assembled_addr = assembled.addrs()[0];
    let assembled = assembled.run();
    let assembled_handle = assembled.handle();
    let assembled_task = tokio::spawn(assembled);

    let servers = [bare_addr, beep_addr, assembled_addr];
    for addr in servers {
        load(addr, HEALTHZ).await; // warm-up
    }
    // Per server, per round: requests per second, and the server threads' CPU per request
    // (only the loaded server works, and the machine's neighbours do not move it).
    let mut rates = [const { Vec::new() }; 3];
    let mut cpu_us = [const { Vec::new() }; 3];
    for _ in 0..ROUNDS {
        for (i, addr) in servers.into_iter().enumerate() {
            let cpu_before = server_cpu_ns();
            let rate = load(addr, HEALTHZ).await;
            let requests = rate * ROUND.as_secs_f64();
            cpu_us[i].push((server_cpu_ns() - cpu_before) as f64 / 1e3 / requests);
            rates[i].push(rate);
        }
    }
    let rps = rates.clone().map(median);
    let cpu = cpu_us.map(median);
    let [bare_rps, beep_rps, assembled_rps] = rps;
    println!(
        "GET /healthz, 1 server worker, {CONNECTIONS} keep-alive connections x {PIPELINE} pipelined requests, median of {ROUNDS} x {ROUND:?}, servers interleaved per round:"
    );
    for (name, i) in [
        ("bare actix-web hello world", 0),
        (
            "beep (request id, span, metrics, security headers, CORS, JSON errors)",
            1,
        ),
        (
            "assembled (actix-web + tracing-actix-web TracingLogger + actix-web-prom)",
            2,
        ),
    ] {
        println!(
            "  {name}: {:.0} req/s, {:.2} us server CPU per request",
            rps[i], cpu[i]
        );
    }
    // The ratio of the medians, then the same ratio round by round: its spread is the noise.
    for (name, a, b) in [
        ("beep / bare", 1, 0),
        ("assembled / bare", 2, 0),
        ("beep / assembled", 1, 2),
    ] {
        let per_round: Vec<f64> = rates[a].iter().zip(&rates[b]).map(|(x, y)| x / y).collect();
        println!(
            "  ratio {name}: {:.3}; per round {}",
            rps[a] / rps[b],
            spread(&per_round)
        );
    }
    // What the middleware adds per request: in time per request (the worker is not always
    // busy: it shares two cores with the client), and in the server threads' own CPU.
    println!(
        "  cost per request over bare (1/x - 1/bare): beep {:.2} us, assembled {:.2} us",
        (1.0 / beep_rps - 1.0 / bare_rps) * 1e6,
        (1.0 / assembled_rps - 1.0 / bare_rps) * 1e6
    );
    println!(
        "  server CPU per request over bare: beep {:.2} us, assembled {:.2} us",
        cpu[1] - cpu[0],
        cpu[2] - cpu[0]
    );
    beep_handle.stop(true).await;
    bare_handle.stop(true).await;
    assembled_handle.stop(true).await;
    let _ = beep_task.await;
    let _ = bare_task.await;
    let _ = assembled_task.await;
}

/// The bare and assembled servers' only route: beep's `/healthz` body.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}
