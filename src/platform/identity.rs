//! Who is calling: access-token verification shared by every service.
//!
//! Tokens are JWTs signed by the auth service. The public keys reach this verifier either
//! in-process (auth installs them) or from `auth.jwks_url` (a split service). A token is accepted
//! when its `kid` names a known key, its header algorithm is that key's algorithm (no `none`, no
//! HS/RS confusion), its issuer is ours, it has not expired (small leeway) and its session has
//! not been revoked. Signature checks are the expensive part (tens of microseconds), so a token
//! that passed once is remembered until it expires; the revocation check runs on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use super::cache::{Cache, CacheError};
use super::clock::Clock;
use crate::config::AuthConfig;

/// The claims of an access token. `userid` and `clientid` keep the original names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub userid: String,
    pub clientid: String,
    /// The login session this token was issued from; revoking it refuses the token.
    pub sid: String,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
}

/// A public key tokens may be signed with.
#[derive(Clone)]
pub struct VerifyingKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
    /// The key as published in the JWKS (with `kid`, `alg` and `use` set).
    pub jwk: Jwk,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token is signed with an unknown key")]
    UnknownKey,
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid")]
    Invalid,
    #[error("the token's session has been revoked")]
    Revoked,
    #[error("cannot check revocation: {0}")]
    Unavailable(String),
}

impl From<CacheError> for TokenError {
    fn from(err: CacheError) -> Self {
        Self::Unavailable(err.to_string())
    }
}

/// Bound on remembered tokens; past it, expired ones are dropped, then all of them.
const VERIFIED_CAPACITY: usize = 16_384;

#[derive(Clone)]
pub struct Identity(Arc<Inner>);

struct Inner {
    keys: RwLock<Arc<Vec<VerifyingKey>>>,
    verified: Mutex<HashMap<Box<str>, Arc<Claims>>>,
    issuer: String,
    leeway_secs: u64,
    revocation_ttl: Duration,
    cache: Cache,
    clock: Clock,
}

impl Identity {
    pub fn new(config: &AuthConfig, cache: Cache, clock: Clock) -> Self {
        Self(Arc::new(Inner {
            keys: RwLock::new(Arc::new(Vec::new())),
            verified: Mutex::new(HashMap::new()),
            issuer: config.issuer.clone(),
            leeway_secs: config.leeway_secs,
            // A revoked session's access tokens all expire within this.
            revocation_ttl: Duration::from_secs(config.access_token_ttl_secs + config.leeway_secs),
            cache,
            clock,
        }))
    }

    /// Replaces the keys tokens are checked against; tokens remembered under old keys are
    /// checked again.
    pub fn install_keys(&self, keys: Vec<VerifyingKey>) {
        *self.0.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        self.0
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub fn has_keys(&self) -> bool {
        !self.keys().is_empty()
    }

    fn keys(&self) -> Arc<Vec<VerifyingKey>> {
        Arc::clone(&self.0.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The public keys as a JWKS document.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys().iter().map(|k| k.jwk.clone()).collect(),
        }
    }

    /// Verifies `token` and checks that its session is still live.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let claims = self.verify_signature(token)?;
        if self.is_revoked(&claims.sid).await? {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    /// Signature, algorithm, issuer and expiry, without the revocation check.
    pub fn verify_signature(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let now = self.0.clock.now_secs();
        if let Some(claims) = self.remembered(token) {
            return self.unexpired(claims, now);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let keys = self.keys();
        let key = keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(TokenError::UnknownKey)?;
        if header.alg != key.algorithm {
            return Err(TokenError::Invalid);
        }
        let mut validation = Validation::new(key.algorithm);
        // jsonwebtoken would compare with the system time; expiry is checked below against
        // the platform's clock instead.
        validation.validate_exp = false;
        validation.set_issuer(&[&self.0.issuer]);
        validation.set_required_spec_claims(&["exp", "iat", "iss"]);
        validation.validate_aud = false;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(
                |err| match err.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) => {
                        TokenError::Malformed
                    }
                    _ => TokenError::Invalid,
                },
            )?;
        let claims = self.unexpired(Arc::new(data.claims), now)?;
        self.remember(token, &claims, now);
        Ok(claims)
    }

    fn unexpired(&self, claims: Arc<Claims>, now: u64) -> Result<Arc<Claims>, TokenError> {
        if self.is_live(&claims, now) {
            Ok(claims)
        } else {
            Err(TokenError::Expired)
        }
    }

    /// Live until `leeway_secs` past `exp`, as jsonwebtoken counts it.
    fn is_live(&self, claims: &Claims, now: u64) -> bool {
        claims.exp.saturating_add(self.0.leeway_secs) >= now
    }

    fn remembered(&self, token: &str) -> Option<Arc<Claims>> {
        let verified = self
            .0
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        verified.get(token).cloned()
    }

    fn remember(&self, token: &str, claims: &Arc<Claims>, now: u64) {
        let mut verified = self
            .0
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VERIFIED_CAPACITY {
            verified.retain(|_, c| self.is_live(c, now));
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
        }
        verified.insert(token.into(), Arc::clone(claims));
    }

    /// Refuses every access token of session `sid` from now on, in every process sharing the
    /// cache. The mark outlives the longest-lived token of the session.
    pub async fn revoke_session(&self, sid: &str) -> Result<(), CacheError> {
        self.0
            .cache
            .set(&revocation_key(sid), b"1", self.0.revocation_ttl)
            .await
    }

    pub async fn is_revoked(&self, sid: &str) -> Result<bool, CacheError> {
        if let Some(revoked) = self.is_revoked_in_process(sid) {
            return Ok(revoked);
        }
        Ok(self.0.cache.get(&revocation_key(sid)).await?.is_some())
    }

    /// The revocation check answered on the spot when the cache is in-process (`None` means
    /// ask [`Identity::is_revoked`]), so the embedded setup verifies a request synchronously.
    pub fn is_revoked_in_process(&self, sid: &str) -> Option<bool> {
        self.0
            .cache
            .get_in_process(&revocation_key(sid))
            .map(|found| found.is_some())
    }

    /// Fetches the JWKS at `url` and installs its keys; returns how many were usable.
    pub async fn load_jwks(&self, client: &reqwest::Client, url: &str) -> anyhow::Result<usize> {
        let set: JwkSet = client
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let keys = verifying_keys(&set);
        let count = keys.len();
        if count == 0 {
            anyhow::bail!("{url} published no usable signing key");
        }
        self.install_keys(keys);
        Ok(count)
    }
}

/// The keys of a JWKS that carry a `kid` and a signature algorithm we accept.
pub fn verifying_keys(set: &JwkSet) -> Vec<VerifyingKey> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let algorithm = match jwk.common.key_algorithm? {
                jsonwebtoken::jwk::KeyAlgorithm::EdDSA => Algorithm::EdDSA,
                jsonwebtoken::jwk::KeyAlgorithm::RS256 => Algorithm::RS256,
                _ => return None,
            };
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some(VerifyingKey {
                kid,
                algorithm,
                key,
                jwk: jwk.clone(),
            })
        })
        .collect()
}

fn revocation_key(sid: &str) -> String {
    format!("auth:revoked:{sid}")
}
