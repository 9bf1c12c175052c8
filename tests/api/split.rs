//! A split deployment: services in separate processes (here, separate apps in one test process,
//! as the split binaries run) sharing PostgreSQL, Redis and NATS, each asking the seams it does
//! not host over NATS request/reply. Runs when `BEEP_TEST_NATS_URL` is set.

use crate::auth::login_as;
use crate::helpers::{Column, NATS, TestApp, conversation_of, env, error_code, unique_phone};
use beep::config::PermissionsRoute;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_alone_asks_core_over_nats() {
    if env(NATS).is_none() {
        eprintln!("skipped: {NATS} is not set");
        return;
    }
    let core = TestApp::spawn_services(Column::Real, &["auth", "core"], |_| {}, Vec::new()).await;
    let permissions = TestApp::spawn_beside(&core, &["permissions"], |config| {
        config.permissions.route = PermissionsRoute::Private;
    })
    .await;
    let alice = login_as(&core, &unique_phone(), "phone").await;
    let bob = login_as(&core, &unique_phone(), "phone").await;
    let conversation = conversation_of(&core, &alice, &[]).await;
    let ask = |user: &str| {
        let path = format!("/permissions/user/{user}/conversation/{conversation}");
        let url = permissions.url(&path);
        let client = permissions.client.clone();
        async move { client.get(url).send().await.unwrap() }
    };

    // Answered from core's tables, in the other process.
    assert_eq!(ask(&alice.user_id).await.status(), 200);
    assert_eq!(
        error_code(ask(&bob.user_id).await, 403).await,
        "not_a_member"
    );

    // core gone: a question nobody cached is a clear 503, not a guess.
    core.stop().await;
    let carol = "u-00000000000000000000000000000000";
    let response = ask(carol).await;
    assert_eq!(error_code(response, 503).await, "permissions_unavailable");
    permissions.stop().await;
}
