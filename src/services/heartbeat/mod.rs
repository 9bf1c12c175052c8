//! heartbeat: "last seen" pings, pushed to subscribers over Server-Sent Events (`/heartbeat`),
//! the original `heartbeat` service, private and shared across replicas.
//!
//! A ping is held in memory, written behind to the database (`heartbeat_last_seen`) once a
//! second, pushed to this process's streams at once and relayed to the other replicas (NATS,
//! else Redis pub/sub). Who may watch whom is core's answer ([`RelationCheck`]); the streams of
//! a watcher who loses that relation end when core announces the change.
//!
//! [`RelationCheck`]: crate::platform::membership::RelationCheck

mod error;
mod hub;
mod presence;
mod relay;
mod routes;
mod service;
mod store;

use std::sync::Arc;

use actix_web::web;

use self::service::HeartbeatService;
use crate::platform::Platform;
use crate::platform::membership::SharedRelations;
use crate::platform::service::{Routes, Service};
use crate::platform::workers::Workers;

pub struct Heartbeat {
    service: Arc<HeartbeatService>,
}

impl Heartbeat {
    pub fn new(platform: &Platform, relations: SharedRelations) -> Self {
        Self {
            service: Arc::new(HeartbeatService::new(platform, relations)),
        }
    }
}

impl Service for Heartbeat {
    fn name(&self) -> &'static str {
        "heartbeat"
    }

    fn routes(&self, cfg: &mut Routes<'_>) {
        routes::routes(cfg, web::Data::from(Arc::clone(&self.service)));
    }

    fn start(&self, workers: &mut Workers) {
        let service = Arc::clone(&self.service);
        workers.spawn("heartbeat-write-behind", move |stop| {
            service.write_behind(stop)
        });
        let service = Arc::clone(&self.service);
        workers.spawn("heartbeat-relay-out", move |stop| {
            service.tell_replicas(stop)
        });
        let service = Arc::clone(&self.service);
        workers.spawn("heartbeat-relay-in", move |stop| {
            service.hear_replicas(stop)
        });
        let service = Arc::clone(&self.service);
        workers.spawn("heartbeat-relations", move |stop| {
            service.watch_relations(stop)
        });
    }
}
