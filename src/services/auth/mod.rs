//! auth: phone and email OTP login, JWT access and refresh tokens, sessions, and the
//! forward-auth endpoint (`/login`, `/auth`, `/.well-known/jwks.json`).
//!
//! The verification of every request is not here but in `platform` (`identity` and the
//! `Caller` extractor), so services verify tokens without this one; auth hands its public keys
//! to that verifier and writes revocations it reads.

mod error;
pub mod keys;
mod limits;
mod otp;
mod routes;
pub mod senders;
mod service;
pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

pub use error::{AuthError, SetupError};
use keys::KeyRing;
use limits::Limiter;
use otp::Challenges;
use senders::Senders;
use service::RevocationCursor;
pub use service::{AuthService, TokenResponse};
use sessions::Sessions;

use crate::config::AuthConfig;
use crate::platform::Platform;
use crate::platform::service::{PrepareError, Routes, Service};
use crate::platform::users::SharedDirectory;
use crate::platform::workers::Workers;

pub struct Auth {
    state: Arc<AuthService>,
    /// Where the revocation sync has read to: first by `prepare`, then by its worker.
    cursor: Arc<tokio::sync::Mutex<RevocationCursor>>,
}

impl Auth {
    /// Loads (or creates) the signing keys and checks the login settings.
    pub fn new(platform: &Platform, users: SharedDirectory) -> Result<Self, SetupError> {
        let config = Arc::clone(&platform.config);
        check_dev_bypass(&config.auth, !cfg!(debug_assertions))?;
        let keys = KeyRing::open(
            &config.auth,
            &config.server.data_dir,
            platform.clock.clone(),
        )
        .map_err(SetupError::Keys)?;
        let current = keys.current();
        platform.identity.install_keys(current.published.clone());
        let challenges = Challenges::new(
            platform.cache.clone(),
            keys::otp_secret(&config.auth, &config.server.data_dir)
                .map_err(SetupError::OtpSecret)?,
            Duration::from_secs(config.auth.otp.ttl_secs),
            config.auth.otp.max_attempts,
        );
        let state = AuthService {
            senders: Senders::new(&config.auth)?,
            sessions: Sessions::new(
                platform.db.connection().clone(),
                config.auth.refresh_token_ttl_secs,
                platform.clock.clone(),
            ),
            limiter: Limiter::new(platform.cache.clone(), platform.metrics.clone()),
            blocked: config.auth.blocked_users.iter().cloned().collect(),
            identity: platform.identity.clone(),
            clock: platform.clock.clone(),
            watch: platform.sessions.clone(),
            bus: platform.bus.clone(),
            challenges,
            keys,
            users,
            config,
        };
        // Revocations made before a restart still matter while their tokens live.
        let lifetime_ms = (config_lifetime_secs(&state.config.auth)).saturating_mul(1000);
        let cursor = RevocationCursor::new(
            platform.clock.now_millis(),
            i64::try_from(lifetime_ms).unwrap_or(i64::MAX / 2),
        );
        Ok(Self {
            state: Arc::new(state),
            cursor: Arc::new(tokio::sync::Mutex::new(cursor)),
        })
    }
}

impl Service for Auth {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn routes(&self, cfg: &mut Routes<'_>) {
        routes::routes(cfg, Arc::clone(&self.state));
    }

    fn start(&self, workers: &mut Workers) {
        let state = Arc::clone(&self.state);
        workers.spawn("auth-key-rescan", move |stop| async move {
            let every = Duration::from_secs(state.config.auth.keys.rescan_secs.max(1));
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => state.rescan_keys(),
                }
            }
        });
        let state = Arc::clone(&self.state);
        let cursor = Arc::clone(&self.cursor);
        workers.spawn("auth-revocation-sync", move |stop| async move {
            let every = Duration::from_secs(state.config.auth.revocation_sync_secs.max(1));
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let mut cursor = cursor.lock().await;
                        if let Err(err) = state.sync_revocations(&mut cursor, true).await {
                            tracing::warn!(error = %err, "cannot copy revoked sessions");
                        }
                    }
                }
            }
        });
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), PrepareError>> {
        Box::pin(async move {
            self.state.block_configured_users().await?;
            let mut cursor = self.cursor.lock().await;
            self.state.sync_revocations(&mut cursor, false).await?;
            Ok(())
        })
    }
}

/// How long an access token can be honoured: its lifetime plus the leeway.
fn config_lifetime_secs(config: &AuthConfig) -> u64 {
    config
        .access_token_ttl_secs
        .saturating_add(config.leeway_secs)
}

/// The bypass hands out logins for a fixed code: a release build needs a second, explicit yes.
fn check_dev_bypass(config: &AuthConfig, release: bool) -> Result<(), SetupError> {
    if config.dev_bypass && release && !config.dev_bypass_in_release {
        return Err(SetupError::BypassInRelease);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_builds_refuse_the_bypass_unless_explicitly_allowed() {
        let mut config = AuthConfig::default();
        assert!(check_dev_bypass(&config, true).is_ok());
        config.dev_bypass = true;
        assert!(check_dev_bypass(&config, false).is_ok());
        assert!(check_dev_bypass(&config, true).is_err());
        config.dev_bypass_in_release = true;
        assert!(check_dev_bypass(&config, true).is_ok());
    }
}
