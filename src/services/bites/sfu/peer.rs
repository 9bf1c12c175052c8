//! One client connection: its PeerConnection, its signalling, and the negotiation that adds
//! and removes forwarded tracks as people come and go.
//!
//! Every change to the connection's tracks and every offer and answer go through one task per
//! participant ([`Negotiator`]), so they never interleave. The server offers only while the
//! signalling state is stable, after the client's first offer has been answered; changes that
//! arrive meanwhile are folded into the next offer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sdp::extmap::AUDIO_LEVEL_URI;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit,
    RTCIceGatheringState, RTCPeerConnectionState,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender};

use super::forward::{DownTrack, opus};
use crate::config::SfuConfig;

/// Who is connected: one signalling socket of one user's client (device).
pub struct Participant {
    /// Unique per connection, so a reconnect of the same client is a new participant.
    pub id: u64,
    pub user: String,
    pub client: String,
    /// Text frames for the client's socket.
    pub outbox: mpsc::Sender<String>,
    /// Where this participant's audio goes: read on every packet.
    pub route: RwLock<Arc<Route>>,
    /// The tracks this participant should receive, by source participant; the negotiator
    /// brings the connection in line with it.
    pub wanted: Mutex<HashMap<u64, Arc<DownTrack>>>,
    pub negotiate: mpsc::UnboundedSender<Negotiation>,
    /// Fired when the participant is disconnected (or replaced by a newer connection of the
    /// same client): its socket closes.
    pub closed: tokio_util::sync::CancellationToken,
    /// The RFC 6464 extension id in the client's offer (0: none).
    pub level_id: AtomicU8,
}

/// A participant's room and the tracks its audio feeds there.
#[derive(Default)]
pub struct Route {
    pub room: Option<Arc<str>>,
    pub listeners: Vec<Arc<DownTrack>>,
}

impl Participant {
    pub fn route(&self) -> Arc<Route> {
        Arc::clone(&self.route.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn set_route(&self, route: Route) {
        *self.route.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(route);
    }

    pub fn wanted(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<DownTrack>>> {
        self.wanted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the negotiator to bring the tracks in line with `wanted` (and offer).
    pub fn renegotiate(&self) {
        let _closed = self.negotiate.send(Negotiation::Sync);
    }
}

/// Work for a participant's negotiator.
pub enum Negotiation {
    /// The participant is gone: close the connection (which ends its tracks' loops).
    Close,
    Offer(String),
    Answer(String),
    Candidate(RTCIceCandidateInit),
    Sync,
}

/// Everything a connection needs to be built.
pub struct Transport {
    pub ip: IpAddr,
    pub public_ip: Option<IpAddr>,
    pub ports: Ports,
}

impl Transport {
    pub fn new(config: &SfuConfig) -> Result<Self, String> {
        let public_ip = match config.public_ip.trim() {
            "" => None,
            text => Some(
                text.parse()
                    .map_err(|err| format!("bites.sfu.public_ip {text:?}: {err}"))?,
            ),
        };
        if config.port_min > config.port_max {
            return Err("bites.sfu.port_min is above port_max".into());
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

/// The configured UDP port range, handed out round-robin (webrtc 0.21 has no port-range
/// setting: each connection binds the one address it is given).
pub struct Ports {
    min: u16,
    max: u16,
    next: AtomicU16,
}

impl Ports {
    /// A free address: port 0 (any) without a range, else the next range port that binds.
    fn pick(&self, ip: IpAddr) -> Option<SocketAddr> {
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

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("no free UDP port in bites.sfu.port_min..=port_max")]
    NoPort,
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    #[error("media runtime: {0}")]
    Task(String),
}

/// Opus only, with the audio-level extension; RTCP reports, but neither NACK (a late audio
/// packet is useless) nor transport-wide congestion feedback (one small stream per leg).
fn media_engine() -> Result<(MediaEngine, Registry), webrtc::error::Error> {
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
    let registry = configure_rtcp_reports(Registry::new());
    Ok((engine, registry))
}

/// What the connection's callbacks report; it holds no reference to the connection.
struct Events {
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
    gathered: watch::Sender<bool>,
    connected: watch::Sender<bool>,
    participant: u64,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _closed = self.tracks.send(track);
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(participant = self.participant, %state, "media connection");
        self.connected
            .send_replace(state == RTCPeerConnectionState::Connected);
    }
}

/// A new connection's parts: the participant, its negotiator and its incoming tracks.
pub struct Built {
    pub participant: Arc<Participant>,
    pub negotiator: Negotiator,
    pub tracks: mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
}

static NEXT_PARTICIPANT: AtomicU64 = AtomicU64::new(1);

/// Builds a participant's connection. Runs on the media runtime: the connection's sockets
/// and timers live where it is built.
pub async fn build(
    transport: Arc<Transport>,
    user: String,
    client: String,
    outbox: mpsc::Sender<String>,
) -> Result<Built, PeerError> {
    let id = NEXT_PARTICIPANT.fetch_add(1, Ordering::Relaxed);
    let (tracks_tx, tracks) = mpsc::unbounded_channel();
    let (gathered_tx, gathered) = watch::channel(false);
    let (connected_tx, connected) = watch::channel(false);
    let (engine, registry) = media_engine()?;
    let addr = transport
        .ports
        .pick(transport.ip)
        .ok_or(PeerError::NoPort)?;
    let pc = PeerConnectionBuilder::new()
        // No STUN or TURN for the server itself: it knows its address (`public_ip` behind
        // a NAT), and clients that need a relay get one from `/webrtc/config`.
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                .build(),
        )
        .with_handler(Arc::new(Events {
            tracks: tracks_tx,
            gathered: gathered_tx,
            connected: connected_tx,
            participant: id,
        }))
        .with_udp_addrs(vec![addr.to_string()])
        .build()
        .await?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    let (negotiate, work) = mpsc::unbounded_channel();
    let participant = Arc::new(Participant {
        id,
        user,
        client,
        outbox,
        route: RwLock::default(),
        wanted: Mutex::default(),
        negotiate,
        closed: tokio_util::sync::CancellationToken::new(),
        level_id: AtomicU8::new(0),
    });
    let negotiator = Negotiator {
        participant: Arc::downgrade(&participant),
        pc,
        transport,
        work,
        gathered,
        connected,
        answered_first: false,
        offering: None,
        dirty: false,
        early_candidates: Vec::new(),
        attached: HashMap::new(),
    };
    Ok(Built {
        participant,
        negotiator,
        tracks,
    })
}

/// The participant's negotiation task; see the module comment.
pub struct Negotiator {
    participant: std::sync::Weak<Participant>,
    pc: Arc<dyn PeerConnection>,
    transport: Arc<Transport>,
    work: mpsc::UnboundedReceiver<Negotiation>,
    gathered: watch::Receiver<bool>,
    connected: watch::Receiver<bool>,
    answered_first: bool,
    /// The tracks in our offer awaiting the client's answer.
    offering: Option<Vec<Arc<DownTrack>>>,
    /// Tracks changed while an offer was out: offer again after the answer.
    dirty: bool,
    early_candidates: Vec<RTCIceCandidateInit>,
    attached: HashMap<u64, (Arc<DownTrack>, Arc<dyn RtpSender>)>,
}

/// A message the client gets when its message could not be used.
#[derive(Serialize)]
struct SignalError<'a> {
    code: &'a str,
    message: String,
}

impl Negotiator {
    pub async fn run(mut self) {
        while let Some(work) = self.work.recv().await {
            let result = match work {
                Negotiation::Offer(sdp) => self.client_offer(sdp).await,
                Negotiation::Answer(sdp) => self.client_answer(sdp).await,
                Negotiation::Candidate(candidate) => self.candidate(candidate).await,
                Negotiation::Sync => self.sync().await,
                Negotiation::Close => break,
            };
            if let Err((code, err)) = result {
                tracing::debug!(code, error = %err, "signalling message refused");
                self.send_error(code, err.to_string()).await;
            }
        }
        if let Err(err) = self.pc.close().await {
            tracing::debug!(error = %err, "closing a media connection");
        }
    }

    async fn send(&self, text: String) {
        if let Some(participant) = self.participant.upgrade() {
            let _closed = participant.outbox.send(text).await;
        }
    }

    async fn send_error(&self, code: &str, message: String) {
        let body = serde_json::to_string(&SignalError { code, message }).unwrap_or_default();
        self.send(format!("error::{body}")).await;
    }

    async fn client_offer(
        &mut self,
        sdp: String,
    ) -> Result<(), (&'static str, webrtc::error::Error)> {
        let offer =
            RTCSessionDescription::offer(sdp.clone()).map_err(|err| ("invalid_offer", err))?;
        if self.offering.take().is_some() {
            // Both sides offered at once: the client's offer wins; ours is made again after.
            self.pc
                .set_local_description(
                    RTCSessionDescription::rollback(None).map_err(|err| ("rollback", err))?,
                )
                .await
                .map_err(|err| ("rollback", err))?;
            self.dirty = true;
        }
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(|err| ("invalid_offer", err))?;
        if let Some(participant) = self.participant.upgrade() {
            participant
                .level_id
                .store(extmap_id(&sdp, AUDIO_LEVEL_URI), Ordering::Relaxed);
        }
        for candidate in std::mem::take(&mut self.early_candidates) {
            self.add_candidate(candidate).await;
        }
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(|err| ("negotiation_failed", err))?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(|err| ("negotiation_failed", err))?;
        let sdp = self.local_sdp().await;
        self.send(format!("answer::{sdp}")).await;
        // Clients that expect trickled candidates get them too (they are also in the SDP).
        for candidate in candidates(&sdp) {
            self.send(format!("ice::{candidate}")).await;
        }
        let first = !self.answered_first;
        self.answered_first = true;
        if first || self.dirty {
            self.dirty = false;
            return self.sync().await;
        }
        Ok(())
    }

    async fn client_answer(
        &mut self,
        sdp: String,
    ) -> Result<(), (&'static str, webrtc::error::Error)> {
        let Some(offered) = self.offering.take() else {
            return Ok(());
        };
        let answer = RTCSessionDescription::answer(sdp).map_err(|err| ("invalid_answer", err))?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(|err| ("invalid_answer", err))?;
        for down in offered {
            if let Some((_, sender)) = self.attached.get(&down.source)
                && let Ok(parameters) = sender.get_parameters().await
            {
                // Packets sent before DTLS is up are dropped by the connection: forward from
                // the moment it is connected (at once on a renegotiation).
                if *self.connected.borrow() {
                    down.negotiated(&parameters);
                    continue;
                }
                let mut connected = self.connected.clone();
                tokio::spawn(async move {
                    if connected.wait_for(|up| *up).await.is_ok() {
                        down.negotiated(&parameters);
                    }
                });
            }
        }
        if std::mem::take(&mut self.dirty) {
            return self.sync().await;
        }
        Ok(())
    }

    async fn candidate(
        &mut self,
        candidate: RTCIceCandidateInit,
    ) -> Result<(), (&'static str, webrtc::error::Error)> {
        if self.pc.remote_description().await.is_none() {
            self.early_candidates.push(candidate);
        } else {
            self.add_candidate(candidate).await;
        }
        Ok(())
    }

    async fn add_candidate(&self, candidate: RTCIceCandidateInit) {
        if let Err(err) = self.pc.add_ice_candidate(candidate).await {
            tracing::debug!(error = %err, "ICE candidate refused");
        }
    }

    /// Adds and removes tracks to match what the participant should hear, then offers.
    async fn sync(&mut self) -> Result<(), (&'static str, webrtc::error::Error)> {
        if !self.answered_first || self.offering.is_some() {
            self.dirty = true;
            return Ok(());
        }
        let Some(participant) = self.participant.upgrade() else {
            return Ok(());
        };
        let wanted: HashMap<u64, Arc<DownTrack>> = participant.wanted().clone();
        let gone: Vec<u64> = self
            .attached
            .keys()
            .filter(|source| {
                !wanted
                    .get(source)
                    .is_some_and(|down| self.is_attached(down))
            })
            .copied()
            .collect();
        let mut changed = !gone.is_empty();
        for source in gone {
            if let Some((_, sender)) = self.attached.remove(&source)
                && let Err(err) = self.pc.remove_track(&sender).await
            {
                tracing::debug!(error = %err, "removing a forwarded track");
            }
        }
        for (source, down) in &wanted {
            if self.attached.contains_key(source) {
                continue;
            }
            // A send-only m-line of its own: `add_track` would put the first forwarded track on
            // the client's microphone m-line, where browsers ignore the track id it is given.
            let transceiver = self
                .pc
                .add_transceiver_from_track(
                    Arc::clone(&down.track) as Arc<dyn TrackLocal>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        streams: Vec::new(),
                        send_encodings: Vec::new(),
                    }),
                )
                .await
                .map_err(|err| ("negotiation_failed", err))?;
            let sender = transceiver
                .sender()
                .await
                .map_err(|err| ("negotiation_failed", err))?
                .ok_or((
                    "negotiation_failed",
                    webrtc::error::Error::ErrRTPTransceiverNotExisted,
                ))?;
            self.attached.insert(*source, (Arc::clone(down), sender));
            changed = true;
        }
        if !changed {
            return Ok(());
        }
        let offer = self
            .pc
            .create_offer(None)
            .await
            .map_err(|err| ("negotiation_failed", err))?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(|err| ("negotiation_failed", err))?;
        self.offering = Some(
            self.attached
                .values()
                .map(|(down, _)| Arc::clone(down))
                .collect(),
        );
        let sdp = self.local_sdp().await;
        self.send(format!("offer::{sdp}")).await;
        Ok(())
    }

    fn is_attached(&self, down: &Arc<DownTrack>) -> bool {
        self.attached
            .get(&down.source)
            .is_some_and(|(attached, _)| Arc::ptr_eq(attached, down))
    }

    /// The local description once gathering is complete (at once after the first time),
    /// with the public address in place of the bound one behind a 1:1 NAT.
    async fn local_sdp(&mut self) -> String {
        let _ = self.gathered.wait_for(|done| *done).await;
        let sdp = self
            .pc
            .local_description()
            .await
            .map(|description| description.sdp)
            .unwrap_or_default();
        match self.transport.public_ip {
            Some(public) => advertise(&sdp, self.transport.ip, public),
            None => sdp,
        }
    }
}

/// The id an SDP gives an RTP header extension (`a=extmap:<id>[/<direction>] <uri>`), or 0.
pub fn extmap_id(sdp: &str, uri: &str) -> u8 {
    sdp.lines()
        .filter_map(|line| line.strip_prefix("a=extmap:"))
        .find_map(|rest| {
            let (id, rest) = rest.split_once(' ')?;
            let id = id.split('/').next()?;
            (rest.split_whitespace().next()? == uri).then(|| id.parse().ok())?
        })
        .unwrap_or(0)
}

/// The candidates of an SDP as `RTCIceCandidateInit` JSON, for the `ice::` messages.
fn candidates(sdp: &str) -> Vec<String> {
    let mid = sdp
        .lines()
        .find_map(|line| line.strip_prefix("a=mid:"))
        .unwrap_or("0");
    sdp.lines()
        .filter_map(|line| line.strip_prefix("a="))
        .filter(|line| line.starts_with("candidate:"))
        .filter_map(|candidate| {
            serde_json::to_string(&RTCIceCandidateInit {
                candidate: candidate.trim_end().to_owned(),
                sdp_mid: Some(mid.to_owned()),
                sdp_mline_index: Some(0),
                username_fragment: None,
                url: None,
            })
            .ok()
        })
        .collect()
}

/// Replaces the bound address by the public one in candidate and connection lines.
fn advertise(sdp: &str, bound: IpAddr, public: IpAddr) -> String {
    let (bound, public) = (bound.to_string(), public.to_string());
    sdp.split_inclusive('\n')
        .map(|line| {
            if line.starts_with("a=candidate:") || line.starts_with("c=") {
                line.split(' ')
                    .map(|token| {
                        if token.trim_end() == bound {
                            token.replacen(&bound, &public, 1)
                        } else {
                            token.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                line.to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\nc=IN IP4 10.0.0.5\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:3/sendrecv http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\na=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host\r\n";

    #[test]
    fn reads_extension_ids() {
        assert_eq!(extmap_id(SDP, AUDIO_LEVEL_URI), 1);
        assert_eq!(
            extmap_id(
                SDP,
                "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
            ),
            3
        );
        assert_eq!(extmap_id(SDP, "urn:nothing"), 0);
    }

    #[test]
    fn advertises_the_public_address() {
        let rewritten = advertise(
            SDP,
            "10.0.0.5".parse().unwrap(),
            "203.0.113.7".parse().unwrap(),
        );
        assert!(
            rewritten.contains("c=IN IP4 203.0.113.7\r\n"),
            "{rewritten}"
        );
        assert!(
            rewritten.contains("udp 2130706431 203.0.113.7 50000 typ host\r\n"),
            "{rewritten}"
        );
        assert!(!rewritten.contains("10.0.0.5"));
    }

    #[test]
    fn candidates_become_json() {
        let json = candidates(SDP);
        assert_eq!(json.len(), 1);
        let init: RTCIceCandidateInit = serde_json::from_str(&json[0]).unwrap();
        assert_eq!(
            init.candidate,
            "candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host"
        );
        assert_eq!(init.sdp_mid.as_deref(), Some("0"));
    }

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
