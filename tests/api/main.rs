//! Black-box tests: the real app on an ephemeral port, spoken to over HTTP. Each test runs on
//! the embedded backends and, when the `BEEP_TEST_*` variables are set, again on PostgreSQL,
//! Redis, NATS and S3 (see `helpers::columns`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod binary;
#[cfg(feature = "bites")]
mod bites;
mod blobs;
#[cfg(feature = "bites")]
mod browser;
mod bus;
mod cache;
mod core;
#[cfg(feature = "heartbeat")]
mod heartbeat;
mod helpers;
mod http;
#[allow(dead_code)]
#[path = "../common/login.rs"]
mod login;
mod openapi;
#[cfg(feature = "bites")]
#[path = "../common/peer.rs"]
mod peer;
#[cfg(feature = "pictures")]
mod pictures;
mod readiness;
#[path = "../common/served.rs"]
mod served;
#[cfg(feature = "bites")]
mod sessions;
#[cfg(feature = "whisper")]
#[path = "../common/speech.rs"]
mod speech;
#[cfg(all(feature = "core", feature = "auth", feature = "permissions"))]
mod split;
#[cfg(feature = "bites")]
mod transcription;
#[cfg(feature = "web")]
mod web;
