//! heartbeat over HTTP and SSE: the original contract (ping, subscribe, the event format), the
//! last ping sent on subscribe, privacy (who may watch, and streams ending with the relation),
//! invisible, cheap pings, reconnection, no leaked registrations, bad input, durability across
//! a restart, and two replicas sharing presence.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::auth::{Tokens, login_as};
use crate::helpers::{
    Column, NATS, REDIS, TestApp, columns, conversation_of, env, error_code, targets, unique_phone,
};

/// How soon a stream must end once its watcher may no longer see the user.
const WITHIN: Duration = Duration::from_secs(1);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

struct User {
    tokens: Tokens,
    phone: String,
}

impl User {
    fn id(&self) -> &str {
        &self.tokens.user_id
    }
}

async fn user(app: &TestApp) -> User {
    let phone = unique_phone();
    let tokens = login_as(app, &phone, "phone-1").await;
    User { tokens, phone }
}

async fn ping(app: &TestApp, who: &User, status: &str) -> reqwest::Response {
    app.post("/heartbeat/ping")
        .bearer_auth(&who.tokens.access)
        .json(&json!({ "status": status }))
        .send()
        .await
        .unwrap()
}

async fn ping_ok(app: &TestApp, who: &User, status: &str) {
    let response = ping(app, who, status).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.unwrap().is_empty(),
        "ping answers an empty body"
    );
}

async fn add_contact(app: &TestApp, who: &User, contact: &User) {
    let response = app
        .post("/core/user/contact")
        .bearer_auth(&who.tokens.access)
        .json(&json!({ "phone_number": contact.phone }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

async fn conversation_with(app: &TestApp, owner: &User, members: &[&User]) -> String {
    let members: Vec<&Tokens> = members.iter().map(|member| &member.tokens).collect();
    conversation_of(app, &owner.tokens, &members).await
}

async fn call(app: &TestApp, method: reqwest::Method, path: &str, who: &User) -> u16 {
    app.client
        .request(method, app.url(path))
        .bearer_auth(&who.tokens.access)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn subscribe_response(
    app: &TestApp,
    watcher: &User,
    target: &str,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    // As EventSource does: the token in the query.
    let mut request = app.client.get(app.url(&format!(
        "/heartbeat/subscribe/{target}?token={}",
        watcher.tokens.access
    )));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.unwrap()
}

/// An open presence stream.
struct Watch {
    response: reqwest::Response,
    buffer: String,
}

/// One event: its `id:` and its decoded `data:`.
#[derive(Debug)]
struct Seen {
    id: String,
    time: i64,
    status: String,
}

impl Watch {
    async fn open(app: &TestApp, watcher: &User, target: &User) -> Self {
        Self::open_after(app, watcher, target, None).await
    }

    async fn open_after(
        app: &TestApp,
        watcher: &User,
        target: &User,
        last_event_id: Option<&str>,
    ) -> Self {
        let response = subscribe_response(app, watcher, target.id(), last_event_id).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event within `within`, or `None`.
    async fn next_within(&mut self, within: Duration) -> Option<Seen> {
        tokio::time::timeout(within, self.next_event()).await.ok()
    }

    async fn next(&mut self) -> Seen {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("no presence event within 10 s")
    }

    async fn next_event(&mut self) -> Seen {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|line| line.strip_prefix(name))
                        .map(str::to_owned)
                };
                // Keep-alive comments carry no data.
                let Some(data) = field("data: ") else {
                    continue;
                };
                let data: Value = serde_json::from_str(&data).unwrap();
                assert_eq!(data.as_object().unwrap().len(), 2, "{data}");
                return Seen {
                    id: field("id: ").expect("an event without an id"),
                    time: data["time"].as_i64().expect("time is a JSON number"),
                    status: data["status"].as_str().unwrap().to_owned(),
                };
            }
            let chunk = self.response.chunk().await.unwrap().expect("stream ended");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Waits for the server to end the stream; returns how long after `since` it ended.
    async fn ends(mut self, since: Instant, within: Duration) -> Duration {
        let drained = async { while let Ok(Some(_)) = self.response.chunk().await {} };
        tokio::time::timeout_at((since + within).into(), drained)
            .await
            .unwrap_or_else(|_| panic!("the presence stream is still open {within:?} later"));
        since.elapsed()
    }

    /// Whether the stream stays open (and silent) for `period`.
    async fn stays_open(&mut self, period: Duration) -> bool {
        let drained = async { while let Ok(Some(_)) = self.response.chunk().await {} };
        tokio::time::timeout(period, drained).await.is_err()
    }
}

/// A gauge or counter on `/metrics`, 0 when absent.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Waits until `user`'s last ping with `status` is in the database (written behind, once a
/// second).
async fn written(app: &TestApp, user: &str, status: &str) {
    use sea_orm::{ConnectionTrait as _, Statement};
    let db = app.platform().db.connection();
    let sql = match db.get_database_backend() {
        sea_orm::DatabaseBackend::Postgres => {
            r#"SELECT status FROM heartbeat_last_seen WHERE "user" = $1"#
        }
        _ => r#"SELECT status FROM heartbeat_last_seen WHERE "user" = ?"#,
    };
    let query = Statement::from_sql_and_values(db.get_database_backend(), sql, [user.into()]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let row = db.query_one_raw(query.clone()).await.unwrap();
        let stored: Option<String> = row.map(|row| row.try_get("", "status").unwrap());
        if stored.as_deref() == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the ping was not written within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The app's time: its adjustable clock in process, the wall clock for a deployment.
fn now_secs(app: &TestApp) -> i64 {
    if app.in_process() {
        app.clock().now_millis() / 1000
    } else {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        i64::try_from(now.unwrap().as_secs()).unwrap()
    }
}

#[tokio::test]
async fn the_last_ping_comes_first_then_each_new_one() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let (alice, bob) = (user(&app).await, user(&app).await);
        add_contact(&app, &bob, &alice).await;

        // Alice never pinged: no first event.
        let mut early = Watch::open(&app, &bob, &alice).await;
        assert!(early.next_within(QUIET).await.is_none(), "{column:?}");

        ping_ok(&app, &alice, "a").await;
        let seen = early.next().await;
        assert_eq!(seen.status, "a");
        assert!(
            (seen.time - now_secs(&app)).abs() <= 1,
            "{column:?}: {seen:?}"
        );

        // A later subscriber gets the last ping at once (the original never sent it).
        let mut late = Watch::open(&app, &bob, &alice).await;
        let first = late.next_within(Duration::from_secs(2)).await;
        let first = first.expect("the last ping is sent on subscribe");
        assert_eq!(
            (first.status.as_str(), first.id.as_str()),
            ("a", seen.id.as_str())
        );

        ping_ok(&app, &alice, "2").await;
        for watch in [&mut early, &mut late] {
            assert_eq!(watch.next().await.status, "2");
        }
        // Subscribing to oneself is allowed.
        let mut own = Watch::open(&app, &alice, &alice).await;
        assert_eq!(own.next().await.status, "2");
        // The header works as well as ?token=.
        let response = app
            .client
            .get(app.url(&format!("/heartbeat/subscribe/{}", alice.id())))
            .bearer_auth(&bob.tokens.access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        app.stop().await;
    }
}

#[tokio::test]
async fn only_contacts_and_conversation_members_may_watch() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let (alice, carol, stranger) = (user(&app).await, user(&app).await, user(&app).await);
        ping_ok(&app, &alice, "0").await;

        let response = subscribe_response(&app, &stranger, alice.id(), None).await;
        assert_eq!(error_code(response, 403).await, "not_related", "{column:?}");
        // Having the stranger as a contact gives alice nothing over the stranger's own view.
        add_contact(&app, &alice, &stranger).await;
        let response = subscribe_response(&app, &stranger, alice.id(), None).await;
        assert_eq!(error_code(response, 403).await, "not_related");

        // Sharing a conversation is enough, and the answer is not stuck in the cache.
        conversation_with(&app, &alice, &[&carol]).await;
        let mut watch = Watch::open(&app, &carol, &alice).await;
        assert_eq!(watch.next().await.status, "0");

        let unknown = format!("u-{}", "0".repeat(32));
        let response = subscribe_response(&app, &carol, &unknown, None).await;
        assert_eq!(error_code(response, 404).await, "user_not_found");
        let response = subscribe_response(&app, &carol, "alice", None).await;
        assert_eq!(error_code(response, 400).await, "invalid_id");
        let anonymous = app
            .get(&format!("/heartbeat/subscribe/{}", alice.id()))
            .await;
        assert_eq!(error_code(anonymous, 401).await, "missing_token");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_stream_ends_within_a_second_of_its_relation() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let alice = user(&app).await;
        let (bob, carol, dave) = (user(&app).await, user(&app).await, user(&app).await);
        ping_ok(&app, &alice, "0").await;

        // Bob: a contact only. Removing the contact ends his stream.
        add_contact(&app, &bob, &alice).await;
        let bobs = Watch::open(&app, &bob, &alice).await;
        let since = Instant::now();
        let path = format!("/core/user/contact/{}", alice.id());
        assert_eq!(call(&app, reqwest::Method::DELETE, &path, &bob).await, 200);
        let took = bobs.ends(since, WITHIN).await;
        eprintln!("{column:?}: contact removed -> stream ended in {took:?}");
        assert_eq!(call(&app, reqwest::Method::DELETE, &path, &bob).await, 404);
        let response = subscribe_response(&app, &bob, alice.id(), None).await;
        assert_eq!(error_code(response, 403).await, "not_related");

        // Carol: removed from the one conversation she shares with alice.
        // Dave: in a conversation with alice that is deleted, but also her contact: stays.
        let shared = conversation_with(&app, &alice, &[&carol]).await;
        let deleted = conversation_with(&app, &alice, &[&dave]).await;
        add_contact(&app, &dave, &alice).await;
        let carols = Watch::open(&app, &carol, &alice).await;
        let mut daves = Watch::open(&app, &dave, &alice).await;
        let since = Instant::now();
        let member = format!("/core/user/conversation/{shared}/member/{}", carol.id());
        assert_eq!(
            call(&app, reqwest::Method::DELETE, &member, &alice).await,
            200
        );
        let took = carols.ends(since, WITHIN).await;
        eprintln!("{column:?}: member removed -> stream ended in {took:?}");
        let conversation = format!("/core/user/conversation/{deleted}");
        assert_eq!(
            call(&app, reqwest::Method::DELETE, &conversation, &alice).await,
            200
        );
        assert_eq!(daves.next().await.status, "0");
        assert!(
            daves.stays_open(Duration::from_millis(600)).await,
            "{column:?}"
        );

        // Deleting the conversation a watcher shares with alice ends the watcher's stream.
        let erin = user(&app).await;
        let gone = conversation_with(&app, &alice, &[&erin]).await;
        let erins = Watch::open(&app, &erin, &alice).await;
        let since = Instant::now();
        let path = format!("/core/user/conversation/{gone}");
        assert_eq!(
            call(&app, reqwest::Method::DELETE, &path, &alice).await,
            200
        );
        erins.ends(since, WITHIN).await;
        // A watcher who leaves ends their own stream too.
        let frank = user(&app).await;
        let left = conversation_with(&app, &alice, &[&frank]).await;
        let franks = Watch::open(&app, &frank, &alice).await;
        let since = Instant::now();
        let path = format!("/core/user/conversation/{left}/member/{}", frank.id());
        assert_eq!(
            call(&app, reqwest::Method::DELETE, &path, &frank).await,
            200
        );
        franks.ends(since, WITHIN).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn invisible_is_stored_but_never_pushed() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let (alice, bob) = (user(&app).await, user(&app).await);
        add_contact(&app, &bob, &alice).await;
        ping_ok(&app, &alice, "1").await;
        let mut watch = Watch::open(&app, &bob, &alice).await;
        let visible = watch.next().await;
        assert_eq!(visible.status, "1");

        app.clock().advance(Duration::from_secs(5));
        ping_ok(&app, &alice, "3").await;
        assert!(
            watch.next_within(QUIET).await.is_none(),
            "{column:?}: invisible pushed"
        );
        // A new subscriber sees the last visible ping, not the invisible one.
        let mut late = Watch::open(&app, &bob, &alice).await;
        let first = late.next().await;
        assert_eq!((first.status.as_str(), first.time), ("1", visible.time));
        // Alice herself sees what others see.
        assert_eq!(
            Watch::open(&app, &alice, &alice).await.next().await.status,
            "1"
        );

        app.clock().advance(Duration::from_secs(5));
        ping_ok(&app, &alice, "0").await;
        assert_eq!(watch.next().await.status, "0");
        assert_eq!(late.next().await.status, "0");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_ping_that_changes_nothing_is_neither_stored_nor_pushed() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let (alice, bob) = (user(&app).await, user(&app).await);
        add_contact(&app, &bob, &alice).await;
        let mut watch = Watch::open(&app, &bob, &alice).await;
        ping_ok(&app, &alice, "a").await;
        let first = watch.next().await;

        let interval = app.platform().config.heartbeat.write_interval_secs;
        app.clock().advance(Duration::from_secs(interval - 1));
        ping_ok(&app, &alice, "a").await;
        assert!(watch.next_within(QUIET).await.is_none(), "{column:?}");
        let unchanged = r#"beep_heartbeat_pings_total{outcome="unchanged"}"#;
        assert_eq!(metric(&app, unchanged).await, 1.0);

        // A new status goes through at once; the same one after the interval does too.
        ping_ok(&app, &alice, "b").await;
        assert_eq!(watch.next().await.status, "b");
        app.clock().advance(Duration::from_secs(interval));
        ping_ok(&app, &alice, "b").await;
        let later = watch.next().await;
        assert_eq!(later.status, "b");
        assert!(
            later.time >= first.time + i64::try_from(interval).unwrap(),
            "{later:?}"
        );
        let stored = r#"beep_heartbeat_pings_total{outcome="stored"}"#;
        assert_eq!(metric(&app, stored).await, 3.0);
        app.stop().await;
    }
}

#[tokio::test]
async fn ten_subscribers_each_receive_one_ping_exactly_once() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let (alice, bob) = (user(&app).await, user(&app).await);
        add_contact(&app, &bob, &alice).await;
        let mut watches = Vec::new();
        for _ in 0..10 {
            watches.push(Watch::open(&app, &bob, &alice).await);
        }
        ping_ok(&app, &alice, "0").await;
        for watch in &mut watches {
            let seen = watch.next().await;
            assert_eq!(seen.status, "0");
        }
        for watch in &mut watches {
            assert!(
                watch.next_within(QUIET).await.is_none(),
                "{column:?}: twice"
            );
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn reconnecting_with_last_event_id_gets_the_current_state_once() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let (alice, bob) = (user(&app).await, user(&app).await);
        add_contact(&app, &bob, &alice).await;
        let mut watch = Watch::open(&app, &bob, &alice).await;
        ping_ok(&app, &alice, "0").await;
        let first = watch.next().await;
        drop(watch);
        for status in ["1", "2", "0", "1"] {
            app.clock().advance(Duration::from_secs(1));
            ping_ok(&app, &alice, status).await;
        }
        let mut again = Watch::open_after(&app, &bob, &alice, Some(&first.id)).await;
        let current = again.next().await;
        assert_eq!(current.status, "1");
        assert!(current.id.parse::<i64>().unwrap() > first.id.parse::<i64>().unwrap());
        assert!(
            again.next_within(QUIET).await.is_none(),
            "{column:?}: a replay"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn closed_streams_leave_the_registry() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let (alice, bob) = (user(&app).await, user(&app).await);
        add_contact(&app, &bob, &alice).await;
        let gauge = "beep_heartbeat_subscribers";
        let mut watches = Vec::new();
        for _ in 0..5 {
            watches.push(Watch::open(&app, &bob, &alice).await);
        }
        assert_eq!(metric(&app, gauge).await, 5.0, "{column:?}");
        assert_eq!(app.platform().sessions.open_count(bob.id()), 5);
        drop(watches);
        let deadline = Instant::now() + Duration::from_secs(2);
        while metric(&app, gauge).await > 0.0 {
            assert!(
                Instant::now() < deadline,
                "{column:?}: closed streams stayed registered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(app.platform().sessions.open_count(bob.id()), 0);
        app.stop().await;
    }
}

#[tokio::test]
async fn bad_pings_get_a_json_4xx() {
    for column in columns() {
        let app = TestApp::spawn_with(
            column,
            |config| config.heartbeat.pings_per_minute = 4,
            Vec::new(),
        )
        .await;
        let alice = user(&app).await;
        let send = |body: &'static str| {
            app.post("/heartbeat/ping")
                .bearer_auth(&alice.tokens.access)
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        for bad in [r#"{"status":"#, "{}", r#"{"status":5}"#, "[]", "null"] {
            assert_eq!(
                error_code(send(bad).await.unwrap(), 400).await,
                "invalid_json",
                "{bad}"
            );
        }
        let long = "x".repeat(65);
        for bad in ["", long.as_str(), "a\u{0}b", "line\nbreak"] {
            let response = ping(&app, &alice, bad).await;
            assert_eq!(error_code(response, 400).await, "invalid_status", "{bad:?}");
        }
        let anonymous = app
            .post("/heartbeat/ping")
            .json(&json!({ "status": "0" }))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(anonymous, 401).await, "missing_token");

        // 4 a minute (the refused ones above did not count).
        for _ in 0..4 {
            ping_ok(&app, &alice, "0").await;
        }
        let response = ping(&app, &alice, "0").await;
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(
            error_code(response, 429).await,
            "rate_limited",
            "{column:?}"
        );
        app.clock().advance(Duration::from_secs(61));
        ping_ok(&app, &alice, "0").await;
        app.stop().await;
    }
}

#[tokio::test]
async fn last_seen_survives_a_restart() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let (alice, bob) = (user(&app).await, user(&app).await);
        add_contact(&app, &bob, &alice).await;
        ping_ok(&app, &alice, "2").await;
        app.clock().advance(Duration::from_secs(3));
        ping_ok(&app, &alice, "3").await;
        let time = Watch::open(&app, &bob, &alice).await.next().await.time;

        let app = app.restart(|_| {}, Vec::new()).await;
        let mut watch = Watch::open(&app, &bob, &alice).await;
        let first = watch.next().await;
        assert_eq!(
            (first.status.as_str(), first.time),
            ("2", time),
            "{column:?}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn two_replicas_share_presence_and_fan_out() {
    // Replicas hear each other through NATS, else through Redis; the embedded ones are one
    // process's.
    if env(NATS).is_some() {
        two_replicas(false).await;
    }
    if env(REDIS).is_some() {
        two_replicas(true).await;
    }
}

/// Two replicas on one database; with `redis_only`, their bus is in-process, so pings cross
/// through Redis pub/sub.
async fn two_replicas(redis_only: bool) {
    let first = TestApp::spawn_with(
        Column::Real,
        |config| {
            if redis_only {
                config.bus.url = "memory".into();
            }
        },
        Vec::new(),
    )
    .await;
    let (alice, bob) = (user(&first).await, user(&first).await);
    add_contact(&first, &bob, &alice).await;
    ping_ok(&first, &alice, "0").await;
    written(&first, alice.id(), "0").await;
    let shared = first.platform().config.clone();
    let jwks_url = first.url("/.well-known/jwks.json");
    let second = TestApp::spawn_services(
        Column::Real,
        &["core", "heartbeat"],
        |config| {
            config.database.url = shared.database.url.clone();
            config.auth.jwks_url = jwks_url;
            config.auth.jwks_refresh_secs = 1;
            config.bus.url = shared.bus.url.clone();
            config.bus.subject_prefix = shared.bus.subject_prefix.clone();
            config.cache.prefix = shared.cache.prefix.clone();
        },
        Vec::new(),
    )
    .await;
    let via = if redis_only { "Redis" } else { "NATS" };
    // The second replica takes the first's tokens once it has loaded its keys.
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribe_response(&second, &bob, alice.id(), None)
        .await
        .status()
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "{via}: the second replica never took the token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The ping made on the first replica is known on the second at once...
    let mut there = Watch::open(&second, &bob, &alice).await;
    assert_eq!(there.next().await.status, "0", "{via}");
    let mut here = Watch::open(&first, &bob, &alice).await;
    assert_eq!(here.next().await.status, "0");
    // ...and each new ping reaches subscribers on both, from either replica.
    first.clock().advance(Duration::from_secs(1));
    ping_ok(&first, &alice, "1").await;
    assert_eq!(there.next().await.status, "1", "{via}");
    assert_eq!(here.next().await.status, "1");
    second.clock().advance(Duration::from_secs(2));
    ping_ok(&second, &alice, "2").await;
    assert_eq!(here.next().await.status, "2", "{via}");
    assert_eq!(there.next().await.status, "2");
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn a_stopping_server_ends_its_streams_instead_of_waiting_for_them() {
    let app = TestApp::spawn(Column::Embedded).await;
    let (alice, bob) = (user(&app).await, user(&app).await);
    add_contact(&app, &bob, &alice).await;
    let watch = Watch::open(&app, &bob, &alice).await;
    let since = Instant::now();
    let grace = Duration::from_secs(app.platform().config.server.shutdown_timeout_secs);
    let stopping = tokio::spawn(app.stop());
    watch.ends(since, WITHIN).await;
    stopping.await.unwrap();
    assert!(
        since.elapsed() < grace,
        "the stop waited for the stream: {:?}",
        since.elapsed()
    );
}
