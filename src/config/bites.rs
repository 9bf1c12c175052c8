//! `[bites]` and `[bites.sfu]`.

use serde::{Deserialize, Serialize};

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
    /// Address the media (UDP) sockets bind: one port per media thread, shared by its
    /// connections.
    pub ip: std::net::IpAddr,
    /// Address advertised to clients instead of `ip`, behind a 1:1 NAT; empty: `ip`.
    pub public_ip: String,
    /// UDP ports the media threads bind, one each; 0 and 0: any free port.
    pub port_min: u16,
    pub port_max: u16,
    /// STUN/TURN servers handed to clients at `GET /webrtc/config`.
    pub ice_servers: Vec<IceServer>,
    /// Media threads (connections, forwarding), and workers negotiating and cutting bites;
    /// 0: one per core.
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
