//! core's own events. Membership and contact events every service hears live in
//! [`platform::membership`](crate::platform::membership); these are for core's streams and any
//! service that wants them.

use serde::{Deserialize, Serialize};

use super::conversations::ConversationView;
use crate::platform::bus::Event;
use crate::platform::users::UserRecord;

/// A user's profile changed (or was filled in for the first time).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserUpdated {
    pub user: UserRecord,
}

impl Event for UserUpdated {
    const SUBJECT: &'static str = "core.user_updated";
}

/// `by` created `conversation` and is its only member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConversationCreated {
    pub conversation: ConversationView,
    pub by: String,
}

impl Event for ConversationCreated {
    const SUBJECT: &'static str = "core.conversation_created";
}

/// A conversation's title or picture changed; `pinned` in it means nothing (it is per member).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConversationUpdated {
    pub conversation: ConversationView,
}

impl Event for ConversationUpdated {
    const SUBJECT: &'static str = "core.conversation_updated";
}

/// `user` pinned or unpinned `conversation` (seen by that user only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberUpdated {
    pub user: String,
    pub conversation: String,
    pub pinned: bool,
}

impl Event for MemberUpdated {
    const SUBJECT: &'static str = "core.member_updated";
}
