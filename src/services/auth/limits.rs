//! Abuse limits on the shared cache, so every replica counts together: fixed windows per client
//! network and per budget, and a growing interval between codes to one destination.

use std::net::IpAddr;
use std::time::Duration;

use super::error::AuthError;
use crate::config::{Backoff, Limit};
use crate::platform::cache::Cache;
use crate::platform::telemetry::Metrics;

/// Refusals of the per-country SMS budget, by calling code.
const SMS_BUDGET_REFUSED: &str = "beep_auth_sms_budget_refused_total";

#[derive(Clone)]
pub struct Limiter {
    cache: Cache,
    metrics: Metrics,
}

/// A budget that refused: whether this refusal is the first of its window.
pub struct Exhausted {
    pub first: bool,
    pub error: AuthError,
}

impl Limiter {
    pub fn new(cache: Cache, metrics: Metrics) -> Self {
        Self { cache, metrics }
    }

    /// Counts one event against `key` under the limit named `name`; refuses it once more than
    /// `limit.max` fall in one window.
    pub async fn check(
        &self,
        name: &'static str,
        key: &str,
        limit: Limit,
    ) -> Result<(), AuthError> {
        self.count(name, key, limit)
            .await
            .map_err(|refused| refused.error)
    }

    /// [`Self::check`] for a client address, counted per network (see [`network`]).
    pub async fn check_ip(
        &self,
        name: &'static str,
        client_ip: &str,
        limit: Limit,
    ) -> Result<(), AuthError> {
        self.check(name, &network(client_ip), limit).await
    }

    /// Counts one text message to the country with `calling_code` against its budget; a refusal
    /// is counted in metrics and logged once per window.
    pub async fn check_sms_budget(&self, calling_code: u16, limit: Limit) -> Result<(), AuthError> {
        let country = calling_code.to_string();
        let Err(refused) = self.count("sms-per-country", &country, limit).await else {
            return Ok(());
        };
        if let AuthError::RateLimited { .. } = refused.error {
            self.metrics
                .counter(SMS_BUDGET_REFUSED, &[("country", country.clone())])
                .increment(1);
            if refused.first {
                tracing::warn!(
                    security_event = "sms_budget_exhausted",
                    calling_code,
                    max = limit.max,
                    window_secs = limit.window_secs,
                    "the SMS budget of a country is spent: phone login there waits for the next window"
                );
            }
        }
        Err(refused.error)
    }

    /// [`Self::check`] telling the first refusal of a window from the rest.
    async fn count(&self, name: &'static str, key: &str, limit: Limit) -> Result<(), Exhausted> {
        if limit.max == 0 {
            return Ok(());
        }
        let window = Duration::from_secs(limit.window_secs.max(1));
        let count = self
            .cache
            .increment(&format!("auth:limit:{name}:{key}"), window)
            .await
            .map_err(|err| Exhausted {
                first: false,
                error: err.into(),
            })?;
        if count.value > limit.max {
            return Err(Exhausted {
                first: count.value == limit.max + 1,
                error: AuthError::RateLimited {
                    limit: name,
                    retry_after: count.resets_in,
                },
            });
        }
        Ok(())
    }

    /// Lets one code go to `destination` if its interval has passed, and starts the next,
    /// longer one. Of concurrent requests only one passes (the gate is an atomic counter).
    pub async fn pass_resend_gate(
        &self,
        destination: &str,
        backoff: Backoff,
    ) -> Result<ResendGate, AuthError> {
        let gate = format!("auth:resend:gate:{destination}");
        if backoff.first_secs == 0 {
            return Ok(ResendGate::default());
        }
        let streak_key = format!("auth:resend:streak:{destination}");
        let sent: u64 = match self.cache.get(&streak_key).await? {
            Some(raw) => std::str::from_utf8(&raw)
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(0),
            None => 0,
        };
        let interval = backoff.interval(sent);
        let count = self.cache.increment(&gate, interval).await?;
        if count.value > 1 {
            return Err(AuthError::RateLimited {
                limit: "resend-interval",
                retry_after: count.resets_in,
            });
        }
        // The streak is forgotten once `quiet_secs` pass after this interval without a code.
        let remember = interval + Duration::from_secs(backoff.quiet_secs.max(1));
        self.cache
            .set(&streak_key, (sent + 1).to_string().as_bytes(), remember)
            .await?;
        Ok(ResendGate {
            passed: Some(Passed {
                gate,
                streak_key,
                sent,
                remember,
            }),
        })
    }

    /// Reopens a gate passed for a code that was then not sent (a budget refused it), and puts
    /// the streak back where it was.
    pub async fn reopen(&self, gate: ResendGate) {
        let Some(passed) = gate.passed else {
            return;
        };
        let restored = if passed.sent == 0 {
            self.cache.delete(&passed.streak_key).await.map(drop)
        } else {
            self.cache
                .set(
                    &passed.streak_key,
                    passed.sent.to_string().as_bytes(),
                    passed.remember,
                )
                .await
        };
        if let Err(err) = self.cache.delete(&passed.gate).await.and(restored) {
            tracing::warn!(error = %err, "a resend interval could not be reopened");
        }
    }
}

/// A passed resend gate, to reopen if the code is not sent after all.
#[derive(Default)]
pub struct ResendGate {
    passed: Option<Passed>,
}

struct Passed {
    gate: String,
    streak_key: String,
    /// Codes of the streak before this one.
    sent: u64,
    remember: Duration,
}

/// The unit client addresses are counted in: an IPv4 address, or an IPv6 /64 (one subscriber
/// gets a whole /64, so its single addresses are free to pick). An IPv4-mapped IPv6 address is
/// its IPv4 address. Anything else (a proxy's odd header) counts as itself.
pub fn network(client_ip: &str) -> String {
    match client_ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Err(_) => client_ip.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_ipv4_per_address() {
        assert_eq!(network("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(network("2001:db8:1:2::ffff"), "2001:db8:1:2::/64");
        assert_ne!(network("2001:db8:1:3::1"), network("2001:db8:1:2::1"));
        assert_eq!(network("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(network("192.0.2.7"), "192.0.2.7");
        assert_ne!(network("192.0.2.8"), network("192.0.2.7"));
        assert_eq!(network("unknown"), "unknown");
    }

    #[test]
    fn the_resend_interval_doubles_up_to_its_cap() {
        let backoff = Backoff::default();
        let waits: Vec<u64> = (0..8).map(|n| backoff.interval(n).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(backoff.interval(u64::MAX).as_secs(), 900);
    }
}
