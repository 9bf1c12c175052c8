//! The original internal route: `GET /permissions/user/{user}/conversation/{conversation}`.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, web};

use super::checker::Checker;
use crate::config::PermissionsRoute;
use crate::platform::http::ApiError;
use crate::platform::http::error::ErrorBody;
use crate::platform::service::Routes;

pub fn routes(cfg: &mut Routes<'_>, checker: Arc<Checker>, route: PermissionsRoute) {
    if route == PermissionsRoute::Off {
        return;
    }
    cfg.app_data(web::Data::new(RouteState { checker, route }))
        .service(may_access);
}

struct RouteState {
    checker: Arc<Checker>,
    route: PermissionsRoute,
}

/// Loopback, private (RFC 1918, unique local) and link-local peers: an internal network.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal(IpAddr::V4(v4)),
            None => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
        },
    }
}

/// May `user` touch `conversation`? For services in other processes (`permissions.route`).
/// The original answered 200 or 401 (from a cache that never matched); here 200 or 403.
#[utoipa::path(
    tag = "permissions",
    security(),
    params(
        ("user" = String, Path, description = "A user id"),
        ("conversation" = String, Path, description = "A conversation id"),
    ),
    responses(
        (status = 200, description = "A current member of a conversation that exists"),
        (status = 403, description = "`not_a_member`, or `internal_only` when asked from outside an internal network", body = ErrorBody),
        (status = 503, description = "Memberships cannot be read: `permissions_unavailable`", body = ErrorBody),
    ),
)]
#[get("/permissions/user/{user}/conversation/{conversation}")]
async fn may_access(
    state: web::Data<RouteState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    // The peer itself, never a forwarded address: this is about which network asks.
    if state.route == PermissionsRoute::Private
        && !req.peer_addr().is_some_and(|peer| is_internal(peer.ip()))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "internal_only",
            "this route answers internal networks only",
        ));
    }
    let (user, conversation) = path.into_inner();
    match state.checker.check(&user, &conversation).await {
        Ok(true) => Ok(HttpResponse::Ok().finish()),
        Ok(false) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_a_member",
            "not a member of this conversation",
        )),
        Err(err) => {
            tracing::error!(error = %err, "membership check failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "permissions_unavailable",
                "membership cannot be checked right now",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_networks_are_loopback_private_and_link_local() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.9",
            "192.168.1.1",
            "169.254.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                is_internal(internal.parse().unwrap_or_else(|e| panic!("{e}"))),
                "{internal}"
            );
        }
        for public in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(
                !is_internal(public.parse().unwrap_or_else(|e| panic!("{e}"))),
                "{public}"
            );
        }
    }
}
