//! Typed configuration: compiled defaults, then `config.toml` (or `--config PATH`), then
//! `BEEP_<SECTION>__<KEY>` environment variables, then command-line overrides.
//!
//! Every struct rejects unknown keys so a typo is an error that names the key, not a silently
//! ignored setting. `config.toml` at the repository root documents every key with its default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub telemetry: TelemetryConfig,
    pub database: DatabaseConfig,
    pub cache: CacheConfig,
    pub bus: BusConfig,
    pub blobs: BlobsConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub core: CoreConfig,
    pub permissions: PermissionsConfig,
    pub bites: BitesConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    pub shutdown_timeout_secs: u64,
    pub tls: TlsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            workers: 0,
            shutdown_timeout_secs: 30,
            tls: TlsConfig::default(),
        }
    }
}

/// TLS is on when both paths are set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured when the output is a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// `tracing` filter directives, e.g. `info` or `info,beep=debug,sqlx=warn`.
    pub log_filter: String,
    /// Serve Prometheus metrics at `/metrics`.
    pub metrics: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: "info,sea_orm_migration=warn".into(),
            metrics: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://…`; empty means `beep.db` in the data dir.
    pub url: String,
    pub max_connections: u32,
    pub connect_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 8,
            connect_timeout_secs: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `memory` or `redis://…`.
    pub url: String,
    /// Prepended to every key and channel, so several deployments can share one Redis.
    pub prefix: String,
    pub pool_size: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            url: "memory".into(),
            prefix: "beep:".into(),
            pool_size: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `memory` or `nats://…`.
    pub url: String,
    /// First segment of every subject: `<prefix>.<service>.<event>`.
    pub subject_prefix: String,
    /// Events buffered per in-process subscriber; a subscriber further behind loses the oldest.
    pub capacity: usize,
    /// How long NATS (JetStream) keeps events that must not be lost (stored bites), for
    /// consumers that were down.
    pub durable_max_age_secs: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            url: "memory".into(),
            subject_prefix: "beep".into(),
            capacity: 1024,
            durable_max_age_secs: 7 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobsConfig {
    /// A directory, or `s3://BUCKET`; empty means `blobs/` in the data dir.
    pub url: String,
    pub s3: S3Config,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Empty means AWS itself; set it for MinIO, Garage, Ceph and friends.
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// Allow a plain-HTTP endpoint (a local test server).
    pub allow_http: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            region: "us-east-1".into(),
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            path_style: true,
            allow_http: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest JSON request body accepted, in bytes.
    pub json_limit_bytes: usize,
    /// Largest other request body (raw bytes, forms), in bytes.
    pub body_limit_bytes: usize,
    /// Take the client address from `X-Forwarded-For`/`Forwarded` (only behind a proxy that
    /// sets them); otherwise the peer address is the client, for rate limits and logs.
    pub trust_forwarded_for: bool,
    pub cors: CorsConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            json_limit_bytes: 64 * 1024,
            body_limit_bytes: 1024 * 1024,
            trust_forwarded_for: false,
            cors: CorsConfig::default(),
        }
    }
}

/// Defaults are the headers the original traefik set on every response.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    pub enabled: bool,
    /// `["*"]` allows any origin; otherwise exact origins such as `https://app.example.com`.
    pub allowed_origins: Vec<String>,
    pub allowed_methods: String,
    pub allowed_headers: String,
    pub allow_credentials: bool,
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allowed_origins: vec!["*".into()],
            allowed_methods: "GET, HEAD, POST, PUT, PATCH, DELETE".into(),
            allowed_headers: "Content-Type, Authorization, X-User-Claim".into(),
            allow_credentials: true,
            max_age_secs: 600,
        }
    }
}

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

/// Users, contacts, conversations and members.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoreConfig {
    /// Items per page of a list when the request gives no `limit`, and the largest `limit`.
    pub page_size: u64,
    pub max_page_size: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            page_size: 100,
            max_page_size: 1000,
        }
    }
}

/// Membership checks and their cache.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PermissionsConfig {
    /// How long an answer stays cached. Membership events clear it at once; this bounds the
    /// damage of an event lost while the bus was down.
    pub cache_ttl_secs: u64,
    /// Who may call `GET /permissions/user/{user}/conversation/{conversation}`.
    pub route: PermissionsRoute,
}

impl Default for PermissionsConfig {
    fn default() -> Self {
        Self {
            cache_ttl_secs: 300,
            route: PermissionsRoute::Off,
        }
    }
}

/// The bite pipeline: utterance detection, the bite store and the SFU.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BitesConfig {
    /// Cut and store bites from the audio the SFU routes; off, it only routes.
    pub record: bool,
    /// Silence that ends a bite.
    pub silence_ms: u64,
    /// Longest bite; longer speech continues in a new bite.
    pub max_bite_ms: u64,
    /// Highest RFC 6464 audio level (−dBov, 127 = silence) that counts as speech.
    pub speech_level: u8,
    /// For senders without audio levels: the smallest Opus payload that counts as speech.
    pub min_speech_bytes: usize,
    /// How often finished bites are written and made durable; a crash loses at most this much.
    pub flush_interval_ms: u64,
    /// Bites older than this are deleted; 0 keeps them forever.
    pub retention_secs: u64,
    /// How often the retention worker looks for old bites.
    pub retention_sweep_secs: u64,
    /// Items per page of `GET /store/bite/{conversation}` without `?limit=`, and the largest.
    pub page_size: u64,
    pub max_page_size: u64,
    /// Most starts one `…/scan` answers; `next` then points at the first one left out.
    pub scan_limit: usize,
    pub sfu: SfuConfig,
}

impl Default for BitesConfig {
    fn default() -> Self {
        Self {
            record: true,
            silence_ms: 500,
            max_bite_ms: 30_000,
            speech_level: 50,
            min_speech_bytes: 16,
            flush_interval_ms: 200,
            retention_secs: 0,
            retention_sweep_secs: 300,
            page_size: 100,
            max_page_size: 1000,
            scan_limit: 10_000,
            sfu: SfuConfig::default(),
        }
    }
}

/// Media transport of the SFU.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SfuConfig {
    /// Address the media (UDP) sockets bind; each client connection takes one port.
    pub ip: std::net::IpAddr,
    /// Address advertised to clients instead of `ip`, behind a 1:1 NAT; empty: `ip`.
    pub public_ip: String,
    /// UDP ports to take media sockets from; 0 and 0: any free port.
    pub port_min: u16,
    pub port_max: u16,
    /// STUN/TURN servers handed to clients at `GET /webrtc/config`.
    pub ice_servers: Vec<IceServer>,
    /// Threads of the media runtime (connections, forwarding, bite cutting); 0: one per core.
    pub threads: usize,
    /// Most participants in one conversation's room.
    pub max_room_size: usize,
    /// Largest signalling message (an SDP offer with its candidates).
    pub max_message_bytes: usize,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            public_ip: String::new(),
            port_min: 0,
            port_max: 0,
            ice_servers: Vec::new(),
            threads: 0,
            max_room_size: 32,
            max_message_bytes: 64 * 1024,
        }
    }
}

/// One entry of a WebRTC `iceServers` list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential: String,
}

/// Exposure of the original internal permissions route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PermissionsRoute {
    /// Not served (404); services in this process ask in-process.
    #[default]
    Off,
    /// Served to peers on loopback or private networks only (split deployments).
    Private,
    /// Served to anyone who can reach it.
    Public,
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

/// Abuse limits; each refusal is a 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Codes sent to one phone number or email address.
    pub codes_per_destination: Limit,
    /// Codes requested from one client address.
    pub codes_per_ip: Limit,
    /// Text messages sent in all, whoever asks (an SMS costs money).
    pub sms: Limit,
    /// Emails sent in all.
    pub emails: Limit,
    /// Code verifications from one client address.
    pub verifies_per_ip: Limit,
    /// Token refreshes from one client address.
    pub refreshes_per_ip: Limit,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            codes_per_destination: Limit::new(5, 3600),
            codes_per_ip: Limit::new(20, 3600),
            sms: Limit::new(30, 60),
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

/// A secret setting: deserialised as a plain string, never printed or serialised in clear.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const MASK: &str = "********";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { MASK })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { MASK })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Values given on the command line; they win over every other source.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

pub const ENV_PREFIX: &str = "BEEP_";
pub const DEFAULT_FILE: &str = "config.toml";

impl Config {
    /// Loads the configuration. With `file = None`, `config.toml` in the working directory is
    /// read if it exists; an explicit path must exist.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let toml = match file {
            Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.into())),
            Some(path) => Toml::file_exact(path),
            None => Toml::file(DEFAULT_FILE),
        };
        let mut server = figment::value::Dict::new();
        if let Some(listen) = overrides.listen {
            server.insert("listen".into(), listen.to_string().into());
        }
        if let Some(dir) = &overrides.data_dir {
            server.insert("data_dir".into(), dir.display().to_string().into());
        }
        Figment::new()
            .merge(toml)
            .merge(environment())
            .merge(Serialized::default("server", server))
            .extract::<Config>()
            .map_err(|err| ConfigError::Invalid(describe(err)))
            .and_then(Config::validated)
    }

    fn validated(self) -> Result<Self, ConfigError> {
        if self.server.tls.cert_path.is_some() != self.server.tls.key_path.is_some() {
            return Err(ConfigError::Invalid(
                "server.tls needs both cert_path and key_path".into(),
            ));
        }
        if self.http.cors.allow_credentials
            && self.http.cors.allowed_origins.iter().any(|o| o == "*")
            && self.http.cors.allowed_origins.len() > 1
        {
            return Err(ConfigError::Invalid(
                "http.cors.allowed_origins: \"*\" cannot be mixed with explicit origins".into(),
            ));
        }
        Ok(self)
    }

    /// The merged configuration as TOML, secrets and URL passwords masked.
    pub fn to_masked_toml(&self) -> Result<String, ConfigError> {
        let mut value =
            toml::Value::try_from(self).map_err(|err| ConfigError::Invalid(err.to_string()))?;
        mask_url_passwords(&mut value);
        toml::to_string_pretty(&value).map_err(|err| ConfigError::Invalid(err.to_string()))
    }
}

/// `BEEP_<SECTION>__<KEY>` variables only: a `BEEP_` variable without a section separator (such
/// as the test suite's `BEEP_TEST_POSTGRES_URL`) is not configuration, while a misspelt section
/// or key still fails as an unknown key.
fn environment() -> Env {
    Env::prefixed(ENV_PREFIX)
        .split("__")
        .filter(|key| key.as_str().contains('.'))
}

/// figment's messages name the key and where it came from; join them into one line each.
fn describe(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(figment::Source::File(path)) => format!("{} {}", m.name, path.display()),
                    _ => m.name.to_string(),
                })
                .unwrap_or_default();
            match (key.is_empty(), source.is_empty()) {
                (true, _) => e.kind.to_string(),
                (false, true) => format!("{key}: {}", e.kind),
                (false, false) => format!("{key}: {} (from {source})", e.kind),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn mask_url_passwords(value: &mut toml::Value) {
    match value {
        toml::Value::String(s) => {
            if let Some(masked) = mask_url_password(s) {
                *s = masked;
            }
        }
        toml::Value::Table(table) => table.iter_mut().for_each(|(_, v)| mask_url_passwords(v)),
        toml::Value::Array(items) => items.iter_mut().for_each(mask_url_passwords),
        _ => {}
    }
}

/// `scheme://user:password@host/…` → `scheme://user:********@host/…`; `None` when there is no
/// password to hide.
pub fn mask_url_password(url: &str) -> Option<String> {
    let authority_start = url.find("://")? + 3;
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let colon = rest[..at].find(':')?;
    Some(format!(
        "{}{}{MASK}{}",
        &url[..authority_start],
        &rest[..=colon],
        &rest[at..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_only_the_password() {
        assert_eq!(
            mask_url_password("postgres://beep:hunter2@db:5432/beep").as_deref(),
            Some("postgres://beep:********@db:5432/beep")
        );
        assert_eq!(
            mask_url_password("redis://:pw@127.0.0.1/0").as_deref(),
            Some("redis://:********@127.0.0.1/0")
        );
        assert_eq!(mask_url_password("nats://127.0.0.1:4222"), None);
        assert_eq!(mask_url_password("https://a.b/x@y:z"), None);
    }

    #[test]
    fn secrets_serialise_masked() {
        let mut config = Config::default();
        config.blobs.s3.secret_access_key = Secret::new("very-secret");
        config.database.url = "postgres://u:p4ss@h/db".into();
        let printed = config.to_masked_toml().unwrap_or_default();
        assert!(!printed.contains("very-secret"), "{printed}");
        assert!(!printed.contains("p4ss"), "{printed}");
        assert!(printed.contains("********"));
        assert_eq!(format!("{:?}", Secret::new("x")), "********");
    }

    #[test]
    fn repository_config_toml_is_exactly_the_defaults() {
        let text = include_str!("../config.toml");
        let parsed: Config = toml::from_str(text).unwrap_or_else(|e| panic!("config.toml: {e}"));
        assert_eq!(parsed, Config::default());
    }
}
