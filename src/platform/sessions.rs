//! Session watch: every long-lived connection (an SSE stream, the signalling socket) belongs to
//! the login session of the token that opened it, and ends when that session does.
//!
//! A connection takes a [`Lease`] for its caller and ends when the lease's token is
//! cancelled: when the session is revoked ([`SessionRevoked`]: logout, `DELETE
//! /login/sessions/{sid}`, refresh-token reuse, a block copied from the database), when the
//! user is blocked ([`UserBlocked`]), or when the access token expires (plus
//! `auth.leeway_secs`) without the session being refreshed ([`SessionRefreshed`] moves the
//! end to the new token's expiry). Both events travel on the bus,
//! so a revocation made on one replica ends the connections of every replica. The same
//! registry caps how many connections one user holds open (`http.max_streams_per_user`);
//! a lease gives its slot back when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix_web::http::StatusCode;
use futures_util::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::bus::{Bus, BusError, Event, keep_listening};
use super::clock::Clock;
use super::http::{ApiError, Caller};

/// A login session was ended; its connections end with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRevoked {
    pub session: String,
    pub user: String,
}

impl Event for SessionRevoked {
    const SUBJECT: &'static str = "auth.session_revoked";
}

/// A session's tokens were refreshed: its connections live on until `expires_at` (Unix
/// seconds, the new access token's `exp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRefreshed {
    pub session: String,
    pub user: String,
    pub expires_at: u64,
}

impl Event for SessionRefreshed {
    const SUBJECT: &'static str = "auth.session_refreshed";
}

/// A user was blocked; every connection of theirs ends, with or without a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserBlocked {
    pub user: String,
}

impl Event for UserBlocked {
    const SUBJECT: &'static str = "auth.user_blocked";
}

/// How often expired connections are looked for: the bound on how late past its expiry a
/// connection ends.
const EXPIRY_SWEEP_EVERY: Duration = Duration::from_millis(250);

/// The caller already holds `http.max_streams_per_user` connections open.
#[derive(Debug, thiserror::Error)]
#[error("at most {0} streams and sockets may be open at once per user")]
pub struct TooManyStreams(pub usize);

impl From<TooManyStreams> for ApiError {
    fn from(err: TooManyStreams) -> Self {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            err.to_string(),
        )
    }
}

#[derive(Clone)]
pub struct SessionWatch(Arc<Inner>);

struct Inner {
    open: Mutex<Registry>,
    max_per_user: usize,
    leeway_secs: u64,
    /// How long an ended session is remembered, so a connection its last token opens a moment
    /// later still ends at once: the life of an access token.
    remember_ended_secs: u64,
    clock: Clock,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    by_user: HashMap<String, Vec<Watched>>,
    /// Sessions ended lately, with when they may be forgotten (Unix seconds).
    ended: HashMap<String, u64>,
    /// The server is shutting down: every connection ends, and any opened now ends at once.
    closing: bool,
}

struct Watched {
    id: u64,
    session: Option<String>,
    /// Unix seconds past which the connection ends (`exp` + leeway).
    ends_at: Option<u64>,
    token: CancellationToken,
}

/// One open connection's place in the registry; dropping it frees the place.
pub struct Lease {
    watch: Arc<Inner>,
    user: String,
    id: u64,
    token: CancellationToken,
}

impl Lease {
    /// Resolves once the connection must end.
    pub async fn ended(&self) {
        self.token.cancelled().await;
    }

    pub fn is_ended(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether it ended because the server is shutting down (not because of the session).
    pub fn ended_by_shutdown(&self) -> bool {
        self.is_ended() && self.watch.registry().closing
    }

    /// `events` until the lease ends; the stream holds the lease (and its place) meanwhile.
    pub fn until_ended<S: Stream + 'static>(self, events: S) -> impl Stream<Item = S::Item> {
        events.take_until(async move { self.ended().await })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut registry = self.watch.registry();
        if let Some(open) = registry.by_user.get_mut(&self.user) {
            open.retain(|watched| watched.id != self.id);
            if open.is_empty() {
                registry.by_user.remove(&self.user);
            }
        }
    }
}

impl SessionWatch {
    pub fn new(max_per_user: usize, leeway_secs: u64, access_ttl_secs: u64, clock: Clock) -> Self {
        Self(Arc::new(Inner {
            open: Mutex::default(),
            max_per_user: max_per_user.max(1),
            leeway_secs,
            remember_ended_secs: access_ttl_secs.saturating_add(leeway_secs),
            clock,
        }))
    }

    /// Registers a connection of `caller`, refused past the per-user cap.
    pub fn open(&self, caller: &Caller) -> Result<Lease, TooManyStreams> {
        let token = CancellationToken::new();
        let mut registry = self.0.registry();
        let id = registry.next_id;
        registry.next_id += 1;
        let ended = registry.closing
            || caller
                .session_id
                .as_ref()
                .is_some_and(|session| registry.ended.contains_key(session));
        let open = registry.by_user.entry(caller.user_id.clone()).or_default();
        if open.len() >= self.0.max_per_user {
            return Err(TooManyStreams(self.0.max_per_user));
        }
        if ended {
            token.cancel();
        }
        open.push(Watched {
            id,
            session: caller.session_id.clone(),
            ends_at: caller
                .expires_at
                .map(|exp| exp.saturating_add(self.0.leeway_secs)),
            token: token.clone(),
        });
        drop(registry);
        Ok(Lease {
            watch: Arc::clone(&self.0),
            user: caller.user_id.clone(),
            id,
            token,
        })
    }

    /// Ends the connections of session `session` of `user`; returns how many.
    pub fn end_session(&self, user: &str, session: &str) -> usize {
        let forget_at = self
            .0
            .clock
            .now_secs()
            .saturating_add(self.0.remember_ended_secs);
        let mut registry = self.0.registry();
        registry.ended.insert(session.to_owned(), forget_at);
        registry.by_user.get(user).map_or(0, |open| {
            end(open, |watched| watched.session.as_deref() == Some(session))
        })
    }

    /// The session's tokens were refreshed: its connections end at the new token's expiry
    /// instead of the old one's.
    pub fn extend_session(&self, user: &str, session: &str, expires_at: u64) {
        let ends_at = expires_at.saturating_add(self.0.leeway_secs);
        if let Some(open) = self.0.registry().by_user.get_mut(user) {
            for watched in open
                .iter_mut()
                .filter(|watched| watched.session.as_deref() == Some(session))
            {
                watched.ends_at = watched.ends_at.map(|at| at.max(ends_at));
            }
        }
    }

    /// Ends every connection of `user`; returns how many.
    pub fn end_user(&self, user: &str) -> usize {
        self.0
            .registry()
            .by_user
            .get(user)
            .map_or(0, |open| end(open, |_| true))
    }

    /// Ends the connections whose token has expired; returns how many.
    pub fn end_expired(&self) -> usize {
        let now = self.0.clock.now_secs();
        let mut registry = self.0.registry();
        registry.ended.retain(|_, forget_at| *forget_at >= now);
        registry
            .by_user
            .values()
            .map(|open| end(open, |watched| watched.ends_at.is_some_and(|at| at < now)))
            .sum()
    }

    /// Ends every connection, now and from now on: the server is shutting down, and a
    /// graceful stop would otherwise wait `server.shutdown_timeout_secs` for streams that
    /// never end by themselves. Clients reconnect to another replica, or to this one restarted.
    pub fn end_all(&self) -> usize {
        let mut registry = self.0.registry();
        registry.closing = true;
        registry
            .by_user
            .values()
            .map(|open| end(open, |_| true))
            .sum()
    }

    /// How many connections `user` holds open.
    pub fn open_count(&self, user: &str) -> usize {
        self.0.registry().by_user.get(user).map_or(0, Vec::len)
    }

    /// Ends connections as revocations arrive on the bus and as tokens expire, until `stop`.
    pub async fn run(self, bus: Bus, stop: CancellationToken) {
        keep_listening("session watch", &stop, || self.listen(&bus, &stop)).await;
    }

    async fn listen(&self, bus: &Bus, stop: &CancellationToken) -> Result<(), BusError> {
        let mut revoked = bus.subscribe::<SessionRevoked>().await?;
        let mut blocked = bus.subscribe::<UserBlocked>().await?;
        let mut refreshed = bus.subscribe::<SessionRefreshed>().await?;
        let mut sweep = tokio::time::interval(EXPIRY_SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = sweep.tick() => {
                    let ended = self.end_expired();
                    if ended > 0 {
                        tracing::debug!(ended, "connections ended at their token's expiry");
                    }
                }
                Some(event) = revoked.next() => {
                    self.end_session(&event.data.user, &event.data.session);
                }
                Some(event) = blocked.next() => {
                    self.end_user(&event.data.user);
                }
                Some(event) = refreshed.next() => {
                    let SessionRefreshed { session, user, expires_at } = event.data;
                    self.extend_session(&user, &session, expires_at);
                }
                else => return Ok(()),
            }
        }
    }
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn end(open: &[Watched], which: impl Fn(&Watched) -> bool) -> usize {
    open.iter()
        .filter(|watched| !watched.token.is_cancelled() && which(watched))
        .map(|watched| watched.token.cancel())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(user: &str, session: &str, exp: u64) -> Caller {
        Caller {
            user_id: user.into(),
            client_id: "c".into(),
            session_id: Some(session.into()),
            expires_at: Some(exp),
        }
    }

    #[test]
    fn leases_end_with_their_session_user_or_expiry_and_count_against_the_cap() {
        let clock = Clock::adjustable();
        let watch = SessionWatch::new(2, 30, 900, clock.clone());
        let exp = clock.now_secs() + 900;
        let a = watch.open(&caller("u1", "s1", exp)).unwrap();
        let b = watch.open(&caller("u1", "s2", exp + 60)).unwrap();
        assert!(watch.open(&caller("u1", "s1", exp)).is_err());
        assert_eq!(watch.end_session("u1", "s1"), 1);
        assert!(a.is_ended() && !b.is_ended());
        drop(a);
        assert_eq!(watch.open_count("u1"), 1);
        // A connection of an ended session ends at once.
        let late = watch.open(&caller("u1", "s1", exp)).unwrap();
        assert!(late.is_ended());
        drop(late);
        clock.advance(Duration::from_secs(900 + 31));
        assert_eq!(watch.end_expired(), 0);
        clock.advance(Duration::from_secs(60));
        assert_eq!(watch.end_expired(), 1);
        assert!(b.is_ended());
        let c = watch.open(&caller("u1", "s3", u64::MAX)).unwrap();
        assert_eq!(watch.end_user("u1"), 1);
        assert!(c.is_ended());
    }
}
