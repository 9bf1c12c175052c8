//! core: users, contacts, conversations and members (`/core`), the original `core` service.
//!
//! It owns the `user`, `conversation`, `member` and `contact` tables, answers auth's "the user
//! behind this login" ([`UserDirectory`](crate::platform::users::UserDirectory)),
//! permissions' "is U a member of C" ([`MembershipSource`](crate::platform::membership::MembershipSource))
//! heartbeat's "may V see U's presence" ([`RelationCheck`](crate::platform::membership::RelationCheck))
//! and pictures' "who shows this picture" ([`PictureUsage`](crate::platform::pictures::PictureUsage)),
//! and announces every change on the bus.

pub mod contacts;
pub mod conversations;
mod error;
pub mod events;
pub mod pictures;
mod relations;
mod routes;
mod service;
pub mod streams;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

pub use self::error::CoreError;
pub use self::service::CoreService;
use crate::platform::Platform;
use crate::platform::pictures::SharedCatalog;
use crate::platform::service::{Routes, Service};
use crate::platform::workers::Workers;

pub struct Core {
    /// The seams core answers: `UserDirectory`, `MembershipSource` and `RelationCheck`.
    pub users: Arc<users::Users>,
    pub conversations: Arc<conversations::Conversations>,
    pub relations: Arc<relations::Relations>,
    /// `PictureUsage`, asked by pictures.
    pub picture_uses: Arc<pictures::PictureUses>,
    service: Arc<CoreService>,
}

impl Core {
    /// The seams core answers over NATS for services in other processes.
    pub fn answer(&self, answers: &mut crate::platform::rpc::Answers) {
        use crate::platform::membership::MembershipSource as _;
        use crate::platform::pictures::PictureUsage as _;
        use crate::platform::remote::{calls, directory_answer};
        use crate::platform::users::{Login, NewProfile, UserDirectory as _};
        let conversations = Arc::clone(&self.conversations);
        answers.add(
            calls::CORE,
            calls::IS_MEMBER,
            move |(user, conversation): (String, String)| {
                let conversations = Arc::clone(&conversations);
                async move { conversations.is_member(&user, &conversation).await }
            },
        );
        // Fresh from the tables: the asker hears core's events itself, maybe before core has.
        let relations = Arc::clone(&self.relations);
        answers.add(
            calls::CORE,
            calls::RELATION,
            move |(viewer, user): (String, String)| {
                let relations = Arc::clone(&relations);
                async move { relations.read(&viewer, &user).await }
            },
        );
        let users = Arc::clone(&self.users);
        answers.add(calls::CORE, calls::ENSURE_USER, move |login: Login| {
            let users = Arc::clone(&users);
            async move { directory_answer(users.ensure_user(&login).await) }
        });
        let users = Arc::clone(&self.users);
        answers.add(
            calls::CORE,
            calls::REGISTER_USER,
            move |(login, profile): (Login, NewProfile)| {
                let users = Arc::clone(&users);
                async move { directory_answer(users.register_user(&login, profile).await) }
            },
        );
        let uses = Arc::clone(&self.picture_uses);
        answers.add(calls::CORE, calls::PICTURE_USAGE, move |name: String| {
            let uses = Arc::clone(&uses);
            async move { uses.usage(&name).await }
        });
        let uses = Arc::clone(&self.picture_uses);
        answers.add(
            calls::CORE,
            calls::PICTURE_SHOWN_TO,
            move |(name, user): (String, String)| {
                let uses = Arc::clone(&uses);
                async move { uses.shown_to(&name, &user).await }
            },
        );
        let uses = Arc::clone(&self.picture_uses);
        answers.add(
            calls::CORE,
            calls::PICTURES_IN_USE,
            move |names: Vec<String>| {
                let uses = Arc::clone(&uses);
                async move { uses.in_use(&names).await }
            },
        );
    }

    /// `catalog` is pictures' "is this name stored", when pictures is hosted.
    pub fn new(platform: &Platform, catalog: Option<SharedCatalog>) -> Self {
        let db = platform.db.connection().clone();
        let clock = &platform.clock;
        let picture_uses = Arc::new(pictures::PictureUses::new(db.clone()));
        let picture_names = pictures::PictureNames::new(catalog, Arc::clone(&picture_uses));
        let users = Arc::new(users::Users::new(
            db.clone(),
            clock.clone(),
            picture_names.clone(),
        ));
        let conversations = Arc::new(conversations::Conversations::new(db.clone(), clock.clone()));
        let relations = Arc::new(relations::Relations::new(
            db.clone(),
            Duration::from_secs(platform.config.core.relation_cache_ttl_secs.max(1)),
            clock.clone(),
        ));
        let service = Arc::new(CoreService::new(
            Arc::clone(&users),
            Arc::clone(&conversations),
            Arc::new(contacts::Contacts::new(db, clock.clone())),
            picture_names,
            platform.bus.clone(),
            platform.config.core.clone(),
        ));
        Self {
            users,
            conversations,
            relations,
            picture_uses,
            service,
        }
    }
}

impl Service for Core {
    fn name(&self) -> &'static str {
        "core"
    }

    fn routes(&self, cfg: &mut Routes<'_>) {
        routes::routes(cfg, Arc::clone(&self.service));
    }

    fn start(&self, workers: &mut Workers) {
        let hub = self.service.hub();
        let bus = self.service.bus();
        workers.spawn("core-streams", move |stop| hub.run(bus, stop));
        let relations = Arc::clone(&self.relations);
        let bus = self.service.bus();
        workers.spawn("core-relations", move |stop| relations.follow(bus, stop));
    }
}
