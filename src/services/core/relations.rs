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
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::contacts::contact;
use super::conversations::member;
use super::users::user;
use crate::platform::bus::Bus;
use crate::platform::clock::Clock;
use crate::platform::ids::is_prefixed_id;
use crate::platform::membership::{
    AccessError, AccessEvent, AccessEvents, ContactAdded, ContactRemoved, ConversationDeleted,
    MemberAdded, MemberRemoved, Relation, RelationChange, RelationCheck,
};

/// Beyond this many cached pairs the cache starts over: a bound on memory, not a policy.
const MAX_CACHED: usize = 100_000;
/// Changes buffered for a slow reader, which past it is told to recheck everything.
const CHANGES_BUFFER: usize = 256;

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
    /// Announced after the answers they affect are cleared.
    changes: broadcast::Sender<RelationChange>,
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
            changes: broadcast::channel(CHANGES_BUFFER).0,
            clock,
        }
    }

    fn answers(&self) -> MutexGuard<'_, HashMap<(String, String), Cached>> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub async fn relation(&self, viewer: &str, user: &str) -> Result<Relation, DbErr> {
        if !is_prefixed_id(user, "u-") {
            return Ok(Relation::NoSuchUser);
        }
        if !is_prefixed_id(viewer, "u-") {
            return Ok(Relation::Stranger);
        }
        let key = (viewer.to_owned(), user.to_owned());
        let now = self.clock.now_millis();
        if let Some(cached) = self.answers().get(&key)
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
    pub(super) async fn read(&self, viewer: &str, user: &str) -> Result<Relation, DbErr> {
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
        {
            let mut answers = self.answers();
            self.invalidations.fetch_add(1, Ordering::SeqCst);
            answers.clear();
        }
        tracing::warn!(
            why,
            "relation events may have been lost: cached answers dropped"
        );
    }

    /// Clears answers on core's contact and membership events until `stop`. A joiner (or a
    /// leaver) now shares (or no longer shares) a conversation with each member: every
    /// answer about them goes.
    pub async fn follow(self: Arc<Self>, bus: Bus, stop: CancellationToken) {
        let mut events = AccessEvents::new("core relations", &bus, &self.listening);
        while let Some(event) = events.next(&stop).await {
            match &event {
                AccessEvent::ContactAdded(ContactAdded { contact }) => {
                    self.forget_pair(&contact.usera, &contact.userb);
                }
                AccessEvent::ContactRemoved(ContactRemoved { user, contact }) => {
                    self.forget_pair(user, contact);
                }
                AccessEvent::MemberAdded(MemberAdded { user, .. })
                | AccessEvent::MemberRemoved(MemberRemoved { user, .. }) => self.forget(&[user]),
                AccessEvent::ConversationDeleted(ConversationDeleted { members, .. }) => {
                    let members: Vec<&str> = members.iter().map(String::as_str).collect();
                    self.forget(&members);
                }
                AccessEvent::Missed(why) => self.forget_all(why),
            }
            // After the clear: a reader that asks again gets the new answer.
            if let Some(change) = event.ended_relations() {
                // No receiver (no heartbeat in this process) is fine.
                let _unheard = self.changes.send(change);
            }
        }
    }
}

impl RelationCheck for Relations {
    fn relation<'a>(
        &'a self,
        viewer: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Relation, AccessError>> {
        async move {
            Relations::relation(self, viewer, user)
                .await
                .map_err(|err| AccessError(err.into()))
        }
        .boxed()
    }

    fn changes(&self) -> broadcast::Receiver<RelationChange> {
        self.changes.subscribe()
    }
}
