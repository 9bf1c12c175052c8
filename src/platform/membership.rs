//! Who belongs to which conversation, and who may see whom: the one access policy every
//! service obeys.
//!
//! core owns memberships and contacts and announces every change with the events below;
//! permissions answers [`AccessCheck`] from a cache it fills through [`MembershipSource`]
//! (core, in-process) and empties on those events. core answers [`RelationCheck`] (contact
//! or shared conversation) itself, cached the same way. heartbeat, pictures and bites ask
//! these traits and never import either service.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::bus::{Bus, BusError, Event, Received, Subscription};

#[derive(Debug, thiserror::Error)]
#[error("membership cannot be checked: {0}")]
pub struct AccessError(#[source] pub anyhow::Error);

/// "May `user` touch `conversation`?": true only for a current member of a conversation that
/// exists. An error means "could not tell"; callers refuse (fail closed).
pub trait AccessCheck: Send + Sync {
    fn may_access<'a>(
        &'a self,
        user: &'a str,
        conversation: &'a str,
    ) -> BoxFuture<'a, Result<bool, AccessError>>;
}

pub type SharedAccess = Arc<dyn AccessCheck>;

/// The authoritative answer, read from core's tables.
pub trait MembershipSource: Send + Sync {
    fn is_member<'a>(
        &'a self,
        user: &'a str,
        conversation: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<bool>>;
}

pub type SharedMembership = Arc<dyn MembershipSource>;

/// `user` joined `conversation` (as its creator, or added by a member).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAdded {
    pub conversation: String,
    pub user: String,
}

impl Event for MemberAdded {
    const SUBJECT: &'static str = "core.member_added";
}

/// `user` left `conversation` or was removed from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRemoved {
    pub conversation: String,
    pub user: String,
}

impl Event for MemberRemoved {
    const SUBJECT: &'static str = "core.member_removed";
}

/// `conversation` is gone, with everyone who was a member when it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationDeleted {
    pub conversation: String,
    pub members: Vec<String>,
}

impl Event for ConversationDeleted {
    const SUBJECT: &'static str = "core.conversation_deleted";
}

/// What `viewer` is to `user`, for who may watch `user`'s presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// There is no such user.
    NoSuchUser,
    /// Neither a contact nor in a conversation with them.
    Stranger,
    /// `viewer` has `user` as a contact, shares a conversation with them, or is them.
    Related,
}

/// Relations that may have ended, announced by the owner once its cached answers about them
/// are cleared: a reader that asks again then gets the new answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelationChange {
    /// `viewer` may no longer see `user` (a contact removed).
    Pair { viewer: String, user: String },
    /// These users' relations, as viewer or as viewed, may have ended (a conversation left
    /// or deleted).
    Users(Vec<String>),
    /// Any relation may have ended (changes may have been missed).
    All,
}

/// "May `viewer` see `user`'s presence?", answered by core from its contacts and members.
/// An error means "could not tell"; callers refuse (fail closed).
pub trait RelationCheck: Send + Sync {
    fn relation<'a>(
        &'a self,
        viewer: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Relation, AccessError>>;

    /// Every [`RelationChange`] from now on. A receiver that falls behind is told it lagged,
    /// which means [`RelationChange::All`].
    fn changes(&self) -> tokio::sync::broadcast::Receiver<RelationChange>;
}

pub type SharedRelations = Arc<dyn RelationCheck>;

/// A contact as the original's events carried it: `usera` has `userb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactView {
    pub usera: String,
    pub userb: String,
}

/// `contact.usera` now has `contact.userb` as a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactAdded {
    pub contact: ContactView,
}

impl Event for ContactAdded {
    const SUBJECT: &'static str = "core.contact_added";
}

/// `user` no longer has `contact` as a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRemoved {
    pub user: String,
    pub contact: String,
}

impl Event for ContactRemoved {
    const SUBJECT: &'static str = "core.contact_removed";
}

/// One of core's membership and contact events, as a cache of the answers they change hears it.
#[derive(Debug)]
pub enum AccessEvent {
    MemberAdded(MemberAdded),
    MemberRemoved(MemberRemoved),
    ConversationDeleted(ConversationDeleted),
    ContactAdded(ContactAdded),
    ContactRemoved(ContactRemoved),
    /// Events may have been lost (a slow reader, NATS dropped messages or the connection, the
    /// subscription ended): every cached answer may be stale.
    Missed(&'static str),
}

impl AccessEvent {
    /// The relations this event may have ended (a contact removed, a conversation left or
    /// deleted, or events missed), for readers that end what depended on them.
    pub fn ended_relations(&self) -> Option<RelationChange> {
        match self {
            Self::ContactRemoved(ContactRemoved { user, contact }) => Some(RelationChange::Pair {
                viewer: user.clone(),
                user: contact.clone(),
            }),
            Self::MemberRemoved(MemberRemoved { user, .. }) => {
                Some(RelationChange::Users(vec![user.clone()]))
            }
            Self::ConversationDeleted(ConversationDeleted { members, .. }) => {
                Some(RelationChange::Users(members.clone()))
            }
            Self::Missed(_) => Some(RelationChange::All),
            Self::MemberAdded(_) | Self::ContactAdded(_) => None,
        }
    }
}

/// How long to wait before subscribing again after the bus refused.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Core's membership and contact events, one at a time, for a cache of the answers they
/// change: `while let Some(event) = events.next(&stop).await { … }`. Subscribes (and, when a
/// subscription ends, subscribes again) by itself; `listening` is true exactly while
/// subscribed, since an answer cached before the subscription could outlive an event never
/// heard.
pub struct AccessEvents<'a> {
    what: &'static str,
    bus: &'a Bus,
    listening: &'a AtomicBool,
    subscribed: Option<Subscriptions>,
}

struct Subscriptions {
    joined: Subscription<MemberAdded>,
    left: Subscription<MemberRemoved>,
    deleted: Subscription<ConversationDeleted>,
    contacted: Subscription<ContactAdded>,
    uncontacted: Subscription<ContactRemoved>,
}

impl<'a> AccessEvents<'a> {
    pub fn new(what: &'static str, bus: &'a Bus, listening: &'a AtomicBool) -> Self {
        Self {
            what,
            bus,
            listening,
            subscribed: None,
        }
    }

    async fn subscribe(&self) -> Result<Subscriptions, BusError> {
        let subscriptions = Subscriptions {
            joined: self.bus.subscribe().await?,
            left: self.bus.subscribe().await?,
            deleted: self.bus.subscribe().await?,
            contacted: self.bus.subscribe().await?,
            uncontacted: self.bus.subscribe().await?,
        };
        self.bus.confirm_subscriptions().await?;
        Ok(subscriptions)
    }

    /// The next event, or `None` once `stop` fires.
    pub async fn next(&mut self, stop: &CancellationToken) -> Option<AccessEvent> {
        let event = self.next_until(stop).await;
        if event.is_none() {
            self.listening.store(false, Ordering::SeqCst);
        }
        event
    }

    async fn next_until(&mut self, stop: &CancellationToken) -> Option<AccessEvent> {
        loop {
            let Some(subscribed) = &mut self.subscribed else {
                match self.subscribe().await {
                    Ok(subscriptions) => {
                        self.subscribed = Some(subscriptions);
                        self.listening.store(true, Ordering::SeqCst);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "{} cannot subscribe to the bus", self.what);
                        tokio::select! {
                            () = stop.cancelled() => return None,
                            () = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
                        }
                    }
                }
                continue;
            };
            return tokio::select! {
                () = stop.cancelled() => None,
                Some(received) = subscribed.joined.receive() => Some(match received {
                    Received::Event(event) => AccessEvent::MemberAdded(event.data),
                    Received::Missed => AccessEvent::Missed("missed member_added events"),
                }),
                Some(received) = subscribed.left.receive() => Some(match received {
                    Received::Event(event) => AccessEvent::MemberRemoved(event.data),
                    Received::Missed => AccessEvent::Missed("missed member_removed events"),
                }),
                Some(received) = subscribed.deleted.receive() => Some(match received {
                    Received::Event(event) => AccessEvent::ConversationDeleted(event.data),
                    Received::Missed => AccessEvent::Missed("missed conversation_deleted events"),
                }),
                Some(received) = subscribed.contacted.receive() => Some(match received {
                    Received::Event(event) => AccessEvent::ContactAdded(event.data),
                    Received::Missed => AccessEvent::Missed("missed contact_added events"),
                }),
                Some(received) = subscribed.uncontacted.receive() => Some(match received {
                    Received::Event(event) => AccessEvent::ContactRemoved(event.data),
                    Received::Missed => AccessEvent::Missed("missed contact_removed events"),
                }),
                else => {
                    self.subscribed = None;
                    self.listening.store(false, Ordering::SeqCst);
                    Some(AccessEvent::Missed("the subscription ended"))
                }
            };
        }
    }
}
