//! Beep: the backend of a voice-messaging app, every service in one process.
//!
//! `app` assembles the system from `platform` (shared plumbing with embedded and real
//! backends) and `services` (one module per service, each behind its Cargo feature).

pub mod app;
pub mod cli;
pub mod config;
pub mod platform;
pub mod services;
#[cfg(feature = "web")]
pub mod web;
