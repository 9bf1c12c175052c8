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

/// Waits until `app` verifies `who`'s token (it loads auth's keys from `auth.jwks_url` at
/// start, in the background).
async fn keys_loaded(app: &TestApp, who: &crate::auth::Tokens) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let response = app
            .client
            .get(app.url("/core/user/contact"))
            .bearer_auth(&who.access)
            .send()
            .await
            .unwrap();
        if response.status() != 401 || std::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Every service in a process of its own, as the split binaries run: a login through auth
/// creates the user in core, core checks a picture name with pictures, pictures asks core who
/// shows it, and bites asks permissions, which asks core.
#[cfg(all(feature = "pictures", feature = "bites", feature = "heartbeat"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_alone_reaches_the_others_over_nats() {
    use crate::pictures::{png, set_profile_pic, uploaded};
    if env(NATS).is_none() {
        eprintln!("skipped: {NATS} is not set");
        return;
    }
    let auth = TestApp::spawn_services(Column::Real, &["auth"], |_| {}, Vec::new()).await;
    let jwks = auth.url("/.well-known/jwks.json");
    let alone = |services: &'static [&'static str]| {
        let jwks = jwks.clone();
        let auth = &auth;
        async move {
            TestApp::spawn_beside(auth, services, |config| {
                config.auth.jwks_url = jwks;
            })
            .await
        }
    };
    let core = alone(&["core"]).await;
    let permissions = alone(&["permissions"]).await;
    let pictures = alone(&["pictures"]).await;
    let bites = alone(&["bites"]).await;
    let heartbeat = alone(&["heartbeat"]).await;

    // auth -> core: the login creates the user in core's process.
    let alice = login_as(&auth, &unique_phone(), "phone").await;
    let bob = login_as(&auth, &unique_phone(), "phone").await;
    keys_loaded(&core, &alice).await;
    let me = core
        .client
        .get(core.url(&format!("/core/user/id/{}", alice.user_id)))
        .bearer_auth(&alice.access)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(me["id"], alice.user_id.as_str());

    // core -> pictures: only a stored name is accepted; pictures -> core: bob may see
    // alice's profile picture.
    let name = uploaded(&pictures, &alice, &png(64, 64, 7)).await;
    let unknown = "0123456789abcdef0123456789abcdef.png";
    let refused = set_profile_pic(&core, &alice, unknown).await;
    assert_eq!(error_code(refused, 400).await, "invalid_profile");
    let accepted = set_profile_pic(&core, &alice, &name).await;
    assert_eq!(accepted.status(), 200, "{}", accepted.text().await.unwrap());
    let seen = pictures
        .client
        .get(pictures.url(&format!("/pictures/picture/{name}")))
        .bearer_auth(&bob.access)
        .send()
        .await
        .unwrap();
    assert_eq!(seen.status(), 200);

    // bites -> permissions -> core: members only.
    let conversation = conversation_of(&core, &alice, &[]).await;
    let scan = |who: &crate::auth::Tokens| {
        bites
            .client
            .get(bites.url(&format!("/store/bite/{conversation}/scan")))
            .bearer_auth(&who.access)
            .send()
    };
    assert_eq!(scan(&alice).await.unwrap().status(), 200);
    assert_eq!(
        error_code(scan(&bob).await.unwrap(), 403).await,
        "not_a_member"
    );

    // heartbeat -> core: who may watch alice's presence, and streams end with the relation.
    let carol = login_as(&auth, &unique_phone(), "phone").await;
    let shared = conversation_of(&core, &alice, &[&bob]).await;
    let watch = |who: &crate::auth::Tokens| {
        let url = heartbeat.url(&format!(
            "/heartbeat/subscribe/{}?token={}",
            alice.user_id, who.access
        ));
        heartbeat.client.get(url).send()
    };
    keys_loaded(&heartbeat, &alice).await;
    let strangers = watch(&carol).await.unwrap();
    assert_eq!(error_code(strangers, 403).await, "not_related");
    let mut bobs = watch(&bob).await.unwrap();
    assert_eq!(bobs.status(), 200);
    let removed = core
        .client
        .delete(core.url(&format!(
            "/core/user/conversation/{shared}/member/{}",
            bob.user_id
        )))
        .bearer_auth(&alice.access)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let ended = async { while let Ok(Some(_)) = bobs.chunk().await {} };
    tokio::time::timeout(std::time::Duration::from_secs(5), ended)
        .await
        .expect("bob's stream ends once he shares nothing with alice");

    // permissions gone: bites cannot tell, and says so.
    permissions.stop().await;
    let response = scan(&alice).await.unwrap();
    assert_eq!(response.status(), 503);
    for app in [heartbeat, bites, pictures, core] {
        app.stop().await;
    }

    // core gone: a login cannot create or find its user, and says so.
    let phone = unique_phone();
    let nonce = crate::auth::request_code(&auth, &phone).await;
    let code = crate::helpers::sent_code(&phone);
    let response = crate::auth::verify(&auth, &nonce, &code, "phone").await;
    assert_eq!(error_code(response, 503).await, "users_unavailable");
    auth.stop().await;
}
