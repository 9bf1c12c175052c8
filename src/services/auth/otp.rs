//! One-time codes: six digits from the CSPRNG, kept in the cache under a random nonce as a MAC
//! only (HMAC-SHA256 keyed from the signing key, so a cache dump does not reveal codes), with a
//! bounded number of attempts and a single successful use.

use std::time::Duration;

use hmac::{Hmac, Mac as _};
use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use super::error::AuthError;
use crate::platform::cache::Cache;
use crate::platform::ids::{hex, is_hex128, random_hex128};
use crate::platform::users::Login;

/// The code the original bypass route used, kept for its clients in development.
pub const BYPASS_CODE: &str = "000000";

#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
enum Stored {
    Live {
        login: Login,
        mac: String,
    },
    /// Too many wrong codes: every further attempt is refused until the entry expires.
    Dead,
}

pub struct Challenges {
    cache: Cache,
    mac_key: [u8; 32],
    ttl: Duration,
    max_attempts: u64,
}

/// A code waiting to be sent, and the nonce the client will present it with.
pub struct Challenge {
    pub nonce: String,
    pub code: String,
}

impl Challenges {
    pub fn new(cache: Cache, mac_key: [u8; 32], ttl: Duration, max_attempts: u64) -> Self {
        Self {
            cache,
            mac_key,
            ttl,
            max_attempts: max_attempts.max(1),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Stores a new code for `login`; `fixed_code` is the development bypass.
    pub async fn create(
        &self,
        login: &Login,
        fixed_code: Option<&str>,
    ) -> Result<Challenge, AuthError> {
        let code = match fixed_code {
            Some(code) => code.to_owned(),
            None => format!("{:06}", rand::rng().random_range(0..1_000_000u32)),
        };
        let nonce = random_hex128();
        let stored = Stored::Live {
            login: login.clone(),
            mac: self.mac(&nonce, &code),
        };
        let value = serde_json::to_vec(&stored).map_err(anyhow::Error::from)?;
        self.cache.set(&entry_key(&nonce), &value, self.ttl).await?;
        Ok(Challenge { nonce, code })
    }

    /// Checks `code` against the challenge `nonce` and consumes it on success.
    pub async fn redeem(&self, nonce: &str, code: &str) -> Result<Login, AuthError> {
        if !is_hex128(nonce) || code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AuthError::InvalidCode);
        }
        let key = entry_key(nonce);
        let Some(raw) = self.cache.get(&key).await? else {
            return Err(AuthError::InvalidCode);
        };
        let (login, mac) = match serde_json::from_slice::<Stored>(&raw) {
            Ok(Stored::Live { login, mac }) => (login, mac),
            Ok(Stored::Dead) => {
                return Err(AuthError::TooManyAttempts {
                    retry_after: self.ttl,
                });
            }
            Err(err) => return Err(AuthError::Internal(err.into())),
        };
        // Counted before comparing, so concurrent guesses cannot exceed the budget.
        let attempt = self.cache.increment(&attempts_key(nonce), self.ttl).await?;
        if attempt.value > self.max_attempts {
            return Err(self.kill(&key, attempt.resets_in).await);
        }
        if same_mac(&mac, &self.mac(nonce, code)) {
            // Single use: of two concurrent correct attempts only the one that deletes wins.
            return if self.cache.delete(&key).await? {
                Ok(login)
            } else {
                Err(AuthError::InvalidCode)
            };
        }
        if attempt.value >= self.max_attempts {
            return Err(self.kill(&key, attempt.resets_in).await);
        }
        Err(AuthError::InvalidCode)
    }

    async fn kill(&self, key: &str, remaining: Duration) -> AuthError {
        let dead = serde_json::to_vec(&Stored::Dead).unwrap_or_default();
        if let Err(err) = self
            .cache
            .set(key, &dead, remaining.max(Duration::from_secs(1)))
            .await
        {
            return err.into();
        }
        AuthError::TooManyAttempts {
            retry_after: remaining,
        }
    }

    fn mac(&self, nonce: &str, code: &str) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.mac_key) {
            Ok(mac) => mac,
            // HMAC takes keys of any length; this arm cannot run.
            Err(_) => return String::new(),
        };
        mac.update(nonce.as_bytes());
        mac.update(b":");
        mac.update(code.as_bytes());
        hex(&mac.finalize().into_bytes())
    }
}

fn entry_key(nonce: &str) -> String {
    format!("auth:otp:{nonce}")
}

fn attempts_key(nonce: &str) -> String {
    format!("auth:otp-attempts:{nonce}")
}

/// MACs are compared in constant time, so response timing says nothing about a guess.
fn same_mac(stored: &str, computed: &str) -> bool {
    !stored.is_empty() && bool::from(stored.as_bytes().ct_eq(computed.as_bytes()))
}
