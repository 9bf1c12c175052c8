//! A WebRTC client for tests and benchmarks, built on the `webrtc` crate: it speaks the
//! `/webrtc` signalling (`offer::`, `answer::`, `ice::`), sends Opus packets with RFC 6464
//! audio levels, answers the server's renegotiations and records what it hears, per track.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sdp::extmap::AUDIO_LEVEL_URI;
use rtc::shared::marshal::{Marshal as _, Unmarshal as _};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit,
    RTCIceGatheringState, RTCPeerConnectionState,
};

/// What one received packet carried.
#[derive(Debug, Clone)]
pub struct Heard {
    pub payload: Bytes,
    pub level: Option<u8>,
}

pub struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    /// Packets heard, by track id (`user:client` of the speaker).
    pub heard: Arc<Mutex<HashMap<String, Vec<Heard>>>>,
    /// `error::` messages from the server.
    pub errors: Arc<Mutex<Vec<String>>>,
    /// Offers the server made (renegotiations) and that this peer answered.
    pub offers: Arc<AtomicUsize>,
    /// While set, the server's offers are kept in `held`, unanswered.
    pub hold: Arc<AtomicBool>,
    pub held: Arc<Mutex<Vec<String>>>,
    /// Answers the server sent.
    pub answers: Arc<AtomicUsize>,
    signalling: mpsc::UnboundedSender<String>,
    level_id: u8,
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: Vec::new(),
    }
}

struct Events {
    gathered: watch::Sender<bool>,
    connected: watch::Sender<bool>,
    heard: Arc<Mutex<HashMap<String, Vec<Heard>>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let heard = Arc::clone(&self.heard);
        tokio::spawn(async move {
            let id = track.track_id().await;
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    // The server forwards levels under the id negotiated with this peer: 1.
                    let level = packet
                        .header
                        .get_extension(1)
                        .and_then(|mut b| AudioLevelExtension::unmarshal(&mut b).ok())
                        .map(|l| l.level);
                    heard
                        .lock()
                        .unwrap()
                        .entry(id.clone())
                        .or_default()
                        .push(Heard {
                            payload: packet.payload,
                            level,
                        });
                }
            }
        });
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.connected
            .send_replace(state == RTCPeerConnectionState::Connected);
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }
}

impl Peer {
    /// Opens the signalling socket with `token`, offers a microphone track and waits for the
    /// server's answer.
    pub async fn connect(base_ws: &str, token: &str) -> Peer {
        Self::connect_after(base_ws, token, |_| Vec::new()).await
    }

    /// As [`Peer::connect`], sending first the frames `before` makes of the real offer's SDP.
    pub async fn connect_after(
        base_ws: &str,
        token: &str,
        before: impl FnOnce(&str) -> Vec<String>,
    ) -> Peer {
        let mut engine = MediaEngine::default();
        engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: opus(),
                    payload_type: 111,
                },
                RtpCodecKind::Audio,
            )
            .unwrap();
        engine
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: AUDIO_LEVEL_URI.into(),
                },
                RtpCodecKind::Audio,
                None,
            )
            .unwrap();
        let heard = Arc::new(Mutex::new(HashMap::new()));
        let (gathered_tx, mut gathered) = watch::channel(false);
        let (connected_tx, mut connected) = watch::channel(false);
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(engine)
                .with_interceptor_registry(configure_rtcp_reports(Registry::new()))
                .with_setting_engine(
                    SettingEngineBuilder::new()
                        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                        .build(),
                )
                .with_handler(Arc::new(Events {
                    gathered: gathered_tx,
                    connected: connected_tx,
                    heard: Arc::clone(&heard),
                }))
                .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
                .build()
                .await
                .unwrap(),
        );
        let ssrc: u32 = rand::random::<u32>().max(1);
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "mic".into(),
            "mic".into(),
            "mic".into(),
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
        pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await
            .unwrap();

        let url = format!("{base_ws}/webrtc/connect?token={token}");
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (mut sink, mut stream) = socket.split();
        let (signalling, mut outgoing) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = outgoing.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        });

        let offer = pc.create_offer(None).await.unwrap();
        pc.set_local_description(offer).await.unwrap();
        let _ = gathered.wait_for(|done| *done).await;
        let sdp = pc.local_description().await.unwrap().sdp;
        let level_id = extmap_id(&sdp, AUDIO_LEVEL_URI);
        for frame in before(&sdp) {
            signalling.send(frame).unwrap();
        }
        signalling.send(format!("offer::{sdp}")).unwrap();

        let errors = Arc::new(Mutex::new(Vec::new()));
        let offers = Arc::new(AtomicUsize::new(0));
        let hold = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(AtomicUsize::new(0));
        let (answered_tx, mut answered) = watch::channel(false);
        {
            let pc = Arc::clone(&pc);
            let errors = Arc::clone(&errors);
            let offers = Arc::clone(&offers);
            let hold = Arc::clone(&hold);
            let held = Arc::clone(&held);
            let answers = Arc::clone(&answers);
            let signalling = signalling.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Some((tag, payload)) = text.split_once("::") else {
                        continue;
                    };
                    match tag {
                        "answer" => {
                            let answer = RTCSessionDescription::answer(payload.to_owned()).unwrap();
                            pc.set_remote_description(answer).await.unwrap();
                            answers.fetch_add(1, Ordering::SeqCst);
                            answered_tx.send_replace(true);
                        }
                        "offer" if hold.load(Ordering::SeqCst) => {
                            held.lock().unwrap().push(payload.to_owned());
                        }
                        "offer" => {
                            let offer = RTCSessionDescription::offer(payload.to_owned()).unwrap();
                            pc.set_remote_description(offer).await.unwrap();
                            let answer = pc.create_answer(None).await.unwrap();
                            pc.set_local_description(answer).await.unwrap();
                            let sdp = pc.local_description().await.unwrap().sdp;
                            let _ = signalling.send(format!("answer::{sdp}"));
                            offers.fetch_add(1, Ordering::SeqCst);
                        }
                        "ice" => {
                            let candidate: RTCIceCandidateInit =
                                serde_json::from_str(payload).unwrap();
                            // Already in the SDP; adding it again must be harmless.
                            let _ = pc.add_ice_candidate(candidate).await;
                        }
                        "error" => errors.lock().unwrap().push(payload.to_owned()),
                        other => panic!("unexpected signalling message {other:?}"),
                    }
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(10), answered.wait_for(|done| *done))
            .await
            .expect("the server answered the offer")
            .unwrap();
        // Packets sent before ICE and DTLS are up would be lost.
        tokio::time::timeout(Duration::from_secs(10), connected.wait_for(|up| *up))
            .await
            .expect("the media connection came up")
            .unwrap();
        Peer {
            pc,
            track,
            ssrc,
            sequence: rand::random(),
            timestamp: rand::random(),
            heard,
            errors,
            offers,
            hold,
            held,
            answers,
            signalling,
            level_id,
        }
    }

    /// Offers again (as a client renegotiating does), without waiting for the answer.
    pub async fn offer(&self) {
        let offer = self.pc.create_offer(None).await.unwrap();
        self.pc.set_local_description(offer).await.unwrap();
        let sdp = self.pc.local_description().await.unwrap().sdp;
        self.signal(&format!("offer::{sdp}"));
    }

    /// Sends a raw signalling frame.
    pub fn signal(&self, text: &str) {
        self.signalling.send(text.to_owned()).unwrap();
    }

    /// Sends one packet (`samples` long at 48 kHz) with an audio level, or none.
    pub async fn send(&mut self, payload: &[u8], samples: u32, level: Option<u8>) {
        let mut packet = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: 111,
                sequence_number: self.sequence,
                timestamp: self.timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        };
        if let Some(level) = level
            && self.level_id != 0
        {
            let ext = AudioLevelExtension {
                level,
                voice: level < 127,
            };
            packet
                .header
                .set_extension(self.level_id, ext.marshal().unwrap().freeze())
                .unwrap();
        }
        self.track.write_rtp(packet).await.unwrap();
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples);
    }

    /// Sends packets 20 ms apart, in real time.
    pub async fn speak(&mut self, packets: &[Vec<u8>], level: Option<u8>) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for packet in packets {
            tick.tick().await;
            self.send(packet, 960, level).await;
        }
    }

    /// Packets heard from the speaker whose track id starts with `user`.
    pub fn heard_from(&self, user: &str) -> usize {
        self.heard
            .lock()
            .unwrap()
            .iter()
            .filter(|(track, _)| track.starts_with(user))
            .map(|(_, packets)| packets.len())
            .sum()
    }

    /// Track ids heard so far.
    pub fn speakers(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.heard.lock().unwrap().keys().cloned().collect();
        ids.sort();
        ids
    }

    pub async fn close(self) {
        let _ = self.pc.close().await;
    }
}

fn extmap_id(sdp: &str, uri: &str) -> u8 {
    sdp.lines()
        .filter_map(|line| line.strip_prefix("a=extmap:"))
        .find_map(|rest| {
            let (id, rest) = rest.split_once(' ')?;
            (rest.split_whitespace().next()? == uri).then(|| id.split('/').next()?.parse().ok())?
        })
        .unwrap_or(0)
}

/// A 20 ms CELT packet the decoder accepts: the TOC byte, then bytes it reads as range-coded
/// data. Used when no Opus encoder is installed.
pub fn synthetic_opus(seed: u8, len: usize) -> Vec<u8> {
    let mut packet: Vec<u8> = (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect();
    packet[0] = 0xfc; // CELT fullband 20 ms, stereo, one frame
    packet
}
