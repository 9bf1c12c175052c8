//! One client connection: the participant as the rest of the SFU sees it. Its media
//! connection lives on a media thread ([`super::media::plane`]); its negotiator
//! ([`super::negotiation`]) reaches it there.

use std::collections::HashMap;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::forward::DownTrack;
use super::negotiation::Negotiation;

/// Who is connected: one signalling socket of one user's client (device).
pub struct Participant {
    /// Unique per connection, so a reconnect of the same client is a new participant; also
    /// its media connection's id on its thread.
    pub id: u64,
    /// The media thread its connection lives on.
    pub thread: usize,
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
    /// A participant with nothing routed yet, and the receiving end of its negotiation queue.
    pub fn new(
        (id, thread): (u64, usize),
        user: String,
        client: String,
        outbox: mpsc::Sender<Frame>,
    ) -> (Arc<Self>, mpsc::Receiver<Negotiation>) {
        let (negotiate, work) = mpsc::channel(MESSAGE_QUEUE);
        let participant = Arc::new(Self {
            id,
            thread,
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
        (participant, work)
    }

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
