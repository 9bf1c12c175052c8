//! Following membership: removed members leave rooms at once; deleted conversations lose
//! their room and their bites.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::sfu::Sfu;
use super::store::{self, SharedStore};
use super::transcription::TranscriptIndex;
use crate::platform::bus::{Bus, BusError, keep_listening};
use crate::platform::membership::{ConversationDeleted, MemberRemoved};

/// Follows `MemberRemoved` and `ConversationDeleted` on the bus.
pub struct Membership {
    pub sfu: Arc<Sfu>,
    pub store: SharedStore,
    pub index: Arc<TranscriptIndex>,
    pub bus: Bus,
}

impl Membership {
    pub async fn follow(self, stop: CancellationToken) {
        keep_listening("bites", &stop, || self.listen(&stop)).await;
    }

    async fn listen(&self, stop: &CancellationToken) -> Result<(), BusError> {
        let mut removed = self.bus.subscribe::<MemberRemoved>().await?;
        let mut deleted = self.bus.subscribe::<ConversationDeleted>().await?;
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                Some(event) = removed.next() => {
                    self.sfu.member_removed(&event.data.conversation, &event.data.user);
                }
                Some(event) = deleted.next() => {
                    let conversation = event.data.conversation;
                    self.sfu.conversation_deleted(&conversation);
                    // The store first: once its jobs are gone, no transcript can be indexed
                    // again behind the index's deletion.
                    let deleting = conversation.clone();
                    let deleted = store::blocking(&self.store, move |store| {
                        store.delete_conversation(&deleting)
                    })
                    .await;
                    if let Err(err) = self.index.delete_conversation(&conversation).await {
                        tracing::error!(error = %err, "transcripts of a deleted conversation were not unindexed");
                    }
                    match deleted {
                        Ok(count) => tracing::debug!(count, "bites of a deleted conversation removed"),
                        Err(err) => tracing::error!(error = %err, "bites of a deleted conversation were not removed"),
                    }
                }
                else => return Ok(()),
            }
        }
    }
}
