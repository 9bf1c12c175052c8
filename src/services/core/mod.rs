//! core: users, contacts, conversations and members (`/core`).
//!
//! So far it owns the `user` table and answers auth's "the user behind this login" through
//! [`UserDirectory`](crate::platform::users::UserDirectory); its HTTP routes arrive with its
//! own issue.

pub mod users;

use std::sync::Arc;

use super::Service;
use crate::platform::Platform;

pub struct Core {
    pub users: Arc<users::Users>,
}

impl Core {
    pub fn new(platform: &Platform) -> Self {
        Self {
            users: Arc::new(users::Users::new(platform.db.connection().clone())),
        }
    }
}

impl Service for Core {
    fn name(&self) -> &'static str {
        "core"
    }
}
