//! Background work of the platform and the services, stopped together on shutdown.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Spawned tasks and the token that tells them to stop.
#[derive(Default)]
pub struct Workers {
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Workers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns a worker. It receives the stop token and must return soon after it fires,
    /// having flushed what it holds.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, work: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = work(self.stop.child_token());
        self.tasks.spawn(async move {
            task.await;
            tracing::debug!(worker = name, "worker stopped");
        });
    }

    /// Signals every worker to stop and waits up to `grace` for them; stragglers are aborted.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop.cancel();
        let drained = tokio::time::timeout(grace, async {
            while let Some(result) = self.tasks.join_next().await {
                if let Err(err) = result
                    && err.is_panic()
                {
                    tracing::error!(error = %err, "worker panicked");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = self.tasks.len(),
                "workers did not stop in time; aborting them"
            );
            self.tasks.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn shutdown_stops_workers_and_waits_for_their_flush() {
        let flushed = Arc::new(AtomicBool::new(false));
        let mut workers = Workers::new();
        let seen = Arc::clone(&flushed);
        workers.spawn("test", |stop| async move {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            seen.store(true, Ordering::SeqCst);
        });
        workers.shutdown(Duration::from_secs(5)).await;
        assert!(flushed.load(Ordering::SeqCst));
    }
}
