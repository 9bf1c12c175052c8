//! heartbeat figures, in release mode (`cargo bench --bench heartbeat [-- fanout|pings]`):
//! - `fanout`: 10,000 concurrent SSE subscribers on one user of a `beep serve` process: its
//!   resident memory per idle subscriber, and the delay from a ping to its delivery at every
//!   subscriber (p50/p99/max), against the same fan-out written over raw TCP (tokio, one
//!   broadcast channel, chunked `text/event-stream`) in a process of its own, same client,
//!   same run;
//! - `pings`: pings per second sustained (each one changing the status, so stored and pushed;
//!   and each one the same, so neither), on the embedded backends and with Redis when
//!   `BEEP_TEST_REDIS_URL` is set, against `GET /healthz` on the same server in the same run,
//!   and the ping → subscriber delay of a probe user at that load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};

#[allow(dead_code)]
#[path = "common/load.rs"]
mod load;
use load::{load, median, wanted};

#[allow(dead_code)]
#[path = "../tests/common/served.rs"]
mod served;
use served::Served;

#[allow(dead_code)]
#[path = "../tests/common/login.rs"]
mod login;
use login::{phone, token_and_user};

const SUBSCRIBERS: usize = 10_000;
/// Connections opened at once while filling up.
const OPENING_BATCH: usize = 500;
const FANOUT_ROUNDS: usize = 10;
const PING_USERS: usize = 16;
const PING_ROUND: Duration = Duration::from_secs(3);
const PING_ROUNDS: usize = 3;
/// Set in the child process that serves the raw TCP reference.
const RAW_SERVER: &str = "HEARTBEAT_BENCH_RAW_SERVER";

fn main() {
    if std::env::var_os(RAW_SERVER).is_some() {
        raw_server();
        return;
    }
    raise_open_file_limit();
    beep::platform::install_crypto_provider();
    let runtime = load::client_runtime();
    println!(
        "# beep heartbeat bench ({} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    if wanted("fanout") {
        runtime.block_on(fanout());
    }
    if wanted("pings") {
        runtime.block_on(pings(None));
        if let Ok(url) = std::env::var("BEEP_TEST_REDIS_URL") {
            runtime.block_on(pings(Some(&url)));
        }
    }
}

fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised).unwrap();
}

// ---- the servers ----

fn beep_env(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("BEEP_AUTH__DEV_BYPASS", "true".to_owned()),
        ("BEEP_AUTH__DEV_BYPASS_IN_RELEASE", "true".to_owned()),
        ("BEEP_HTTP__MAX_STREAMS_PER_USER", "100000".to_owned()),
        ("BEEP_HEARTBEAT__PINGS_PER_MINUTE", "0".to_owned()),
        // The bench does not read the server's output: keep it short.
        ("BEEP_TELEMETRY__LOG_FILTER", "warn".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    env
}

fn start_beep(dir: &std::path::Path, extra: &[(&'static str, String)]) -> Served {
    let env = beep_env(extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Served::start(dir, &env)
}

/// The raw TCP reference, in a process of its own like `beep serve`, with as many threads:
/// every subscriber gets the HTTP head of an event stream, then each event from one broadcast
/// channel as a chunk. A `POST /trigger` connection sends one byte per event.
fn raw_server() {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        std::io::stdout().flush().unwrap();
        let (events, _) = broadcast::channel::<bytes::Bytes>(4);
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let events = events.clone();
            tokio::spawn(async move {
                socket.set_nodelay(true).unwrap();
                let Some(head) = read_head(&mut socket).await else {
                    return;
                };
                if head.starts_with("POST /trigger") {
                    let mut byte = [0u8; 1];
                    let mut n = 0u64;
                    while socket.read_exact(&mut byte).await.is_ok() {
                        n += 1;
                        let data = format!("id: {n}\ndata: {{\"time\":{n},\"status\":\"0\"}}\n\n");
                        let chunk = format!("{:x}\r\n{data}\r\n", data.len());
                        let _ = events.send(bytes::Bytes::from(chunk));
                    }
                    return;
                }
                let mut receiver = events.subscribe();
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    match receiver.recv().await {
                        Ok(chunk) => {
                            if socket.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
    });
}

async fn read_head(socket: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8(head).ok()
}

struct RawServer {
    child: std::process::Child,
    addr: SocketAddr,
}

impl RawServer {
    fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(RAW_SERVER, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap();
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn resident_kb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap()
}

// ---- the subscribers ----

/// Open event streams; each reports when it receives an event.
struct Subscribers {
    arrivals: mpsc::UnboundedReceiver<Instant>,
    open: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Subscribers {
    fn new() -> (Self, mpsc::UnboundedSender<Instant>) {
        let (sender, arrivals) = mpsc::unbounded_channel();
        let subscribers = Self {
            arrivals,
            open: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        (subscribers, sender)
    }

    /// Opens `count` streams with `request`.
    async fn open(addr: SocketAddr, request: &[u8], count: usize) -> Self {
        let (mut subscribers, sender) = Self::new();
        subscribers.add(addr, request, count, &sender).await;
        subscribers
    }

    /// Opens `count` more streams with `request`, `OPENING_BATCH` at a time, each read until
    /// its response head; they report arrivals to `sender`.
    async fn add(
        &mut self,
        addr: SocketAddr,
        request: &[u8],
        count: usize,
        sender: &mpsc::UnboundedSender<Instant>,
    ) {
        let target = self.open.load(Ordering::SeqCst) + count as u64;
        let mut started = 0;
        while started < count {
            let batch = OPENING_BATCH.min(count - started);
            let (ready_sender, mut ready) = mpsc::channel(batch);
            for _ in 0..batch {
                let (request, sender, ready) =
                    (request.to_vec(), sender.clone(), ready_sender.clone());
                let (open, stop) = (Arc::clone(&self.open), Arc::clone(&self.stop));
                tokio::spawn(async move {
                    let mut conn = TcpStream::connect(addr).await.unwrap();
                    conn.set_nodelay(true).unwrap();
                    conn.write_all(&request).await.unwrap();
                    let mut buffer = vec![0u8; 2048];
                    let mut head = Vec::new();
                    let rest = loop {
                        let n = conn.read(&mut buffer).await.unwrap();
                        assert!(n > 0, "a subscription was closed before its head");
                        head.extend_from_slice(&buffer[..n]);
                        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            assert!(
                                head.starts_with(b"HTTP/1.1 200"),
                                "{}",
                                String::from_utf8_lossy(&head)
                            );
                            break head.split_off(end + 4);
                        }
                    };
                    open.fetch_add(1, Ordering::SeqCst);
                    ready.send(()).await.unwrap();
                    drop(ready);
                    let count = |bytes: &[u8]| {
                        let now = Instant::now();
                        let events = bytes.windows(6).filter(|w| w == b"data: ").count();
                        for _ in 0..events {
                            let _ = sender.send(now);
                        }
                    };
                    count(&rest);
                    while !stop.load(Ordering::Relaxed) {
                        match conn.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => count(&buffer[..n]),
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            drop(ready_sender);
            for _ in 0..batch {
                ready.recv().await.unwrap();
            }
            started += batch;
        }
        assert_eq!(self.open.load(Ordering::SeqCst), target);
    }

    /// Waits for `expected` arrivals; returns each one's delay after `sent`.
    async fn delays(&mut self, sent: Instant, expected: usize) -> Vec<f64> {
        let mut delays = Vec::with_capacity(expected);
        while delays.len() < expected {
            let arrived = tokio::time::timeout(Duration::from_secs(30), self.arrivals.recv())
                .await
                .expect("an event did not arrive within 30 s")
                .unwrap();
            delays.push(arrived.duration_since(sent).as_secs_f64() * 1e3);
        }
        delays
    }

    fn drain(&mut self) {
        while self.arrivals.try_recv().is_ok() {}
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

struct Delays {
    p50: f64,
    p99: f64,
    max: f64,
}

fn summarise(mut all: Vec<f64>) -> Delays {
    all.sort_by(f64::total_cmp);
    Delays {
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        max: *all.last().unwrap(),
    }
}

// ---- fan-out at 10,000 ----

struct FanOut {
    kb_per_subscriber: f64,
    delays: Delays,
}

async fn fanout() {
    println!("## {SUBSCRIBERS} SSE subscribers on one user, {FANOUT_ROUNDS} pings");
    let raw = raw_fanout().await;
    let beep = beep_fanout().await;
    for (name, figures) in [("raw TCP", &raw), ("beep", &beep)] {
        println!(
            "  {name}: {:.1} KB resident per idle subscriber; ping -> delivery p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            figures.kb_per_subscriber, figures.delays.p50, figures.delays.p99, figures.delays.max
        );
    }
    println!(
        "  ratio beep / raw TCP: p99 delay {:.2}, p50 delay {:.2}, memory per subscriber {:.2}",
        beep.delays.p99 / raw.delays.p99,
        beep.delays.p50 / raw.delays.p50,
        beep.kb_per_subscriber / raw.kb_per_subscriber
    );
}

/// Memory per subscriber between 100 and `SUBSCRIBERS` open streams, and the delays of
/// `FANOUT_ROUNDS` events sent by `send`.
async fn measure<F, Fut>(pid: u32, addr: SocketAddr, request: &[u8], mut send: F) -> FanOut
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    const WARM: usize = 100;
    let (mut subscribers, sender) = Subscribers::new();
    subscribers.add(addr, request, WARM, &sender).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = resident_kb(pid);
    subscribers
        .add(addr, request, SUBSCRIBERS - WARM, &sender)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = resident_kb(pid);
    let kb_per_subscriber = (after - before) / (SUBSCRIBERS - WARM) as f64;
    let mut all = Vec::with_capacity(SUBSCRIBERS * FANOUT_ROUNDS);
    for round in 0..FANOUT_ROUNDS {
        tokio::time::sleep(Duration::from_millis(200)).await;
        subscribers.drain();
        let sent = Instant::now();
        send(round).await;
        all.extend(subscribers.delays(sent, SUBSCRIBERS).await);
    }
    FanOut {
        kb_per_subscriber,
        delays: summarise(all),
    }
}

async fn raw_fanout() -> FanOut {
    let server = RawServer::start();
    let request = b"GET /subscribe HTTP/1.1\r\nHost: b\r\n\r\n";
    let mut trigger = TcpStream::connect(server.addr).await.unwrap();
    trigger.set_nodelay(true).unwrap();
    trigger
        .write_all(b"POST /trigger HTTP/1.1\r\nHost: b\r\n\r\n")
        .await
        .unwrap();
    let trigger = Arc::new(tokio::sync::Mutex::new(trigger));
    let pid = server.child.id();
    measure(pid, server.addr, request, |_| {
        let trigger = Arc::clone(&trigger);
        async move {
            trigger.lock().await.write_all(b"x").await.unwrap();
        }
    })
    .await
}

async fn beep_fanout() -> FanOut {
    let dir = tempfile::tempdir().unwrap();
    let served = start_beep(dir.path(), &[]);
    let base = format!("http://127.0.0.1:{}", served.port);
    let (alice_token, alice) = token_and_user(&base, &phone(1), "bench").await;
    let (bob_token, _) = token_and_user(&base, &phone(2), "bench").await;
    let http = reqwest::Client::new();
    let added = http
        .post(format!("{base}/core/user/contact"))
        .bearer_auth(&bob_token)
        .json(&serde_json::json!({ "phone_number": phone(1) }))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 200);
    let request =
        format!("GET /heartbeat/subscribe/{alice}?token={bob_token} HTTP/1.1\r\nHost: b\r\n\r\n");
    let addr = SocketAddr::from(([127, 0, 0, 1], served.port));
    let ping = format!("{base}/heartbeat/ping");
    let figures = measure(served.pid(), addr, request.as_bytes(), |round| {
        let (http, ping, token) = (http.clone(), ping.clone(), alice_token.clone());
        async move {
            // A new status each time: stored and pushed.
            let status = if round % 2 == 0 { "0" } else { "1" };
            let response = http
                .post(ping)
                .bearer_auth(token)
                .json(&serde_json::json!({ "status": status }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    })
    .await;
    let (status, _) = served.stop();
    assert!(status.success());
    figures
}

// ---- pings per second ----

fn ping_request(token: &str, status: &str) -> Vec<u8> {
    let body = format!("{{\"status\":\"{status}\"}}");
    format!(
        "POST /heartbeat/ping HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Pings per second over `PING_ROUND`: one connection per user, `load::PIPELINE` pings per
/// write, alternating the status when `changing`.
async fn ping_load(addr: SocketAddr, tokens: &[String], changing: bool) -> f64 {
    let deadline = Instant::now() + PING_ROUND;
    // Collected, so every connection starts now.
    let clients: Vec<_> = tokens
        .iter()
        .map(|token| {
            let batch: Vec<u8> = (0..load::PIPELINE)
                .flat_map(|n| {
                    let status = if changing && n % 2 == 1 { "1" } else { "0" };
                    ping_request(token, status)
                })
                .collect();
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(addr).await.unwrap();
                conn.set_nodelay(true).unwrap();
                let mut done = 0u64;
                let mut buffer = vec![0u8; 64 * 1024];
                while Instant::now() < deadline {
                    conn.write_all(&batch).await.unwrap();
                    let mut seen = 0;
                    let mut pending = Vec::new();
                    while seen < load::PIPELINE {
                        let n = conn.read(&mut buffer).await.unwrap();
                        assert!(n > 0);
                        pending.extend_from_slice(&buffer[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            assert!(
                                pending.starts_with(b"HTTP/1.1 200"),
                                "{}",
                                String::from_utf8_lossy(&pending)
                            );
                            pending.drain(..end + 4);
                            seen += 1;
                        }
                    }
                    done += load::PIPELINE as u64;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for client in clients {
        total += client.await.unwrap();
    }
    total as f64 / PING_ROUND.as_secs_f64()
}

async fn pings(redis: Option<&str>) {
    let column = if redis.is_some() {
        "Redis cache"
    } else {
        "embedded"
    };
    println!("## pings per second, {column}, {PING_USERS} users on one connection each");
    let dir = tempfile::tempdir().unwrap();
    let mut extra = Vec::new();
    if let Some(url) = redis {
        extra.push(("BEEP_CACHE__URL", url.to_owned()));
        let prefix = format!("hb{}:", beep::platform::ids::random_hex128());
        extra.push(("BEEP_CACHE__PREFIX", prefix));
    }
    let served = start_beep(dir.path(), &extra);
    let base = format!("http://127.0.0.1:{}", served.port);
    let addr = SocketAddr::from(([127, 0, 0, 1], served.port));
    let (watcher_token, _) = token_and_user(&base, &phone(100), "bench").await;
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();
    let mut watching = Vec::new();
    for n in 0..=PING_USERS {
        let (token, user) = token_and_user(&base, &phone(200 + n as u32), "bench").await;
        let added = http
            .post(format!("{base}/core/user/contact"))
            .bearer_auth(&watcher_token)
            .json(&serde_json::json!({ "phone_number": phone(200 + n as u32) }))
            .send()
            .await
            .unwrap();
        assert_eq!(added.status(), 200);
        tokens.push(token);
        watching.push(user);
    }
    // The last user is the probe; every user has one subscriber, so each stored ping is pushed.
    let probe_token = tokens.pop().unwrap();
    let mut subscribers: Vec<Subscribers> = Vec::new();
    for user in &watching {
        let request = format!(
            "GET /heartbeat/subscribe/{user}?token={watcher_token} HTTP/1.1\r\nHost: b\r\n\r\n"
        );
        subscribers.push(Subscribers::open(addr, request.as_bytes(), 1).await);
    }
    let mut probe = subscribers.pop().unwrap();
    for subscriber in &mut subscribers {
        // Read by their tasks; the arrivals are not needed.
        subscriber.arrivals.close();
    }
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n";
    let mut changing = Vec::new();
    let mut same = Vec::new();
    let mut reference = Vec::new();
    let mut probe_delays = Vec::new();
    let probes = Arc::new(AtomicU64::new(0));
    let mut probes_lost = 0;
    for _ in 0..PING_ROUNDS {
        reference.push(load(addr, healthz).await);
        // The probe pings while the changing pings run, alternating its status, each time
        // once its previous ping has arrived (or was given up on after a second: lost).
        let stop = Arc::new(AtomicBool::new(false));
        let prober = {
            let (http, stop) = (http.clone(), Arc::clone(&stop));
            let (url, token) = (format!("{base}/heartbeat/ping"), probe_token.clone());
            let probes = Arc::clone(&probes);
            let mut probe = probe;
            tokio::spawn(async move {
                let (mut delays, mut lost) = (Vec::new(), 0);
                probe.drain();
                while !stop.load(Ordering::SeqCst) {
                    // Alternating across rounds too: a repeated status would not be pushed.
                    let n = probes.fetch_add(1, Ordering::SeqCst);
                    let status = if n.is_multiple_of(2) { "0" } else { "1" };
                    let sent_at = Instant::now();
                    let response = http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&serde_json::json!({ "status": status }))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    match tokio::time::timeout(Duration::from_secs(1), probe.arrivals.recv()).await
                    {
                        Ok(Some(arrived)) => {
                            delays.push(arrived.duration_since(sent_at).as_secs_f64() * 1e3);
                        }
                        _ => lost += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (probe, delays, lost)
            })
        };
        changing.push(ping_load(addr, &tokens, true).await);
        stop.store(true, Ordering::SeqCst);
        let (returned, delays, lost) = prober.await.unwrap();
        probe = returned;
        probe_delays.extend(delays);
        probes_lost += lost;
        same.push(ping_load(addr, &tokens, false).await);
    }
    let healthz = median(reference);
    let changing = median(changing);
    let same = median(same);
    let probe_delays_count = probe_delays.len();
    let delays = summarise(probe_delays);
    println!("  GET /healthz (reference): {healthz:.0} req/s");
    println!(
        "  pings changing the status (stored and pushed): {changing:.0}/s, {:.2} of /healthz",
        changing / healthz
    );
    println!(
        "  pings repeating the status (neither): {same:.0}/s, {:.2} of /healthz",
        same / healthz
    );
    println!(
        "  probe ping -> subscriber at that load: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} probes, {probes_lost} not delivered within 1 s)",
        delays.p50, delays.p99, delays.max, probe_delays_count
    );
    drop(subscribers);
    drop(probe);
    let (status, _) = served.stop();
    assert!(status.success());
}
