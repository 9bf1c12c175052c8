//! The SFU: one room per conversation, every participant's audio forwarded to every other
//! participant's connection in the room, and handed (without waiting) to the bite pipeline.
//!
//! Room changes are bookkeeping under one lock (which tracks each participant should
//! receive, and where each one's audio goes); each participant's negotiator then brings its
//! connection in line and renegotiates. Media, forwarding and bite cutting run on a runtime of
//! their own, so HTTP load and media do not queue behind each other.

pub(crate) mod forward;
mod negotiation;
pub mod peer;
mod sdp;
mod signal;
mod transport;

pub mod media;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use metrics::Counter;
use tokio::sync::{mpsc, watch};

use self::forward::DownTrack;
use self::media::plane::{Attach, MediaThread, start_threads};
use self::negotiation::{Link, Negotiator};
use self::peer::{Frame, Participant, Route};
use self::transport::Transport;
use super::error::BitesError;
use super::pipeline::Ingest;
use crate::config::SfuConfig;
use crate::platform::telemetry::Metrics;

pub use signal::{SignalState, configure};

/// A client, as the SFU knows it: a user on one of their devices.
type ClientKey = (String, String);

pub struct Sfu {
    /// The media threads, each with its UDP socket; connections are spread over them.
    threads: Vec<Arc<MediaThread>>,
    next_thread: AtomicUsize,
    /// Negotiation and bite cutting, off the HTTP workers.
    media: MediaRuntime,
    ingest: Option<Ingest>,
    max_room_size: usize,
    rooms: Mutex<Rooms>,
    stats: Arc<Stats>,
}

/// Counters on `/metrics`.
pub struct Stats {
    received: Counter,
    forwarded: Counter,
    /// Packets a listener's connection did not take.
    dropped: Counter,
}

static NEXT_PARTICIPANT: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
struct Rooms {
    connected: HashMap<ClientKey, Arc<Participant>>,
    /// Joins that came before the client's socket.
    pending: HashMap<ClientKey, Arc<str>>,
    rooms: HashMap<Arc<str>, Vec<Arc<Participant>>>,
}

/// A tokio runtime that may be dropped from async code (it is shut down in the background).
struct MediaRuntime(Option<tokio::runtime::Runtime>);

impl MediaRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle(),
            // Only `drop` takes the runtime out.
            None => unreachable!("media runtime used after drop"),
        }
    }
}

impl Drop for MediaRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Sfu {
    pub fn new(
        config: &SfuConfig,
        ingest: Option<Ingest>,
        metrics: &Metrics,
    ) -> Result<Self, BitesError> {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("beep-signal")
            .enable_all()
            .build()
            .map_err(BitesError::MediaRuntimeFailed)?;
        let stats = Arc::new(Stats {
            received: metrics.counter("beep_sfu_packets_received_total", &[]),
            forwarded: metrics.counter("beep_sfu_packets_forwarded_total", &[]),
            dropped: metrics.counter("beep_sfu_packets_dropped_total", &[]),
        });
        let transport = Transport::new(config)?;
        let threads = start_threads(
            threads,
            || transport.ports.pick(transport.ip),
            transport.public_ip,
            Some(Arc::clone(&stats)),
        )
        .map_err(BitesError::MediaRuntimeFailed)?;
        Ok(Self {
            threads,
            next_thread: AtomicUsize::new(0),
            media: MediaRuntime(Some(runtime)),
            ingest,
            max_room_size: config.max_room_size.max(2),
            rooms: Mutex::default(),
            stats,
        })
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a client's media connection; a connection of the same client before it is
    /// closed. Returns the participant and the text frames to send it.
    pub async fn connect(
        self: &Arc<Self>,
        user: &str,
        client: &str,
    ) -> Result<(Arc<Participant>, mpsc::Receiver<Frame>), BitesError> {
        let (outbox, frames) = mpsc::channel(peer::OUTBOX);
        let id = NEXT_PARTICIPANT.fetch_add(1, Ordering::Relaxed);
        // Round-robin over the threads still running.
        let first = self.next_thread.fetch_add(1, Ordering::Relaxed);
        let index = (0..self.threads.len())
            .map(|offset| first.wrapping_add(offset) % self.threads.len())
            .find(|&index| self.threads[index].is_alive())
            .ok_or(BitesError::MediaThreadGone)?;
        let thread = Arc::clone(&self.threads[index]);
        let (participant, work) =
            Participant::new((id, index), user.to_owned(), client.to_owned(), outbox);
        let media = self.media.handle();
        // The speaker's bite task runs on the media runtime.
        let feed = {
            let _entered = media.enter();
            self.ingest
                .as_ref()
                .map(|ingest| ingest.speaker(&participant.user, &participant.client))
        };
        let (up, connected) = watch::channel(false);
        let attach = Attach {
            participant: Arc::clone(&participant),
            feed,
            up,
        };
        // Closes the connection if this call is abandoned before its negotiator owns it.
        let mut opened = Opened {
            thread: Arc::clone(&thread),
            id,
            armed: true,
        };
        thread
            .call(move |plane| plane.open_for(id, Some(attach)))
            .await
            .ok_or(BitesError::MediaThreadGone)?
            .map_err(BitesError::Connection)?;
        let negotiator = Negotiator::new(&participant, Link { thread, id }, work, connected);
        media.spawn(negotiator.run());
        opened.armed = false;

        let key = (user.to_owned(), client.to_owned());
        let mut rooms = self.rooms();
        if let Some(previous) = rooms
            .connected
            .insert(key.clone(), Arc::clone(&participant))
        {
            close(&previous);
            self.leave(&mut rooms, &previous);
        }
        if let Some(room) = rooms.pending.remove(&key)
            && let Err(err) = self.enter(&mut rooms, &participant, room)
        {
            tracing::debug!(error = %err, "a join made before connecting failed");
        }
        Ok((participant, frames))
    }

    /// The client's socket closed.
    pub fn disconnect(&self, participant: &Arc<Participant>) {
        let mut rooms = self.rooms();
        let key = (participant.user.clone(), participant.client.clone());
        if rooms
            .connected
            .get(&key)
            .is_some_and(|current| Arc::ptr_eq(current, participant))
        {
            rooms.connected.remove(&key);
            rooms.pending.remove(&key);
        }
        // Closed first, so leaving renegotiates only those who stay.
        close(participant);
        self.leave(&mut rooms, participant);
    }

    /// Puts the client in the conversation's room, out of any other. The caller has checked
    /// membership. A client not connected yet enters when it connects.
    pub fn join(&self, user: &str, client: &str, conversation: &str) -> Result<(), BitesError> {
        let key = (user.to_owned(), client.to_owned());
        let mut rooms = self.rooms();
        match rooms.connected.get(&key).cloned() {
            Some(participant) => self.enter(&mut rooms, &participant, conversation.into()),
            None => {
                rooms.pending.insert(key, conversation.into());
                Ok(())
            }
        }
    }

    /// Takes the client out of the conversation's room, or its join made before connecting;
    /// a client elsewhere stays where it is.
    pub fn left(&self, user: &str, client: &str, conversation: &str) {
        let key = (user.to_owned(), client.to_owned());
        let mut rooms = self.rooms();
        if let Some(participant) = rooms.connected.get(&key).cloned()
            && participant.route().room.as_deref() == Some(conversation)
        {
            self.leave(&mut rooms, &participant);
        }
        if rooms
            .pending
            .get(&key)
            .is_some_and(|room| &**room == conversation)
        {
            rooms.pending.remove(&key);
        }
    }

    /// A member left or was removed: their clients leave the conversation's room.
    pub fn member_removed(&self, conversation: &str, user: &str) {
        let mut rooms = self.rooms();
        let leaving: Vec<Arc<Participant>> = rooms
            .rooms
            .get(conversation)
            .map(|room| room.iter().filter(|p| p.user == user).cloned().collect())
            .unwrap_or_default();
        for participant in leaving {
            self.leave(&mut rooms, &participant);
        }
        rooms
            .pending
            .retain(|(pending_user, _), room| !(pending_user == user && &**room == conversation));
    }

    /// A conversation was deleted: its room empties.
    pub fn conversation_deleted(&self, conversation: &str) {
        let mut rooms = self.rooms();
        let leaving = rooms.rooms.get(conversation).cloned().unwrap_or_default();
        for participant in leaving {
            self.leave(&mut rooms, &participant);
        }
        rooms.pending.retain(|_, room| &**room != conversation);
    }

    fn enter(
        &self,
        rooms: &mut Rooms,
        participant: &Arc<Participant>,
        conversation: Arc<str>,
    ) -> Result<(), BitesError> {
        if participant.route().room.as_deref() == Some(&*conversation) {
            return Ok(());
        }
        let size = rooms.rooms.get(&conversation).map_or(0, Vec::len);
        if size >= self.max_room_size {
            return Err(BitesError::RoomFull {
                capacity: self.max_room_size,
            });
        }
        self.leave(rooms, participant);
        let room = rooms.rooms.entry(Arc::clone(&conversation)).or_default();
        let mut listeners = Vec::with_capacity(room.len());
        for other in room.iter() {
            // The newcomer's audio into the other's connection, and the other's into the
            // newcomer's.
            let to_other = DownTrack::new(
                (participant.id, &participant.user, &participant.client),
                (other.id, other.thread),
                self.stats.dropped.clone(),
            );
            other.wanted().insert(participant.id, Arc::clone(&to_other));
            listeners.push(to_other);

            let from_other = DownTrack::new(
                (other.id, &other.user, &other.client),
                (participant.id, participant.thread),
                self.stats.dropped.clone(),
            );
            participant
                .wanted()
                .insert(other.id, Arc::clone(&from_other));
            let route = other.route();
            let mut other_listeners = route.listeners.clone();
            other_listeners.push(from_other);
            other.set_route(Route {
                room: route.room.clone(),
                listeners: other_listeners,
            });
            other.renegotiate();
        }
        room.push(Arc::clone(participant));
        participant.set_route(Route {
            room: Some(conversation),
            listeners,
        });
        participant.renegotiate();
        Ok(())
    }

    fn leave(&self, rooms: &mut Rooms, participant: &Arc<Participant>) {
        let Some(conversation) = participant.route().room.clone() else {
            return;
        };
        if let Some(room) = rooms.rooms.get_mut(&conversation) {
            room.retain(|other| !Arc::ptr_eq(other, participant));
            for other in room.iter() {
                other.wanted().remove(&participant.id);
                let route = other.route();
                other.set_route(Route {
                    room: route.room.clone(),
                    listeners: route
                        .listeners
                        .iter()
                        .filter(|down| down.listener != participant.id)
                        .cloned()
                        .collect(),
                });
                other.renegotiate();
            }
            if room.is_empty() {
                rooms.rooms.remove(&conversation);
            }
        }
        participant.wanted().clear();
        participant.set_route(Route::default());
        participant.renegotiate();
    }
}

/// A media connection opened for a client, until its negotiator takes it over.
struct Opened {
    thread: Arc<MediaThread>,
    id: u64,
    armed: bool,
}

impl Drop for Opened {
    fn drop(&mut self) {
        if self.armed {
            // Queued after the open, so it runs after it.
            self.thread.close(self.id);
        }
    }
}

fn close(participant: &Participant) {
    participant.closed.cancel();
}
