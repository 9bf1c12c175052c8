//! core: users, contacts, conversations and members (`/core`), the original `core` service.
//!
//! It owns the `user`, `conversation`, `member` and `contact` tables, answers auth's "the user
//! behind this login" ([`UserDirectory`](crate::platform::users::UserDirectory)) and
//! permissions' "is U a member of C" ([`MembershipSource`](crate::platform::membership::MembershipSource)),
//! and announces every change on the bus.

pub mod contacts;
pub mod conversations;
pub mod events;
pub mod routes;
pub mod streams;
pub mod users;

use std::sync::Arc;

use actix_web::web;

use super::Service;
use crate::config::CoreConfig;
use crate::platform::Platform;
use crate::platform::bus::{Bus, Event};
use crate::platform::workers::Workers;

pub struct Core {
    pub users: Arc<users::Users>,
    pub conversations: Arc<conversations::Conversations>,
    state: Arc<CoreState>,
}

pub struct CoreState {
    users: Arc<users::Users>,
    conversations: Arc<conversations::Conversations>,
    contacts: Arc<contacts::Contacts>,
    hub: Arc<streams::Hub>,
    bus: Bus,
    config: CoreConfig,
}

impl CoreState {
    /// Publishes a change that is already committed. A bus failure cannot undo it, so it is
    /// logged, not answered: streams and caches on other replicas miss this one event.
    async fn announce<E: Event>(&self, event: E) {
        if let Err(err) = self.bus.publish(event).await {
            tracing::warn!(subject = E::SUBJECT, error = %err, "a core event was not published");
        }
    }
}

impl Core {
    pub fn new(platform: &Platform) -> Self {
        let db = platform.db.connection().clone();
        let users = Arc::new(users::Users::new(db.clone()));
        let conversations = Arc::new(conversations::Conversations::new(db.clone()));
        let contacts = Arc::new(contacts::Contacts::new(db));
        let hub = Arc::new(streams::Hub::new(
            Arc::clone(&conversations),
            Arc::clone(&contacts),
        ));
        let state = Arc::new(CoreState {
            users: Arc::clone(&users),
            conversations: Arc::clone(&conversations),
            contacts,
            hub,
            bus: platform.bus.clone(),
            config: platform.config.core.clone(),
        });
        Self {
            users,
            conversations,
            state,
        }
    }
}

impl Service for Core {
    fn name(&self) -> &'static str {
        "core"
    }

    fn routes(&self, cfg: &mut web::ServiceConfig) {
        routes::routes(cfg, Arc::clone(&self.state));
    }

    fn start(&self, workers: &mut Workers) {
        let hub = Arc::clone(&self.state.hub);
        let bus = self.state.bus.clone();
        workers.spawn("core-streams", move |stop| hub.run(bus, stop));
    }
}
