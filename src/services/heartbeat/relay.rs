//! Pings between replicas, so a ping on one reaches subscribers on every other: over NATS when
//! the bus is NATS, else over Redis pub/sub when the cache is Redis. A lone process (both
//! in-process) relays nothing: its own streams get each ping directly.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::hub::Hub;
use super::presence::{Presence, Presences};
use crate::platform::bus::{Bus, Event, Received, keep_listening};
use crate::platform::cache::Cache;

/// A user's presence after a ping stored by replica `origin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pinged {
    pub user: String,
    pub presence: Presence,
    pub origin: String,
}

impl Event for Pinged {
    const SUBJECT: &'static str = "heartbeat.pinged";
}

/// The Redis pub/sub channel, under `cache.prefix`.
const CHANNEL: &str = "heartbeat:pinged";
/// Pings waiting to be relayed; past it a ping is not relayed (the others catch up from the
/// next one, or from the database) rather than holding its request.
const QUEUE_CAPACITY: usize = 16_384;
/// Pings relayed in one round trip at most.
const BATCH: usize = 256;

#[derive(Clone)]
pub enum Relay {
    Alone,
    Bus(Bus),
    Cache(Cache),
}

impl Relay {
    pub fn choose(bus: &Bus, cache: &Cache) -> Self {
        if bus.backend() != "memory" {
            Self::Bus(bus.clone())
        } else if cache.backend() != "memory" {
            Self::Cache(cache.clone())
        } else {
            Self::Alone
        }
    }

    /// A queue of pings to tell the other replicas, and its sender, which [`Self::publish`]
    /// drains: a ping's answer never waits for the relay. `None` for a lone process.
    pub fn queue(&self) -> Option<(mpsc::Sender<Pinged>, mpsc::Receiver<Pinged>)> {
        (!matches!(self, Self::Alone)).then(|| mpsc::channel(QUEUE_CAPACITY))
    }

    /// Tells the other replicas of the queued pings, in batches of what has queued up, until
    /// `stop`; then of what is left. A failure only costs them those pings: the next one, or
    /// the database, catches them up.
    pub async fn publish(self, mut queue: mpsc::Receiver<Pinged>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                received = queue.recv_many(&mut batch, BATCH) => if received == 0 {
                    return;
                },
            }
            self.send(&batch).await;
            batch.clear();
        }
        queue.close();
        while queue.recv_many(&mut batch, BATCH).await > 0 {
            self.send(&batch).await;
            batch.clear();
        }
    }

    async fn send(&self, batch: &[Pinged]) {
        let result = match self {
            Self::Alone => Ok(()),
            Self::Bus(bus) => {
                let mut result = Ok(());
                for pinged in batch {
                    result = result.and(bus.publish(pinged.clone()).await);
                }
                result.map_err(anyhow::Error::from)
            }
            Self::Cache(cache) => {
                let encoded: Result<Vec<Vec<u8>>, _> =
                    batch.iter().map(serde_json::to_vec).collect();
                match encoded {
                    Ok(encoded) => {
                        let payloads: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
                        cache
                            .publish_all(CHANNEL, &payloads)
                            .await
                            .map_err(anyhow::Error::from)
                    }
                    Err(err) => Err(err.into()),
                }
            }
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, pings = batch.len(), "pings could not be relayed to the other replicas");
        }
    }

    /// Applies the other replicas' pings here until `stop`.
    pub async fn follow(
        self,
        origin: String,
        presences: Arc<Presences>,
        hub: Hub,
        stop: CancellationToken,
    ) {
        if matches!(self, Self::Alone) {
            return;
        }
        let apply = |pinged: Pinged| {
            if pinged.origin != origin
                && let Some(ping) = presences.apply_remote(&pinged.user, pinged.presence)
            {
                hub.deliver(&pinged.user, &ping);
            }
        };
        keep_listening("heartbeat relay", &stop, || async {
            // Pings may have been missed while not subscribed.
            presences.forget_written();
            self.listen(&stop, &presences, apply).await
        })
        .await;
    }

    /// Hands each ping heard to `apply` until `stop`; an error once the subscription ends.
    async fn listen(
        &self,
        stop: &CancellationToken,
        presences: &Presences,
        apply: impl Fn(Pinged),
    ) -> anyhow::Result<()> {
        match self {
            Self::Alone => Ok(()),
            Self::Bus(bus) => {
                let mut pings = bus.subscribe::<Pinged>().await?;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        received = pings.receive() => match received {
                            Some(Received::Event(envelope)) => apply(envelope.data),
                            Some(Received::Missed) => presences.forget_written(),
                            None => anyhow::bail!("the NATS subscription ended"),
                        },
                    }
                }
            }
            Self::Cache(cache) => {
                let mut pings = cache.subscribe(CHANNEL).await?;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        payload = pings.next() => match payload {
                            Some(payload) => match serde_json::from_slice(&payload) {
                                Ok(pinged) => apply(pinged),
                                Err(err) => tracing::warn!(error = %err, "undecodable ping skipped"),
                            },
                            None => anyhow::bail!("the Redis subscription ended"),
                        },
                    }
                }
            }
        }
    }
}
