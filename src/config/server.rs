//! `[server]`, `[telemetry]` and `[http]`: how the process listens, logs and handles requests.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
pub struct HttpConfig {
    /// Largest JSON request body accepted, in bytes.
    pub json_limit_bytes: usize,
    /// Largest other request body (raw bytes, forms), in bytes.
    pub body_limit_bytes: usize,
    /// A request body that stops arriving for this long is answered 408 `body_timeout`.
    pub body_timeout_secs: u64,
    /// Take the client address from `X-Forwarded-For`/`Forwarded` (only behind a proxy that
    /// sets them); otherwise the peer address is the client, for rate limits and logs.
    pub trust_forwarded_for: bool,
    /// SSE streams and signalling sockets one user may hold open at once, over all their
    /// devices (429 `too_many_streams` past it).
    pub max_streams_per_user: usize,
    pub cors: CorsConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            json_limit_bytes: 64 * 1024,
            body_limit_bytes: 1024 * 1024,
            body_timeout_secs: 10,
            trust_forwarded_for: false,
            max_streams_per_user: 32,
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
