//! core's answer to "may V see U's presence": V has U as a contact, shares a conversation with
//! U, or is U. Answers are cached in-process and cleared by the events that change them, the
//! way permissions caches memberships: every replica hears every event, so each keeps its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use sea_orm::sea_query::Query;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter};
use tokio_util::sync::CancellationToken;

use super::contacts::contact;
use super::conversations::member;
use super::events::ContactAdded;
use super::users::user;
use crate::platform::bus::{Bus, BusError, Received, keep_listening};
use crate::platform::clock::Clock;
use crate::platform::ids::is_prefixed_id;
use crate::platform::membership::{
    AccessError, ContactRemoved, ConversationDeleted, Freshness, MemberAdded, MemberRemoved,
    Relation, RelationCheck,
};

/// Beyond this many cached pairs the cache starts over: a bound on memory, not a policy.
const MAX_CACHED: usize = 100_000;

struct Cached {
    relation: Relation,
    /// Unix ms on the platform clock.
    expires_at: i64,
}

pub struct Relations {
    db: DatabaseConnection,
    answers: Mutex<HashMap<(String, String), Cached>>,
    ttl: Duration,
    /// Bumped by every clearing event: a lookup that straddles one does not keep its answer,
    /// which may predate the change.
    invalidations: AtomicU64,
    /// Answers are cached only while the events that clear them are heard.
    listening: AtomicBool,
    clock: Clock,
}

impl Relations {
    pub fn new(db: DatabaseConnection, ttl: Duration, clock: Clock) -> Self {
        Self {
            db,
            answers: Mutex::default(),
            ttl,
            invalidations: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            clock,
        }
    }

    fn answers(&self) -> MutexGuard<'_, HashMap<(String, String), Cached>> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub async fn relation(
        &self,
        viewer: &str,
        user: &str,
        freshness: Freshness,
    ) -> Result<Relation, DbErr> {
        if !is_prefixed_id(user, "u-") {
            return Ok(Relation::NoSuchUser);
        }
        if !is_prefixed_id(viewer, "u-") {
            return Ok(Relation::Stranger);
        }
        let key = (viewer.to_owned(), user.to_owned());
        let now = self.clock.now_millis();
        if freshness == Freshness::Cached
            && let Some(cached) = self.answers().get(&key)
            && cached.expires_at > now
        {
            return Ok(cached.relation);
        }
        let seen = self.invalidations.load(Ordering::SeqCst);
        let relation = self.read(viewer, user).await?;
        // A user who does not exist yet may be created by a login: not cached.
        if relation != Relation::NoSuchUser && self.listening.load(Ordering::SeqCst) {
            let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
            let mut answers = self.answers();
            // Checked under the lock the events clear under: no event slips in between.
            if self.invalidations.load(Ordering::SeqCst) == seen {
                if answers.len() >= MAX_CACHED {
                    answers.clear();
                }
                answers.insert(
                    key,
                    Cached {
                        relation,
                        expires_at: now.saturating_add(ttl_ms),
                    },
                );
            }
        }
        Ok(relation)
    }

    /// The relation as the tables say.
    async fn read(&self, viewer: &str, user: &str) -> Result<Relation, DbErr> {
        if user::Entity::find_by_id(user).count(&self.db).await? == 0 {
            return Ok(Relation::NoSuchUser);
        }
        if viewer == user {
            return Ok(Relation::Related);
        }
        let contacts = contact::Entity::find()
            .filter(contact::Column::User.eq(viewer))
            .filter(contact::Column::Contact.eq(user))
            .count(&self.db)
            .await?;
        if contacts > 0 {
            return Ok(Relation::Related);
        }
        let users_conversations = Query::select()
            .column(member::Column::Conversation)
            .from(member::Entity)
            .and_where(member::Column::User.eq(user))
            .to_owned();
        let shared = member::Entity::find()
            .filter(member::Column::User.eq(viewer))
            .filter(member::Column::Conversation.in_subquery(users_conversations))
            .count(&self.db)
            .await?;
        Ok(if shared > 0 {
            Relation::Related
        } else {
            Relation::Stranger
        })
    }

    /// Clears every answer about `users`, as viewer or as viewed.
    fn forget(&self, users: &[&str]) {
        let mut answers = self.answers();
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        answers.retain(|(viewer, user), _| {
            !users.contains(&viewer.as_str()) && !users.contains(&user.as_str())
        });
    }

    fn forget_pair(&self, viewer: &str, user: &str) {
        let mut answers = self.answers();
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        answers.remove(&(viewer.to_owned(), user.to_owned()));
    }

    fn forget_all(&self, why: &str) {
        let mut answers = self.answers();
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        answers.clear();
        tracing::warn!(
            why,
            "relation events may have been lost: cached answers dropped"
        );
    }

    /// Clears answers on core's contact and membership events until `stop`.
    pub async fn follow(self: Arc<Self>, bus: Bus, stop: CancellationToken) {
        keep_listening("core relations", &stop, || async {
            let result = self.listen(&bus, &stop).await;
            self.listening.store(false, Ordering::SeqCst);
            if !stop.is_cancelled() {
                self.forget_all("the subscription ended");
            }
            result
        })
        .await;
    }

    async fn listen(&self, bus: &Bus, stop: &CancellationToken) -> Result<(), BusError> {
        let mut contacted = bus.subscribe::<ContactAdded>().await?;
        let mut uncontacted = bus.subscribe::<ContactRemoved>().await?;
        let mut joined = bus.subscribe::<MemberAdded>().await?;
        let mut left = bus.subscribe::<MemberRemoved>().await?;
        let mut deleted = bus.subscribe::<ConversationDeleted>().await?;
        bus.confirm_subscriptions().await?;
        self.listening.store(true, Ordering::SeqCst);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                Some(received) = contacted.receive() => match received {
                    Received::Event(event) => {
                        let contact = &event.data.contact;
                        self.forget_pair(&contact.usera, &contact.userb);
                    }
                    Received::Missed => self.forget_all("missed contact_added events"),
                },
                Some(received) = uncontacted.receive() => match received {
                    Received::Event(event) => self.forget_pair(&event.data.user, &event.data.contact),
                    Received::Missed => self.forget_all("missed contact_removed events"),
                },
                // A joiner (or leaver) now shares (or no longer shares) the conversation with
                // each member: every answer about them is cleared.
                Some(received) = joined.receive() => match received {
                    Received::Event(event) => self.forget(&[&event.data.user]),
                    Received::Missed => self.forget_all("missed member_added events"),
                },
                Some(received) = left.receive() => match received {
                    Received::Event(event) => self.forget(&[&event.data.user]),
                    Received::Missed => self.forget_all("missed member_removed events"),
                },
                Some(received) = deleted.receive() => match received {
                    Received::Event(event) => {
                        let members: Vec<&str> = event.data.members.iter().map(String::as_str).collect();
                        self.forget(&members);
                    }
                    Received::Missed => self.forget_all("missed conversation_deleted events"),
                },
                else => return Ok(()),
            }
        }
    }
}

impl RelationCheck for Relations {
    fn relation<'a>(
        &'a self,
        viewer: &'a str,
        user: &'a str,
        freshness: Freshness,
    ) -> BoxFuture<'a, Result<Relation, AccessError>> {
        async move {
            Relations::relation(self, viewer, user, freshness)
                .await
                .map_err(|err| AccessError(err.into()))
        }
        .boxed()
    }
}
