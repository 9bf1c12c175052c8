//! The seams answered by a service in another process, asked over NATS ([`super::rpc`]).
//! Each is the network twin of an in-process answer and returns the same result types, so
//! the asker (and its cache, invalidated by the owner's events) is the same either way.

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

use super::bus::Bus;
use super::membership::MembershipSource;
use super::rpc;

/// The names each owner answers under (`<prefix>.rpc.<service>.<call>`).
pub mod calls {
    pub const CORE: &str = "core";
    pub const IS_MEMBER: &str = "is_member";
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
