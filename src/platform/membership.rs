//! Who belongs to which conversation: the one membership policy every service obeys.
//!
//! core owns memberships and announces every change with the events below; permissions answers
//! [`AccessCheck`] from a cache it fills through [`MembershipSource`] (core, in-process) and
//! empties on those events. heartbeat, pictures and bites ask [`AccessCheck`] and never import
//! either service.

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
