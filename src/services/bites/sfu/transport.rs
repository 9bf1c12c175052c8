//! What every connection is built with: the address to bind and advertise, the UDP port range
//! and the media engine.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};

use std::time::Duration;

use rtc::interceptor::{ReceiverReportBuilder, Registry, SenderReportBuilder, Slot};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sdp::extmap::AUDIO_LEVEL_URI;

use super::forward::opus;
use crate::config::SfuConfig;
use crate::services::bites::error::BitesError;

/// Everything a connection needs to be built.
pub struct Transport {
    pub ip: IpAddr,
    pub public_ip: Option<IpAddr>,
    pub ports: Ports,
}

impl Transport {
    pub fn new(config: &SfuConfig) -> Result<Self, BitesError> {
        let public_ip = match config.public_ip.trim() {
            "" => None,
            text => Some(text.parse().map_err(|source| BitesError::InvalidPublicIp {
                value: text.to_owned(),
                source,
            })?),
        };
        if config.port_min > config.port_max {
            return Err(BitesError::InvalidPortRange);
        }
        // Clients are told one address; "any" is not one.
        if config.ip.is_unspecified() && public_ip.is_none() {
            return Err(BitesError::UnspecifiedMediaAddress);
        }
        Ok(Self {
            ip: config.ip,
            public_ip,
            ports: Ports {
                min: config.port_min,
                max: config.port_max,
                next: AtomicU16::new(config.port_min),
            },
        })
    }
}

/// The configured UDP port range, handed out to the media threads (each binds one port).
pub struct Ports {
    min: u16,
    max: u16,
    next: AtomicU16,
}

impl Ports {
    /// A free address: port 0 (any) without a range, else the next range port that binds.
    pub fn pick(&self, ip: IpAddr) -> Option<SocketAddr> {
        if self.min == 0 && self.max == 0 {
            return Some(SocketAddr::new(ip, 0));
        }
        let span = u32::from(self.max - self.min) + 1;
        for _ in 0..span {
            let offset = self
                .next
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_sub(self.min);
            let port = self.min + (u32::from(offset) % span) as u16;
            let addr = SocketAddr::new(ip, port);
            // The probe socket closes at once; the connection binds the port right after.
            if UdpSocket::bind(addr).is_ok() {
                return Some(addr);
            }
        }
        None
    }
}

/// How often each stream's RTCP report goes out: libwebrtc's interval for audio (RFC 3550's
/// minimum), not rtc's default second, which costs every quiet connection a wakeup a second
/// per stream.
pub const RTCP_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Opus only, with the audio-level extension; RTCP reports, but neither NACK (a late audio
/// packet is useless) nor transport-wide congestion feedback (one small stream per leg).
pub fn media_engine() -> Result<(MediaEngine, Registry), rtc::shared::error::Error> {
    let mut engine = MediaEngine::default();
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus(),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )?;
    engine.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.into(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    let registry = Registry::new()
        .with(
            Slot::ReceiverReport,
            ReceiverReportBuilder::new()
                .with_interval(RTCP_REPORT_INTERVAL)
                .build(),
        )
        .with(
            Slot::SenderReport,
            SenderReportBuilder::new()
                .with_interval(RTCP_REPORT_INTERVAL)
                .build(),
        );
    Ok((engine, registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_are_handed_out_in_turn() {
        let ports = Ports {
            min: 0,
            max: 0,
            next: AtomicU16::new(0),
        };
        assert_eq!(
            ports.pick(IpAddr::from([127, 0, 0, 1])).map(|a| a.port()),
            Some(0)
        );
        let held = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let ports = Ports {
            min: port,
            max: port,
            next: AtomicU16::new(port),
        };
        assert!(
            ports.pick(IpAddr::from([127, 0, 0, 1])).is_none(),
            "a taken port is skipped"
        );
        drop(held);
        assert_eq!(
            ports.pick(IpAddr::from([127, 0, 0, 1])).map(|a| a.port()),
            Some(port)
        );
    }
}
