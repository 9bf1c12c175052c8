//! Forwarding, the hot path: each packet of a participant's audio into every listener's
//! connection ([`DownTrack`], one per source and listener) and to the speaker's bite task. It
//! runs on the media thread that received the packet ([`super::media::plane`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use metrics::Counter;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpSendParameters,
    RtpCodecKind,
};
use rtc::sdp::extmap::AUDIO_LEVEL_URI;

/// Ready bit plus the payload type and audio-level extension id negotiated on the listener's
/// leg, packed so the hot path reads them with one load.
const READY: u32 = 1 << 16;

pub struct DownTrack {
    /// The participant whose audio this carries, and the one who hears it (participant ids
    /// are their connections' ids).
    pub source: u64,
    pub listener: u64,
    /// The media thread of the listener's connection.
    pub listener_thread: usize,
    /// How the track is described to the listener (who is speaking).
    pub track: MediaStreamTrack,
    ssrc: u32,
    /// The listener connection's sender for this track, once attached.
    sender: OnceLock<RTCRtpSenderId>,
    negotiated: AtomicU32,
    pub dropped: Counter,
}

/// The Opus codec as the SFU registers it (`transport::media_engine`) and sends it.
pub fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: Vec::new(),
    }
}

/// A packet for one listener: its connection, the sender in it, and the packet as rewritten
/// for that leg.
pub struct Leg {
    pub listener: u64,
    pub thread: usize,
    pub sender: RTCRtpSenderId,
    pub packet: rtp::Packet,
}

impl DownTrack {
    /// A track named after its speaker (stream id = user id, track id = `user:client`), so a
    /// client can tell who is talking.
    pub fn new(
        (source, user, client): (u64, &str, &str),
        (listener, listener_thread): (u64, usize),
        dropped: Counter,
    ) -> Arc<Self> {
        let ssrc = rand::RngExt::random::<u32>(&mut rand::rng()).max(1);
        let track = MediaStreamTrack::new(
            user.to_owned(),
            format!("{user}:{client}"),
            format!("{user}:{client}"),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: opus(),
                ..Default::default()
            }],
        );
        Arc::new(Self {
            source,
            listener,
            listener_thread,
            track,
            ssrc,
            sender: OnceLock::new(),
            negotiated: AtomicU32::new(0),
            dropped,
        })
    }

    /// The sender the listener's connection carries this track on.
    pub fn attached(&self, sender: RTCRtpSenderId) {
        let _already = self.sender.set(sender);
    }

    /// Records what the listener's connection negotiated for this track; packets flow from
    /// then on.
    pub fn negotiated(&self, parameters: &RTCRtpSendParameters) {
        let Some(payload_type) = parameters
            .rtp_parameters
            .codecs
            .iter()
            .find(|codec| codec.rtp_codec.mime_type.eq_ignore_ascii_case("audio/opus"))
            .map(|codec| codec.payload_type)
        else {
            return;
        };
        let level_id = parameters
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|ext| ext.uri == AUDIO_LEVEL_URI)
            .and_then(|ext| u8::try_from(ext.id).ok())
            .unwrap_or(0);
        let packed = READY | u32::from(payload_type) << 8 | u32::from(level_id);
        self.negotiated.store(packed, Ordering::Release);
    }

    /// The packet rewritten for the listener's leg, once it is negotiated: a fresh header
    /// with only what the leg negotiated, under its ids (the sender's transport-wide sequence
    /// numbers mean nothing downstream).
    pub fn leg(&self, packet: &rtp::Packet, level: Option<&Bytes>) -> Option<Leg> {
        let negotiated = self.negotiated.load(Ordering::Acquire);
        if negotiated & READY == 0 {
            return None;
        }
        let sender = *self.sender.get()?;
        let mut header = rtp::header::Header {
            version: 2,
            marker: packet.header.marker,
            payload_type: (negotiated >> 8) as u8,
            sequence_number: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            ssrc: self.ssrc,
            ..Default::default()
        };
        let level_id = (negotiated & 0xff) as u8;
        if let Some(level) = level
            && level_id != 0
        {
            // Fails only for ids outside 1..=255, which negotiation does not produce.
            let _ = header.set_extension(level_id, level.clone());
        }
        Some(Leg {
            listener: self.listener,
            thread: self.listener_thread,
            sender,
            packet: rtp::Packet {
                header,
                payload: packet.payload.clone(),
            },
        })
    }
}
