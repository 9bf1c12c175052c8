//! core and permissions over HTTP: users, conversations, members, contacts, pagination, the
//! SSE streams (who hears what), the original's bugs fixed, and revocation within 100 ms.

use std::time::{Duration, Instant};

use beep::config::PermissionsRoute;
use serde_json::{Value, json};

use crate::auth::{Tokens, login_as};
use crate::helpers::{TestApp, columns, error_code, targets, unique_phone};

async fn user(app: &TestApp) -> (Tokens, String) {
    let phone = unique_phone();
    (login_as(app, &phone, "phone-1").await, phone)
}

/// A request as a logged-in client sends it.
fn call(app: &TestApp, method: &str, path: &str, who: &Tokens) -> reqwest::RequestBuilder {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    app.client
        .request(method, app.url(path))
        .bearer_auth(&who.access)
}

async fn json_of(response: reqwest::Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap()
}

async fn new_conversation(app: &TestApp, who: &Tokens, title: &str) -> String {
    let response = call(app, "POST", "/core/user/conversation", who)
        .json(&json!({ "title": title }))
        .send()
        .await
        .unwrap();
    let body = json_of(response, 200).await;
    body["id"].as_str().unwrap().to_owned()
}

async fn add_member(app: &TestApp, by: &Tokens, conversation: &str, user: &str) -> u16 {
    call(
        app,
        "POST",
        &format!("/core/user/conversation/{conversation}/member"),
        by,
    )
    .json(&json!({ "id": user }))
    .send()
    .await
    .unwrap()
    .status()
    .as_u16()
}

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

/// `GET /core/user?phone_number=…`, the number URL-encoded (`+` would read as a space).
fn by_phone(phone: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(phone.as_bytes()).collect();
    format!("/core/user?phone_number={encoded}")
}

fn missing_id(prefix: &str) -> String {
    format!("{prefix}-{}", beep::platform::ids::random_hex128())
}

#[tokio::test]
async fn users_are_looked_up_and_updated_partially() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let (alice, alice_phone) = user(&app).await;
        let (bob, bob_phone) = user(&app).await;

        // The original POST /user, now only for one's own number and with names required.
        let created = call(&app, "POST", "/core/user", &alice)
            .json(&json!({ "phone_number": alice_phone, "first_name": "Alice", "last_name": "A", "bio": "hi" }))
            .send()
            .await
            .unwrap();
        let created = json_of(created, 200).await;
        assert_eq!(created["id"], alice.user_id.as_str());
        assert_eq!(created["first_name"], "Alice");
        assert_eq!(created["phone_number"], alice_phone.as_str());
        let other_number = call(&app, "POST", "/core/user", &alice)
            .json(&json!({ "phone_number": bob_phone, "first_name": "X", "last_name": "Y" }));
        assert_eq!(
            error_code(other_number.send().await.unwrap(), 403).await,
            "phone_not_verified"
        );
        let nameless = call(&app, "POST", "/core/user", &alice).json(&json!({ "first_name": "" }));
        assert_eq!(
            error_code(nameless.send().await.unwrap(), 400).await,
            "invalid_profile"
        );

        // By phone: found, not found (the original answered 500), invalid.
        let found = call(&app, "GET", &by_phone(&alice_phone), &bob)
            .send()
            .await
            .unwrap();
        assert_eq!(json_of(found, 200).await["id"], alice.user_id.as_str());
        let nobody = call(&app, "GET", &by_phone(&unique_phone()), &bob);
        assert_eq!(
            error_code(nobody.send().await.unwrap(), 404).await,
            "user_not_found"
        );
        let invalid = call(&app, "GET", &by_phone("12"), &bob);
        assert_eq!(
            error_code(invalid.send().await.unwrap(), 400).await,
            "invalid_phone_number"
        );

        // By id.
        let by_id = call(
            &app,
            "GET",
            &format!("/core/user/id/{}", alice.user_id),
            &bob,
        );
        assert_eq!(json_of(by_id.send().await.unwrap(), 200).await["bio"], "hi");
        let unknown = call(
            &app,
            "GET",
            &format!("/core/user/id/{}", missing_id("u")),
            &bob,
        );
        assert_eq!(
            error_code(unknown.send().await.unwrap(), 404).await,
            "user_not_found"
        );
        let malformed = call(&app, "GET", "/core/user/id/u-xyz", &bob);
        assert_eq!(
            error_code(malformed.send().await.unwrap(), 400).await,
            "invalid_id"
        );
        let anonymous = app.get(&format!("/core/user/id/{}", alice.user_id)).await;
        assert_eq!(error_code(anonymous, 401).await, "missing_token");

        // PATCH changes only what it is sent; usernames are unique whatever their case.
        // (A name of this run's: a deployment keeps those of earlier runs.)
        let name = format!("Alice_{}.x", &beep::platform::ids::random_hex128()[..8]);
        let patched = call(&app, "PATCH", "/core/user", &alice)
            .json(&json!({ "username": name }))
            .send()
            .await
            .unwrap();
        let patched = json_of(patched, 200).await;
        assert_eq!(patched["username"], name.to_lowercase().as_str());
        assert_eq!(patched["first_name"], "Alice");
        assert_eq!(patched["bio"], "hi");
        let by_name = call(
            &app,
            "GET",
            &format!("/core/user/username/{}", name.to_uppercase()),
            &bob,
        );
        assert_eq!(
            json_of(by_name.send().await.unwrap(), 200).await["id"],
            alice.user_id.as_str()
        );
        let taken = call(&app, "PATCH", "/core/user", &bob)
            .json(&json!({ "username": name.to_lowercase().replace(".x", ".X") }));
        assert_eq!(
            error_code(taken.send().await.unwrap(), 409).await,
            "username_taken"
        );
        for bad in [
            json!({ "username": "a!" }),
            json!({ "username": "ab" }),
            json!({ "bio": "b".repeat(257) }),
        ] {
            let response = call(&app, "PATCH", "/core/user", &bob)
                .json(&bad)
                .send()
                .await
                .unwrap();
            assert_eq!(error_code(response, 400).await, "invalid_profile", "{bad}");
        }
        // The whole user sent back, as original clients do: id and number are left alone.
        let whole = call(&app, "PATCH", "/core/user", &bob)
            .json(&json!({ "id": alice.user_id, "phone_number": alice_phone, "bio": "bob's" }));
        let whole = json_of(whole.send().await.unwrap(), 200).await;
        assert_eq!(
            (
                whole["id"].as_str(),
                whole["phone_number"].as_str(),
                whole["bio"].as_str()
            ),
            (
                Some(bob.user_id.as_str()),
                Some(bob_phone.as_str()),
                Some("bob's")
            )
        );
        let unknown_field =
            call(&app, "PATCH", "/core/user", &bob).json(&json!({ "nickname": "b" }));
        assert_eq!(
            error_code(unknown_field.send().await.unwrap(), 400).await,
            "invalid_json"
        );
        let cleared = call(&app, "PATCH", "/core/user", &alice).json(&json!({ "username": null }));
        assert_eq!(
            json_of(cleared.send().await.unwrap(), 200).await["username"],
            Value::Null
        );
        let gone = call(&app, "GET", "/core/user/username/alice_1.x", &bob);
        assert_eq!(
            error_code(gone.send().await.unwrap(), 404).await,
            "user_not_found"
        );

        // The internal permissions route is off unless configured.
        let route = format!(
            "/permissions/user/{}/conversation/{}",
            alice.user_id,
            missing_id("c")
        );
        assert_eq!(app.get(&route).await.status(), 404);
        app.stop().await;
    }
}

#[tokio::test]
async fn only_members_reach_a_conversation() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let (alice, _) = user(&app).await;
        let (bob, _) = user(&app).await;
        let (mallory, _) = user(&app).await;
        let id = new_conversation(&app, &alice, "Team").await;
        assert!(id.starts_with("c-") && id.len() == 34, "{id}");
        let path = format!("/core/user/conversation/{id}");
        let members = format!("{path}/member");

        // A stranger can do nothing (the original let anyone add members).
        for (method, route, body) in [
            ("GET", path.clone(), None),
            ("PATCH", path.clone(), Some(json!({ "title": "mine" }))),
            ("DELETE", path.clone(), None),
            ("POST", format!("{path}/pin"), None),
            ("GET", members.clone(), None),
            (
                "POST",
                members.clone(),
                Some(json!({ "id": mallory.user_id })),
            ),
        ] {
            let mut request = call(&app, method, &route, &mallory);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let code = error_code(request.send().await.unwrap(), 403).await;
            assert_eq!(code, "not_a_member", "{method} {route}");
        }
        let nowhere = call(
            &app,
            "GET",
            &format!("/core/user/conversation/{}", missing_id("c")),
            &alice,
        );
        assert_eq!(
            error_code(nowhere.send().await.unwrap(), 404).await,
            "conversation_not_found"
        );

        // PATCH keeps what it is not sent (the original needed a title to change anything).
        let picture =
            crate::pictures::uploaded(&app, &alice, &crate::pictures::png(20, 20, 0)).await;
        let patched = call(&app, "PATCH", &path, &alice)
            .json(&json!({ "picture": picture }))
            .send()
            .await
            .unwrap();
        let patched = json_of(patched, 200).await;
        assert_eq!(
            (patched["title"].as_str(), patched["picture"].as_str()),
            (Some("Team"), Some(picture.as_str()))
        );

        // Pins are per member and show in the list.
        assert_eq!(
            status(call(&app, "POST", &format!("{path}/pin"), &alice)).await,
            200
        );
        let listed = json_of(
            call(&app, "GET", "/core/user/conversation", &alice)
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        assert_eq!(
            listed,
            json!([{ "id": id, "title": "Team", "picture": picture, "pinned": true }])
        );
        assert_eq!(
            status(call(&app, "DELETE", &format!("{path}/pin"), &alice)).await,
            200
        );
        let got = json_of(call(&app, "GET", &path, &alice).send().await.unwrap(), 200).await;
        assert_eq!(got["pinned"], false);

        // Members: the original answered the conversation id as text; duplicates are 409.
        let added = call(&app, "POST", &members, &alice)
            .json(&json!({ "id": bob.user_id }))
            .send()
            .await
            .unwrap();
        assert_eq!(added.status(), 200);
        assert_eq!(added.text().await.unwrap(), id);
        let again = call(&app, "POST", &members, &alice).json(&json!({ "id": bob.user_id }));
        assert_eq!(
            error_code(again.send().await.unwrap(), 409).await,
            "already_a_member"
        );
        let ghost = call(&app, "POST", &members, &alice).json(&json!({ "id": missing_id("u") }));
        assert_eq!(
            error_code(ghost.send().await.unwrap(), 404).await,
            "user_not_found"
        );
        let listed = json_of(call(&app, "GET", &members, &bob).send().await.unwrap(), 200).await;
        assert_eq!(
            listed.as_array().unwrap().len(),
            1,
            "the caller is left out: {listed}"
        );
        assert_eq!(listed[0]["id"], alice.user_id.as_str());
        assert_eq!(status(call(&app, "GET", &path, &bob)).await, 200);

        // Removing a member ends their access; the last one leaving deletes the conversation.
        let remove_bob = format!("{members}/{}", bob.user_id);
        assert_eq!(status(call(&app, "DELETE", &remove_bob, &alice)).await, 200);
        assert_eq!(status(call(&app, "GET", &path, &bob)).await, 403);
        let twice = call(&app, "DELETE", &remove_bob, &alice);
        assert_eq!(
            error_code(twice.send().await.unwrap(), 404).await,
            "member_not_found"
        );
        let leave = format!("{members}/{}", alice.user_id);
        assert_eq!(status(call(&app, "DELETE", &leave, &alice)).await, 200);
        assert_eq!(status(call(&app, "GET", &path, &alice)).await, 404);

        // Any member may delete a conversation, as in the original; nothing is left behind.
        let second = new_conversation(&app, &alice, "Second").await;
        assert_eq!(add_member(&app, &alice, &second, &bob.user_id).await, 200);
        let second_path = format!("/core/user/conversation/{second}");
        assert_eq!(status(call(&app, "DELETE", &second_path, &bob)).await, 200);
        assert_eq!(status(call(&app, "GET", &second_path, &alice)).await, 404);
        // (The tables are read directly, so only where the app is this test's.)
        for conversation in [&id, &second].into_iter().filter(|_| app.in_process()) {
            assert_eq!(rows(&app, "member", "conversation", conversation).await, 0);
            assert_eq!(rows(&app, "conversation", "id", conversation).await, 0);
        }
        app.stop().await;
    }
}

/// Rows of `table` whose `column` is `value`, read straight from the database.
async fn rows(app: &TestApp, table: &str, column: &str, value: &str) -> i64 {
    use sea_orm::{ConnectionTrait as _, Statement};
    let db = app.platform().db.connection();
    let backend = db.get_database_backend();
    let placeholder = if backend == sea_orm::DatabaseBackend::Postgres {
        "$1"
    } else {
        "?"
    };
    let sql = format!("SELECT COUNT(*) AS n FROM \"{table}\" WHERE \"{column}\" = {placeholder}");
    let row = db
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [value.into()]))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

#[tokio::test]
async fn contacts_are_added_by_phone() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let (alice, alice_phone) = user(&app).await;
        let (bob, bob_phone) = user(&app).await;
        let add = |phone: &str| {
            call(&app, "POST", "/core/user/contact", &alice).json(&json!({ "phone_number": phone }))
        };
        let added = json_of(add(&bob_phone).send().await.unwrap(), 200).await;
        assert_eq!(added["id"], bob.user_id.as_str());
        assert_eq!(
            error_code(add(&bob_phone).send().await.unwrap(), 409).await,
            "already_a_contact"
        );
        assert_eq!(
            error_code(add(&alice_phone).send().await.unwrap(), 400).await,
            "invalid_contact"
        );
        assert_eq!(
            error_code(add("555").send().await.unwrap(), 400).await,
            "invalid_phone_number"
        );
        // A number nobody logged in with yet gets a blank user, as in the original.
        let newcomer = unique_phone();
        let blank = json_of(add(&newcomer).send().await.unwrap(), 200).await;
        assert!(blank["id"].as_str().unwrap().starts_with("u-"));
        assert_eq!(
            (blank["phone_number"].as_str(), blank["first_name"].as_str()),
            (Some(newcomer.as_str()), Some(""))
        );
        // That user is the one the number logs in as later.
        let later = login_as(&app, &newcomer, "phone-2").await;
        assert_eq!(later.user_id, blank["id"].as_str().unwrap());

        let listed = json_of(
            call(&app, "GET", "/core/user/contact", &alice)
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        let mut ids: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        let mut expected = vec![bob.user_id.as_str(), later.user_id.as_str()];
        expected.sort_unstable();
        assert_eq!(ids, expected);
        // One-directional: Bob has no contacts.
        let bobs = json_of(
            call(&app, "GET", "/core/user/contact", &bob)
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        assert_eq!(bobs, json!([]));
        app.stop().await;
    }
}

#[tokio::test]
async fn lists_page_with_a_cursor() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let (alice, _) = user(&app).await;
        let mut conversations = Vec::new();
        for n in 0..5 {
            conversations.push(new_conversation(&app, &alice, &format!("c{n}")).await);
        }
        conversations.sort();
        // 2 + 2 + 1: the short last page carries no link.
        let (seen, pages) = every_page(&app, &alice, "/core/user/conversation?limit=2").await;
        assert_eq!((seen, pages), (conversations.clone(), 3));

        // Members (the caller left out) and contacts page the same way.
        let mut others = Vec::new();
        for _ in 0..3 {
            let (other, phone) = user(&app).await;
            assert_eq!(
                add_member(&app, &alice, &conversations[0], &other.user_id).await,
                200
            );
            let contact = call(&app, "POST", "/core/user/contact", &alice)
                .json(&json!({ "phone_number": phone }));
            assert_eq!(contact.send().await.unwrap().status(), 200);
            others.push(other.user_id);
        }
        others.sort();
        let members = format!(
            "/core/user/conversation/{}/member?limit=2",
            conversations[0]
        );
        assert_eq!(
            every_page(&app, &alice, &members).await,
            (others.clone(), 2)
        );
        let contacts = every_page(&app, &alice, "/core/user/contact?limit=2").await;
        assert_eq!(contacts, (others, 2));

        for bad in ["0", "100000", "x"] {
            let response = call(
                &app,
                "GET",
                &format!("/core/user/conversation?limit={bad}"),
                &alice,
            );
            let code = error_code(response.send().await.unwrap(), 400).await;
            assert!(
                code == "invalid_limit" || code == "invalid_query",
                "{bad}: {code}"
            );
        }
        app.stop().await;
    }
}

/// Follows `Link: <…>; rel="next"` from `first`: the ids seen in order, and how many pages.
async fn every_page(app: &TestApp, who: &Tokens, first: &str) -> (Vec<String>, usize) {
    let limit: usize = first.rsplit_once("limit=").unwrap().1.parse().unwrap();
    let mut seen = Vec::new();
    let mut next = Some(first.to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        pages += 1;
        let response = call(app, "GET", &path, who).send().await.unwrap();
        next = response.headers().get("link").map(|link| {
            let link = link.to_str().unwrap();
            assert!(link.ends_with(">; rel=\"next\""), "{link}");
            link[1..link.find('>').unwrap()].to_owned()
        });
        let page = json_of(response, 200).await;
        let page = page.as_array().unwrap();
        assert!(page.len() <= limit);
        seen.extend(
            page.iter()
                .map(|item| item["id"].as_str().unwrap().to_owned()),
        );
    }
    (seen, pages)
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let (alice, _) = user(&app).await;
        let id = new_conversation(&app, &alice, "t").await;
        let path = format!("/core/user/conversation/{id}");
        let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
            (
                call(&app, "POST", "/core/user/conversation", &alice)
                    .header("content-type", "application/json")
                    .body("{"),
                400,
                "invalid_json",
            ),
            (
                call(&app, "POST", "/core/user/conversation", &alice).body("title=x"),
                415,
                "unsupported_media_type",
            ),
            (
                call(&app, "POST", "/core/user/conversation", &alice)
                    .json(&json!({ "title": "t".repeat(257) })),
                400,
                "invalid_conversation",
            ),
            (
                call(&app, "PATCH", &path, &alice).json(&json!({ "title": 5 })),
                400,
                "invalid_json",
            ),
            (
                call(&app, "POST", "/core/user/conversation", &alice)
                    .json(&json!({ "title": "x".repeat(70_000) })),
                413,
                "payload_too_large",
            ),
            (
                call(&app, "GET", "/core/user/conversation/c-1", &alice),
                400,
                "invalid_id",
            ),
            (
                call(&app, "POST", &format!("{path}/member"), &alice)
                    .json(&json!({ "id": "nobody" })),
                400,
                "invalid_id",
            ),
            (
                call(&app, "POST", &format!("{path}/member"), &alice).json(&json!({})),
                400,
                "invalid_json",
            ),
            (
                call(&app, "POST", "/core/user/contact", &alice)
                    .json(&json!({ "phone": "+6591234567" })),
                400,
                "invalid_json",
            ),
            (call(&app, "PUT", &path, &alice), 405, "method_not_allowed"),
            // NUL cannot be stored by PostgreSQL: refused on both columns (the fuzzer found
            // a 500 here).
            (
                call(&app, "PATCH", "/core/user", &alice).json(&json!({ "last_name": "a\u{0}" })),
                400,
                "invalid_profile",
            ),
            (
                call(&app, "POST", "/core/user", &alice)
                    .json(&json!({ "first_name": "a", "last_name": "b", "bio": "\u{0}" })),
                400,
                "invalid_profile",
            ),
            (
                call(&app, "PATCH", &path, &alice).json(&json!({ "title": "\u{0}" })),
                400,
                "invalid_conversation",
            ),
            (
                call(&app, "GET", "/core/user/contact?after=%00", &alice),
                400,
                "invalid_request",
            ),
            (
                call(&app, "GET", "/core/user/username/a%00b", &alice),
                400,
                "invalid_request",
            ),
        ];
        for (n, (request, status, code)) in cases.into_iter().enumerate() {
            assert_eq!(
                error_code(request.send().await.unwrap(), status).await,
                code,
                "case {n}"
            );
        }
        app.stop().await;
    }
}

/// An open SSE stream read frame by frame.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(app: &TestApp, path: &str, who: &Tokens) -> Self {
        // `?token=` as a browser's EventSource sends it.
        let response = app
            .client
            .get(app.url(&format!("{path}?token={}", who.access)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert_eq!(content_type, "text/event-stream");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event as the original sent it: `{"type": …, "data": <decoded JSON>}`.
    async fn next(&mut self) -> (String, Value) {
        let event = tokio::time::timeout(Duration::from_secs(10), self.next_data())
            .await
            .expect("no event within 10 s");
        let kind = event["type"].as_str().unwrap().to_owned();
        let data = serde_json::from_str(event["data"].as_str().unwrap()).unwrap();
        (kind, data)
    }

    /// Waits for the server to end the stream, skipping anything still in it.
    async fn ends(mut self) {
        let drained = async { while self.response.chunk().await.unwrap().is_some() {} };
        tokio::time::timeout(Duration::from_secs(10), drained)
            .await
            .expect("the stream did not end within 10 s");
    }

    async fn next_data(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                // Comments (keep-alives) and other fields are skipped.
                if let Some(data) = frame.lines().find_map(|line| line.strip_prefix("data: ")) {
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            let chunk = self.response.chunk().await.unwrap().expect("stream ended");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

#[tokio::test]
async fn streams_carry_core_events_to_those_allowed_to_see_them() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let (alice, _) = user(&app).await;
        let (bob, bob_phone) = user(&app).await;
        let (carol, _) = user(&app).await;
        let mut alice_conversations =
            Events::open(&app, "/core/user/subscribe/conversation", &alice).await;
        let mut bob_conversations =
            Events::open(&app, "/core/user/subscribe/conversation", &bob).await;
        let mut carol_conversations =
            Events::open(&app, "/core/user/subscribe/conversation", &carol).await;
        let mut alice_contacts = Events::open(&app, "/core/user/subscribe/contact", &alice).await;
        let mut alice_users = Events::open(&app, "/core/user/subscribe", &alice).await;
        let mut carol_users = Events::open(&app, "/core/user/subscribe/user", &carol).await;

        let id = new_conversation(&app, &alice, "Team").await;
        assert_eq!(
            alice_conversations.next().await,
            (
                "add".into(),
                json!({ "id": id, "title": "Team", "picture": null, "pinned": false })
            )
        );
        let member_stream = format!("/core/user/subscribe/conversation/{id}/member");
        let mut alice_members = Events::open(&app, &member_stream, &alice).await;
        let refused = app
            .client
            .get(app.url(&member_stream))
            .bearer_auth(&carol.access)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(refused, 403).await, "not_a_member");

        assert_eq!(add_member(&app, &alice, &id, &bob.user_id).await, 200);
        let (kind, data) = bob_conversations.next().await;
        assert_eq!(
            (kind.as_str(), data["id"].as_str()),
            ("add", Some(id.as_str()))
        );
        assert_eq!(
            alice_members.next().await,
            (
                "add".into(),
                json!({ "user": bob.user_id, "conversation": id, "pinned": false })
            )
        );
        let mut bob_members = Events::open(&app, &member_stream, &bob).await;

        let renamed = call(
            &app,
            "PATCH",
            &format!("/core/user/conversation/{id}"),
            &bob,
        )
        .json(&json!({ "title": "Renamed" }));
        assert_eq!(renamed.send().await.unwrap().status(), 200);
        for stream in [&mut alice_conversations, &mut bob_conversations] {
            let (kind, data) = stream.next().await;
            assert_eq!(
                (kind.as_str(), data["title"].as_str()),
                ("update", Some("Renamed"))
            );
        }

        let contact = call(&app, "POST", "/core/user/contact", &alice)
            .json(&json!({ "phone_number": bob_phone }));
        assert_eq!(contact.send().await.unwrap().status(), 200);
        assert_eq!(
            alice_contacts.next().await,
            (
                "add".into(),
                json!({ "usera": alice.user_id, "userb": bob.user_id })
            )
        );

        // Bob's profile reaches Alice (he is her contact), not Carol.
        let profile = call(&app, "PATCH", "/core/user", &bob).json(&json!({ "first_name": "Bob" }));
        assert_eq!(profile.send().await.unwrap().status(), 200);
        let (kind, data) = alice_users.next().await;
        assert_eq!(
            (
                kind.as_str(),
                data["id"].as_str(),
                data["first_name"].as_str()
            ),
            ("update", Some(bob.user_id.as_str()), Some("Bob"))
        );

        // Removal: Bob hears the conversation go; Alice's member stream hears him leave.
        let remove = format!("/core/user/conversation/{id}/member/{}", bob.user_id);
        assert_eq!(status(call(&app, "DELETE", &remove, &alice)).await, 200);
        assert_eq!(
            bob_conversations.next().await,
            ("delete".into(), json!({ "id": id }))
        );
        assert_eq!(
            alice_members.next().await,
            (
                "delete".into(),
                json!({ "user": bob.user_id, "conversation": id, "pinned": false })
            )
        );
        // Bob's member stream tells him, then ends: he may no longer follow it.
        let (kind, data) = bob_members.next().await;
        assert_eq!(
            (kind.as_str(), data["user"].as_str()),
            ("delete", Some(bob.user_id.as_str()))
        );
        bob_members.ends().await;

        // Carol heard none of it: her first events are her own.
        let carols = new_conversation(&app, &carol, "Carol's").await;
        let (kind, data) = carol_conversations.next().await;
        assert_eq!(
            (kind.as_str(), data["id"].as_str()),
            ("add", Some(carols.as_str()))
        );
        let own = call(&app, "PATCH", "/core/user", &carol).json(&json!({ "bio": "me" }));
        assert_eq!(own.send().await.unwrap().status(), 200);
        let (_, data) = carol_users.next().await;
        assert_eq!(data["id"], carol.user_id.as_str());
        app.stop().await;
    }
}

#[tokio::test]
async fn a_removed_member_loses_access_within_100_ms() {
    for column in columns() {
        let app = TestApp::spawn_with(
            column,
            |config| config.permissions.route = PermissionsRoute::Private,
            Vec::new(),
        )
        .await;
        let (alice, _) = user(&app).await;
        let (bob, _) = user(&app).await;
        let (mallory, _) = user(&app).await;
        let id = new_conversation(&app, &alice, "t").await;
        assert_eq!(add_member(&app, &alice, &id, &bob.user_id).await, 200);
        let check = |who: &str, conversation: &str| {
            app.client
                .get(app.url(&format!(
                    "/permissions/user/{who}/conversation/{conversation}"
                )))
                .send()
        };
        // Asked twice, so the second answer comes from the cache.
        for _ in 0..2 {
            assert_eq!(check(&bob.user_id, &id).await.unwrap().status(), 200);
            assert_eq!(
                error_code(check(&mallory.user_id, &id).await.unwrap(), 403).await,
                "not_a_member"
            );
        }
        assert_eq!(check("u-junk", &id).await.unwrap().status(), 403);

        // Mallory's cached "no" turns into "yes" when she is added.
        assert_eq!(add_member(&app, &alice, &id, &mallory.user_id).await, 200);
        eventually_status(|| check(&mallory.user_id, &id), 200).await;

        // Questions keep coming while Bob is removed, so lookups race the event.
        let hammer = {
            let (client, url) = (
                app.client.clone(),
                app.url(&format!(
                    "/permissions/user/{}/conversation/{id}",
                    bob.user_id
                )),
            );
            tokio::spawn(async move {
                loop {
                    let _ = client.get(&url).send().await;
                }
            })
        };
        let remove = format!("/core/user/conversation/{id}/member/{}", bob.user_id);
        assert_eq!(status(call(&app, "DELETE", &remove, &alice)).await, 200);
        let removed_at = Instant::now();
        eventually_status(|| check(&bob.user_id, &id), 403).await;
        let took = removed_at.elapsed();
        assert!(
            took < Duration::from_millis(100),
            "access lasted {took:?} after removal on {column:?}"
        );
        // And it stays refused: no lookup that raced the event left a "yes" behind.
        tokio::time::sleep(Duration::from_millis(200)).await;
        hammer.abort();
        assert_eq!(check(&bob.user_id, &id).await.unwrap().status(), 403);

        // A deleted conversation is never a "yes", for anyone who was in it.
        assert_eq!(check(&alice.user_id, &id).await.unwrap().status(), 200);
        assert_eq!(
            status(call(
                &app,
                "DELETE",
                &format!("/core/user/conversation/{id}"),
                &alice
            ))
            .await,
            200
        );
        let deleted_at = Instant::now();
        eventually_status(|| check(&alice.user_id, &id), 403).await;
        eventually_status(|| check(&mallory.user_id, &id), 403).await;
        assert!(
            deleted_at.elapsed() < Duration::from_millis(100),
            "{column:?}"
        );
        app.stop().await;
    }
}

/// Polls until the status is `want` (at most 5 s).
async fn eventually_status<F, Fut>(mut request: F, want: u16)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = reqwest::Result<reqwest::Response>>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = request().await.unwrap().status().as_u16();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {got}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A phone number is shown to its owner and to the users who hold them as a contact; everyone
/// else who finds the user (by id, username or in a member list) gets `null`.
#[tokio::test]
async fn phone_numbers_are_shown_only_to_their_owner_and_contact_holders() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let (alice, alice_phone) = user(&app).await;
        let (bob, bob_phone) = user(&app).await;
        let username = crate::helpers::unique_name();
        let response = call(&app, "PATCH", "/core/user", &alice)
            .json(&json!({ "username": username }))
            .send()
            .await
            .unwrap();
        assert_eq!(json_of(response, 200).await["phone_number"], alice_phone);
        let by_id = format!("/core/user/id/{}", alice.user_id);
        let by_name = format!("/core/user/username/{username}");
        let conversation = new_conversation(&app, &alice, "both").await;
        assert_eq!(
            add_member(&app, &alice, &conversation, &bob.user_id).await,
            200
        );
        let members = format!("/core/user/conversation/{conversation}/member");
        let seen = |who: &'static str, path: String, viewer: Tokens| {
            let app = &app;
            async move {
                let body =
                    json_of(call(app, "GET", &path, &viewer).send().await.unwrap(), 200).await;
                let user = if body.is_array() {
                    body[0].clone()
                } else {
                    body
                };
                let object = user.as_object().unwrap();
                assert!(object.contains_key("phone_number"), "{who}: {user}");
                object["phone_number"].clone()
            }
        };

        // Alice sees her own number.
        assert_eq!(seen("own", by_id.clone(), alice.clone()).await, alice_phone);
        // A stranger does not, however he finds her.
        assert_eq!(seen("id", by_id.clone(), bob.clone()).await, Value::Null);
        assert_eq!(
            seen("username", by_name.clone(), bob.clone()).await,
            Value::Null
        );
        assert_eq!(
            seen("members", members.clone(), bob.clone()).await,
            Value::Null
        );
        // Looking her up by number answers what he already knows.
        assert_eq!(
            seen("phone", by_phone(&alice_phone), bob.clone()).await,
            alice_phone
        );

        // Once Bob holds Alice as a contact, he sees it everywhere.
        let response = call(&app, "POST", "/core/user/contact", &bob)
            .json(&json!({ "phone_number": alice_phone }))
            .send()
            .await
            .unwrap();
        assert_eq!(json_of(response, 200).await["phone_number"], alice_phone);
        assert_eq!(seen("id", by_id, bob.clone()).await, alice_phone);
        assert_eq!(seen("username", by_name, bob.clone()).await, alice_phone);
        assert_eq!(
            seen("members", members.clone(), bob.clone()).await,
            alice_phone
        );
        let contacts = "/core/user/contact".to_owned();
        assert_eq!(seen("contacts", contacts, bob.clone()).await, alice_phone);
        // Contacts are one-directional: Alice still does not see Bob's.
        let bob_by_id = format!("/core/user/id/{}", bob.user_id);
        assert_eq!(seen("id", bob_by_id, alice.clone()).await, Value::Null);
        assert_eq!(seen("members", members, alice.clone()).await, Value::Null);
        assert_ne!(bob_phone, alice_phone);
        app.stop().await;
    }
}
