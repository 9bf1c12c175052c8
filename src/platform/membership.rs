//! Who belongs to which conversation, and who may see whom: the one access policy every
//! service obeys.
//!
//! core owns memberships and contacts and announces every change with the events below;
//! permissions answers [`AccessCheck`] from a cache it fills through [`MembershipSource`]
//! (core, in-process) and empties on those events. core answers [`RelationCheck`] (contact
//! or shared conversation) itself, cached the same way. heartbeat, pictures and bites ask
//! these traits and never import either service.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::bus::Event;

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

/// Whether an answer may come from a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Cached answers are fine: they are cleared by the events that change them.
    Cached,
    /// From the tables: for a reader reacting to one of those events, which may hear it before
    /// the cache does.
    Fresh,
}

/// "May `viewer` see `user`'s presence?", answered by core from its contacts and members.
/// An error means "could not tell"; callers refuse (fail closed).
pub trait RelationCheck: Send + Sync {
    fn relation<'a>(
        &'a self,
        viewer: &'a str,
        user: &'a str,
        freshness: Freshness,
    ) -> BoxFuture<'a, Result<Relation, AccessError>>;
}

pub type SharedRelations = Arc<dyn RelationCheck>;

/// `user` no longer has `contact` as a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRemoved {
    pub user: String,
    pub contact: String,
}

impl Event for ContactRemoved {
    const SUBJECT: &'static str = "core.contact_removed";
}
