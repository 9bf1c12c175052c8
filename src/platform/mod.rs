//! Plumbing every service shares, each piece with an embedded default and a real backend
//! chosen by configuration. No business rule lives here.

pub mod blobs;
pub mod bus;
pub mod cache;
pub mod clock;
pub mod db;
mod fanout;
pub mod health;
pub mod http;
pub mod identity;
pub mod ids;
pub mod membership;
pub mod pictures;
pub mod remote;
pub mod rpc;
pub mod service;
pub mod sessions;
pub mod telemetry;
pub mod users;
pub mod workers;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use blobs::{Blobs, BlobsError};
use bus::{Bus, BusError};
use cache::{Cache, CacheError};
use clock::Clock;
use db::{Db, DbError};
use identity::Identity;
use sessions::SessionWatch;
use telemetry::Metrics;
use workers::Workers;

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Blobs(#[from] BlobsError),
}

/// Handles to every backend, cheap to clone (each is a pool or an `Arc`).
#[derive(Clone)]
pub struct Platform {
    pub config: Arc<Config>,
    pub db: Db,
    pub cache: Cache,
    pub bus: Bus,
    pub blobs: Blobs,
    pub metrics: Metrics,
    /// Where every "now" is read, so tests can skip ahead instead of sleeping.
    pub clock: Clock,
    /// Verifies access tokens; its keys come from auth (in-process) or `auth.jwks_url`.
    pub identity: Identity,
    /// The long-lived connections of each session, ended when it is revoked or expires.
    pub sessions: SessionWatch,
}

/// How long readiness waits for one backend before calling it down.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often histogram samples are folded for `/metrics`.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

impl Platform {
    pub async fn open(config: Config, clock: Clock) -> Result<Self, PlatformError> {
        install_crypto_provider();
        let data_dir = config.server.data_dir.clone();
        let db = Db::open(&config.database, &data_dir).await?;
        let cache = Cache::open(&config.cache, clock.clone())?;
        let bus = Bus::open(&config.bus, clock.clone()).await?;
        let blobs = Blobs::open(&config.blobs, &data_dir)?;
        let identity = Identity::new(&config.auth, cache.clone(), clock.clone());
        let sessions = SessionWatch::new(
            config.http.max_streams_per_user,
            config.auth.leeway_secs,
            config.auth.access_token_ttl_secs,
            clock.clone(),
        );
        Ok(Self {
            config: Arc::new(config),
            db,
            cache,
            bus,
            blobs,
            metrics: Metrics::new(),
            clock,
            identity,
            sessions,
        })
    }

    pub fn start(&self, workers: &mut Workers) {
        let metrics = self.metrics.clone();
        workers.spawn("metrics-upkeep", |stop| async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => metrics.run_upkeep(),
                }
            }
        });
        let (sessions, bus) = (self.sessions.clone(), self.bus.clone());
        workers.spawn("session-watch", move |stop| sessions.run(bus, stop));
        if !self.config.auth.jwks_url.is_empty() {
            let identity = self.identity.clone();
            let url = self.config.auth.jwks_url.clone();
            let every = Duration::from_secs(self.config.auth.jwks_refresh_secs.max(1));
            workers.spawn("jwks-refresh", move |stop| async move {
                let client = reqwest::Client::new();
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => match identity.load_jwks(&client, &url).await {
                            Ok(keys) => tracing::debug!(keys, %url, "signing keys loaded"),
                            Err(err) => tracing::warn!(error = %err, %url, "cannot load signing keys"),
                        },
                    }
                }
            });
        }
    }

    /// Asks every backend at once whether it answers.
    pub async fn readiness(&self) -> Readiness {
        let (db, cache, bus, blobs) = tokio::join!(
            probe(self.db.backend(), self.db.check()),
            probe(self.cache.backend(), self.cache.ping()),
            probe(self.bus.backend(), self.bus.check()),
            probe(self.blobs.backend(), self.blobs.check()),
        );
        let backends = BTreeMap::from([
            ("database", db),
            ("cache", cache),
            ("bus", bus),
            ("blobs", blobs),
        ]);
        let ready = backends.values().all(|b| b.state == State::Up);
        Readiness {
            status: if ready { "ready" } else { "unavailable" },
            backends,
        }
    }

    /// Flushes and closes the backends that hold buffered state.
    pub async fn close(self) {
        self.bus.flush().await;
        self.db.close().await;
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub status: &'static str,
    pub backends: BTreeMap<&'static str, BackendState>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BackendState {
    pub backend: &'static str,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Up,
    Down,
}

async fn probe<E: std::fmt::Display>(
    backend: &'static str,
    check: impl Future<Output = Result<(), E>>,
) -> BackendState {
    let error = match tokio::time::timeout(READINESS_TIMEOUT, check).await {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(first_chars(&err.to_string(), READINESS_ERROR_CHARS)),
        Err(_) => Some(format!("no answer within {READINESS_TIMEOUT:?}")),
    };
    BackendState {
        backend,
        state: if error.is_none() {
            State::Up
        } else {
            State::Down
        },
        error,
    }
}

/// Backend errors can be long (an S3 XML body); readiness shows their start.
const READINESS_ERROR_CHARS: usize = 240;

fn first_chars(text: &str, n: usize) -> String {
    match text.char_indices().nth(n) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// rustls needs one process-wide crypto provider before any TLS client or server is built;
/// ring is the only one compiled in. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}
