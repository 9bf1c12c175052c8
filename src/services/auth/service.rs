//! What auth does, one method per use case: start and finish a login, register, refresh,
//! log out, list sessions; and the upkeep its workers run (key rescans, revocation sync).

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use super::error::AuthError;
use super::keys::KeyRing;
use super::limits::Limiter;
use super::otp::{self, Challenges};
use super::senders::Senders;
use super::sessions::{self, Issued, RefreshError, Sessions};
use crate::config::Config;
use crate::platform::bus::Bus;
use crate::platform::clock::Clock;
use crate::platform::http::Caller;
use crate::platform::identity::{Claims, Identity};
use crate::platform::sessions::{SessionRefreshed, SessionRevoked, SessionWatch, UserBlocked};
use crate::platform::users::{Login, NewProfile, SharedDirectory, UserRecord};

/// What a successful login or refresh answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub user_id: String,
    pub new_user: bool,
}

pub struct AuthService {
    pub(super) config: Arc<Config>,
    pub(super) identity: Identity,
    pub(super) keys: KeyRing,
    pub(super) sessions: Sessions,
    pub(super) challenges: Challenges,
    pub(super) limiter: Limiter,
    pub(super) senders: Senders,
    pub(super) users: SharedDirectory,
    /// `auth.blocked_users`; `beep users block` adds rows to a table instead.
    pub(super) blocked: HashSet<String>,
    pub(super) clock: Clock,
    /// Ends the open streams and sockets of a revoked session, here and (through the bus)
    /// on every replica.
    pub(super) watch: SessionWatch,
    pub(super) bus: Bus,
}

/// How far the revocation sync has read: the latest `revoked_at` seen and the sessions
/// revoked at exactly that instant (the next read starts there again).
pub(super) struct RevocationCursor {
    since: i64,
    at_since: HashSet<String>,
}

impl RevocationCursor {
    /// Starts `lookback_ms` before `now`: revocations older than a token's life no longer
    /// matter.
    pub(super) fn new(now: i64, lookback_ms: i64) -> Self {
        Self {
            since: now.saturating_sub(lookback_ms),
            at_since: HashSet::new(),
        }
    }
}

impl AuthService {
    /// Sends a code to `login`; answers the nonce to verify it with. Known and unknown logins
    /// take the same path, so the answer says nothing about whether an account exists.
    pub async fn start_login(
        &self,
        login: &Login,
        client_ip: &str,
        bypass: bool,
    ) -> Result<String, AuthError> {
        if bypass && !self.config.auth.dev_bypass {
            return Err(AuthError::BypassDisabled);
        }
        let limits = &self.config.auth.limits;
        self.limiter
            .check_ip("codes-per-ip", client_ip, limits.codes_per_ip)
            .await?;
        let gate = self
            .limiter
            .pass_resend_gate(login.as_str(), limits.resend)
            .await?;
        if !bypass {
            let budget = match login {
                Login::Phone(phone) => {
                    self.limiter
                        .check_sms_budget(phone.calling_code(), limits.sms_per_country)
                        .await
                }
                Login::Email(_) => self.limiter.check("emails", "all", limits.emails).await,
            };
            if let Err(refused) = budget {
                // Not sent: the destination's interval does not start.
                self.limiter.reopen(gate).await;
                return Err(refused);
            }
        }
        let fixed_code = bypass.then_some(otp::BYPASS_CODE);
        let challenge = self.challenges.create(login, fixed_code).await?;
        if !bypass {
            self.senders
                .send(login, &challenge.code, self.challenges.ttl())
                .await
                .map_err(AuthError::Delivery)?;
        }
        Ok(challenge.nonce)
    }

    /// Checks the code, finds or creates the user, opens a session.
    pub async fn finish_login(
        &self,
        nonce: &str,
        code: &str,
        client_id: &str,
        client_ip: &str,
    ) -> Result<TokenResponse, AuthError> {
        validate_client_id(client_id)?;
        let login = self.redeem_code(nonce, code, client_ip).await?;
        let user = self.users.ensure_user(&login).await?;
        self.refuse_blocked(&user.id).await?;
        let issued = self.sessions.open(&user.id, client_id).await?;
        tracing::info!(user_id = %user.id, session_id = %issued.session.id, new_user = user.created, "login");
        self.token_response(issued, user.created)
    }

    /// The original register flow: a verified code plus a profile creates the user.
    pub async fn register(
        &self,
        nonce: &str,
        code: &str,
        profile: NewProfile,
        client_ip: &str,
    ) -> Result<UserRecord, AuthError> {
        let login = self.redeem_code(nonce, code, client_ip).await?;
        Ok(self.users.register_user(&login, profile).await?)
    }

    async fn redeem_code(
        &self,
        nonce: &str,
        code: &str,
        client_ip: &str,
    ) -> Result<Login, AuthError> {
        self.limiter
            .check_ip(
                "verifies-per-ip",
                client_ip,
                self.config.auth.limits.verifies_per_ip,
            )
            .await?;
        self.challenges.redeem(nonce, code).await
    }

    async fn refuse_blocked(&self, user_id: &str) -> Result<(), AuthError> {
        if self.blocked.contains(user_id) || self.sessions.is_blocked(user_id).await? {
            return Err(AuthError::UserBlocked);
        }
        Ok(())
    }

    /// Spends a refresh token and issues the next pair. A spent token coming back ends the
    /// whole session: someone else holds a copy.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client_ip: &str,
    ) -> Result<TokenResponse, AuthError> {
        self.limiter
            .check_ip(
                "refreshes-per-ip",
                client_ip,
                self.config.auth.limits.refreshes_per_ip,
            )
            .await?;
        if refresh_token.is_empty() || refresh_token.len() > 128 {
            return Err(AuthError::InvalidRefreshToken);
        }
        match self.sessions.refresh(refresh_token).await {
            Ok(issued) => {
                self.refuse_blocked(&issued.session.user_id).await?;
                let (user_id, session_id) =
                    (issued.session.user_id.clone(), issued.session.id.clone());
                let response = self.token_response(issued, false)?;
                self.announce_refreshed(user_id, session_id).await;
                Ok(response)
            }
            Err(RefreshError::Reused {
                session_id,
                user_id,
            }) => {
                tracing::warn!(
                    security_event = "refresh_token_reuse",
                    %user_id,
                    %session_id,
                    client_ip,
                    "a spent refresh token was presented; revoking its session"
                );
                self.end_session(&user_id, &session_id, "refresh token reuse")
                    .await?;
                Err(AuthError::RefreshTokenReused)
            }
            Err(RefreshError::Db(err)) => Err(err.into()),
            Err(RefreshError::Unknown | RefreshError::Expired | RefreshError::Revoked) => {
                Err(AuthError::InvalidRefreshToken)
            }
        }
    }

    /// Ends `caller`'s own session `session_id` (their current one by default).
    pub async fn logout(&self, caller: &Caller, session_id: Option<&str>) -> Result<(), AuthError> {
        let session_id = match session_id.or(caller.session_id.as_deref()) {
            Some(id) => id,
            None => return Err(AuthError::SessionNotFound),
        };
        match self.sessions.find(session_id).await? {
            Some(session) if session.user_id == caller.user_id && session.revoked_at.is_none() => {
                self.end_session(&caller.user_id, session_id, "logout")
                    .await
            }
            _ => Err(AuthError::SessionNotFound),
        }
    }

    pub async fn list_sessions(
        &self,
        caller: &Caller,
    ) -> Result<Vec<sessions::session::Model>, AuthError> {
        Ok(self.sessions.list(&caller.user_id).await?)
    }

    /// Revokes the session, refuses its tokens, and ends its open streams and sockets here
    /// and on every replica.
    async fn end_session(
        &self,
        user_id: &str,
        session_id: &str,
        reason: &str,
    ) -> Result<(), AuthError> {
        self.sessions.revoke(session_id, reason).await?;
        self.identity.revoke_session(session_id).await?;
        self.announce_revoked(user_id, session_id).await;
        Ok(())
    }

    /// Ends the session's connections in this process at once, then tells the other
    /// replicas. A bus that is down only delays them: their own sync, or the token's expiry,
    /// ends them later.
    async fn announce_revoked(&self, user_id: &str, session_id: &str) {
        self.watch.end_session(user_id, session_id);
        let event = SessionRevoked {
            session: session_id.to_owned(),
            user: user_id.to_owned(),
        };
        if let Err(err) = self.bus.publish(event).await {
            tracing::warn!(error = %err, %session_id, "cannot announce a revoked session");
        }
    }

    /// The session's open connections live on until its new access token expires, here
    /// and on every replica.
    async fn announce_refreshed(&self, user_id: String, session_id: String) {
        let expires_at = self.clock.now_secs() + self.config.auth.access_token_ttl_secs;
        self.watch.extend_session(&user_id, &session_id, expires_at);
        let event = SessionRefreshed {
            session: session_id,
            user: user_id,
            expires_at,
        };
        if let Err(err) = self.bus.publish(event).await {
            tracing::warn!(error = %err, "cannot announce a refreshed session");
        }
    }

    fn token_response(&self, issued: Issued, new_user: bool) -> Result<TokenResponse, AuthError> {
        let (access_token, expires_in) = self.issue_access_token(
            &issued.session.user_id,
            &issued.session.client_id,
            &issued.session.id,
        )?;
        Ok(TokenResponse {
            access_token,
            refresh_token: issued.refresh_token,
            token_type: "Bearer",
            expires_in,
            user_id: issued.session.user_id,
            new_user,
        })
    }

    fn issue_access_token(
        &self,
        user_id: &str,
        client_id: &str,
        session_id: &str,
    ) -> Result<(String, u64), AuthError> {
        let now = self.clock.now_secs();
        let ttl = self.config.auth.access_token_ttl_secs;
        let claims = Claims {
            userid: user_id.to_owned(),
            clientid: client_id.to_owned(),
            sid: session_id.to_owned(),
            iat: now,
            exp: now + ttl,
            iss: self.config.auth.issuer.clone(),
        };
        let token = self
            .keys
            .current()
            .signer
            .sign(&claims)
            .map_err(|err| AuthError::Internal(err.into()))?;
        Ok((token, ttl))
    }

    pub(super) fn rescan_keys(&self) {
        match self.keys.reload() {
            Ok(true) => {
                let keys = self.keys.current();
                tracing::info!(
                    signing = keys.signer.kid(),
                    published = keys.published.len(),
                    "signing keys changed"
                );
                self.identity.install_keys(keys.published.clone());
            }
            Ok(false) => {}
            Err(err) => tracing::error!(error = %err, "cannot re-read the signing keys"),
        }
    }

    /// Copies revocations recorded in the database (by other replicas, or `beep users block`)
    /// into the cache the verifier reads, past `cursor`. With `announce`, each new one also
    /// ends its session's open connections here and on every replica (the first sync, before
    /// serving, has none to end).
    pub(super) async fn sync_revocations(
        &self,
        cursor: &mut RevocationCursor,
        announce: bool,
    ) -> Result<(), AuthError> {
        let revoked = self.sessions.revoked_since(cursor.since).await?;
        let Some(high) = revoked.iter().map(|(_, _, at)| *at).max() else {
            return Ok(());
        };
        for (session_id, user_id, revoked_at) in &revoked {
            if *revoked_at == cursor.since && cursor.at_since.contains(session_id) {
                continue;
            }
            self.identity.revoke_session(session_id).await?;
            if announce {
                self.announce_revoked(user_id, session_id).await;
            }
        }
        cursor.at_since = revoked
            .into_iter()
            .filter(|(_, _, at)| *at == high)
            .map(|(id, _, _)| id)
            .collect();
        cursor.since = high;
        Ok(())
    }

    /// Ends the sessions of the users `auth.blocked_users` names, and their connections.
    pub(super) async fn block_configured_users(&self) -> Result<(), AuthError> {
        for user_id in &self.blocked {
            self.sessions.revoke_user(user_id, "blocked").await?;
            self.watch.end_user(user_id);
            let event = UserBlocked {
                user: user_id.clone(),
            };
            if let Err(err) = self.bus.publish(event).await {
                tracing::warn!(error = %err, %user_id, "cannot announce a blocked user");
            }
        }
        Ok(())
    }
}

/// The original clients send a device serial; anything printable and short is accepted.
fn validate_client_id(client_id: &str) -> Result<(), AuthError> {
    if client_id.is_empty() || client_id.len() > 128 || client_id.chars().any(char::is_control) {
        return Err(AuthError::InvalidRequest(
            "clientid must be 1 to 128 printable characters",
        ));
    }
    Ok(())
}
