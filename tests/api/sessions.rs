//! Long-lived connections belong to a session: SSE streams and the signalling socket end
//! within a second of a logout, a revocation, a block or the token's expiry (on another
//! replica too), a user holds at most `http.max_streams_per_user` of them, and a restarted
//! server refuses revoked tokens from its very first request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::auth::{Tokens, Whoami, beep_cli, login_as, payload, refresh, whoami};
use crate::helpers::{Column, NATS, TestApp, columns, env, error_code, unique_phone};

/// How soon a connection must end once its session does.
const WITHIN: Duration = Duration::from_secs(1);

/// An open SSE stream.
struct Stream {
    path: String,
    response: reqwest::Response,
}

async fn open(app: &TestApp, path: &str, token: &str) -> Stream {
    let response = open_response(app, path, token).await;
    assert_eq!(response.status(), 200, "{path}");
    Stream {
        path: path.to_owned(),
        response,
    }
}

async fn open_response(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("{path}?token={token}")))
        .send()
        .await
        .unwrap()
}

impl Stream {
    /// Reads until the server ends the stream; returns how long after `since` it ended.
    async fn ends(mut self, since: Instant, within: Duration) -> Duration {
        let drained = async { while let Ok(Some(_)) = self.response.chunk().await {} };
        let deadline = since + within;
        tokio::time::timeout_at(deadline.into(), drained)
            .await
            .unwrap_or_else(|_| panic!("{} still open {within:?} later", self.path));
        since.elapsed()
    }

    /// Whether the stream stays open for `period`.
    async fn stays_open(&mut self, period: Duration) -> bool {
        let drained = async { while let Ok(Some(_)) = self.response.chunk().await {} };
        tokio::time::timeout(period, drained).await.is_err()
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn socket(
    app: &TestApp,
    token: &str,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let url = app.url(&format!("/webrtc/connect?token={token}"));
    let url = url.replacen("http://", "ws://", 1);
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(socket, _)| socket)
}

/// Reads the socket until the server closes it; returns the `error::` frames and how long
/// after `since` it closed.
async fn socket_closes(
    mut socket: Socket,
    since: Instant,
    within: Duration,
) -> (Vec<String>, Duration) {
    let mut errors = Vec::new();
    let read = async {
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Text(text) if text.starts_with("error::") => errors.push(text.to_string()),
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout_at((since + within).into(), read)
        .await
        .unwrap_or_else(|_| panic!("the signalling socket is still open {within:?} later"));
    (errors, since.elapsed())
}

async fn conversation(app: &TestApp, owner: &Tokens) -> String {
    let response = app
        .post("/core/user/conversation")
        .bearer_auth(&owner.access)
        .json(&json!({ "title": "watched" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// Every kind of long-lived connection, opened with `tokens`.
async fn open_all(app: &TestApp, tokens: &Tokens, conversation: &str) -> (Vec<Stream>, Socket) {
    let token = &tokens.access;
    let mut streams = Vec::new();
    for path in [
        "/core/user/subscribe".to_owned(),
        "/core/user/subscribe/contact".to_owned(),
        "/core/user/subscribe/conversation".to_owned(),
        format!("/core/user/subscribe/conversation/{conversation}/member"),
        format!("/store/bite/{conversation}/subscribe"),
    ] {
        streams.push(open(app, &path, token).await);
    }
    (streams, socket(app, token).await.unwrap())
}

/// Asserts every connection ends within [`WITHIN`] of `since`; returns the slowest.
async fn all_end(streams: Vec<Stream>, socket: Socket, since: Instant) -> Duration {
    all_end_within(streams, socket, since, WITHIN).await
}

/// Asserts every connection ends within `within` of `since`; returns the slowest.
async fn all_end_within(
    streams: Vec<Stream>,
    socket: Socket,
    since: Instant,
    within: Duration,
) -> Duration {
    let mut slowest = Duration::ZERO;
    for stream in streams {
        slowest = slowest.max(stream.ends(since, within).await);
    }
    let (errors, took) = socket_closes(socket, since, within).await;
    assert!(
        errors.iter().any(|e| e.contains("session_ended")),
        "{errors:?}"
    );
    slowest.max(took)
}

async fn spawn(column: Column, adjust: impl FnOnce(&mut beep::config::Config)) -> TestApp {
    // These tests log one number in more than once (several sessions of one user): no wait
    // between codes.
    let adjust = |config: &mut beep::config::Config| {
        config.auth.limits.resend.first_secs = 0;
        adjust(config);
    };
    TestApp::spawn_with(column, adjust, vec![Arc::new(Whoami)]).await
}

#[tokio::test]
async fn logout_ends_the_sessions_streams_and_socket_within_a_second() {
    for column in columns() {
        let app = spawn(column, |_| {}).await;
        let phone = unique_phone();
        let alice = login_as(&app, &phone, "phone").await;
        let alice_web = login_as(&app, &phone, "web").await;
        let id = conversation(&app, &alice).await;
        let (streams, socket) = open_all(&app, &alice, &id).await;
        let mut other_session = open(&app, "/core/user/subscribe", &alice_web.access).await;

        let since = Instant::now();
        let response = app
            .post("/login/logout")
            .bearer_auth(&alice.access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        let slowest = all_end(streams, socket, since).await;
        eprintln!("{column:?}: logout -> every stream and the socket ended in {slowest:?}");
        // The user's other session keeps its stream.
        assert!(other_session.stays_open(Duration::from_millis(300)).await);
        assert_eq!(app.platform().sessions.open_count(&alice.user_id), 1);
        app.stop().await;
    }
}

#[tokio::test]
async fn ending_a_session_by_id_or_by_refresh_reuse_ends_its_streams() {
    for column in columns() {
        let app = spawn(column, |_| {}).await;
        let phone = unique_phone();
        let phone_session = login_as(&app, &phone, "phone").await;
        let web_session = login_as(&app, &phone, "web").await;
        let id = conversation(&app, &phone_session).await;

        let (streams, socket) = open_all(&app, &phone_session, &id).await;
        let sid = payload(&phone_session.access)["sid"]
            .as_str()
            .unwrap()
            .to_owned();
        let since = Instant::now();
        let response = app
            .client
            .delete(app.url(&format!("/login/sessions/{sid}")))
            .bearer_auth(&web_session.access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        let took = all_end(streams, socket, since).await;
        eprintln!("{column:?}: DELETE /login/sessions/{{sid}} -> ended in {took:?}");

        // A spent refresh token coming back revokes its session.
        let stream = open(&app, "/core/user/subscribe", &web_session.access).await;
        assert_eq!(refresh(&app, &web_session.refresh).await.status(), 200);
        let since = Instant::now();
        let response = refresh(&app, &web_session.refresh).await;
        assert_eq!(error_code(response, 401).await, "refresh_token_reused");
        let took = stream.ends(since, WITHIN).await;
        eprintln!("{column:?}: refresh-token reuse -> ended in {took:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn blocking_a_user_ends_their_streams() {
    for column in columns() {
        // `beep users block` writes the database, which the server's revocation sync reads
        // (every second here); on NATS it also announces the block, so the sync is made too
        // slow to be what ends the streams, and the command itself takes about a second.
        let on_nats = column == Column::Real && env(NATS).is_some();
        let sync_secs = if on_nats { 600 } else { 1 };
        let within = if on_nats { WITHIN * 2 } else { WITHIN * 3 };
        let app = spawn(column, |config| {
            config.auth.revocation_sync_secs = sync_secs
        })
        .await;
        let alice = login_as(&app, &unique_phone(), "phone").await;
        let id = conversation(&app, &alice).await;
        let (streams, socket) = open_all(&app, &alice, &id).await;
        let since = Instant::now();
        beep_cli(&app, &["users", "block", &alice.user_id]);
        eprintln!("{column:?}: beep users block ran for {:?}", since.elapsed());
        let slowest = all_end_within(streams, socket, since, within).await;
        eprintln!("{column:?}: beep users block -> ended in {slowest:?}");
        if !on_nats {
            assert_eq!(whoami(&app, &alice.access).await.status(), 401);
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn a_user_blocked_event_on_the_bus_ends_their_streams() {
    for column in columns() {
        let app = spawn(column, |_| {}).await;
        let alice = login_as(&app, &unique_phone(), "phone").await;
        let stream = open(&app, "/core/user/subscribe", &alice.access).await;
        let since = Instant::now();
        app.platform()
            .bus
            .publish(beep::platform::sessions::UserBlocked {
                user: alice.user_id.clone(),
            })
            .await
            .unwrap();
        stream.ends(since, WITHIN).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn streams_end_when_their_token_expires() {
    for column in columns() {
        let app = spawn(column, |_| {}).await;
        let alice = login_as(&app, &unique_phone(), "phone").await;
        let id = conversation(&app, &alice).await;
        let (streams, socket) = open_all(&app, &alice, &id).await;
        let config = &app.platform().config.auth;
        app.clock().advance(Duration::from_secs(
            config.access_token_ttl_secs + config.leeway_secs + 1,
        ));
        let since = Instant::now();
        let took = all_end(streams, socket, since).await;
        eprintln!("{column:?}: token expiry -> ended in {took:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_refreshed_session_keeps_its_streams_until_the_new_token_expires() {
    for column in columns() {
        let app = spawn(column, |_| {}).await;
        let alice = login_as(&app, &unique_phone(), "phone").await;
        let mut stream = open(&app, "/core/user/subscribe", &alice.access).await;
        let ttl = app.platform().config.auth.access_token_ttl_secs;
        let leeway = app.platform().config.auth.leeway_secs;
        // Refreshed halfway through the first token's life.
        app.clock().advance(Duration::from_secs(ttl / 2));
        assert_eq!(refresh(&app, &alice.refresh).await.status(), 200);
        app.clock()
            .advance(Duration::from_secs(ttl / 2 + leeway + 1));
        assert!(
            stream.stays_open(Duration::from_millis(600)).await,
            "{column:?}: the stream ended at the first token's expiry"
        );
        app.clock().advance(Duration::from_secs(ttl / 2));
        stream.ends(Instant::now(), WITHIN).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn a_revocation_on_one_replica_ends_streams_on_another() {
    // The replicas hear each other through NATS; the embedded bus is one process's.
    if env(NATS).is_none() {
        return;
    }
    let auth = spawn(Column::Real, |_| {}).await;
    let alice = login_as(&auth, &unique_phone(), "phone").await;
    let jwks_url = auth.url("/.well-known/jwks.json");
    let shared = auth.platform().config.clone();
    let core = TestApp::spawn_services(
        Column::Real,
        &["core"],
        |config| {
            config.auth.jwks_url = jwks_url;
            config.auth.jwks_refresh_secs = 1;
            config.bus.subject_prefix = shared.bus.subject_prefix.clone();
            config.cache.prefix = shared.cache.prefix.clone();
        },
        Vec::new(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        let response = open_response(&core, "/core/user/subscribe", &alice.access).await;
        if response.status() == 200 {
            break Stream {
                path: "/core/user/subscribe on the core replica".into(),
                response,
            };
        }
        assert!(
            Instant::now() < deadline,
            "the core replica never took the token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let since = Instant::now();
    let response = auth
        .post("/login/logout")
        .bearer_auth(&alice.access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let took = stream.ends(since, WITHIN).await;
    eprintln!("Real: logout on the auth replica -> core replica's stream ended in {took:?}");
    core.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn a_user_holds_at_most_the_configured_streams_and_sockets() {
    for column in columns() {
        let app = spawn(column, |config| config.http.max_streams_per_user = 3).await;
        let phone = unique_phone();
        let alice = login_as(&app, &phone, "phone").await;
        let alice_web = login_as(&app, &phone, "web").await;
        let bob = login_as(&app, &unique_phone(), "phone").await;
        let id = conversation(&app, &alice).await;
        let first = open(&app, "/core/user/subscribe", &alice.access).await;
        let _second = open(&app, "/core/user/subscribe/contact", &alice_web.access).await;
        let _socket = socket(&app, &alice.access).await.unwrap();
        // The cap counts the user's connections over all their sessions and kinds.
        for path in [
            "/core/user/subscribe".to_owned(),
            "/core/user/subscribe/conversation".to_owned(),
            format!("/core/user/subscribe/conversation/{id}/member"),
            format!("/store/bite/{id}/subscribe"),
        ] {
            let response = open_response(&app, &path, &alice_web.access).await;
            assert_eq!(
                error_code(response, 429).await,
                "too_many_streams",
                "{path}"
            );
        }
        match socket(&app, &alice.access).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 429);
            }
            other => panic!(
                "a fourth connection was not refused: {:?}",
                other.map(|_| ())
            ),
        }
        // Others are not affected.
        let _bobs = open(&app, "/core/user/subscribe", &bob.access).await;
        // A closed stream gives its place back.
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(5);
        while app.platform().sessions.open_count(&alice.user_id) >= 3 {
            assert!(Instant::now() < deadline, "a closed stream kept its place");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        open(&app, "/core/user/subscribe", &alice.access).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn a_restarted_server_refuses_revoked_tokens_from_its_first_request() {
    for column in columns() {
        let app = spawn(column, |_| {}).await;
        let alice = login_as(&app, &unique_phone(), "phone").await;
        let response = app
            .post("/login/logout")
            .bearer_auth(&alice.access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        // The revocation lives in the database only: the in-process cache is gone with the
        // process, and on the real column the restart uses a fresh cache namespace (as after
        // a cache flush).
        let app = app
            .restart(
                |config| config.cache.prefix = format!("{}again:", config.cache.prefix),
                vec![Arc::new(Whoami)],
            )
            .await;
        let sid = payload(&alice.access)["sid"].as_str().unwrap().to_owned();
        // Asked before anything else runs: the verifier knows already.
        assert!(
            app.platform().identity.is_revoked(&sid).await.unwrap(),
            "{column:?}: the restarted server serves before loading revocations"
        );
        let response = whoami(&app, &alice.access).await;
        assert_eq!(
            error_code(response, 401).await,
            "token_revoked",
            "{column:?}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_stopping_server_tells_the_socket_why_it_ends() {
    let app = spawn(Column::Embedded, |_| {}).await;
    let alice = login_as(&app, &unique_phone(), "phone").await;
    let socket = socket(&app, &alice.access).await.unwrap();
    let since = Instant::now();
    let stopping = tokio::spawn(app.stop());
    let (errors, took) = socket_closes(socket, since, WITHIN).await;
    stopping.await.unwrap();
    assert!(
        errors
            .iter()
            .any(|error| error.contains("\"server_shutdown\"")),
        "{errors:?}"
    );
    eprintln!("stop -> signalling socket closed in {took:?}");
}
