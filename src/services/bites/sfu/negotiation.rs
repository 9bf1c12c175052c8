//! A participant's negotiation: the task that adds and removes forwarded tracks on its
//! connection as people come and go, and exchanges offers, answers and candidates.
//!
//! Every change to the connection's tracks and every offer and answer go through one task per
//! participant ([`Negotiator`]), so they never interleave. The server offers only while the
//! signalling state is stable, after the client's first offer has been answered; changes that
//! arrive meanwhile are folded into the next offer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::sdp::extmap::AUDIO_LEVEL_URI;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender};

use super::forward::DownTrack;
use super::peer::Participant;
use super::sdp::{advertise, candidates, extmap_id};
use super::transport::Transport;

/// Work for a participant's negotiator.
pub enum Negotiation {
    /// The participant is gone: close the connection (which ends its tracks' loops).
    Close,
    Offer(String),
    Answer(String),
    Candidate(RTCIceCandidateInit),
    Sync,
}

/// The participant's negotiation task; see the module comment.
pub struct Negotiator {
    participant: Weak<Participant>,
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
    /// The negotiator of a connection just built: nothing attached, nothing offered yet.
    pub fn new(
        participant: Weak<Participant>,
        pc: Arc<dyn PeerConnection>,
        transport: Arc<Transport>,
        work: mpsc::UnboundedReceiver<Negotiation>,
        gathered: watch::Receiver<bool>,
        connected: watch::Receiver<bool>,
    ) -> Self {
        Self {
            participant,
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
        }
    }

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
