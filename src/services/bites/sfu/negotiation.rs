//! A participant's negotiation: the task that adds and removes forwarded tracks on its
//! connection as people come and go, and exchanges offers, answers and candidates.
//!
//! Every change to the connection's tracks and every offer and answer go through one task per
//! participant ([`Negotiator`]), so they never interleave. The server offers only while the
//! signalling state is stable, after the client's first offer has been answered; changes that
//! arrive meanwhile are folded into the next offer.
//!
//! Everything a client can make it hold is bounded: the messages waiting for it
//! ([`super::peer::MESSAGE_QUEUE`]), the candidates of an ICE session ([`MAX_CANDIDATES`],
//! those before the first offer also by size, [`MAX_EARLY_CANDIDATE_BYTES`]) and the m-lines
//! of an offer ([`MAX_MEDIA_SECTIONS`]); an offer's size is bounded by the socket's
//! `bites.sfu.max_message_bytes`. A description that fails to apply is rolled back, so the
//! next one is taken.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use std::time::Instant;

use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sdp::extmap::AUDIO_LEVEL_URI;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::forward::DownTrack;
use super::media::plane::MediaThread;
use super::peer::{Frame, Participant};
use super::sdp::{candidates, extmap_id};

/// Most remote candidates in one ICE session (reset by an ICE restart). A browser gathers a
/// host candidate per interface and address family, a server-reflexive and a few relayed ones:
/// a few dozen at most. Past it the socket closes (`too_many_candidates`).
pub const MAX_CANDIDATES: usize = 100;

/// Most bytes of candidates kept while waiting for the client's first offer.
pub const MAX_EARLY_CANDIDATE_BYTES: usize = 32 * 1024;

/// Most m-lines in a client's offer: its microphone and one per track it has been sent
/// (a track's m-line stays after the speaker leaves). Past it the offer is refused
/// (`too_many_media`) and the connection stays as it was.
pub const MAX_MEDIA_SECTIONS: usize = 256;

/// A client's signalling message, for its negotiator.
pub enum Negotiation {
    Offer(String),
    Answer(String),
    Candidate(RTCIceCandidateInit),
}

/// Why a client message was not used: the `error::` code and message, and whether the socket
/// closes after it (a limit no honest client reaches).
pub struct Refusal {
    code: &'static str,
    message: String,
    fatal: bool,
}

impl Refusal {
    fn new(code: &'static str, message: impl Display) -> Self {
        Self {
            code,
            message: message.to_string(),
            fatal: false,
        }
    }

    fn fatal(code: &'static str, message: impl Display) -> Self {
        Self {
            fatal: true,
            ..Self::new(code, message)
        }
    }
}

/// `map_err` for a connection call: refused with `code` and the library's message.
fn refuse<E: Display>(code: &'static str) -> impl FnOnce(E) -> Refusal {
    move |err| Refusal::new(code, err)
}

/// The participant's connection, on its media thread: every call runs there.
pub struct Link {
    pub thread: Arc<MediaThread>,
    pub id: u64,
}

impl Link {
    /// Runs `f` on the connection; a connection that is gone is refused as closed.
    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RTCPeerConnection, Instant) -> R + Send + 'static,
    ) -> Result<R, Refusal> {
        let id = self.id;
        self.thread
            .call(move |plane| plane.with(id, |connection| f(&mut connection.pc, Instant::now())))
            .await
            .flatten()
            .ok_or_else(|| Refusal::fatal("connection_closed", "the media connection is gone"))
    }
}

/// What woke the negotiator.
enum Step {
    Client(Negotiation),
    Sync,
    Stop,
}

/// The participant's negotiation task; see the module comment.
pub struct Negotiator {
    participant: Weak<Participant>,
    link: Link,
    work: mpsc::Receiver<Negotiation>,
    resync: Arc<Notify>,
    closed: CancellationToken,
    connected: watch::Receiver<bool>,
    answered_first: bool,
    /// The tracks in our offer awaiting the client's answer.
    offering: Option<Vec<Arc<DownTrack>>>,
    /// Tracks changed while an offer was out: offer again after the answer.
    dirty: bool,
    /// Our last offer was rolled back: offer again even if no track changed since.
    unoffered: bool,
    early_candidates: Vec<RTCIceCandidateInit>,
    early_bytes: usize,
    /// Remote candidates taken in this ICE session, and its username fragment.
    candidates: usize,
    ice_ufrag: Option<String>,
    attached: HashMap<u64, (Arc<DownTrack>, RTCRtpSenderId)>,
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
        participant: &Arc<Participant>,
        link: Link,
        work: mpsc::Receiver<Negotiation>,
        connected: watch::Receiver<bool>,
    ) -> Self {
        Self {
            participant: Arc::downgrade(participant),
            link,
            work,
            resync: Arc::clone(&participant.resync),
            closed: participant.closed.clone(),
            connected,
            answered_first: false,
            offering: None,
            dirty: false,
            unoffered: false,
            early_candidates: Vec::new(),
            early_bytes: 0,
            candidates: 0,
            ice_ufrag: None,
            attached: HashMap::new(),
        }
    }

    pub async fn run(mut self) {
        loop {
            let step = tokio::select! {
                () = self.closed.cancelled() => Step::Stop,
                work = self.work.recv() => work.map_or(Step::Stop, Step::Client),
                () = self.resync.notified() => Step::Sync,
            };
            let result = match step {
                Step::Stop => break,
                Step::Sync => self.sync().await,
                Step::Client(Negotiation::Offer(sdp)) => self.client_offer(sdp).await,
                Step::Client(Negotiation::Answer(sdp)) => self.client_answer(sdp).await,
                Step::Client(Negotiation::Candidate(candidate)) => self.candidate(candidate).await,
            };
            let Err(refusal) = result else { continue };
            tracing::debug!(code = refusal.code, error = %refusal.message, "signalling message refused");
            let body = serde_json::to_string(&SignalError {
                code: refusal.code,
                message: refusal.message,
            })
            .unwrap_or_default();
            if refusal.fatal {
                self.send_frame(Frame::Refuse(body)).await;
                break;
            }
            self.send(format!("error::{body}")).await;
            // A rolled-back description may leave changes to offer.
            if self.dirty
                && let Err(refusal) = self.sync().await
            {
                tracing::debug!(code = refusal.code, error = %refusal.message, "offering after a refusal");
            }
        }
        self.link.thread.close(self.link.id);
    }

    async fn send(&self, text: String) {
        self.send_frame(Frame::Text(text)).await;
    }

    async fn send_frame(&self, frame: Frame) {
        if let Some(participant) = self.participant.upgrade() {
            let _closed = participant.outbox.send(frame).await;
        }
    }

    async fn client_offer(&mut self, sdp: String) -> Result<(), Refusal> {
        let media = sdp.lines().filter(|line| line.starts_with("m=")).count();
        if media > MAX_MEDIA_SECTIONS {
            return Err(Refusal::new(
                "too_many_media",
                format!("an offer has at most {MAX_MEDIA_SECTIONS} m-lines, not {media}"),
            ));
        }
        let offer = RTCSessionDescription::offer(sdp.clone()).map_err(refuse("invalid_offer"))?;
        if self.offering.take().is_some() {
            // Both sides offered at once: the client's offer wins; ours is made again after.
            self.rollback_local().await?;
            self.dirty = true;
            self.unoffered = true;
        }
        if let Err(refusal) = self.take_offer(offer, &sdp).await {
            // An offer that parsed but could not be applied (or answered) leaves the
            // connection waiting to answer it: back to stable, so the next offer is taken.
            if let Err(err) = self.rollback_remote().await {
                tracing::warn!(error = %err.message, "rolling back a refused offer");
            }
            return Err(refusal);
        }
        let sdp = self.local_sdp().await?;
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

    /// Applies the client's offer and our answer to it.
    async fn take_offer(&mut self, offer: RTCSessionDescription, sdp: &str) -> Result<(), Refusal> {
        self.link
            .run(move |pc, now| pc.set_remote_description(now, offer))
            .await?
            .map_err(refuse("invalid_offer"))?;
        // m-lines an offer leaves out are not removed: offers of new mids each time would pile
        // transceivers up.
        let transceivers = self.link.run(|pc, _| pc.get_transceivers().count()).await?;
        if transceivers > MAX_MEDIA_SECTIONS + self.attached.len() {
            return Err(Refusal::new(
                "too_many_media",
                format!("at most {MAX_MEDIA_SECTIONS} m-lines in all, not {transceivers}"),
            ));
        }
        let ufrag = sdp
            .lines()
            .find_map(|line| line.strip_prefix("a=ice-ufrag:"))
            .map(|ufrag| ufrag.trim().to_owned());
        if self.ice_ufrag.is_some() && ufrag != self.ice_ufrag {
            // An ICE restart: the remote candidates gathered so far are gone.
            self.candidates = 0;
        }
        self.ice_ufrag = ufrag;
        if let Some(participant) = self.participant.upgrade() {
            participant
                .level_id
                .store(extmap_id(sdp, AUDIO_LEVEL_URI), Ordering::Relaxed);
        }
        self.early_bytes = 0;
        for candidate in std::mem::take(&mut self.early_candidates) {
            self.add_candidate(candidate).await;
        }
        self.link
            .run(|pc, now| {
                let answer = pc.create_answer(None)?;
                pc.set_local_description(now, answer)
            })
            .await?
            .map_err(refuse("negotiation_failed"))
    }

    /// Withdraws our pending offer, if there is one.
    async fn rollback_local(&self) -> Result<(), Refusal> {
        self.link
            .run(|pc, now| {
                if pc.pending_local_description().is_none() {
                    return Ok(());
                }
                pc.set_local_description(now, RTCSessionDescription::rollback(None)?)
            })
            .await?
            .map_err(refuse("rollback"))
    }

    /// Drops the client's pending description, if there is one.
    async fn rollback_remote(&self) -> Result<(), Refusal> {
        self.link
            .run(|pc, now| {
                if pc.pending_remote_description().is_none() {
                    return Ok(());
                }
                pc.set_remote_description(now, RTCSessionDescription::rollback(None)?)
            })
            .await?
            .map_err(refuse("rollback"))
    }

    async fn client_answer(&mut self, sdp: String) -> Result<(), Refusal> {
        let Some(offered) = self.offering.take() else {
            return Ok(());
        };
        let applied = match RTCSessionDescription::answer(sdp) {
            Ok(answer) => {
                self.link
                    .run(move |pc, now| pc.set_remote_description(now, answer))
                    .await?
            }
            Err(err) => Err(err),
        };
        if let Err(err) = applied {
            // Our offer stays unanswered: withdraw it and offer again.
            if let Err(err) = self.rollback_local().await {
                tracing::warn!(error = %err.message, "rolling back an offer after a refused answer");
            }
            if let Err(err) = self.rollback_remote().await {
                tracing::warn!(error = %err.message, "rolling back a refused answer");
            }
            self.dirty = true;
            self.unoffered = true;
            return Err(Refusal::new("invalid_answer", err));
        }
        for down in offered {
            let Some((_, sender)) = self.attached.get(&down.source) else {
                continue;
            };
            let sender = *sender;
            let parameters = self
                .link
                .run(move |pc, _| {
                    pc.rtp_sender(sender)
                        .map(|mut sender| sender.get_parameters().clone())
                })
                .await?;
            if let Some(parameters) = parameters {
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

    async fn candidate(&mut self, candidate: RTCIceCandidateInit) -> Result<(), Refusal> {
        self.candidates += 1;
        if self.candidates > MAX_CANDIDATES {
            return Err(Refusal::fatal(
                "too_many_candidates",
                format!("at most {MAX_CANDIDATES} candidates per ICE session"),
            ));
        }
        // Before the first offer is taken there is no remote description to add them to.
        if !self.answered_first {
            self.early_bytes += candidate_bytes(&candidate);
            if self.early_bytes > MAX_EARLY_CANDIDATE_BYTES {
                return Err(Refusal::fatal(
                    "too_many_candidates",
                    format!(
                        "at most {MAX_EARLY_CANDIDATE_BYTES} bytes of candidates before the offer"
                    ),
                ));
            }
            self.early_candidates.push(candidate);
        } else {
            self.add_candidate(candidate).await;
        }
        Ok(())
    }

    async fn add_candidate(&self, candidate: RTCIceCandidateInit) {
        // ICE-lite learns the client's addresses from its checks; a candidate is only a hint.
        match self
            .link
            .run(move |pc, _| pc.add_remote_candidate(candidate))
            .await
        {
            Ok(Err(err)) => tracing::debug!(error = %err, "ICE candidate refused"),
            Err(err) => {
                tracing::debug!(error = %err.message, "ICE candidate for a closed connection")
            }
            Ok(Ok(())) => {}
        }
    }

    /// Adds and removes tracks to match what the participant should hear, then offers.
    async fn sync(&mut self) -> Result<(), Refusal> {
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
        let mut changed = !gone.is_empty() || std::mem::take(&mut self.unoffered);
        for source in gone {
            if let Some((_, sender)) = self.attached.remove(&source)
                && let Err(err) = self.link.run(move |pc, _| pc.remove_track(sender)).await?
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
            let track = down.track.clone();
            let sender = self
                .link
                .run(move |pc, _| {
                    let transceiver = pc.add_transceiver_from_track(
                        track,
                        Some(RTCRtpTransceiverInit {
                            direction: RTCRtpTransceiverDirection::Sendonly,
                            streams: Vec::new(),
                            send_encodings: Vec::new(),
                        }),
                    )?;
                    Ok::<_, rtc::shared::error::Error>(
                        pc.rtp_transceiver(transceiver)
                            .and_then(|transceiver| transceiver.sender()),
                    )
                })
                .await?
                .map_err(refuse("negotiation_failed"))?
                .ok_or_else(|| Refusal::new("negotiation_failed", "the new track has no sender"))?;
            down.attached(sender);
            self.attached.insert(*source, (Arc::clone(down), sender));
            changed = true;
        }
        if !changed {
            return Ok(());
        }
        self.link
            .run(|pc, now| {
                let offer = pc.create_offer(None)?;
                pc.set_local_description(now, offer)
            })
            .await?
            .map_err(refuse("negotiation_failed"))?;
        self.offering = Some(
            self.attached
                .values()
                .map(|(down, _)| Arc::clone(down))
                .collect(),
        );
        let sdp = self.local_sdp().await?;
        self.send(format!("offer::{sdp}")).await;
        Ok(())
    }

    fn is_attached(&self, down: &Arc<DownTrack>) -> bool {
        self.attached
            .get(&down.source)
            .is_some_and(|(attached, _)| Arc::ptr_eq(attached, down))
    }

    /// The local description, with its one candidate (the media thread's advertised
    /// address: the public one behind a 1:1 NAT).
    async fn local_sdp(&mut self) -> Result<String, Refusal> {
        self.link
            .run(|pc, _| {
                pc.local_description()
                    .map(|description| description.sdp)
                    .unwrap_or_default()
            })
            .await
    }
}

/// What a candidate held before the offer costs: its strings.
fn candidate_bytes(candidate: &RTCIceCandidateInit) -> usize {
    candidate.candidate.len()
        + candidate.sdp_mid.as_ref().map_or(0, String::len)
        + candidate.username_fragment.as_ref().map_or(0, String::len)
        + candidate.url.as_ref().map_or(0, String::len)
}
