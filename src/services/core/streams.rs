//! The four SSE streams of the original core. They are fed from the bus, so a change made
//! through any replica reaches subscribers on every replica, and filtered per subscriber, so
//! each user hears only what they may see (the original sent everything to everyone, on
//! subjects nobody published).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web_lab::sse;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::contacts::Contacts;
use super::conversations::{ConversationView, Conversations, MemberView};
use super::events::{ConversationUpdated, MemberUpdated, UserUpdated};
use crate::platform::bus::{Bus, BusError, keep_listening};
use crate::platform::http::SSE_KEEP_ALIVE;
use crate::platform::membership::{
    ContactAdded, ContactRemoved, ContactView, ConversationDeleted, MemberAdded, MemberRemoved,
};
use crate::platform::sessions::Lease;

/// Events buffered per stream; a client this far behind is dropped (it reconnects) rather
/// than slowing delivery to everyone else.
const STREAM_BUFFER: usize = 64;
/// How often streams closed by their clients are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Which stream a subscriber opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `GET /user/subscribe`: profile changes of the user and of their contacts.
    Users,
    /// `GET /user/subscribe/contact`: contacts the user adds and removes.
    Contacts,
    /// `GET /user/subscribe/conversation`: the user's conversations appearing, changing, going.
    Conversations,
    /// `GET /user/subscribe/conversation/:id/member`: that conversation's members.
    Members(String),
}

/// One of core's events, as the streams route it.
enum Change {
    User(UserUpdated),
    Contact(ContactAdded),
    Uncontact(ContactRemoved),
    Conversation(ConversationUpdated),
    Deleted(ConversationDeleted),
    Joined(MemberAdded),
    Left(MemberRemoved),
    Pin(MemberUpdated),
}

struct Subscriber {
    topic: Topic,
    sender: mpsc::Sender<sse::Event>,
}

/// The original's `UpdateMsg`: `data` is the JSON of the changed thing, as a string.
#[derive(Serialize)]
struct UpdateMsg<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: String,
}

#[derive(Serialize)]
struct Deleted<'a> {
    id: &'a str,
}

fn update_msg(kind: &str, data: &impl Serialize) -> Option<String> {
    let data = serde_json::to_string(data).ok()?;
    serde_json::to_string(&UpdateMsg { kind, data }).ok()
}

pub struct Hub {
    subscribers: Mutex<HashMap<String, Vec<Subscriber>>>,
    conversations: Arc<Conversations>,
    contacts: Arc<Contacts>,
}

impl Hub {
    pub fn new(conversations: Arc<Conversations>, contacts: Arc<Contacts>) -> Self {
        Self {
            subscribers: Mutex::new(HashMap::new()),
            conversations,
            contacts,
        }
    }

    fn subscribers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Subscriber>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a stream of `topic` for the lease's user; it ends when the client goes away or
    /// the lease ends (the session is revoked or its token expires).
    pub fn subscribe(&self, lease: Lease, topic: Topic) -> impl actix_web::Responder + use<> {
        let (sender, mut receiver) = mpsc::channel(STREAM_BUFFER);
        let mut subscribers = self.subscribers();
        let streams = subscribers.entry(lease.user().to_owned()).or_default();
        streams.retain(|stream| !stream.sender.is_closed());
        streams.push(Subscriber { topic, sender });
        drop(subscribers);
        let events = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
        sse::Sse::from_infallible_stream(lease.until_ended(events)).with_keep_alive(SSE_KEEP_ALIVE)
    }

    fn is_idle(&self) -> bool {
        self.subscribers().is_empty()
    }

    /// Forgets streams whose clients went away without an event to notice it.
    fn sweep(&self) {
        self.subscribers().retain(|_, streams| {
            streams.retain(|stream| !stream.sender.is_closed());
            !streams.is_empty()
        });
    }

    /// Sends `message` to `user`'s streams of `topic`; a stream that is gone or too far behind
    /// is dropped.
    fn send(&self, user: &str, topic: &Topic, message: &str) {
        let mut subscribers = self.subscribers();
        let Some(streams) = subscribers.get_mut(user) else {
            return;
        };
        streams.retain(|stream| {
            stream.topic != *topic
                || stream
                    .sender
                    .try_send(sse::Data::new(message.to_owned()).into())
                    .is_ok()
        });
        if streams.is_empty() {
            subscribers.remove(user);
        }
    }

    /// Ends `user`'s streams of `topic` (they lost the right to it).
    fn close(&self, user: &str, topic: &Topic) {
        if let Some(streams) = self.subscribers().get_mut(user) {
            streams.retain(|stream| stream.topic != *topic);
        }
    }

    /// Routes core's events to the streams until `stop`.
    pub async fn run(self: Arc<Self>, bus: Bus, stop: CancellationToken) {
        keep_listening("core streams", &stop, || self.listen(&bus, &stop)).await;
    }

    async fn listen(&self, bus: &Bus, stop: &CancellationToken) -> Result<(), BusError> {
        let mut users = bus.subscribe::<UserUpdated>().await?;
        let mut contacts = bus.subscribe::<ContactAdded>().await?;
        let mut uncontacts = bus.subscribe::<ContactRemoved>().await?;
        let mut updated = bus.subscribe::<ConversationUpdated>().await?;
        let mut deleted = bus.subscribe::<ConversationDeleted>().await?;
        let mut added = bus.subscribe::<MemberAdded>().await?;
        let mut removed = bus.subscribe::<MemberRemoved>().await?;
        let mut pins = bus.subscribe::<MemberUpdated>().await?;
        // Creation reaches the streams through the creator's `MemberAdded`.
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            let change = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = sweep.tick() => {
                    self.sweep();
                    continue;
                }
                Some(event) = users.next() => Change::User(event.data),
                Some(event) = contacts.next() => Change::Contact(event.data),
                Some(event) = uncontacts.next() => Change::Uncontact(event.data),
                Some(event) = updated.next() => Change::Conversation(event.data),
                Some(event) = deleted.next() => Change::Deleted(event.data),
                Some(event) = added.next() => Change::Joined(event.data),
                Some(event) = removed.next() => Change::Left(event.data),
                Some(event) = pins.next() => Change::Pin(event.data),
                else => return Ok(()),
            };
            // No stream open: nothing to look up to route it nowhere.
            if self.is_idle() {
                continue;
            }
            if let Err(err) = self.route(change).await {
                tracing::warn!(error = %err, "an event could not be routed to core's streams");
            }
        }
    }

    async fn route(&self, change: Change) -> Result<(), sea_orm::DbErr> {
        match change {
            Change::User(event) => self.user_updated(event).await,
            Change::Contact(event) => {
                self.contact_added(&event);
                Ok(())
            }
            Change::Uncontact(event) => {
                self.contact_removed(event);
                Ok(())
            }
            Change::Conversation(event) => self.conversation_updated(event).await,
            Change::Deleted(event) => {
                self.conversation_deleted(&event);
                Ok(())
            }
            Change::Joined(event) => self.member_added(event).await,
            Change::Left(event) => self.member_removed(event).await,
            Change::Pin(event) => self.member_updated(event).await,
        }
    }

    async fn user_updated(&self, event: UserUpdated) -> Result<(), sea_orm::DbErr> {
        let Some(message) = update_msg("update", &event.user) else {
            return Ok(());
        };
        self.send(&event.user.id, &Topic::Users, &message);
        for holder in self.contacts.holders_of(&event.user.id).await? {
            self.send(&holder, &Topic::Users, &message);
        }
        Ok(())
    }

    fn contact_added(&self, event: &ContactAdded) {
        if let Some(message) = update_msg("add", &event.contact) {
            self.send(&event.contact.usera, &Topic::Contacts, &message);
        }
    }

    fn contact_removed(&self, event: ContactRemoved) {
        let view = ContactView {
            usera: event.user,
            userb: event.contact,
        };
        if let Some(message) = update_msg("delete", &view) {
            self.send(&view.usera, &Topic::Contacts, &message);
        }
    }

    async fn conversation_updated(&self, event: ConversationUpdated) -> Result<(), sea_orm::DbErr> {
        for membership in self
            .conversations
            .memberships(&event.conversation.id)
            .await?
        {
            let view = ConversationView {
                pinned: membership.pinned,
                ..event.conversation.clone()
            };
            if let Some(message) = update_msg("update", &view) {
                self.send(&membership.user, &Topic::Conversations, &message);
            }
        }
        Ok(())
    }

    fn conversation_deleted(&self, event: &ConversationDeleted) {
        let Some(message) = update_msg(
            "delete",
            &Deleted {
                id: &event.conversation,
            },
        ) else {
            return;
        };
        let members = Topic::Members(event.conversation.clone());
        for member in &event.members {
            self.send(member, &Topic::Conversations, &message);
            self.close(member, &members);
        }
    }

    async fn member_added(&self, event: MemberAdded) -> Result<(), sea_orm::DbErr> {
        let view = MemberView {
            user: event.user,
            conversation: event.conversation,
            pinned: false,
        };
        // Members first: a client that opens the member stream once it sees the conversation
        // appear does not then receive its own joining.
        self.to_members(&view, "add").await?;
        if let Some(conversation) = self.conversations.find(&view.conversation).await?
            && let Some(message) = update_msg("add", &ConversationView::new(conversation, false))
        {
            self.send(&view.user, &Topic::Conversations, &message);
        }
        Ok(())
    }

    async fn member_removed(&self, event: MemberRemoved) -> Result<(), sea_orm::DbErr> {
        let view = MemberView {
            user: event.user,
            conversation: event.conversation,
            pinned: false,
        };
        let topic = Topic::Members(view.conversation.clone());
        if let Some(message) = update_msg("delete", &view) {
            self.send(&view.user, &topic, &message);
        }
        self.close(&view.user, &topic);
        if let Some(message) = update_msg(
            "delete",
            &Deleted {
                id: &view.conversation,
            },
        ) {
            self.send(&view.user, &Topic::Conversations, &message);
        }
        self.to_members(&view, "delete").await
    }

    async fn member_updated(&self, event: MemberUpdated) -> Result<(), sea_orm::DbErr> {
        let view = MemberView {
            user: event.user,
            conversation: event.conversation,
            pinned: event.pinned,
        };
        if let Some(message) = update_msg("update", &view) {
            self.send(
                &view.user,
                &Topic::Members(view.conversation.clone()),
                &message,
            );
        }
        if let Some(conversation) = self.conversations.find(&view.conversation).await?
            && let Some(message) =
                update_msg("update", &ConversationView::new(conversation, view.pinned))
        {
            self.send(&view.user, &Topic::Conversations, &message);
        }
        Ok(())
    }

    /// Tells the conversation's current members about a membership change.
    async fn to_members(&self, view: &MemberView, kind: &str) -> Result<(), sea_orm::DbErr> {
        let Some(message) = update_msg(kind, view) else {
            return Ok(());
        };
        let topic = Topic::Members(view.conversation.clone());
        for membership in self.conversations.memberships(&view.conversation).await? {
            self.send(&membership.user, &topic, &message);
        }
        Ok(())
    }
}
