//! pictures: user and conversation pictures (`/pictures`), the original `pictures` service,
//! made safe.
//!
//! An upload is accepted only if its bytes are a JPEG, PNG, WebP or GIF of a sane size, and is
//! stored re-encoded (no metadata, upright, scaled down, with a thumbnail) under the hash of
//! its bytes, in the platform's blob store (a local directory, or S3). Who may read one is
//! decided from who shows it: core answers that ([`PictureUsage`]); core in turn keeps only
//! names pictures stored ([`PictureCatalog`]). Pictures nobody shows are swept away.
//!
//! [`PictureUsage`]: crate::platform::pictures::PictureUsage
//! [`PictureCatalog`]: crate::platform::pictures::PictureCatalog

mod error;
mod memory;
pub mod process;
mod routes;
mod service;
mod store;

use std::sync::Arc;

use actix_web::web;

use self::service::PicturesService;
pub use self::store::PictureStore;
use crate::platform::Platform;
use crate::platform::membership::SharedAccess;
use crate::platform::pictures::SharedUsage;
use crate::platform::service::{Routes, Service};
use crate::platform::workers::Workers;

pub struct Pictures {
    service: Arc<PicturesService>,
}

impl Pictures {
    /// The catalog pictures answers over NATS for core in another process.
    pub fn answer(store: &Arc<PictureStore>, answers: &mut crate::platform::rpc::Answers) {
        use crate::platform::pictures::PictureCatalog as _;
        use crate::platform::remote::calls;
        let store = Arc::clone(store);
        answers.add(
            calls::PICTURES,
            calls::CLAIM,
            move |(name, user): (String, String)| {
                let store = Arc::clone(&store);
                async move { store.claim(&name, &user).await }
            },
        );
    }

    /// The stored pictures, which answer core's `PictureCatalog`: built before core, which
    /// asks it, and before this service, which asks core.
    pub fn store(platform: &Platform) -> Arc<PictureStore> {
        Arc::new(PictureStore::new(
            platform.db.connection().clone(),
            platform.blobs.clone(),
            platform.clock.clone(),
        ))
    }

    pub fn new(
        platform: &Platform,
        store: Arc<PictureStore>,
        usage: SharedUsage,
        access: SharedAccess,
    ) -> Self {
        Self {
            service: Arc::new(PicturesService::new(platform, store, usage, access)),
        }
    }
}

impl Service for Pictures {
    fn name(&self) -> &'static str {
        "pictures"
    }

    fn routes(&self, cfg: &mut Routes<'_>) {
        routes::routes(cfg, web::Data::from(Arc::clone(&self.service)));
    }

    fn start(&self, workers: &mut Workers) {
        let service = Arc::clone(&self.service);
        workers.spawn("pictures-releases", move |stop| async move {
            service.follow_releases(stop).await;
        });
        let service = Arc::clone(&self.service);
        workers.spawn("pictures-orphan-sweep", move |stop| async move {
            service.sweep_orphans(stop).await;
        });
    }
}
