//! Typed configuration: compiled defaults, then `config.toml` (or `--config PATH`), then
//! `BEEP_<SECTION>__<KEY>` environment variables, then command-line overrides.
//!
//! Every struct rejects unknown keys so a typo is an error that names the key, not a silently
//! ignored setting. `config.toml` at the repository root documents every key with its default.

mod auth;
mod backends;
mod bites;
mod core;
mod heartbeat;
mod permissions;
mod pictures;
mod secret;
mod server;
mod transcription;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use self::auth::{
    AuthConfig, Backoff, EmailConfig, EmailSender, KeysConfig, Limit, LimitsConfig, OtpConfig,
    SigningAlgorithm, SmsConfig, SmsSender, TwilioConfig,
};
pub use self::backends::{BlobsConfig, BusConfig, CacheConfig, DatabaseConfig, S3Config};
pub use self::bites::{BitesConfig, IceServer, SfuConfig};
pub use self::core::CoreConfig;
pub use self::heartbeat::HeartbeatConfig;
pub use self::permissions::{PermissionsConfig, PermissionsRoute};
pub use self::pictures::{PictureServing, PicturesConfig};
use self::secret::MASK;
pub use self::secret::Secret;
pub use self::server::{
    CorsConfig, HttpConfig, LogFormat, ServerConfig, TelemetryConfig, TlsConfig,
};
pub use self::transcription::{
    GoogleConfig, OpenAiConfig, TranscriptionConfig, TranscriptionEngine, WhisperConfig,
};

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
    pub heartbeat: HeartbeatConfig,
    pub permissions: PermissionsConfig,
    pub pictures: PicturesConfig,
    pub bites: BitesConfig,
    pub transcription: TranscriptionConfig,
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
        self.pictures.validate(&self.blobs)?;
        self.transcription.validate()?;
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
    }

    #[test]
    fn unknown_keys_and_sections_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        for (text, key) in [
            ("[core]\nnope = 1\n", "core.nope"),
            ("[nope]\nkey = 1\n", "nope"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid(msg) if msg.starts_with(&format!("{key}: unknown field"))),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn repository_config_toml_is_exactly_the_defaults() {
        let text = include_str!("../../config.toml");
        let parsed: Config = toml::from_str(text).unwrap_or_else(|e| panic!("config.toml: {e}"));
        assert_eq!(parsed, Config::default());
    }
}
