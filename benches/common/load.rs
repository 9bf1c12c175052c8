//! What the benches share: the app's configuration, and the load client (keep-alive
//! connections sending pipelined requests, so the server under test, not the client, is the
//! bottleneck).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub const CONNECTIONS: usize = 16;
pub const ROUND: Duration = Duration::from_secs(3);
pub const ROUNDS: usize = 5;
pub const PIPELINE: usize = 16;

/// The app as the benches start it: a free loopback port, data in `dir`, one HTTP worker,
/// only warnings logged.
pub fn app_config(dir: &std::path::Path) -> beep::config::Config {
    let mut config = beep::config::Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.data_dir = dir.to_owned();
    config.server.workers = 1;
    config.telemetry.log_filter = "warn".into();
    config
}

/// The bench's runtime: one thread for the client, so the server keeps the other core.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Whether `part` was asked for (`cargo bench --bench X -- part ...`; none means all).
pub fn wanted(part: &str) -> bool {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    only.is_empty() || only.iter().any(|o| o == part)
}

/// CPU time, in nanoseconds, that this process's actix-web threads (the server under test)
/// have used so far: unlike throughput, it does not move with what else the machine does.
pub fn server_cpu_ns() -> u64 {
    threads_cpu_ns(&["actix"])
}

/// CPU time, in nanoseconds, used so far by this process's threads whose names start with
/// one of `prefixes` (from the scheduler's own accounting, so finer than clock ticks).
pub fn threads_cpu_ns(prefixes: &[&str]) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| prefixes.iter().any(|prefix| comm.starts_with(prefix)))
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Sends one request on a keep-alive connection and reads the whole response: its status and
/// its length in bytes.
pub async fn request(conn: &mut TcpStream, raw: &[u8]) -> Option<(u16, usize)> {
    conn.write_all(raw).await.ok()?;
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buffer[..end]).ok()?;
        let body: usize = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            })
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        let total = end + 4 + body;
        if buffer.len() >= total {
            return Some((head.get(9..12)?.parse().ok()?, total));
        }
    }
}

/// Requests per second over `ROUND` with `CONNECTIONS` keep-alive connections, each sending
/// `PIPELINE` requests per write, so the servers, not this client, are the bottleneck. Every
/// response of one server has the same length (fixed-width date and request id), so the client
/// checks each one's status line and skips the rest rather than parsing it.
pub async fn load(addr: SocketAddr, raw: &[u8]) -> f64 {
    load_for(addr, raw, ROUND).await
}

/// [`load`] for `round` instead of [`ROUND`].
pub async fn load_for(addr: SocketAddr, raw: &[u8], round: Duration) -> f64 {
    let response_len = {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let (_, length) = request(&mut conn, raw).await.unwrap();
        length
    };
    let batch = raw.repeat(PIPELINE);
    let deadline = Instant::now() + round;
    // Collected, so every connection starts now: a lazy map would spawn each one only once
    // the one before it had finished.
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let batch = batch.clone();
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(addr).await.unwrap();
                conn.set_nodelay(true).unwrap();
                let expected = response_len * PIPELINE;
                let mut responses = vec![0u8; expected];
                let mut done = 0u64;
                while Instant::now() < deadline {
                    conn.write_all(&batch).await.unwrap();
                    conn.read_exact(&mut responses).await.unwrap();
                    for response in responses.chunks_exact(response_len) {
                        assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));
                    }
                    done += PIPELINE as u64;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for client in clients {
        total += client.await.unwrap();
    }
    total as f64 / round.as_secs_f64()
}

/// Two requests to one server measured side by side: the `reference` twice and the
/// `candidate` once per round, in a rotating order, over many short rounds. This machine's
/// neighbours come and go in bursts; a median over many pairs shrugs them off, and
/// reference/reference is the noise floor. Besides requests per second, the server threads'
/// CPU time per request is read, which the client and the rest of the machine do not disturb.
pub struct Comparison {
    pub reference_rates: Vec<f64>,
    pub candidate_rates: Vec<f64>,
    pub reference_cpu_us: Vec<f64>,
    pub candidate_cpu_us: Vec<f64>,
    /// candidate / reference throughput, per round.
    pub ratios: Vec<f64>,
    /// reference / reference throughput, per round.
    pub controls: Vec<f64>,
    /// reference / candidate CPU per request (the throughput ratio a saturated core would show).
    pub cpu_ratios: Vec<f64>,
    pub cpu_controls: Vec<f64>,
}

pub async fn compare(
    addr: SocketAddr,
    reference: &[u8],
    candidate: &[u8],
    rounds: usize,
    round: Duration,
) -> Comparison {
    load_for(addr, reference, round).await;
    load_for(addr, candidate, round).await;
    let mut result = Comparison {
        reference_rates: Vec::new(),
        candidate_rates: Vec::new(),
        reference_cpu_us: Vec::new(),
        candidate_cpu_us: Vec::new(),
        ratios: Vec::new(),
        controls: Vec::new(),
        cpu_ratios: Vec::new(),
        cpu_controls: Vec::new(),
    };
    for n in 0..rounds {
        let mut rates = [0.0; 3];
        let mut cpu_us = [0.0; 3];
        for slot in 0..3 {
            let which = (slot + n) % 3;
            let raw = if which == 1 { candidate } else { reference };
            let cpu_before = server_cpu_ns();
            rates[which] = load_for(addr, raw, round).await;
            let requests = rates[which] * round.as_secs_f64();
            cpu_us[which] = (server_cpu_ns() - cpu_before) as f64 / 1e3 / requests;
        }
        result.ratios.push(rates[1] / rates[0]);
        result.controls.push(rates[2] / rates[0]);
        result.cpu_ratios.push(cpu_us[0] / cpu_us[1]);
        result.cpu_controls.push(cpu_us[0] / cpu_us[2]);
        result.reference_rates.push(rates[0]);
        result.candidate_rates.push(rates[1]);
        result.reference_cpu_us.push(cpu_us[0]);
        result.candidate_cpu_us.push(cpu_us[1]);
    }
    result
}

/// "median m (min a, max b)".
pub fn spread(values: &[f64]) -> String {
    format!(
        "median {:.3} (min {:.3}, max {:.3})",
        median(values.to_vec()),
        values.iter().copied().fold(f64::MAX, f64::min),
        values.iter().copied().fold(0.0, f64::max)
    )
}

impl Comparison {
    pub fn print(&self, reference: &str, candidate: &str) {
        for (name, rates, cpu) in [
            (reference, &self.reference_rates, &self.reference_cpu_us),
            (candidate, &self.candidate_rates, &self.candidate_cpu_us),
        ] {
            println!(
                "  {name}: median {:.0} req/s, {:.2} us server CPU per request",
                median(rates.clone()),
                median(cpu.clone())
            );
        }
        println!(
            "  throughput ratio {candidate} / {reference}: {}",
            spread(&self.ratios)
        );
        println!(
            "  control, {reference} / {reference}: {}",
            spread(&self.controls)
        );
        println!(
            "  server CPU ratio {reference} / {candidate}: {}",
            spread(&self.cpu_ratios)
        );
        println!(
            "  control, CPU {reference} / {reference}: {}",
            spread(&self.cpu_controls)
        );
    }

    /// Server CPU per request the candidate adds, in microseconds (medians).
    pub fn added_cpu_us(&self) -> f64 {
        median(self.candidate_cpu_us.clone()) - median(self.reference_cpu_us.clone())
    }
}
