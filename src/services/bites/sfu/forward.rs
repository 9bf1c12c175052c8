//! One forwarded stream: a source participant's audio on its way into one listener's
//! connection, with its own queue and writer task so a stuck listener delays nobody else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use metrics::Counter;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpSendParameters,
    RtpCodecKind,
};
use rtc::sdp::extmap::AUDIO_LEVEL_URI;
use rtc::shared::marshal::Marshal as _;
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;

/// Packets a listener's writer may fall behind by; beyond it packets are dropped (late audio
/// is useless) and the source never waits.
const QUEUE: usize = 64;

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
    queue: mpsc::Sender<(rtp::Packet, Option<(u8, AudioLevelExtension)>)>,
    dropped: Counter,
}

/// The Opus codec as the SFU registers it (`sfu::media_engine`) and sends it.
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
    /// client can tell who is talking; its writer runs on the media runtime.
    pub fn new(
        media: &tokio::runtime::Handle,
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
        let (queue, packets) = mpsc::channel(QUEUE);
        let down = Arc::new(Self {
            source,
            listener,
            track: Arc::clone(&track),
            ssrc,
            negotiated: AtomicU32::new(0),
            queue,
            dropped,
        });
        media.spawn(write_loop(track, packets, down.dropped.clone()));
        down
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

    /// Queues a packet for the listener, rewritten for its leg; never waits.
    pub fn offer(&self, packet: &rtp::Packet, level: Option<AudioLevelExtension>) {
        let negotiated = self.negotiated.load(Ordering::Acquire);
        if negotiated & READY == 0 {
            return;
        }
        let mut packet = packet.clone();
        let header = &mut packet.header;
        header.ssrc = self.ssrc;
        header.payload_type = (negotiated >> 8) as u8;
        // Only extensions negotiated on the listener's leg may go out, under its ids; the
        // sender's transport-wide sequence numbers mean nothing downstream.
        header.extensions.clear();
        header.extension = false;
        header.extension_profile = 0;
        header.extensions_padding = 0;
        let level_id = (negotiated & 0xff) as u8;
        let level = level
            .filter(|_| level_id != 0)
            .map(|level| (level_id, level));
        if self.queue.try_send((packet, level)).is_err() {
            self.dropped.increment(1);
        }
    }
}

async fn write_loop(
    track: Arc<TrackLocalStaticRTP>,
    mut packets: mpsc::Receiver<(rtp::Packet, Option<(u8, AudioLevelExtension)>)>,
    dropped: Counter,
) {
    while let Some((mut packet, level)) = packets.recv().await {
        if let Some((id, level)) = level
            && let Ok(bytes) = level.marshal()
        {
            // Fails only for ids outside 1..=255, which negotiation does not produce.
            let _ = packet.header.set_extension(id, Bytes::from(bytes.freeze()));
        }
        if track.write_rtp(packet).await.is_err() {
            dropped.increment(1);
        }
    }
}
