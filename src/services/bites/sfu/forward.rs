//! One forwarded stream: a source participant's audio into one listener's connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use futures_util::FutureExt as _;
use metrics::Counter;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpSendParameters,
    RtpCodecKind,
};
use rtc::sdp::extmap::AUDIO_LEVEL_URI;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;

/// Ready bit plus the payload type and audio-level extension id negotiated on the listener's
/// leg, packed so the hot path reads them with one load.
const READY: u32 = 1 << 16;

pub struct DownTrack {
    /// The participant whose audio this carries, and the one who hears it.
    pub source: u64,
    pub listener: u64,
    pub track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    negotiated: AtomicU32,
    dropped: Counter,
}

/// The Opus codec as the SFU registers it (`peer::media_engine`) and sends it.
pub fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: Vec::new(),
    }
}

impl DownTrack {
    /// A track named after its speaker (stream id = user id, track id = `user:client`), so a
    /// client can tell who is talking.
    pub fn new(
        (source, user, client): (u64, &str, &str),
        listener: u64,
        dropped: Counter,
    ) -> Arc<Self> {
        let ssrc = rand::RngExt::random::<u32>(&mut rand::rng()).max(1);
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
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
        )));
        Arc::new(Self {
            source,
            listener,
            track,
            ssrc,
            negotiated: AtomicU32::new(0),
            dropped,
        })
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

    /// Hands a packet, rewritten for the listener's leg, to its connection; never waits: a
    /// connection with no room (its driver behind) loses the packet, late audio being useless.
    pub fn send(&self, packet: &rtp::Packet, level: Option<&Bytes>) {
        let negotiated = self.negotiated.load(Ordering::Acquire);
        if negotiated & READY == 0 {
            return;
        }
        // A fresh header: only what the listener's leg negotiated goes out, under its ids
        // (the sender's transport-wide sequence numbers mean nothing downstream).
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
        let packet = rtp::Packet {
            header,
            payload: packet.payload.clone(),
        };
        // One poll: the connection's queue has room (it almost always does) or the packet is
        // dropped, without a task per listener in between.
        if !matches!(self.track.write_rtp(packet).now_or_never(), Some(Ok(()))) {
            self.dropped.increment(1);
        }
    }
}
