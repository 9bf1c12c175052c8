//! Seams across processes: when the service that owns an answer runs in another process (a
//! split deployment), its askers reach it by NATS request/reply on
//! `<bus.subject_prefix>.rpc.<service>.<call>`, answered by a queue group per service. NATS is
//! already what a split deployment shares, and the queue group gives discovery and load
//! balancing across replicas with no peer addresses to configure.
//!
//! Queries and answers are JSON. An owner's failure travels back as text; an owner that is not
//! running is [`RpcError::NoOwner`], which the askers turn into a `503`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::bus::Bus;
use super::service::Service;
use super::workers::Workers;

/// How long an asker waits for an answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The pause before the second try when no owner was subscribed: long enough for a
/// restarting owner's subscription.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// How long the start waits for this process's subscriptions to reach NATS.
const FLUSH_WITHIN: Duration = Duration::from_secs(2);
/// Queries one process answers at once per call; more wait for a free slot (back-pressure,
/// rather than a task per query queued on the database).
const IN_FLIGHT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(
        "no {service} process answers {call} (is it running, on the same NATS and bus.subject_prefix?)"
    )]
    NoOwner {
        service: &'static str,
        call: &'static str,
    },
    #[error("{service} did not answer {call} within {TIMEOUT:?}")]
    TimedOut {
        service: &'static str,
        call: &'static str,
    },
    #[error("{service} could not answer {call}: {message}")]
    Failed {
        service: &'static str,
        call: &'static str,
        message: String,
    },
    #[error(
        "{service} is not in this process and the bus is in memory: a split deployment needs NATS (bus.url)"
    )]
    NoNetwork { service: &'static str },
    #[error("{0}")]
    Transport(String),
}

/// What travels back: the answer, or why the owner could not give one.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply<A> {
    Ok(A),
    Failed(String),
}

fn subject(bus: &Bus, service: &str, call: &str) -> String {
    format!("{}.rpc.{service}.{call}", bus.prefix())
}

/// Asks `service` (in whichever process answers first) `call` with `query`.
pub async fn ask<Q: Serialize + ?Sized, A: DeserializeOwned>(
    bus: &Bus,
    service: &'static str,
    call: &'static str,
    query: &Q,
) -> Result<A, RpcError> {
    let Some(client) = bus.nats() else {
        return Err(RpcError::NoNetwork { service });
    };
    let payload =
        Bytes::from(serde_json::to_vec(query).map_err(|err| RpcError::Transport(err.to_string()))?);
    let subject = subject(bus, service, call);
    let mut last = RpcError::NoOwner { service, call };
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(RETRY_AFTER).await;
        }
        let request = async_nats::Request::new()
            .payload(payload.clone())
            .timeout(Some(TIMEOUT));
        match client.send_request(subject.clone(), request).await {
            Ok(message) => {
                return match serde_json::from_slice::<Reply<A>>(&message.payload) {
                    Ok(Reply::Ok(answer)) => Ok(answer),
                    Ok(Reply::Failed(message)) => Err(RpcError::Failed {
                        service,
                        call,
                        message,
                    }),
                    Err(err) => Err(RpcError::Failed {
                        service,
                        call,
                        message: format!("unreadable answer: {err}"),
                    }),
                };
            }
            Err(err) => {
                use async_nats::RequestErrorKind;
                match err.kind() {
                    // Nobody received it: safe to ask again.
                    RequestErrorKind::NoResponders => last = RpcError::NoOwner { service, call },
                    // The owner may still be answering: asking again could do it twice (a
                    // user registered twice).
                    RequestErrorKind::TimedOut => {
                        return Err(RpcError::TimedOut { service, call });
                    }
                    _ => return Err(RpcError::Transport(err.to_string())),
                }
            }
        }
    }
    Err(last)
}

type Handler = Arc<dyn Fn(Bytes) -> BoxFuture<'static, Bytes> + Send + Sync>;

/// The calls this process answers for the services it hosts, served once the bus is NATS.
#[derive(Default)]
pub struct Answers {
    calls: Vec<(&'static str, &'static str, Handler)>,
}

impl Answers {
    /// Answers `service`'s `call` with `answer`, whose error is sent back as text.
    pub fn add<Q, A, E, F, Fut>(&mut self, service: &'static str, call: &'static str, answer: F)
    where
        Q: DeserializeOwned + Send + 'static,
        A: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
        F: Fn(Q) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<A, E>> + Send + 'static,
    {
        let answer = Arc::new(answer);
        let handler: Handler = Arc::new(move |payload: Bytes| {
            let answer = Arc::clone(&answer);
            Box::pin(async move {
                let reply = match serde_json::from_slice::<Q>(&payload) {
                    Ok(query) => match answer(query).await {
                        Ok(answer) => Reply::Ok(answer),
                        Err(err) => Reply::Failed(err.to_string()),
                    },
                    Err(err) => Reply::Failed(format!("unreadable query: {err}")),
                };
                // Serializing the answers' plain data cannot fail.
                Bytes::from(serde_json::to_vec(&reply).unwrap_or_default())
            })
        });
        self.calls.push((service, call, handler));
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The answers as a service of their own, so they start and stop with the process.
    pub fn into_service(self, bus: Bus) -> Arc<dyn Service> {
        Arc::new(Answering {
            bus,
            calls: self.calls,
            subscribed: std::sync::Mutex::default(),
        })
    }
}

struct Answering {
    bus: Bus,
    calls: Vec<(&'static str, &'static str, Handler)>,
    /// Made before the port opens (`prepare`), so this process answers as soon as it serves.
    subscribed: std::sync::Mutex<Vec<async_nats::Subscriber>>,
}

impl Service for Answering {
    fn name(&self) -> &'static str {
        "rpc"
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), super::service::PrepareError>> {
        Box::pin(async move {
            let Some(client) = self.bus.nats() else {
                return Ok(());
            };
            let mut subscribed = Vec::with_capacity(self.calls.len());
            for (service, call, _) in &self.calls {
                let subject = subject(&self.bus, service, call);
                subscribed.push(
                    client
                        .queue_subscribe(subject, (*service).to_owned())
                        .await?,
                );
            }
            // Written to the server before the port opens, when it is up; a NATS server that
            // is down must not stop the start (the client subscribes once it connects).
            if client.connection_state() == async_nats::connection::State::Connected {
                let _ = tokio::time::timeout(FLUSH_WITHIN, client.flush()).await;
            }
            if let Ok(mut slot) = self.subscribed.lock() {
                *slot = subscribed;
            }
            Ok(())
        })
    }

    fn start(&self, workers: &mut Workers) {
        let Some(client) = self.bus.nats().cloned() else {
            return;
        };
        let mut subscribed = self
            .subscribed
            .lock()
            .map(|mut slot| std::mem::take(&mut *slot))
            .unwrap_or_default()
            .into_iter();
        for (service, call, handler) in &self.calls {
            let subject = subject(&self.bus, service, call);
            let first = subscribed.next();
            let client = client.clone();
            let handler = Arc::clone(handler);
            let group = (*service).to_owned();
            workers.spawn("rpc", move |stop| {
                answer(client, (subject, group), first, handler, stop)
            });
        }
    }
}

/// Serves one call until `stop`: at most `IN_FLIGHT` queries at once, each on a task of its
/// own so a slow one holds up no other, all finished before it returns. A handler that panics
/// answers a failure rather than leaving its asker to time out. Resubscribes if the
/// subscription ends while the process runs.
async fn answer(
    client: async_nats::Client,
    (subject, group): (String, String),
    mut first: Option<async_nats::Subscriber>,
    handler: Handler,
    stop: CancellationToken,
) {
    use futures_util::FutureExt as _;
    let mut running = tokio::task::JoinSet::new();
    while !stop.is_cancelled() {
        let subscribed = match first.take() {
            Some(queries) => Ok(queries),
            None => client.queue_subscribe(subject.clone(), group.clone()).await,
        };
        let mut queries = match subscribed {
            Ok(queries) => queries,
            Err(err) => {
                tracing::warn!(error = %err, %subject, "cannot answer calls; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            while running.len() >= IN_FLIGHT {
                running.join_next().await;
            }
            let query = tokio::select! {
                () = stop.cancelled() => break,
                Some(_) = running.join_next(), if !running.is_empty() => continue,
                query = queries.next() => query,
            };
            let Some(query) = query else {
                // The client is closing or reconnecting: not in a tight loop.
                tokio::time::sleep(Duration::from_secs(1)).await;
                break;
            };
            let Some(reply_to) = query.reply else {
                continue;
            };
            let client = client.clone();
            let handler = Arc::clone(&handler);
            running.spawn(async move {
                let answer = std::panic::AssertUnwindSafe(handler(query.payload))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        tracing::error!("an answer panicked");
                        Bytes::from_static(br#"{"failed":"the owner failed answering"}"#)
                    });
                if let Err(err) = client.publish(reply_to, answer).await {
                    tracing::warn!(error = %err, "an answer was not sent");
                }
            });
        }
    }
    while running.join_next().await.is_some() {}
}
