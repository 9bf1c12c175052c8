//! bites figures, in release mode (`cargo bench --bench bites [-- forward|record|store|scan]`):
//! - `forward`: one speaker to N listeners through the SFU, server CPU per forwarded packet
//!   against a bare UDP relay of the same packets to N sockets, same run;
//! - `rooms`: 100 calls of 4 at once, speaking in turn: CPU per forwarded packet and loss;
//! - `idle`: upkeep per connected peer with nobody speaking, media threads and the rest apart;
//! - `relay`: the bare relay's floor with one `send_to` per packet against one `sendmmsg` per
//!   fan-out (the media plane's batching);
//! - `record`: the same forwarding with bite storage on and off;
//! - `store`: bites stored per second through the bite store against raw sled inserts of the
//!   same sizes;
//! - `scan`: an hour of a busy conversation: scan time, and disk bytes per payload byte.
//!
//! The server runs on threads of its own (`bench-server`, `beep-media-*`, `beep-signal`, `actix…`), the WebRTC
//! clients on `bench-client`; CPU is read per thread from the scheduler (`schedstat`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use beep::app::{self, Hosting};
use beep::services::bites::sfu::media::batch::Outbox;
use beep::services::bites::store::{BiteMeta, BiteStore as _, NewBite, SledStore};
use bytes::Bytes;

#[allow(dead_code)]
#[path = "common/load.rs"]
mod load;
use load::{median, spread, threads_cpu_ns, wanted};

#[allow(dead_code)]
#[path = "../tests/common/login.rs"]
mod login;

#[allow(dead_code)]
#[path = "../tests/common/peer.rs"]
mod peer;
use peer::Peer;

const SERVER_THREADS: &[&str] = &["bench-server", "beep-media", "beep-signal", "actix"];
/// Opus at about 32 kbit/s: 80 bytes per 20 ms.
const PAYLOAD: usize = 80;
const PACKETS_PER_SECOND: u64 = 50;
const WINDOW: Duration = Duration::from_secs(4);
const ROUNDS: usize = 5;

fn main() {
    println!(
        "# beep bites bench ({} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    if wanted("forward") {
        for listeners in [10, 30] {
            forward(listeners);
        }
    }
    if wanted("rooms") {
        rooms(100, 4);
    }
    if wanted("idle") {
        for listeners in [10, 30] {
            idle(listeners);
        }
    }
    if wanted("relay") {
        for listeners in [10, 30] {
            relay_batching(listeners);
        }
    }
    if wanted("record") {
        record(10);
    }
    if wanted("store") {
        store();
    }
    if wanted("scan") {
        scan();
    }
}

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

/// A running app, one speaker and `listeners` peers in one conversation.
struct Call {
    server: tokio::runtime::Runtime,
    clients: tokio::runtime::Runtime,
    speaker: Peer,
    listeners: Vec<Peer>,
    _dir: tempfile::TempDir,
}

/// The app on a runtime of its own (one media thread), at `http://…`.
fn serve(record: bool) -> (tokio::runtime::Runtime, String, tempfile::TempDir) {
    let server = runtime("bench-server");
    let dir = tempfile::tempdir().unwrap();
    let mut config = load::app_config(dir.path());
    config.telemetry.log_filter = "error".into();
    // Hundreds of logins from one address.
    login::allow_bypass(&mut config);
    config.bites.record = record;
    config.bites.sfu.threads = 1;
    let addr = server.block_on(async {
        let running = app::start(config, beep::services::COMPILED, Hosting::default())
            .await
            .unwrap();
        let addr = running.addr();
        tokio::spawn(running.run());
        addr
    });
    (server, format!("http://{addr}"), dir)
}

/// A conversation of `people` (the first creates it), each connected and joined to its call.
async fn call_of(base: &str, people: &[(String, String)]) -> Vec<Peer> {
    let (owner, _) = &people[0];
    let others: Vec<&str> = people[1..].iter().map(|(_, user)| user.as_str()).collect();
    let conversation = login::new_conversation(base, owner, "bench", &others).await;
    let ws = base.replacen("http://", "ws://", 1);
    let mut peers = Vec::new();
    for (token, _) in people {
        let peer = Peer::connect(&ws, token).await;
        login::join_call(base, token, &conversation).await;
        peers.push(peer);
    }
    peers
}

impl Call {
    fn start(listeners: usize, record: bool) -> Self {
        let (server, base, dir) = serve(record);
        let clients = runtime("bench-client");
        let (speaker, listeners) = clients.block_on(async {
            let mut people = Vec::new();
            for n in 0..=listeners {
                people.push(login(&base, n as u32).await);
            }
            let mut peers = call_of(&base, &people).await;
            let speaker = peers.remove(0);
            (speaker, peers)
        });
        let mut call = Self {
            server,
            clients,
            speaker,
            listeners,
            _dir: dir,
        };
        // Until every listener hears the speaker: all renegotiations are done.
        let deadline = Instant::now() + Duration::from_secs(20);
        while call.heard() < call.listeners.len() as u64
            || call.listeners.iter().any(|l| l.heard_from("u-") == 0)
        {
            assert!(
                Instant::now() < deadline,
                "listeners never heard the speaker"
            );
            call.speak(Duration::from_millis(200), true);
        }
        call
    }

    fn heard(&self) -> u64 {
        self.listeners
            .iter()
            .map(|l| l.heard_from("u-") as u64)
            .sum()
    }

    /// Sends 20 ms packets for `length`: speech throughout, or 1 s of speech then 0.5 s of
    /// silence in turn (so bites are cut and stored).
    fn speak(&mut self, length: Duration, continuous: bool) {
        let packets = length.as_millis() as u64 * PACKETS_PER_SECOND / 1000;
        let speaker = &mut self.speaker;
        self.clients.block_on(async {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / PACKETS_PER_SECOND));
            for i in 0..packets {
                tick.tick().await;
                let level = if continuous || i % 75 < 50 { 20 } else { 127 };
                speaker
                    .send(&peer::synthetic_opus(i as u8, PAYLOAD), 960, Some(level))
                    .await;
            }
            // Let the last packets arrive.
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
    }

    /// Server CPU per second with every connection up and nobody speaking (RTCP, ICE
    /// keep-alives, timers), in microseconds.
    fn idle_us_per_second(&self) -> f64 {
        let cpu = threads_cpu_ns(SERVER_THREADS);
        std::thread::sleep(WINDOW);
        (threads_cpu_ns(SERVER_THREADS) - cpu) as f64 / 1e3 / WINDOW.as_secs_f64()
    }

    /// Server CPU per forwarded packet over one window, in microseconds.
    fn measure(&mut self, continuous: bool) -> f64 {
        let (heard, cpu) = (self.heard(), threads_cpu_ns(SERVER_THREADS));
        self.speak(WINDOW, continuous);
        let forwarded = self.heard() - heard;
        (threads_cpu_ns(SERVER_THREADS) - cpu) as f64 / 1e3 / forwarded as f64
    }

    fn stop(self) {
        let Call {
            server,
            clients,
            speaker,
            listeners,
            ..
        } = self;
        clients.block_on(async {
            speaker.close().await;
            for listener in listeners {
                listener.close().await;
            }
        });
        server.shutdown_timeout(Duration::from_secs(1));
        clients.shutdown_timeout(Duration::from_secs(1));
    }
}

async fn login(base: &str, n: u32) -> (String, String) {
    login::token_and_user(base, &login::phone(n), &format!("bench-{n}")).await
}

/// A bare UDP relay: one thread receives each packet and sends it to every listener socket,
/// one `send_to` each or (`batched`) all in one `sendmmsg` (the media plane's [`Outbox`]); its
/// CPU per forwarded packet is the floor any forwarder pays to the kernel.
///
/// [`Outbox`]: beep::services::bites::sfu::media::batch::Outbox
fn relay_us_per_packet(listeners: usize, size: usize, batched: bool) -> f64 {
    let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
    relay
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let relay_cpu = Arc::new(AtomicU64::new(0));
    let mut sinks = Vec::new();
    let mut sink_threads = Vec::new();
    for _ in 0..listeners {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        sinks.push(sink.local_addr().unwrap());
        let stop = Arc::clone(&stop);
        sink_threads.push(
            std::thread::Builder::new()
                .name("udp-sink".into())
                .spawn(move || {
                    let mut buffer = [0u8; 1500];
                    while !stop.load(Ordering::Relaxed) {
                        let _ = sink.recv(&mut buffer);
                    }
                })
                .unwrap(),
        );
    }
    let relayed = Arc::new(AtomicU64::new(0));
    let relay_thread = {
        let (stop, relayed, relay_cpu) = (
            Arc::clone(&stop),
            Arc::clone(&relayed),
            Arc::clone(&relay_cpu),
        );
        std::thread::Builder::new()
            .name("udp-relay".into())
            .spawn(move || {
                let start = thread_cpu_ns();
                let mut buffer = [0u8; 1500];
                let mut outbox = Outbox::default();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(len) = relay.recv(&mut buffer) else {
                        continue;
                    };
                    if batched {
                        for sink in &sinks {
                            let mut datagram = outbox.buffer();
                            datagram.extend_from_slice(&buffer[..len]);
                            let _queued = outbox.push(*sink, datagram);
                        }
                        let sent = outbox.flush(&relay).sent;
                        relayed.fetch_add(sent as u64, Ordering::Relaxed);
                        continue;
                    }
                    for sink in &sinks {
                        if relay.send_to(&buffer[..len], sink).is_ok() {
                            relayed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                relay_cpu.store(thread_cpu_ns() - start, Ordering::Relaxed);
            })
            .unwrap()
    };
    let speaker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let packet = vec![0x5a; size];
    let packets = WINDOW.as_millis() as u64 * PACKETS_PER_SECOND / 1000;
    let started = Instant::now();
    for i in 0..packets {
        let due = started + Duration::from_millis(i * 1000 / PACKETS_PER_SECOND);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        speaker.send_to(&packet, relay_addr).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    relay_thread.join().unwrap();
    for thread in sink_threads {
        thread.join().unwrap();
    }
    relay_cpu.load(Ordering::Relaxed) as f64 / 1e3 / relayed.load(Ordering::Relaxed) as f64
}

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// RTP header (12) + one-byte audio-level extension (8) + payload + SRTP tag (10).
const WIRE_BYTES: usize = 12 + 8 + PAYLOAD + 10;

fn forward(listeners: usize) {
    println!(
        "\n## one speaker to {listeners} listeners, {PACKETS_PER_SECOND} packets/s of {PAYLOAD}-byte Opus"
    );
    let mut call = Call::start(listeners, true);
    let forwarded_per_second = (listeners as u64 * PACKETS_PER_SECOND) as f64;
    let (mut sfu, mut net, mut idle, mut relay) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ratios, mut net_ratios) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let s = call.measure(true);
        let i = call.idle_us_per_second();
        let r = relay_us_per_packet(listeners, WIRE_BYTES, false);
        // Without the connections' upkeep, which does not grow with traffic.
        let n = s - i / forwarded_per_second;
        ratios.push(s / r);
        net_ratios.push(n / r);
        sfu.push(s);
        net.push(n);
        idle.push(i);
        relay.push(r);
    }
    call.stop();
    let (s, n, r) = (
        median(sfu.clone()),
        median(net.clone()),
        median(relay.clone()),
    );
    println!(
        "  SFU: {s:.1} us server CPU per forwarded packet ({}), {:.0} forwarded packets/s per core",
        spread(&sfu),
        1e6 / s
    );
    println!(
        "  SFU upkeep with nobody speaking: {:.0} us CPU per second for {} connections ({})",
        median(idle.clone()),
        listeners + 1,
        spread(&idle)
    );
    println!(
        "  SFU net of upkeep: {n:.1} us per forwarded packet ({}), {:.0} packets/s per core",
        spread(&net),
        1e6 / n
    );
    println!(
        "  bare UDP relay: {r:.2} us per forwarded packet ({}), {:.0} packets/s per core",
        spread(&relay),
        1e6 / r
    );
    println!(
        "  SFU / relay CPU per packet: {}; net of upkeep: {}",
        spread(&ratios),
        spread(&net_ratios)
    );
}

/// `count` calls of `size` people at once, one person speaking at a time in each (turns of
/// 1 s, rooms out of step): server CPU per forwarded packet, and packets lost.
fn rooms(count: usize, size: usize) {
    println!("\n## {count} rooms of {size}, one person speaking at a time in each, turns of 1 s");
    let (server, base, _dir) = serve(true);
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap();
    let setup = Instant::now();
    let mut rooms: Vec<Vec<Peer>> = clients.block_on(async {
        let mut rooms = Vec::new();
        for room in 0..count {
            let mut people = Vec::new();
            for member in 0..size {
                people.push(login(&base, (1000 + room * size + member) as u32).await);
            }
            rooms.push(call_of(&base, &people).await);
        }
        rooms
    });
    let heard = |rooms: &[Vec<Peer>]| -> u64 {
        rooms
            .iter()
            .flatten()
            .map(|peer| peer.heard_from("u-") as u64)
            .sum()
    };
    // Everyone speaks once, so every leg is negotiated before measuring.
    let speak = |rooms: &mut [Vec<Peer>], packets: u64, turn: u64| {
        clients.block_on(async {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / PACKETS_PER_SECOND));
            for i in 0..packets {
                tick.tick().await;
                for (r, room) in rooms.iter_mut().enumerate() {
                    let speaker = (i / turn + r as u64) as usize % room.len();
                    room[speaker]
                        .send(&peer::synthetic_opus(i as u8, PAYLOAD), 960, Some(20))
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
    };
    speak(&mut rooms, size as u64 * 10, 10);
    println!(
        "  {} people connected in {:.1} s",
        count * size,
        setup.elapsed().as_secs_f64()
    );
    let (mut cpu_per_packet, mut lost) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (before, cpu) = (heard(&rooms), threads_cpu_ns(SERVER_THREADS));
        let packets = WINDOW.as_millis() as u64 * PACKETS_PER_SECOND / 1000;
        speak(&mut rooms, packets, PACKETS_PER_SECOND);
        let got = heard(&rooms) - before;
        let expected = packets * count as u64 * (size as u64 - 1);
        cpu_per_packet.push((threads_cpu_ns(SERVER_THREADS) - cpu) as f64 / 1e3 / got as f64);
        lost.push(1.0 - got as f64 / expected as f64);
    }
    println!(
        "  server CPU per forwarded packet: {:.1} us ({}); {:.0} forwarded packets/s",
        median(cpu_per_packet.clone()),
        spread(&cpu_per_packet),
        (count * (size - 1)) as f64 * PACKETS_PER_SECOND as f64
    );
    println!(
        "  packets lost: {:.3}% ({})",
        median(lost.clone()) * 100.0,
        spread(&lost)
    );
    clients.block_on(async {
        for peer in rooms.into_iter().flatten() {
            peer.close().await;
        }
    });
    server.shutdown_timeout(Duration::from_secs(1));
    clients.shutdown_timeout(Duration::from_secs(1));
}

/// Upkeep of connected peers with nobody speaking, apart: the media threads, and the rest of
/// the server (signalling, runtime timers).
fn idle(listeners: usize) {
    println!(
        "\n## upkeep of {} connected peers, nobody speaking",
        listeners + 1
    );
    let call = Call::start(listeners, true);
    // The last renegotiations and RTCP reports settle.
    std::thread::sleep(Duration::from_secs(2));
    let (mut media, mut rest) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (m, all) = (
            threads_cpu_ns(&["beep-media"]),
            threads_cpu_ns(SERVER_THREADS),
        );
        std::thread::sleep(WINDOW);
        let m = (threads_cpu_ns(&["beep-media"]) - m) as f64;
        let all = (threads_cpu_ns(SERVER_THREADS) - all) as f64;
        let per_peer_second = |ns: f64| ns / 1e3 / WINDOW.as_secs_f64() / (listeners + 1) as f64;
        media.push(per_peer_second(m));
        rest.push(per_peer_second(all - m));
    }
    call.stop();
    println!(
        "  per connected peer: media threads {:.0} us CPU per second ({}), rest of the server {:.0} us ({})",
        median(media.clone()),
        spread(&media),
        median(rest.clone()),
        spread(&rest)
    );
}

/// What batching saves the floor: the bare relay with one `send_to` per packet against one
/// `sendmmsg` per fan-out, interleaved rounds.
fn relay_batching(listeners: usize) {
    println!("\n## bare UDP relay to {listeners} listeners: send_to per packet against sendmmsg");
    let (mut single, mut batched, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let s = relay_us_per_packet(listeners, WIRE_BYTES, false);
        let b = relay_us_per_packet(listeners, WIRE_BYTES, true);
        single.push(s);
        batched.push(b);
        ratios.push(b / s);
    }
    println!(
        "  send_to: {:.2} us per forwarded packet ({}); sendmmsg: {:.2} us ({}); sendmmsg / send_to: {}",
        median(single.clone()),
        spread(&single),
        median(batched.clone()),
        spread(&batched),
        spread(&ratios)
    );
}

fn record(listeners: usize) {
    println!(
        "\n## forwarding with bite storage on and off, one speaker to {listeners} listeners, speech 1 s / silence 0.5 s"
    );
    let mut on = Vec::new();
    let mut off = Vec::new();
    for round in 0..ROUNDS {
        // Alternate which goes first, against drift.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for recording in order {
            let mut call = Call::start(listeners, recording);
            let us = call.measure(false);
            call.stop();
            if recording { on.push(us) } else { off.push(us) }
        }
    }
    let ratios: Vec<f64> = off.iter().zip(&on).map(|(off, on)| off / on).collect();
    println!(
        "  storage off: {:.1} us server CPU per forwarded packet ({})",
        median(off.clone()),
        spread(&off)
    );
    println!(
        "  storage on: {:.1} us ({})",
        median(on.clone()),
        spread(&on)
    );
    println!(
        "  forwarding cost off / on: {} (target >= 0.95)",
        spread(&ratios)
    );
}

/// Bite sizes of 2 to 30 s of 32 kbit/s Opus, in a fixed pseudo-random order.
fn bite_sizes(count: usize) -> Vec<usize> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let seconds = 2 + (state % 29) as usize;
            seconds * 4_000 + 200
        })
        .collect()
}

fn bites_of(conversation: &str, sizes: &[usize], first_start: u64, every_ms: u64) -> Vec<NewBite> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let audio = Bytes::from(vec![(i % 251) as u8; size]);
            NewBite {
                meta: BiteMeta {
                    conversation: conversation.to_owned(),
                    user: format!("u-{:032x}", i % 4),
                    client: "phone".into(),
                    start: first_start + i as u64 * every_ms,
                    duration: (size as u64 / 4),
                    size: size as u64,
                },
                audio,
            }
        })
        .collect()
}

const BATCH: usize = 64;

fn store() {
    println!(
        "\n## bites stored per second, in durable batches of {BATCH}, against raw sled inserts of the same sizes"
    );
    let sizes = bite_sizes(2_048);
    let mut ratios = Vec::new();
    let mut store_rates = Vec::new();
    let mut raw_rates = Vec::new();
    for round in 0..ROUNDS {
        let bites = bites_of(&format!("c-{round:032x}"), &sizes, 1_700_000_000_000, 1000);
        let run_store = || {
            let dir = tempfile::tempdir().unwrap();
            let store = SledStore::open(dir.path()).unwrap();
            let started = Instant::now();
            for batch in bites.chunks(BATCH) {
                store.insert(batch).unwrap();
            }
            bites.len() as f64 / started.elapsed().as_secs_f64()
        };
        let run_raw = || {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("raw").unwrap();
            let started = Instant::now();
            for batch in bites.chunks(BATCH) {
                for bite in batch {
                    let key = format!("bite+{}@{:016x}", bite.meta.conversation, bite.meta.start);
                    tree.insert(key.as_bytes(), bite.audio.as_ref()).unwrap();
                }
                db.flush().unwrap();
            }
            bites.len() as f64 / started.elapsed().as_secs_f64()
        };
        let (store_rate, raw_rate) = if round % 2 == 0 {
            let s = run_store();
            (s, run_raw())
        } else {
            let r = run_raw();
            (run_store(), r)
        };
        ratios.push(store_rate / raw_rate);
        store_rates.push(store_rate);
        raw_rates.push(raw_rate);
    }
    let payload: usize = sizes.iter().sum();
    println!(
        "  {} bites, {:.1} MB of audio per round",
        sizes.len(),
        payload as f64 / 1e6
    );
    println!(
        "  bite store: {:.0} bites/s ({})",
        median(store_rates.clone()),
        spread(&store_rates)
    );
    println!(
        "  raw sled: {:.0} bites/s ({})",
        median(raw_rates.clone()),
        spread(&raw_rates)
    );
    println!(
        "  bite store / raw sled: {} (target >= 0.8)",
        spread(&ratios)
    );
}

fn scan() {
    // Busy: four people talking in turn, a bite starting every 1.5 s, all hour long.
    const EVERY_MS: u64 = 1_500;
    let count = (3_600_000 / EVERY_MS) as usize;
    println!("\n## an hour of a busy conversation: {count} bites (one every {EVERY_MS} ms)");
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let sizes = bite_sizes(count);
    let hour_start = 1_700_000_000_000;
    let conversation = format!("c-{:032x}", 7);
    let bites = bites_of(&conversation, &sizes, hour_start, EVERY_MS);
    // Other conversations around it, as on a real server.
    for (n, neighbour) in ["c-0", "c-f"].into_iter().enumerate() {
        let others = bites_of(
            &format!("{neighbour}{:031x}", n),
            &sizes[..count / 4],
            hour_start,
            EVERY_MS * 4,
        );
        for batch in others.chunks(BATCH) {
            store.insert(batch).unwrap();
        }
    }
    for batch in bites.chunks(BATCH) {
        store.insert(batch).unwrap();
    }
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let scan = store
            .scan(&conversation, hour_start, hour_start + 3_600_000, 100_000)
            .unwrap();
        times.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(scan.starts.len(), count);
    }
    println!(
        "  scan of the hour ({count} starts): {:.2} ms ({}) (target < 10 ms)",
        median(times.clone()),
        spread(&times)
    );
    let mut list_times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let listed = store
            .list(&conversation, hour_start, hour_start + 3_600_000, 100_000)
            .unwrap();
        list_times.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(listed.len(), count);
    }
    println!(
        "  list with metadata of the hour: {:.2} ms ({})",
        median(list_times.clone()),
        spread(&list_times)
    );
    let payload: u64 =
        (sizes.iter().sum::<usize>() + sizes[..count / 4].iter().sum::<usize>() * 2) as u64;
    let on_disk = disk_bytes(dir.path());
    println!(
        "  disk: {:.1} MB for {:.1} MB of audio: {:.2} bytes on disk per payload byte (sled's own count: {:.1} MB)",
        on_disk as f64 / 1e6,
        payload as f64 / 1e6,
        on_disk as f64 / payload as f64,
        store.size_on_disk().unwrap() as f64 / 1e6
    );
}

/// Bytes the directory's files occupy (allocated blocks, as `du` counts).
fn disk_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            disk_bytes(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}
