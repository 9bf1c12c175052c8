//! One client connection: the participant as the rest of the SFU sees it, and the building of
//! its PeerConnection (handed to its [`Negotiator`] from then on).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState,
};

use super::forward::DownTrack;
use super::negotiation::{Negotiation, Negotiator};
use super::transport::{Transport, media_engine};
use crate::services::bites::error::BitesError;

/// Who is connected: one signalling socket of one user's client (device).
pub struct Participant {
    /// Unique per connection, so a reconnect of the same client is a new participant.
    pub id: u64,
    pub user: String,
    pub client: String,
    /// Frames for the client's socket.
    pub outbox: mpsc::Sender<Frame>,
    /// Where this participant's audio goes: read on every packet.
    pub route: RwLock<Arc<Route>>,
    /// The tracks this participant should receive, by source participant; the negotiator
    /// brings the connection in line with it.
    pub wanted: Mutex<HashMap<u64, Arc<DownTrack>>>,
    /// The client's signalling messages, for the negotiator: at most [`MESSAGE_QUEUE`] wait.
    pub negotiate: mpsc::Sender<Negotiation>,
    /// Wakes the negotiator to bring the connection in line with `wanted`; wakes-ups made
    /// before it looks fold into one.
    pub resync: Arc<Notify>,
    /// Fired when the participant is disconnected (or replaced by a newer connection of the
    /// same client): its socket closes and its negotiator stops.
    pub closed: CancellationToken,
    /// The RFC 6464 extension id in the client's offer (0: none).
    pub level_id: AtomicU8,
}

/// Client messages that may wait for the negotiator. It takes each in well under a
/// millisecond, except an offer (up to `bites.sfu.max_message_bytes`), so an honest client
/// (an offer, then a burst of candidates) stays far below; a full queue closes the socket.
pub const MESSAGE_QUEUE: usize = 32;

/// Frames the negotiator has for the client's socket, at most [`OUTBOX`] waiting; a client
/// that does not read them holds up its own negotiation, then its socket.
pub const OUTBOX: usize = 64;

/// What the negotiator hands the client's socket.
pub enum Frame {
    Text(String),
    /// An `error::` body after which the socket closes: the client went past a limit.
    Refuse(String),
}

/// A participant's room and the tracks its audio feeds there.
#[derive(Default)]
pub struct Route {
    pub room: Option<Arc<str>>,
    pub listeners: Vec<Arc<DownTrack>>,
}

impl Participant {
    pub fn route(&self) -> Arc<Route> {
        Arc::clone(&self.route.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn set_route(&self, route: Route) {
        *self.route.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(route);
    }

    pub fn wanted(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<DownTrack>>> {
        self.wanted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the negotiator to bring the tracks in line with `wanted` (and offer).
    pub fn renegotiate(&self) {
        self.resync.notify_one();
    }
}

/// What the connection's callbacks report; it holds no reference to the connection.
struct Events {
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
    gathered: watch::Sender<bool>,
    connected: watch::Sender<bool>,
    participant: u64,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _closed = self.tracks.send(track);
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(participant = self.participant, %state, "media connection");
        self.connected
            .send_replace(state == RTCPeerConnectionState::Connected);
    }
}

/// A new connection's parts: the participant, its negotiator and its incoming tracks.
pub struct Built {
    pub participant: Arc<Participant>,
    pub negotiator: Negotiator,
    pub tracks: mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
}

static NEXT_PARTICIPANT: AtomicU64 = AtomicU64::new(1);

/// Builds a participant's connection. Runs on the media runtime: the connection's sockets
/// and timers live where it is built.
pub async fn build(
    transport: Arc<Transport>,
    user: String,
    client: String,
    outbox: mpsc::Sender<Frame>,
) -> Result<Built, BitesError> {
    let id = NEXT_PARTICIPANT.fetch_add(1, Ordering::Relaxed);
    let (tracks_tx, tracks) = mpsc::unbounded_channel();
    let (gathered_tx, gathered) = watch::channel(false);
    let (connected_tx, connected) = watch::channel(false);
    let (engine, registry) = media_engine()?;
    let addr = transport
        .ports
        .pick(transport.ip)
        .ok_or(BitesError::NoFreePort)?;
    let pc = PeerConnectionBuilder::new()
        // No STUN or TURN for the server itself: it knows its address (`public_ip` behind
        // a NAT), and clients that need a relay get one from `/webrtc/config`.
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                .build(),
        )
        .with_handler(Arc::new(Events {
            tracks: tracks_tx,
            gathered: gathered_tx,
            connected: connected_tx,
            participant: id,
        }))
        .with_udp_addrs(vec![addr.to_string()])
        .build()
        .await?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    let (negotiate, work) = mpsc::channel(MESSAGE_QUEUE);
    let participant = Arc::new(Participant {
        id,
        user,
        client,
        outbox,
        route: RwLock::default(),
        wanted: Mutex::default(),
        negotiate,
        resync: Arc::new(Notify::new()),
        closed: CancellationToken::new(),
        level_id: AtomicU8::new(0),
    });
    let negotiator = Negotiator::new(&participant, pc, transport, work, gathered, connected);
    Ok(Built {
        participant,
        negotiator,
        tracks,
    })
}
