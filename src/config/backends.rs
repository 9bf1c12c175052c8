//! `[database]`, `[cache]`, `[bus]` and `[blobs]`: the backends, embedded or real.

use serde::{Deserialize, Serialize};

use super::Secret;

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
