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

/// How long an asker waits for an answer before trying once more.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The pause before the second try: long enough for a restarting owner's subscription.
const RETRY_AFTER: Duration = Duration::from_millis(100);

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
                last = match err.kind() {
                    RequestErrorKind::NoResponders => RpcError::NoOwner { service, call },
                    RequestErrorKind::TimedOut => RpcError::TimedOut { service, call },
                    _ => RpcError::Transport(err.to_string()),
                };
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
        })
    }
}

struct Answering {
    bus: Bus,
    calls: Vec<(&'static str, &'static str, Handler)>,
}

impl Service for Answering {
    fn name(&self) -> &'static str {
        "rpc"
    }

    fn start(&self, workers: &mut Workers) {
        let Some(client) = self.bus.nats().cloned() else {
            return;
        };
        for (service, call, handler) in &self.calls {
            let subject = subject(&self.bus, service, call);
            let client = client.clone();
            let handler = Arc::clone(handler);
            let group = (*service).to_owned();
            workers.spawn("rpc", move |stop| {
                answer(client, subject, group, handler, stop)
            });
        }
    }
}

/// Serves one call until `stop`, each query on a task of its own so a slow one holds up no
/// other; resubscribes if the subscription ends while the process runs.
async fn answer(
    client: async_nats::Client,
    subject: String,
    group: String,
    handler: Handler,
    stop: CancellationToken,
) {
    loop {
        let mut queries = match client.queue_subscribe(subject.clone(), group.clone()).await {
            Ok(queries) => queries,
            Err(err) => {
                tracing::warn!(error = %err, %subject, "cannot answer calls; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let query = tokio::select! {
                () = stop.cancelled() => return,
                query = queries.next() => query,
            };
            let Some(query) = query else { break };
            let Some(reply_to) = query.reply else {
                continue;
            };
            let client = client.clone();
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let answer = handler(query.payload).await;
                if let Err(err) = client.publish(reply_to, answer).await {
                    tracing::warn!(error = %err, "an answer was not sent");
                }
            });
        }
    }
}
