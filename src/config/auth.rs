//! `[auth]`: login, tokens, one-time codes, abuse limits and the senders of codes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

/// Login, tokens and the verification of every request. Verification settings (issuer, leeway,
/// `jwks_url`, `trust_forwarded_claim`) apply to every service, with or without `auth`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The `iss` claim of issued tokens, and the only issuer accepted.
    pub issuer: String,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    /// Clock skew tolerated when checking `exp`.
    pub leeway_secs: u64,
    /// Where a process without the auth service fetches the public keys (split deployments),
    /// e.g. `http://auth.internal:8080/.well-known/jwks.json`.
    pub jwks_url: String,
    pub jwks_refresh_secs: u64,
    /// Accept an `X-User-Claim` header set by a forward-auth proxy in place of a token.
    pub trust_forwarded_claim: bool,
    /// Users who may not log in and whose tokens are refused (also `beep users block ID`).
    pub blocked_users: Vec<String>,
    /// How often revocations made by other processes (the CLI, other replicas) are picked up.
    pub revocation_sync_secs: u64,
    /// Serve the original `POST /login/init/bypass` (fixed code 000000). Development only.
    pub dev_bypass: bool,
    /// A release build refuses to start with `dev_bypass` unless this is also set.
    pub dev_bypass_in_release: bool,
    pub keys: KeysConfig,
    pub otp: OtpConfig,
    pub limits: LimitsConfig,
    pub sms: SmsConfig,
    pub email: EmailConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "beep".into(),
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            leeway_secs: 30,
            jwks_url: String::new(),
            jwks_refresh_secs: 300,
            trust_forwarded_claim: false,
            blocked_users: Vec::new(),
            revocation_sync_secs: 2,
            dev_bypass: false,
            dev_bypass_in_release: false,
            keys: KeysConfig::default(),
            otp: OtpConfig::default(),
            limits: LimitsConfig::default(),
            sms: SmsConfig::default(),
            email: EmailConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum SigningAlgorithm {
    #[default]
    EdDSA,
    RS256,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// Algorithm of generated keys (in `<data_dir>/keys`).
    pub algorithm: SigningAlgorithm,
    /// Sign with this PEM private key (Ed25519 or RSA, PKCS#8 or PKCS#1) instead.
    pub private_key_path: Option<PathBuf>,
    /// How often the key directory is re-read, so `beep keys rotate` takes effect.
    pub rescan_secs: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            algorithm: SigningAlgorithm::EdDSA,
            private_key_path: None,
            rescan_secs: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtpConfig {
    pub ttl_secs: u64,
    /// Key of the MAC that codes are stored as. Empty: generated into `<data_dir>/keys/`.
    /// Replicas that share a Redis must share this value.
    pub secret: Secret,
    /// Attempts per code; the last wrong one kills the code.
    pub max_attempts: u64,
}

impl Default for OtpConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 300,
            secret: Secret::default(),
            max_attempts: 5,
        }
    }
}

/// Abuse limits; each refusal is a 429 with `Retry-After`. Client addresses are counted per
/// IPv4 address and per IPv6 /64 (one subscriber's whole allocation).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// The wait between codes to one phone number or email address: it grows with each code
    /// and starts over after a quiet period, so nobody can wall a victim off from logging in.
    pub resend: Backoff,
    /// Codes requested from one client address.
    pub codes_per_ip: Limit,
    /// Text messages sent to one country (calling code), whoever asks: cost protection that
    /// a flood toward one country cannot turn into an outage for every other.
    #[serde(alias = "sms")]
    pub sms_per_country: Limit,
    /// Emails sent in all.
    pub emails: Limit,
    /// Code verifications from one client address (never counted per destination, so a code
    /// already sent can always be used).
    pub verifies_per_ip: Limit,
    /// Token refreshes from one client address.
    pub refreshes_per_ip: Limit,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            resend: Backoff::default(),
            codes_per_ip: Limit::new(20, 3600),
            sms_per_country: Limit::new(30, 60),
            emails: Limit::new(60, 60),
            verifies_per_ip: Limit::new(30, 60),
            refreshes_per_ip: Limit::new(60, 60),
        }
    }
}

/// At most `max` events per fixed window of `window_secs`; `max = 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub max: u64,
    pub window_secs: u64,
}

impl Limit {
    pub const fn new(max: u64, window_secs: u64) -> Self {
        Self { max, window_secs }
    }
}

/// A growing interval: `first_secs` after the first event, doubling after each further one up
/// to `max_secs`, back to `first_secs` once `quiet_secs` pass without one. `first_secs = 0`
/// turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    pub first_secs: u64,
    pub max_secs: u64,
    pub quiet_secs: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first_secs: 30,
            max_secs: 15 * 60,
            quiet_secs: 3600,
        }
    }
}

impl Backoff {
    /// The wait after the `sent`-th event of a streak (0 for the first).
    pub fn interval(&self, sent: u64) -> std::time::Duration {
        let doubled = self
            .first_secs
            .saturating_mul(1u64 << sent.min(32))
            .min(self.max_secs.max(self.first_secs));
        std::time::Duration::from_secs(doubled)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsSender {
    /// Write the code to the log (development).
    #[default]
    Log,
    Twilio,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsConfig {
    pub sender: SmsSender,
    pub twilio: TwilioConfig,
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            sender: SmsSender::Log,
            twilio: TwilioConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwilioConfig {
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: Secret,
    /// Send from a messaging service (as the original did), or else from `from_number`.
    pub messaging_service_sid: String,
    pub from_number: String,
    pub timeout_secs: u64,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.twilio.com".into(),
            account_sid: String::new(),
            auth_token: Secret::default(),
            messaging_service_sid: String::new(),
            from_number: String::new(),
            timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailSender {
    /// Write the code to the log (development).
    #[default]
    Log,
    Smtp,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    pub sender: EmailSender,
    /// `smtp://HOST:PORT` (plain), `smtp://HOST:587?tls=required` (STARTTLS) or
    /// `smtps://HOST:465` (implicit TLS).
    pub smtp_url: String,
    pub smtp_username: String,
    pub smtp_password: Secret,
    pub from: String,
    pub timeout_secs: u64,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            sender: EmailSender::Log,
            smtp_url: "smtp://127.0.0.1:25".into(),
            smtp_username: String::new(),
            smtp_password: Secret::default(),
            from: "Beep <noreply@localhost>".into(),
            timeout_secs: 10,
        }
    }
}
