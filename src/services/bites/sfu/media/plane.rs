//! A media thread: one UDP socket shared by all its connections (ICE-lite, one port), each
//! connection an `rtc` peer connection driven by hand. Datagrams come in batches, are routed
//! by [`Demux`], fed to their connection, and whatever the connections then have to send goes
//! out in batches; timers come from one heap. Everything else (signalling, room changes) reaches
//! the thread as a task run on it ([`MediaThread::call`]), so a connection is only ever touched
//! by its own thread and needs no lock.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd as _;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::sansio::Protocol as _;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use rtc::crypto::{RTCCryptoProvider, SignatureScheme};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::shared::marshal::Unmarshal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

use super::super::Stats;
use super::super::forward::Leg;
use super::super::peer::Participant;
use super::batch::{Inbox, Outbox};
use super::demux::{self, ConnectionId, Demux};
use super::timers::Timers;
use crate::platform::ids::random_hex128;
use crate::services::bites::pipeline::{SpeakerFeed, Spoken};
use crate::services::bites::sfu::transport::media_engine;
use crate::services::bites::utterance::Incoming;

/// Batches taken off the socket before the thread looks at its timers and tasks again, so a
/// flood cannot starve them.
const BATCHES_PER_TURN: usize = 16;

/// The least time between two runs of a connected connection's timers. rtc-ice 0.21.1 asks for
/// one every 200 ms whatever its keep-alive setting (its interval starts from the check
/// interval and is only ever lowered; pion's starts from zero), and that was most of an idle
/// peer's cost. Once a connection is up nothing needs a finer tick: the lite agent's own work is
/// noticing silence (5 s to "disconnected") and its consent checks (every 5 s), RTCP reports go
/// out every 5 s, and a check asked for by a renegotiation waits a second at most.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// How often the server asks a connected client for consent (a binding request).
const CONSENT_EVERY: Duration = Duration::from_secs(5);

/// Upkeep deadlines are rounded up to this grid, so one wakeup serves every connection due in
/// the same slot.
const UPKEEP_GRID: Duration = Duration::from_millis(50);

/// Work for the thread, run with its [`Plane`].
type Task = Box<dyn FnOnce(&mut Plane) + Send>;

/// One connection on the thread.
pub struct Connection {
    pub pc: RTCPeerConnection,
    /// RTP packets received from this connection's client.
    pub received: u64,
    /// Whether ICE and DTLS are up (also told to `up`).
    pub connected: bool,
    /// When its timers last ran.
    upkept: Instant,
    up: Option<watch::Sender<bool>>,
    /// Whose audio this is and where it goes; none for a bare connection.
    participant: Option<Arc<Participant>>,
    feed: Option<SpeakerFeed>,
}

/// What the SFU attaches to a connection it opens.
pub struct Attach {
    pub participant: Arc<Participant>,
    pub feed: Option<SpeakerFeed>,
    /// Told whether ICE and DTLS are up.
    pub up: watch::Sender<bool>,
}

/// The thread's DTLS identity, shared by its connections: made once (a key pair and a signed
/// certificate cost milliseconds, which rtc would otherwise spend on every connection) and
/// remade a day before it expires.
struct Identity {
    crypto: Arc<dyn RTCCryptoProvider>,
    certificate: Option<RTCCertificate>,
}

impl Identity {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            crypto: rtc::crypto::default_provider()?,
            certificate: None,
        })
    }

    fn current(&mut self) -> anyhow::Result<(Arc<dyn RTCCryptoProvider>, RTCCertificate)> {
        let fresh = self.certificate.as_ref().filter(|certificate| {
            certificate
                .expires
                .duration_since(SystemTime::now())
                .is_ok_and(|left| left > Duration::from_secs(24 * 3600))
        });
        let certificate = match fresh {
            Some(certificate) => certificate.clone(),
            None => {
                let certificate = RTCCertificate::generate(
                    self.crypto.crypto(),
                    SignatureScheme::EcdsaP256Sha256,
                    CertificateParams::new(vec![random_hex128()])?,
                )?;
                self.certificate = Some(certificate.clone());
                certificate
            }
        };
        Ok((Arc::clone(&self.crypto), certificate))
    }
}

/// The other media threads, for packets whose listener lives there.
struct Peer {
    tasks: mpsc::Sender<Task>,
    wake: Arc<EventFd>,
}

/// What a media thread owns; reached through [`MediaThread::call`].
pub struct Plane {
    socket: UdpSocket,
    /// The address connections are reached at: the bound one, or its public twin behind a
    /// 1:1 NAT.
    advertised: SocketAddr,
    connections: HashMap<ConnectionId, Connection>,
    demux: Demux,
    timers: Timers,
    inbox: Inbox,
    outbox: Outbox,
    /// The connections a turn fed or woke, kept for the next turn's use.
    touched: Vec<ConnectionId>,
    /// Listeners written to since they were last driven.
    written: Vec<ConnectionId>,
    /// This thread's index among the media threads, and the others.
    index: usize,
    peers: Vec<Option<Peer>>,
    /// Packets for listeners on other threads, sent as one task per thread.
    elsewhere: Vec<Vec<Leg>>,
    stats: Option<Arc<Stats>>,
    /// The origin of the upkeep grid.
    started: Instant,
    identity: Identity,
    /// The connection being worked on, to be dropped if rtc panics inside it.
    busy: Option<ConnectionId>,
}

impl Plane {
    /// The address every connection of this thread tells its client.
    pub fn advertised(&self) -> SocketAddr {
        self.advertised
    }

    /// A new connection with server-chosen ICE credentials and the thread's one host
    /// candidate; its client reaches it once it has the answer (or offer) that carries them.
    pub fn open(&mut self, id: ConnectionId) -> anyhow::Result<()> {
        self.open_for(id, None)
    }

    /// [`Self::open`] for a participant: its audio is forwarded and fed to its bites.
    pub fn open_for(&mut self, id: ConnectionId, attach: Option<Attach>) -> anyhow::Result<()> {
        self.busy = Some(id);
        let (engine, registry) = media_engine()?;
        let (crypto, certificate) = self.identity.current()?;
        let ufrag = random_hex128()[..16].to_owned();
        let password = random_hex128();
        let settings = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(ufrag.clone(), password)
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            // Consent checks every 5 s (RFC 7675's interval) rather than rtc's 2 s: clients
            // check on their own, which keeps their NAT open.
            .with_ice_timeouts(None, None, Some(CONSENT_EVERY))
            // AES-GCM first (cheaper per packet), AES-CM for the clients that offer only it
            // (Chromium, by default, whichever side of DTLS it is on).
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            .with_crypto_provider(crypto)
            .build();
        let now = Instant::now();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_certificates(vec![certificate])
                    .build(),
            )
            .with_setting_engine(settings)
            .with_media_engine(engine)
            .with_interceptor_registry(registry)
            .build(now)?;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: self.advertised.ip().to_string(),
                port: self.advertised.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
        self.demux.expect(id, ufrag);
        let (participant, feed, up) = match attach {
            Some(Attach {
                participant,
                feed,
                up,
            }) => (Some(participant), feed, Some(up)),
            None => (None, None, None),
        };
        self.connections.insert(
            id,
            Connection {
                pc,
                received: 0,
                connected: false,
                upkept: now,
                up,
                participant,
                feed,
            },
        );
        self.drive(id);
        self.settle();
        Ok(())
    }

    /// Runs `f` on connection `id` (none: `None`), then lets it send what it has to.
    pub fn with<R>(&mut self, id: ConnectionId, f: impl FnOnce(&mut Connection) -> R) -> Option<R> {
        self.busy = Some(id);
        let result = f(self.connections.get_mut(&id)?);
        self.drive(id);
        self.settle();
        Some(result)
    }

    pub fn close(&mut self, id: ConnectionId) {
        self.busy = Some(id);
        if let Some(mut connection) = self.connections.remove(&id) {
            if let Err(err) = connection.pc.close() {
                tracing::debug!(error = %err, connection = id, "closing a media connection");
            }
            self.drain_writes(id, &mut connection);
        }
        self.demux.remove(id);
        self.timers.set(id, None);
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Takes everything connection `id` has for us: datagrams (queued), media, events, and
    /// its next deadline.
    fn drive(&mut self, id: ConnectionId) {
        // Out of the map while it forwards to the others (which are in it).
        let Some(mut connection) = self.connections.remove(&id) else {
            return;
        };
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            self.drive_taken(id, &mut connection);
        }));
        // Back even after a panic, so that `guarded` finds the connection to drop.
        self.connections.insert(id, connection);
        if let Err(panic) = outcome {
            panic::resume_unwind(panic);
        }
    }

    fn drive_taken(&mut self, id: ConnectionId, connection: &mut Connection) {
        let now = Instant::now();
        loop {
            // Forwarding works on the listeners; reading is this connection's work again.
            self.busy = Some(id);
            let Some(message) = connection.pc.poll_read() else {
                break;
            };
            if let RTCMessage::RtpPacket(_, packet) = message.message {
                connection.received += 1;
                self.forward(connection, packet, now);
            }
        }
        self.busy = Some(id);
        while let Some(event) = connection.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                connection.connected =
                    state == rtc::peer_connection::state::RTCPeerConnectionState::Connected;
                tracing::debug!(connection = id, %state, "media connection");
                if let Some(up) = &connection.up {
                    up.send_replace(connection.connected);
                }
            }
        }
        self.drain_writes(id, connection);
        let next = connection.pc.poll_timeout();
        self.timers
            .set(id, next.map(|at| self.upkeep_deadline(connection, at)));
    }

    /// When a connection asking for its timers at `at` gets them: as asked while it connects,
    /// at most once per [`UPKEEP_EVERY`] and on the grid once it is up.
    fn upkeep_deadline(&self, connection: &Connection, at: Instant) -> Instant {
        if !connection.connected {
            return at;
        }
        let at = at.max(connection.upkept + UPKEEP_EVERY);
        let grid = UPKEEP_GRID.as_nanos();
        let since = at.saturating_duration_since(self.started).as_nanos();
        let rounded = since.div_ceil(grid) * grid;
        // u64 nanoseconds last 584 years.
        self.started + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
    }

    /// A packet the client of `from` sent: to every listener of its route (here or on their
    /// thread) and to its bite task. Nothing here waits.
    fn forward(&mut self, from: &Connection, packet: rtc::rtp::Packet, now: Instant) {
        let Some(participant) = &from.participant else {
            return;
        };
        if let Some(stats) = &self.stats {
            stats.received.increment(1);
        }
        let level_id = participant.level_id.load(Ordering::Relaxed);
        // The level byte as received: listeners get it as is, under their own id.
        let level_bytes = match level_id {
            0 => None,
            id => packet.header.get_extension(id),
        };
        let route = participant.route();
        let mut forwarded = 0;
        for down in &route.listeners {
            let Some(leg) = down.leg(&packet, level_bytes.as_ref()) else {
                continue;
            };
            forwarded += 1;
            if leg.thread == self.index {
                self.write(leg, now);
            } else if let Some(queue) = self.elsewhere.get_mut(leg.thread) {
                queue.push(leg);
            }
        }
        if let Some(stats) = &self.stats {
            stats.forwarded.increment(forwarded);
        }
        if let (Some(feed), Some(room)) = (&from.feed, &route.room) {
            let level = level_bytes
                .clone()
                .and_then(|mut bytes| AudioLevelExtension::unmarshal(&mut bytes).ok());
            feed.push(Spoken {
                conversation: Arc::clone(room),
                packet: Incoming {
                    timestamp: packet.header.timestamp,
                    arrived_ms: feed.now_millis(),
                    level: level.map(|level| level.level),
                    payload: packet.payload,
                },
            });
        }
    }

    /// Hands a leg's packet to its listener's connection on this thread; a listener gone or
    /// refusing loses the packet, late audio being useless.
    fn write(&mut self, leg: Leg, now: Instant) {
        // The listener's work while rtc writes; then the speaker's (or none) again.
        let speaker = self.busy.replace(leg.listener);
        let written = self
            .connections
            .get_mut(&leg.listener)
            .and_then(|listener| listener.pc.rtp_sender(leg.sender))
            .is_some_and(|mut sender| sender.write_rtp(now, leg.packet).is_ok());
        self.busy = speaker;
        if written {
            self.written.push(leg.listener);
        } else if let Some(stats) = &self.stats {
            stats.dropped.increment(1);
        }
    }

    /// Sends what the listeners were given, and other threads their packets.
    fn settle(&mut self) {
        // Each listener once, however many packets it was given. Only its writes: giving it
        // packets changes nothing else (no media in, no events, no new deadline), and each of
        // rtc's polls sweeps its whole pipeline.
        let mut written = std::mem::take(&mut self.written);
        written.sort_unstable();
        written.dedup();
        for &id in &written {
            if let Some(listener) = self.connections.get_mut(&id) {
                self.busy = Some(id);
                send_from(
                    &mut listener.pc,
                    id,
                    (&mut self.demux, &mut self.outbox),
                    self.stats.as_deref(),
                );
            }
        }
        written.clear();
        self.written = written;
        for (thread, legs) in self.elsewhere.iter_mut().enumerate() {
            if legs.is_empty() {
                continue;
            }
            let legs = std::mem::take(legs);
            let Some(Some(peer)) = self.peers.get(thread) else {
                continue;
            };
            let task: Task = Box::new(move |plane: &mut Plane| {
                let now = Instant::now();
                for leg in legs {
                    plane.write(leg, now);
                }
                plane.settle();
            });
            if peer.tasks.send(task).is_ok() {
                let _ = peer.wake.write(1);
            }
        }
    }

    fn drain_writes(&mut self, id: ConnectionId, connection: &mut Connection) {
        send_from(
            &mut connection.pc,
            id,
            (&mut self.demux, &mut self.outbox),
            self.stats.as_deref(),
        );
    }

    /// Runs `work`; if rtc panics inside a connection, that connection is dropped and the
    /// thread goes on serving the others.
    fn guarded(&mut self, work: impl FnOnce(&mut Plane)) {
        self.busy = None;
        let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| work(self))) else {
            return;
        };
        let broken = self.busy.take();
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        tracing::error!(
            connection = broken,
            panic = message,
            "a media connection panicked; it is dropped"
        );
        if let Some(id) = broken {
            self.demux.remove(id);
            self.timers.set(id, None);
            if let Some(connection) = self.connections.remove(&id) {
                if let Some(up) = &connection.up {
                    up.send_replace(false);
                }
                // Its state is unknown: dropping it could panic again.
                if panic::catch_unwind(AssertUnwindSafe(|| drop(connection))).is_err() {
                    tracing::error!(connection = id, "dropping a broken media connection");
                }
            }
        }
        // The interrupted turn took some connections' deadlines and did not give them back:
        // every connection without one is looked at again at once.
        let now = Instant::now();
        for &id in self.connections.keys() {
            if !self.timers.contains(id) {
                self.timers.set(id, Some(now));
            }
        }
        // What it had gathered for the listeners still goes, unless that panics too.
        self.written.retain(|&id| Some(id) != broken);
        if panic::catch_unwind(AssertUnwindSafe(|| self.settle())).is_err() {
            tracing::error!("sending a broken turn's packets");
            self.written.clear();
        }
        self.outbox.flush(&self.socket);
    }

    /// One turn of the thread: datagrams in, due timers, datagrams out.
    fn turn(&mut self) {
        // Reused from turn to turn: the hot path allocates nothing here.
        let mut touched = std::mem::take(&mut self.touched);
        touched.clear();
        for _ in 0..BATCHES_PER_TURN {
            match self.inbox.receive(&self.socket) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "receiving media");
                    break;
                }
            }
            let now = Instant::now();
            for index in 0..self.inbox.len() {
                let Some((from, bytes)) = self.inbox.datagram(index) else {
                    continue;
                };
                // Routing is no connection's work.
                self.busy = None;
                if demux::refused(bytes) {
                    continue;
                }
                let Some(id) = self.demux.route(from, bytes) else {
                    continue;
                };
                let Some(connection) = self.connections.get_mut(&id) else {
                    continue;
                };
                self.busy = Some(id);
                let datagram = TaggedBytesMut {
                    now,
                    transport: TransportContext {
                        // The address the connection's candidate names (its public twin
                        // behind a NAT): ICE matches checks to candidates by it.
                        local_addr: self.advertised,
                        peer_addr: from,
                        transport_protocol: TransportProtocol::UDP,
                        ecn: None,
                    },
                    message: BytesMut::from(bytes),
                };
                if let Err(err) = connection.pc.handle_read(datagram) {
                    tracing::debug!(error = %err, connection = id, "a datagram was refused");
                }
                if connection.connected || demux::is_media(bytes) {
                    touched.push(id);
                } else {
                    // Until it is up, each handshake datagram is followed through at once: the
                    // DTLS handshake's last flight installs the SRTP keys only when its event
                    // is taken, and the client's first media may be next in the same batch.
                    self.drive(id);
                }
            }
        }
        let now = Instant::now();
        let first_due = touched.len();
        self.timers.take_due(now, &mut touched);
        for id in &touched[first_due..] {
            let Some(connection) = self.connections.get_mut(id) else {
                continue;
            };
            self.busy = Some(*id);
            connection.upkept = now;
            if let Err(err) = connection.pc.handle_timeout(now) {
                tracing::debug!(error = %err, connection = id, "a media timer failed");
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for &id in &touched {
            self.drive(id);
        }
        self.touched = touched;
        self.settle();
        self.outbox.flush(&self.socket);
    }
}

/// Moves what connection `id` has to send into the outbox, learning where it answered checks.
fn send_from(
    pc: &mut RTCPeerConnection,
    id: ConnectionId,
    (demux, outbox): (&mut Demux, &mut Outbox),
    stats: Option<&Stats>,
) {
    while let Some(datagram) = pc.poll_write() {
        let to = datagram.transport.peer_addr;
        demux.sent_datagram(id, to, &datagram.message);
        let mut buffer = outbox.buffer();
        buffer.extend_from_slice(&datagram.message);
        if !outbox.push(to, buffer)
            && let Some(stats) = stats
        {
            stats.dropped.increment(1);
        }
    }
}

/// A media thread and the way to reach its [`Plane`].
pub struct MediaThread {
    tasks: mpsc::Sender<Task>,
    wake: Arc<EventFd>,
    /// Set to end the loop: the task channel never closes while other threads hold it.
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    advertised: SocketAddr,
}

/// Starts `count` media threads, each on its own address from `pick` (port 0: any), which
/// forward to each other's connections.
pub fn start_threads(
    count: usize,
    mut pick: impl FnMut() -> Option<SocketAddr>,
    public_ip: Option<IpAddr>,
    stats: Option<Arc<Stats>>,
) -> io::Result<Vec<Arc<MediaThread>>> {
    let mut threads = Vec::with_capacity(count);
    for index in 0..count {
        let bind = pick().ok_or_else(|| io::Error::other("no free UDP port for media"))?;
        threads.push(Arc::new(MediaThread::start_as(
            (&format!("beep-media-{index}"), index, count),
            bind,
            public_ip,
            stats.clone(),
        )?));
    }
    // Each thread learns the others' queues.
    for thread in &threads {
        let peers: Vec<(mpsc::Sender<Task>, Arc<EventFd>)> = threads
            .iter()
            .map(|other| (other.tasks.clone(), Arc::clone(&other.wake)))
            .collect();
        thread.post(Box::new(move |plane: &mut Plane| {
            plane.peers = peers
                .into_iter()
                .enumerate()
                .map(|(index, (tasks, wake))| {
                    (index != plane.index).then_some(Peer { tasks, wake })
                })
                .collect();
        }));
    }
    Ok(threads)
}

impl MediaThread {
    /// Binds `bind` (port 0: any) and starts the thread; clients are told `public_ip` (or
    /// the bound address) and the bound port.
    pub fn start(name: &str, bind: SocketAddr, public_ip: Option<IpAddr>) -> io::Result<Self> {
        Self::start_as((name, 0, 1), bind, public_ip, None)
    }

    fn start_as(
        (name, index, count): (&str, usize, usize),
        bind: SocketAddr,
        public_ip: Option<IpAddr>,
        stats: Option<Arc<Stats>>,
    ) -> io::Result<Self> {
        let socket = UdpSocket::bind(bind)?;
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let advertised = SocketAddr::new(public_ip.unwrap_or(local.ip()), local.port());
        let wake = Arc::new(EventFd::from_value_and_flags(
            0,
            EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
        )?);
        let (tasks, queue) = mpsc::channel::<Task>();
        let stop = Arc::new(AtomicBool::new(false));
        let identity = Identity::new().map_err(io::Error::other)?;
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn({
            let wake = Arc::clone(&wake);
            let stop = Arc::clone(&stop);
            move || {
                // Built here: the batches hold the raw pointers system calls take, which
                // never leave this thread.
                let plane = Plane {
                    socket,
                    advertised,
                    connections: HashMap::new(),
                    demux: Demux::default(),
                    timers: Timers::default(),
                    inbox: Inbox::default(),
                    outbox: Outbox::default(),
                    touched: Vec::new(),
                    written: Vec::new(),
                    index,
                    peers: Vec::new(),
                    elsewhere: (0..count).map(|_| Vec::new()).collect(),
                    stats,
                    started: Instant::now(),
                    identity,
                    busy: None,
                };
                run(plane, &queue, &wake, &stop);
            }
        })?;
        Ok(Self {
            tasks,
            wake,
            stop,
            thread: Some(thread),
            advertised,
        })
    }

    pub fn advertised(&self) -> SocketAddr {
        self.advertised
    }

    /// Whether the thread still runs (it ends only if it cannot wait on its socket).
    pub fn is_alive(&self) -> bool {
        self.thread
            .as_ref()
            .is_some_and(|thread| !thread.is_finished())
    }

    /// Runs `task` on the thread, without waiting for it.
    fn post(&self, task: Task) {
        if self.tasks.send(task).is_ok() {
            let _ = self.wake.write(1);
        }
    }

    /// Closes connection `id`, without waiting.
    pub fn close(&self, id: ConnectionId) {
        self.post(Box::new(move |plane: &mut Plane| plane.close(id)));
    }

    /// Runs `f` on the thread with its plane; `None` if the thread has stopped.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Plane) -> R + Send + 'static,
    ) -> Option<R> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let task: Task = Box::new(move |plane| {
            let _gone = reply.send(f(plane));
        });
        self.tasks.send(task).ok()?;
        self.wake.write(1).ok()?;
        answer.await.ok()
    }
}

impl Drop for MediaThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut plane: Plane, queue: &mpsc::Receiver<Task>, wake: &EventFd, stop: &AtomicBool) {
    loop {
        let timeout = plane.timers.earliest().map_or(PollTimeout::NONE, |at| {
            let wait = at.saturating_duration_since(Instant::now());
            // Rounded up: waking a little late beats spinning until the deadline.
            let ms = wait.as_millis() + u128::from(wait.subsec_nanos() % 1_000_000 != 0);
            PollTimeout::try_from(Duration::from_millis(
                u64::try_from(ms).unwrap_or(u64::MAX).min(60_000),
            ))
            .unwrap_or(PollTimeout::MAX)
        });
        {
            // Writable too while datagrams wait for room in the socket's buffer.
            let socket_events = if plane.outbox.is_empty() {
                PollFlags::POLLIN
            } else {
                PollFlags::POLLIN | PollFlags::POLLOUT
            };
            let mut fds = [
                PollFd::new(plane.socket.as_fd(), socket_events),
                PollFd::new(wake.as_fd(), PollFlags::POLLIN),
            ];
            if let Err(err) = poll(&mut fds, timeout)
                && err != nix::errno::Errno::EINTR
            {
                tracing::error!(error = %err, "media thread cannot wait for its socket");
                return;
            }
        }
        let _ = wake.read();
        if stop.load(Ordering::SeqCst) {
            for id in plane.connections.keys().copied().collect::<Vec<_>>() {
                plane.close(id);
            }
            plane.outbox.flush(&plane.socket);
            // Other threads hold this queue: what waits in it is dropped here (its replies
            // with it).
            while queue.try_recv().is_ok() {}
            return;
        }
        while let Ok(task) = queue.try_recv() {
            plane.guarded(task);
        }
        plane.guarded(Plane::turn);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rtc::media_stream::MediaStreamTrack;
    use rtc::peer_connection::sdp::RTCSessionDescription;
    use rtc::rtp_transceiver::rtp_sender::{
        RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
    };
    use tokio::sync::watch;
    use webrtc::media_stream::track_local::TrackLocal;
    use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
    use webrtc::peer_connection::{
        PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
        RTCPeerConnectionState,
    };

    use super::*;
    use crate::services::bites::sfu::forward::opus;

    struct Events {
        gathered: watch::Sender<bool>,
        connected: watch::Sender<bool>,
    }

    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Events {
        async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
            if state == RTCIceGatheringState::Complete {
                self.gathered.send_replace(true);
            }
        }

        async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
            self.connected
                .send_replace(state == RTCPeerConnectionState::Connected);
        }
    }

    /// A client built with the `webrtc` crate (another stack than the plane's own use of
    /// `rtc`): full ICE, offering a microphone.
    async fn client(
        profiles: Option<Vec<SrtpProtectionProfile>>,
    ) -> (
        Arc<dyn PeerConnection>,
        Arc<TrackLocalStaticRTP>,
        watch::Receiver<bool>,
        watch::Receiver<bool>,
    ) {
        let mut settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled);
        if let Some(profiles) = profiles {
            settings = settings.with_srtp_protection_profiles(profiles);
        }
        let (gathered_tx, gathered) = watch::channel(false);
        let (connected_tx, connected) = watch::channel(false);
        let (engine, registry) = media_engine().unwrap();
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(engine)
                .with_interceptor_registry(registry)
                .with_setting_engine(settings.build())
                .with_handler(Arc::new(Events {
                    gathered: gathered_tx,
                    connected: connected_tx,
                }))
                .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
                .build()
                .await
                .unwrap(),
        );
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "mic".into(),
            "mic".into(),
            "mic".into(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(4242),
                    ..Default::default()
                },
                codec: opus(),
                ..Default::default()
            }],
        )));
        pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await
            .unwrap();
        (pc, track, gathered, connected)
    }

    /// Answers `offer` on a new connection `id` of the plane; the answer's SDP.
    fn answer(plane: &mut Plane, id: ConnectionId, offer: String) -> String {
        plane.open(id).unwrap();
        plane
            .with(id, |connection| {
                let now = Instant::now();
                let offer = RTCSessionDescription::offer(offer).unwrap();
                connection.pc.set_remote_description(now, offer).unwrap();
                let answer = connection.pc.create_answer(None).unwrap();
                connection.pc.set_local_description(now, answer).unwrap();
                connection.pc.local_description().unwrap().sdp.clone()
            })
            .unwrap()
    }

    async fn connect(
        thread: &MediaThread,
        id: ConnectionId,
    ) -> (Arc<dyn PeerConnection>, Arc<TrackLocalStaticRTP>) {
        connect_offering(thread, id, None).await
    }

    /// [`connect`] with a client offering only `profiles` for SRTP.
    async fn connect_offering(
        thread: &MediaThread,
        id: ConnectionId,
        profiles: Option<Vec<SrtpProtectionProfile>>,
    ) -> (Arc<dyn PeerConnection>, Arc<TrackLocalStaticRTP>) {
        let (pc, track, mut gathered, mut connected) = client(profiles).await;
        let offer = pc.create_offer(None).await.unwrap();
        pc.set_local_description(offer).await.unwrap();
        let _ = gathered.wait_for(|done| *done).await;
        let sdp = pc.local_description().await.unwrap().sdp;
        let answer_sdp = thread
            .call(move |plane| answer(plane, id, sdp))
            .await
            .unwrap();
        assert!(
            answer_sdp.contains("a=ice-lite"),
            "the plane answers as ICE-lite"
        );
        pc.set_remote_description(RTCSessionDescription::answer(answer_sdp).unwrap())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), connected.wait_for(|up| *up))
            .await
            .expect("ICE and DTLS came up through the shared socket")
            .unwrap();
        (pc, track)
    }

    async fn received(thread: &MediaThread, id: ConnectionId) -> u64 {
        thread
            .call(move |plane| plane.with(id, |connection| connection.received))
            .await
            .flatten()
            .unwrap_or(0)
    }

    /// One RTP packet from the test client's microphone.
    fn mic_packet(sequence_number: u16) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 111,
                sequence_number,
                timestamp: u32::from(sequence_number) * 960,
                ssrc: 4242,
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(&[0xfc; 60]),
        }
    }

    /// Waits until connection `id` has received `count` packets.
    async fn until_received(thread: &MediaThread, id: ConnectionId, count: u64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while received(thread, id).await < count {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client that knows only AES-CM (SRTP_AES128_CM_HMAC_SHA1_80, as older stacks) still
    /// gets media through, the server offering AES-GCM first.
    #[tokio::test]
    async fn a_client_offering_only_aes_cm_is_served() {
        let thread =
            MediaThread::start("media-test-cm", "127.0.0.1:0".parse().unwrap(), None).unwrap();
        let (pc, track) = connect_offering(
            &thread,
            3,
            Some(vec![SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80]),
        )
        .await;
        for n in 0..5 {
            track.write_rtp(mic_packet(n)).await.unwrap();
        }
        until_received(&thread, 3, 5, "no media from an AES-CM client").await;
        pc.close().await.unwrap();
    }

    /// Bound to every address, advertising another: checks arrive at the bound socket and
    /// must still match the advertised candidate.
    #[tokio::test]
    async fn a_thread_bound_to_any_address_is_reached_at_its_public_one() {
        let thread = MediaThread::start(
            "media-test-any",
            "0.0.0.0:0".parse().unwrap(),
            Some("127.0.0.1".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(thread.advertised().ip().to_string(), "127.0.0.1");
        let (pc, track) = connect(&thread, 7).await;
        track.write_rtp(mic_packet(0)).await.unwrap();
        until_received(&thread, 7, 1, "no media through the public address").await;
        pc.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_panic_inside_a_connection_drops_it_and_the_thread_goes_on() {
        let thread =
            MediaThread::start("media-test-panic", "127.0.0.1:0".parse().unwrap(), None).unwrap();
        let opened = thread
            .call(|plane| {
                plane.open(1).unwrap();
                plane.open(2).unwrap();
                plane.len()
            })
            .await;
        assert_eq!(opened, Some(2));
        let answered = thread
            .call(|plane| plane.with(1, |_| panic!("as if rtc panicked")))
            .await;
        assert!(answered.is_none(), "the panicking call gets no answer");
        assert!(thread.is_alive());
        assert_eq!(thread.call(|plane| plane.len()).await, Some(1));
        assert_eq!(
            thread.call(|plane| plane.with(2, |_| ())).await,
            Some(Some(())),
            "the other connection is still served"
        );
    }

    #[tokio::test]
    async fn clients_of_another_stack_connect_on_one_shared_port_and_send_media() {
        let thread =
            MediaThread::start("media-test", "127.0.0.1:0".parse().unwrap(), None).unwrap();
        let (first_pc, first) = connect(&thread, 1).await;
        let (second_pc, second) = connect(&thread, 2).await;
        for (track, count) in [(&first, 20u16), (&second, 30)] {
            for n in 0..count {
                track.write_rtp(mic_packet(n)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while (received(&thread, 1).await, received(&thread, 2).await) != (20, 30) {
            assert!(
                Instant::now() < deadline,
                "received {} and {}",
                received(&thread, 1).await,
                received(&thread, 2).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let open = thread.call(|plane| plane.len()).await.unwrap();
        assert_eq!(open, 2);
        thread.call(|plane| plane.close(1)).await.unwrap();
        assert_eq!(thread.call(|plane| plane.len()).await, Some(1));
        first_pc.close().await.unwrap();
        second_pc.close().await.unwrap();
        drop(thread);
    }
}
