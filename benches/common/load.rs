//! The load client the benches share: keep-alive connections sending pipelined requests, so
//! the server under test, not the client, is the bottleneck.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub const CONNECTIONS: usize = 16;
pub const ROUND: Duration = Duration::from_secs(3);
pub const ROUNDS: usize = 5;
pub const PIPELINE: usize = 16;

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
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.starts_with("actix"))
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
    let clients = (0..CONNECTIONS).map(|_| {
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
    });
    let mut total = 0;
    for client in clients {
        total += client.await.unwrap();
    }
    total as f64 / round.as_secs_f64()
}
