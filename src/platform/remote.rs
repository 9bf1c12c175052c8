//! The seams answered by a service in another process, asked over NATS ([`super::rpc`]).
//! Each is the network twin of an in-process answer and returns the same result types, so
//! the asker (and its cache, invalidated by the owner's events) is the same either way.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::bus::Bus;
use super::membership::{
    AccessCheck, AccessError, AccessEvents, MembershipSource, Relation, RelationChange,
    RelationCheck,
};
use super::pictures::{Claimed, PictureCatalog, PictureLookupError, PictureUsage, PictureUse};
use super::rpc;
use super::service::Service;
use super::users::{
    DirectoryError, DirectoryResult, KnownUser, Login, NewProfile, UserDirectory, UserRecord,
};
use super::workers::Workers;

/// The names each owner answers under (`<prefix>.rpc.<service>.<call>`).
pub mod calls {
    pub const CORE: &str = "core";
    pub const IS_MEMBER: &str = "is_member";
    pub const RELATION: &str = "relation";
    pub const ENSURE_USER: &str = "ensure_user";
    pub const REGISTER_USER: &str = "register_user";
    pub const PICTURE_USAGE: &str = "picture_usage";
    pub const PICTURE_SHOWN_TO: &str = "picture_shown_to";
    pub const PICTURES_IN_USE: &str = "pictures_in_use";
    pub const PERMISSIONS: &str = "permissions";
    pub const MAY_ACCESS: &str = "may_access";
    pub const PICTURES: &str = "pictures";
    pub const CLAIM: &str = "claim";
}

/// A directory's refusal, which the asker shows its client as is (a 4xx), unlike a failure.
#[derive(Debug, Serialize, Deserialize)]
pub enum Refusal {
    Invalid(String),
    Conflict(String),
    /// core could not check something it depends on (pictures, in yet another process).
    Unavailable(String),
}

/// core's answer to a directory call, refusals kept apart from failures (sent as text).
pub type DirectoryAnswer<T> = Result<T, Refusal>;

/// How core sends a directory result: a refusal as an answer, a backend failure as an error.
pub fn directory_answer<T>(result: DirectoryResult<T>) -> anyhow::Result<DirectoryAnswer<T>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(DirectoryError::Invalid(message)) => Ok(Err(Refusal::Invalid(message))),
        Err(DirectoryError::Conflict(message)) => Ok(Err(Refusal::Conflict(message))),
        Err(DirectoryError::Backend(err)) => Err(err),
        Err(DirectoryError::Unavailable(why)) => Ok(Err(Refusal::Unavailable(why))),
    }
}

fn directory_result<T>(answer: Result<DirectoryAnswer<T>, rpc::RpcError>) -> DirectoryResult<T> {
    match answer {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(Refusal::Invalid(message))) => Err(DirectoryError::Invalid(message)),
        Ok(Err(Refusal::Conflict(message))) => Err(DirectoryError::Conflict(message)),
        Ok(Err(Refusal::Unavailable(why))) => Err(DirectoryError::Unavailable(why)),
        Err(err @ (rpc::RpcError::NoOwner { .. } | rpc::RpcError::TimedOut { .. })) => {
            Err(DirectoryError::Unavailable(err.to_string()))
        }
        Err(err) => Err(DirectoryError::Backend(err.into())),
    }
}

/// core's users, for auth hosted without core.
pub struct RemoteDirectory {
    bus: Bus,
}

impl RemoteDirectory {
    pub fn new(bus: Bus) -> Self {
        Self { bus }
    }
}

impl UserDirectory for RemoteDirectory {
    fn ensure_user<'a>(&'a self, login: &'a Login) -> BoxFuture<'a, DirectoryResult<KnownUser>> {
        async move {
            directory_result(rpc::ask(&self.bus, calls::CORE, calls::ENSURE_USER, login).await)
        }
        .boxed()
    }

    fn register_user<'a>(
        &'a self,
        login: &'a Login,
        profile: NewProfile,
    ) -> BoxFuture<'a, DirectoryResult<UserRecord>> {
        async move {
            let query = (login, profile);
            directory_result(rpc::ask(&self.bus, calls::CORE, calls::REGISTER_USER, &query).await)
        }
        .boxed()
    }
}

/// permissions' access check, for bites and pictures hosted without permissions. Not cached
/// here: permissions answers from its cache, invalidated by core's events, in about 0.1 ms.
pub struct RemoteAccess {
    bus: Bus,
}

impl RemoteAccess {
    pub fn new(bus: Bus) -> Self {
        Self { bus }
    }
}

impl AccessCheck for RemoteAccess {
    fn may_access<'a>(
        &'a self,
        user: &'a str,
        conversation: &'a str,
    ) -> BoxFuture<'a, Result<bool, AccessError>> {
        async move {
            let query = (user, conversation);
            rpc::ask(&self.bus, calls::PERMISSIONS, calls::MAY_ACCESS, &query)
                .await
                .map_err(|err| AccessError(err.into()))
        }
        .boxed()
    }
}

/// pictures' catalog, for core hosted without pictures.
pub struct RemoteCatalog {
    bus: Bus,
}

impl RemoteCatalog {
    pub fn new(bus: Bus) -> Self {
        Self { bus }
    }
}

impl PictureCatalog for RemoteCatalog {
    fn claim<'a>(
        &'a self,
        name: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Claimed, PictureLookupError>> {
        async move {
            rpc::ask(&self.bus, calls::PICTURES, calls::CLAIM, &(name, user))
                .await
                .map_err(|err| PictureLookupError(err.into()))
        }
        .boxed()
    }
}

/// core's picture usage, for pictures hosted without core (cached by pictures as in-process).
pub struct RemoteUsage {
    bus: Bus,
}

impl RemoteUsage {
    pub fn new(bus: Bus) -> Self {
        Self { bus }
    }

    async fn ask<Q: Serialize + Sync + ?Sized, A: serde::de::DeserializeOwned>(
        &self,
        call: &'static str,
        query: &Q,
    ) -> Result<A, PictureLookupError> {
        rpc::ask(&self.bus, calls::CORE, call, query)
            .await
            .map_err(|err| PictureLookupError(err.into()))
    }
}

impl PictureUsage for RemoteUsage {
    fn usage<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PictureUse, PictureLookupError>> {
        self.ask(calls::PICTURE_USAGE, name).boxed()
    }

    fn shown_to<'a>(
        &'a self,
        name: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<bool, PictureLookupError>> {
        async move { self.ask(calls::PICTURE_SHOWN_TO, &(name, user)).await }.boxed()
    }

    fn in_use<'a>(
        &'a self,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<HashSet<String>, PictureLookupError>> {
        self.ask(calls::PICTURES_IN_USE, names).boxed()
    }
}

/// core's memberships, for permissions hosted without core.
pub struct RemoteMembership {
    bus: Bus,
}

impl RemoteMembership {
    pub fn new(bus: Bus) -> Self {
        Self { bus }
    }
}

impl MembershipSource for RemoteMembership {
    fn is_member<'a>(
        &'a self,
        user: &'a str,
        conversation: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<bool>> {
        async move {
            Ok(rpc::ask(
                &self.bus,
                calls::CORE,
                calls::IS_MEMBER,
                &(user, conversation),
            )
            .await?)
        }
        .boxed()
    }
}

/// core's relations, for heartbeat hosted without core. Answers are read fresh from core's
/// tables (not core's cache, which may not have heard an event this process has), and the
/// relations that may have ended are announced from core's events as they arrive here.
pub struct RemoteRelations {
    bus: Bus,
    changes: broadcast::Sender<RelationChange>,
    listening: AtomicBool,
}

impl RemoteRelations {
    pub fn new(bus: Bus) -> Arc<Self> {
        Arc::new(Self {
            bus,
            changes: broadcast::Sender::new(256),
            listening: AtomicBool::new(false),
        })
    }

    /// The listener of core's events, as a service so it starts and stops with the process.
    pub fn follower(self: &Arc<Self>) -> Arc<dyn Service> {
        Arc::new(Follower(Arc::clone(self)))
    }

    async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let mut events = AccessEvents::new("remote relations", &self.bus, &self.listening);
        while let Some(event) = events.next(&stop).await {
            if let Some(change) = event.ended_relations() {
                // No receiver (no stream open) is fine.
                let _unheard = self.changes.send(change);
            }
        }
    }
}

impl RelationCheck for RemoteRelations {
    fn relation<'a>(
        &'a self,
        viewer: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Relation, AccessError>> {
        async move {
            rpc::ask(&self.bus, calls::CORE, calls::RELATION, &(viewer, user))
                .await
                .map_err(|err| AccessError(err.into()))
        }
        .boxed()
    }

    fn changes(&self) -> broadcast::Receiver<RelationChange> {
        self.changes.subscribe()
    }
}

struct Follower(Arc<RemoteRelations>);

impl Service for Follower {
    fn name(&self) -> &'static str {
        "relations"
    }

    fn start(&self, workers: &mut Workers) {
        let relations = Arc::clone(&self.0);
        workers.spawn("remote-relations", move |stop| relations.follow(stop));
    }
}
