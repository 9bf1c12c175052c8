//! What core does, one method per use case: each checks, writes and announces, so a handler
//! only parses, calls one of these and answers.

use std::sync::Arc;

use actix_web::Responder;

use super::contacts::Contacts;
use super::conversations::{
    ConversationPatch, ConversationView, Conversations, MAX_TITLE_CHARS, Removal,
};
use super::error::CoreError;
use super::events::{ConversationCreated, ConversationUpdated, MemberUpdated, UserUpdated};
use super::pictures::{PictureNames, PictureRefused};
use super::streams::{Hub, Topic};
use super::users::{NewUser, ProfilePatch, Users, record, user};
use crate::config::CoreConfig;
use crate::platform::bus::{Bus, Event};
use crate::platform::membership::{
    ContactAdded, ContactRemoved, ContactView, ConversationDeleted, MemberAdded, MemberRemoved,
};
use crate::platform::pictures::PictureReleased;
use crate::platform::sessions::Lease;
use crate::platform::users::{Login, PhoneNumber, UserRecord};

/// A page of a list: at most `limit` items after the cursor `after` (the last id seen).
pub struct Page<'a> {
    pub limit: u64,
    pub after: Option<&'a str>,
}

pub struct CoreService {
    users: Arc<Users>,
    conversations: Arc<Conversations>,
    contacts: Arc<Contacts>,
    pictures: PictureNames,
    hub: Arc<Hub>,
    bus: Bus,
    pub(super) config: CoreConfig,
}

impl CoreService {
    pub fn new(
        users: Arc<Users>,
        conversations: Arc<Conversations>,
        contacts: Arc<Contacts>,
        pictures: PictureNames,
        bus: Bus,
        config: CoreConfig,
    ) -> Self {
        let hub = Arc::new(Hub::new(Arc::clone(&conversations), Arc::clone(&contacts)));
        Self {
            users,
            conversations,
            contacts,
            pictures,
            hub,
            bus,
            config,
        }
    }

    pub fn hub(&self) -> Arc<Hub> {
        Arc::clone(&self.hub)
    }

    pub fn bus(&self) -> Bus {
        self.bus.clone()
    }

    /// Publishes a change that is already committed. A bus failure cannot undo it, so it is
    /// logged, not answered: streams and caches on other replicas miss this one event.
    async fn announce<E: Event>(&self, event: E) {
        if let Err(err) = self.bus.publish(event).await {
            tracing::warn!(subject = E::SUBJECT, error = %err, "a core event was not published");
        }
    }

    // ---- users ----

    pub async fn user_by_phone(&self, phone: PhoneNumber) -> Result<UserRecord, CoreError> {
        let found = self.users.by_login(&Login::Phone(phone)).await?;
        found.map(record).ok_or(CoreError::UserNotFound)
    }

    pub async fn user_by_id(&self, me: &str, id: &str) -> Result<UserRecord, CoreError> {
        let found = self.users.by_id(id).await?.ok_or(CoreError::UserNotFound)?;
        self.seen_by(me, vec![found])
            .await?
            .pop()
            .ok_or(CoreError::UserNotFound)
    }

    pub async fn user_by_username(
        &self,
        me: &str,
        username: &str,
    ) -> Result<UserRecord, CoreError> {
        // Longer than any valid username: no need to ask the database.
        if username.len() > 64 {
            return Err(CoreError::UserNotFound);
        }
        let found = self
            .users
            .by_username(username)
            .await?
            .ok_or(CoreError::UserNotFound)?;
        self.seen_by(me, vec![found])
            .await?
            .pop()
            .ok_or(CoreError::UserNotFound)
    }

    /// `users` as `me` may see them: a phone number only for `me` themself and for the users
    /// `me` holds as contacts (who gave it to `me`, in effect). Same length and order.
    async fn seen_by(
        &self,
        me: &str,
        users: Vec<user::Model>,
    ) -> Result<Vec<UserRecord>, CoreError> {
        let others: Vec<&str> = users
            .iter()
            .map(|user| user.id.as_str())
            .filter(|id| *id != me)
            .collect();
        let held = self.contacts.held_by(me, &others).await?;
        Ok(users
            .into_iter()
            .map(|user| {
                let visible = user.id == me || held.contains(&user.id);
                let full = record(user);
                if visible {
                    full
                } else {
                    full.without_phone_number()
                }
            })
            .collect())
    }

    /// The original created (or overwrote) the user of any phone number, unauthenticated.
    /// Here it fills in the caller's own profile: a number is only ever claimed through an
    /// OTP login.
    pub async fn fill_profile(&self, me: &str, profile: NewUser) -> Result<UserRecord, CoreError> {
        let found = self.users.by_id(me).await?.ok_or(CoreError::UserNotFound)?;
        if profile
            .id
            .as_deref()
            .is_some_and(|id| !id.is_empty() && id != found.id)
        {
            return Err(CoreError::NotYourUser);
        }
        if let Some(phone) = profile.phone_number.as_deref().filter(|p| !p.is_empty()) {
            let phone = PhoneNumber::parse(phone)?;
            if found.phone_number.as_deref() != Some(phone.as_str()) {
                return Err(CoreError::PhoneNotVerified);
            }
        }
        if profile.first_name.trim().is_empty() || profile.last_name.trim().is_empty() {
            return Err(CoreError::InvalidProfile(
                "first_name and last_name are required".into(),
            ));
        }
        let patch = ProfilePatch {
            username: Some(profile.username),
            bio: Some(profile.bio),
            profile_pic: Some(profile.profile_pic),
            first_name: Some(profile.first_name),
            last_name: Some(profile.last_name),
            ..ProfilePatch::default()
        };
        self.write_profile(found, patch).await
    }

    pub async fn update_profile(
        &self,
        me: &str,
        patch: ProfilePatch,
    ) -> Result<UserRecord, CoreError> {
        let found = self.users.by_id(me).await?.ok_or(CoreError::UserNotFound)?;
        self.write_profile(found, patch).await
    }

    async fn write_profile(
        &self,
        found: user::Model,
        patch: ProfilePatch,
    ) -> Result<UserRecord, CoreError> {
        let old_picture = found.profile_pic.clone();
        let user = record(self.users.update_profile(found, patch).await?);
        self.release_picture(old_picture, &user.profile_pic).await;
        self.announce(UserUpdated { user: user.clone() }).await;
        Ok(user)
    }

    /// Tells pictures' caches that `old` is no longer shown where `new` now is.
    async fn release_picture(&self, old: String, new: &str) {
        if !old.is_empty() && old != new {
            self.announce(PictureReleased { name: old }).await;
        }
    }

    /// Refuses a conversation picture pictures did not store, or `me` may not show.
    async fn check_picture(&self, me: &str, patch: &ConversationPatch) -> Result<(), CoreError> {
        let Some(Some(name)) = &patch.picture else {
            return Ok(());
        };
        match self.pictures.check("picture", name, me).await {
            Ok(()) => Ok(()),
            Err(PictureRefused::Lookup(err)) => {
                Err(CoreError::PicturesUnavailable(err.to_string()))
            }
            Err(refused) => Err(CoreError::InvalidConversation(refused.to_string())),
        }
    }

    // ---- conversations ----

    pub async fn create_conversation(
        &self,
        me: &str,
        patch: ConversationPatch,
    ) -> Result<ConversationView, CoreError> {
        checked_patch(&patch)?;
        self.check_picture(me, &patch).await?;
        let created = self.conversations.create(me, patch).await?;
        let view = ConversationView::new(created, false);
        self.announce(ConversationCreated {
            conversation: view.clone(),
            by: me.to_owned(),
        })
        .await;
        self.announce(MemberAdded {
            conversation: view.id.clone(),
            user: me.to_owned(),
        })
        .await;
        Ok(view)
    }

    pub async fn conversations(
        &self,
        me: &str,
        page: Page<'_>,
    ) -> Result<Vec<ConversationView>, CoreError> {
        Ok(self
            .conversations
            .list_for(me, page.after, page.limit)
            .await?)
    }

    pub async fn conversation(&self, me: &str, id: &str) -> Result<ConversationView, CoreError> {
        self.conversations.get_for(me, id).await
    }

    pub async fn update_conversation(
        &self,
        me: &str,
        id: &str,
        patch: ConversationPatch,
    ) -> Result<ConversationView, CoreError> {
        checked_patch(&patch)?;
        let current = self.conversations.get_for(me, id).await?;
        let old_picture = current.picture.clone();
        if patch
            .picture
            .as_ref()
            .is_some_and(|new| *new != old_picture)
        {
            self.check_picture(me, &patch).await?;
        }
        let view = self.conversations.update(current, patch).await?;
        if let Some(old) = old_picture {
            self.release_picture(old, view.picture.as_deref().unwrap_or_default())
                .await;
        }
        self.announce(ConversationUpdated {
            conversation: view.clone(),
        })
        .await;
        Ok(view)
    }

    pub async fn delete_conversation(&self, me: &str, id: &str) -> Result<(), CoreError> {
        let members = self.conversations.delete(me, id).await?;
        self.announce(ConversationDeleted {
            conversation: id.to_owned(),
            members,
        })
        .await;
        Ok(())
    }

    pub async fn set_pinned(&self, me: &str, id: &str, pinned: bool) -> Result<(), CoreError> {
        self.conversations.set_pinned(me, id, pinned).await?;
        self.announce(MemberUpdated {
            user: me.to_owned(),
            conversation: id.to_owned(),
            pinned,
        })
        .await;
        Ok(())
    }

    // ---- members ----

    pub async fn add_member(&self, me: &str, id: &str, new_member: &str) -> Result<(), CoreError> {
        if self.users.by_id(new_member).await?.is_none() {
            return Err(CoreError::UserNotFound);
        }
        self.conversations.add_member(me, id, new_member).await?;
        self.announce(MemberAdded {
            conversation: id.to_owned(),
            user: new_member.to_owned(),
        })
        .await;
        Ok(())
    }

    /// The other members of a conversation `me` belongs to.
    pub async fn members(
        &self,
        me: &str,
        id: &str,
        page: Page<'_>,
    ) -> Result<Vec<UserRecord>, CoreError> {
        let members = self
            .conversations
            .members(me, id, page.after, page.limit)
            .await?;
        self.seen_by(me, members).await
    }

    /// `me` leaves, or removes `member`; the last member leaving deletes the conversation.
    pub async fn remove_member(&self, me: &str, id: &str, member: &str) -> Result<(), CoreError> {
        let removal = self.conversations.remove_member(me, id, member).await?;
        self.announce(MemberRemoved {
            conversation: id.to_owned(),
            user: member.to_owned(),
        })
        .await;
        if removal == Removal::ConversationDeleted {
            self.announce(ConversationDeleted {
                conversation: id.to_owned(),
                members: vec![member.to_owned()],
            })
            .await;
        }
        Ok(())
    }

    // ---- contacts ----

    /// Adds the user holding a phone number as a contact, creating a blank user for a number
    /// that has not joined yet, as the original did.
    pub async fn add_contact(&self, me: &str, phone: PhoneNumber) -> Result<UserRecord, CoreError> {
        let (contact, _) = self.users.ensure(&Login::Phone(phone)).await?;
        if contact.id == me {
            return Err(CoreError::InvalidContact("you cannot add yourself"));
        }
        self.contacts.add(me, &contact.id).await?;
        self.announce(ContactAdded {
            contact: ContactView {
                usera: me.to_owned(),
                userb: contact.id.clone(),
            },
        })
        .await;
        Ok(record(contact))
    }

    /// Removes `contact` from `me`'s contacts; `me` stops seeing their presence (unless they
    /// share a conversation) and their phone number.
    pub async fn remove_contact(&self, me: &str, contact: &str) -> Result<(), CoreError> {
        if !self.contacts.remove(me, contact).await? {
            return Err(CoreError::ContactNotFound);
        }
        self.announce(ContactRemoved {
            user: me.to_owned(),
            contact: contact.to_owned(),
        })
        .await;
        Ok(())
    }

    pub async fn contacts(&self, me: &str, page: Page<'_>) -> Result<Vec<UserRecord>, CoreError> {
        let contacts = self.contacts.list(me, page.after, page.limit).await?;
        Ok(contacts.into_iter().map(record).collect())
    }

    // ---- streams ----

    /// A stream of `topic` for the lease's user, held open while the lease lasts.
    pub fn subscribe(&self, lease: Lease, topic: Topic) -> impl Responder + use<> {
        self.hub.subscribe(lease, topic)
    }

    /// A conversation's member stream, for its members only.
    pub async fn subscribe_members(
        &self,
        lease: Lease,
        id: &str,
    ) -> Result<impl Responder + use<>, CoreError> {
        let me = lease.user().to_owned();
        // Registered before the check: a removal landing in between then reaches this stream
        // and ends it, instead of slipping past an unregistered one.
        let stream = self.hub.subscribe(lease, Topic::Members(id.to_owned()));
        self.conversations.check_member(&me, id).await?;
        Ok(stream)
    }
}

fn checked_patch(patch: &ConversationPatch) -> Result<(), CoreError> {
    for (name, value) in [("title", &patch.title), ("picture", &patch.picture)] {
        let Some(Some(value)) = value else { continue };
        if value.chars().count() > MAX_TITLE_CHARS {
            return Err(CoreError::InvalidConversation(format!(
                "{name} is longer than {MAX_TITLE_CHARS} characters"
            )));
        }
        // PostgreSQL cannot store it (and SQLite would, so the columns would differ).
        if value.contains('\0') {
            return Err(CoreError::InvalidConversation(format!(
                "{name} contains a NUL character"
            )));
        }
    }
    Ok(())
}
