//! What bites announces on the bus.

use serde::{Deserialize, Serialize};

use super::store::BiteMeta;
use crate::platform::bus::Event;

/// A bite was stored (and is durable). With NATS it goes through JetStream, so a consumer
/// running apart (transcription) gets every one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BiteStored {
    #[serde(flatten)]
    pub bite: BiteMeta,
}

impl Event for BiteStored {
    const SUBJECT: &'static str = "bites.bite_stored";
}
