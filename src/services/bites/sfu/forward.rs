//! Forwarding, the hot path: each packet of a participant's track into every listener's
//! connection ([`DownTrack`], one per source and listener) and to the speaker's bite task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use futures_util::FutureExt as _;
use metrics::Counter;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpSendParameters,
    RtpCodecKind,
};
use rtc::sdp::extmap::AUDIO_LEVEL_URI;
use rtc::shared::marshal::Unmarshal as _;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use super::Stats;
use super::peer::Participant;
use crate::services::bites::pipeline::{SpeakerFeed, Spoken};
use crate::services::bites::utterance::Incoming;

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

/// The hot path: each packet of a participant's track goes to the tracks of everyone else in
/// the room, and to the speaker's bite task. Nothing here waits.
pub async fn forward(
    participant: Arc<Participant>,
    track: Arc<dyn TrackRemote>,
    feed: Option<SpeakerFeed>,
    stats: Arc<Stats>,
) {
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        stats.received.increment(1);
        let level_id = participant.level_id.load(Ordering::Relaxed);
        // The level byte as received: listeners get it as is, under their own id.
        let level_bytes = match level_id {
            0 => None,
            id => packet.header.get_extension(id),
        };
        let level = level_bytes
            .clone()
            .and_then(|mut bytes| AudioLevelExtension::unmarshal(&mut bytes).ok());
        let route = participant.route();
        for down in &route.listeners {
            down.send(&packet, level_bytes.as_ref());
        }
        stats.forwarded.increment(route.listeners.len() as u64);
        if let (Some(feed), Some(room)) = (&feed, &route.room) {
            feed.push(Spoken {
                conversation: Arc::clone(room),
                packet: Incoming {
                    timestamp: packet.header.timestamp,
                    arrived_ms: feed.now_millis(),
                    level: level.map(|level| level.level),
                    payload: packet.payload,
                },
            });
        }
    }
}
