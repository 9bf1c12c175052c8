//! auth over HTTP: OTP login (codes read from the `log` sender), tokens, sessions, refresh
//! rotation and reuse, revocation, forward-auth, keys, limits, and the token attacks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use beep::config::{Limit, SigningAlgorithm};
use beep::platform::http::Caller;
use beep::platform::service::{Routes, Service};
use serde_json::{Value, json};

use crate::helpers::{Column, TestApp, columns, error_code, sent_code, targets, unique_phone};

/// A protected route as any service would write it.
pub struct Whoami;

impl Service for Whoami {
    fn name(&self) -> &'static str {
        "whoami"
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "test-only routes stay out of the API document"
    )]
    fn routes(&self, cfg: &mut Routes<'_>) {
        // Test-only routes: mounted, not documented.
        cfg.map(|cfg| {
            cfg.route(
                "/whoami",
                web::get().to(|caller: Caller| async move {
                    HttpResponse::Ok().json(json!({
                        "user_id": caller.user_id,
                        "client_id": caller.client_id,
                        "session_id": caller.session_id,
                    }))
                }),
            )
        });
    }
}

async fn spawn(column: Column, adjust: impl FnOnce(&mut beep::config::Config)) -> TestApp {
    TestApp::spawn_with(column, adjust, vec![Arc::new(Whoami)]).await
}

/// For tests that log one number in again and again: no wait between its codes.
fn repeat_logins(config: &mut beep::config::Config) {
    config.auth.limits.resend.first_secs = 0;
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub user_id: String,
    pub new_user: bool,
}

/// `POST /login/init` as the original clients send it.
async fn init(app: &TestApp, phone: &str) -> reqwest::Response {
    app.post("/login/init")
        .json(&json!({ "phone_number": phone }))
        .send()
        .await
        .unwrap()
}

/// `POST /login/init` asking for JSON; returns the nonce.
pub async fn request_code(app: &TestApp, phone: &str) -> String {
    let response = app
        .post("/login/init")
        .header("accept", "application/json")
        .json(&json!({ "phone_number": phone }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let body: Value = response.json().await.unwrap();
    body["nonce"].as_str().unwrap().to_owned()
}

pub async fn verify(app: &TestApp, nonce: &str, code: &str, client: &str) -> reqwest::Response {
    app.post("/login/verify")
        .header("accept", "application/json")
        .json(&json!({ "code": code, "nonce": nonce, "clientid": client }))
        .send()
        .await
        .unwrap()
}

pub async fn login_as(app: &TestApp, phone: &str, client: &str) -> Tokens {
    let nonce = request_code(app, phone).await;
    let code = sent_code(phone);
    let response = verify(app, &nonce, &code, client).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    let access = body["access_token"].as_str().unwrap();
    let lifetime =
        payload(access)["exp"].as_u64().unwrap() - payload(access)["iat"].as_u64().unwrap();
    assert_eq!(body["expires_in"], lifetime);
    Tokens {
        access: body["access_token"].as_str().unwrap().to_owned(),
        refresh: body["refresh_token"].as_str().unwrap().to_owned(),
        user_id: body["user_id"].as_str().unwrap().to_owned(),
        new_user: body["new_user"].as_bool().unwrap(),
    }
}

async fn login(app: &TestApp) -> Tokens {
    login_as(app, &unique_phone(), "phone-1").await
}

/// A protected route: the test-only `/whoami` in process; in a deployment, core's contact list,
/// served by another process than auth's where the services are split, so its answers show
/// that tokens and revocations reach it.
fn protected(app: &TestApp) -> &'static str {
    if app.in_process() {
        "/whoami"
    } else {
        "/core/user/contact"
    }
}

pub async fn whoami(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(app.url(protected(app)))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

pub async fn refresh(app: &TestApp, refresh_token: &str) -> reqwest::Response {
    app.post("/login/refresh")
        .json(&json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .unwrap()
}

/// `/whoami` as a forward-auth proxy would call it: no token, an `X-User-Claim`.
async fn whoami_as_proxy(app: &TestApp, claim: &str) -> reqwest::Response {
    app.client
        .get(app.url("/whoami"))
        .header("x-user-claim", claim)
        .send()
        .await
        .unwrap()
}

fn header(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

pub fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// The `beep` command line as an operator runs it beside `app`: same data dir, database and bus.
pub fn beep_cli(app: &TestApp, args: &[&str]) -> String {
    crate::served::run_ok(
        crate::served::beep(app.data_dir())
            .args(["--data-dir", app.data_dir().to_str().unwrap()])
            .args(args)
            .env("BEEP_DATABASE__URL", &app.platform().config.database.url)
            .env("BEEP_BUS__URL", &app.platform().config.bus.url)
            .env(
                "BEEP_BUS__SUBJECT_PREFIX",
                &app.platform().config.bus.subject_prefix,
            ),
    )
}

/// Polls `check` every 50 ms for up to 10 s (for background workers, never for readiness).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn phone_login_end_to_end_in_both_wire_formats() {
    for column in targets() {
        let app = spawn(column, repeat_logins).await;
        let phone = unique_phone();

        // The original client: plain-text nonce, plain-text JWT.
        let display = format!("{} {} {}", &phone[..3], &phone[3..7], &phone[7..]);
        let response = init(&app, &display).await;
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let nonce = response.text().await.unwrap();
        assert_eq!(nonce.len(), 32);
        assert!(nonce.bytes().all(|b| b.is_ascii_hexdigit()));
        let code = sent_code(&phone);
        assert_eq!(code.len(), 6);
        let response = app
            .post("/login/verify")
            .json(&json!({ "code": code, "nonce": nonce, "clientid": "flutter-1" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let jwt = response.text().await.unwrap();
        let claims = payload(&jwt);
        let user_id = claims["userid"].as_str().unwrap().to_owned();
        assert!(
            user_id.starts_with("u-") && user_id.len() == 34,
            "{user_id}"
        );
        assert_eq!(claims["clientid"], "flutter-1");
        assert_eq!(claims["iss"], "beep");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            900
        );
        assert_eq!(header(&jwt)["alg"], "EdDSA");

        // The token opens protected routes, as the header or as ?token=.
        let response = whoami(&app, &jwt).await;
        assert_eq!(response.status(), 200);
        if app.in_process() {
            let me: Value = response.json().await.unwrap();
            assert_eq!(me["user_id"], user_id.as_str());
            assert_eq!(me["client_id"], "flutter-1");
        }
        let response = app.get(&format!("{}?token={jwt}", protected(&app))).await;
        assert_eq!(response.status(), 200);

        // Logging in again (JSON this time) finds the same user.
        let again = login_as(&app, &phone, "web-1").await;
        assert_eq!(again.user_id, user_id);
        assert!(!again.new_user);
        let fresh = login(&app).await;
        assert!(fresh.new_user);
        assert_ne!(fresh.user_id, user_id);
        app.stop().await;
    }
}

#[tokio::test]
async fn email_login_over_smtp_reaches_the_mailbox() {
    for column in columns() {
        let sink = smtp_sink::start().await;
        let app = spawn(column, |config| {
            config.auth.email.sender = beep::config::EmailSender::Smtp;
            config.auth.email.smtp_url = format!("smtp://{}", sink.addr);
            config.auth.email.from = "Beep <login@beep.test>".into();
        })
        .await;
        let response = app
            .post("/login/init/email")
            .header("accept", "application/json")
            .json(&json!({ "email": "  Ada.Lovelace@Example.org " }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let nonce: Value = response.json().await.unwrap();
        let mail = sink.last();
        assert_eq!(mail.from, "login@beep.test");
        assert_eq!(mail.to, "ada.lovelace@example.org");
        assert!(
            mail.data.contains("Subject: Your Beep code"),
            "{}",
            mail.data
        );
        let code = mail
            .data
            .split(|c: char| !c.is_ascii_digit())
            .find(|word| word.len() == 6)
            .unwrap_or_else(|| panic!("no code in {}", mail.data))
            .to_owned();
        let response = verify(&app, nonce["nonce"].as_str().unwrap(), &code, "mail-1").await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["new_user"], true);
        app.stop().await;
    }
}

#[tokio::test]
async fn twilio_sender_posts_what_the_messages_api_expects() {
    for column in columns() {
        let gateway = fake_twilio::start(201).await;
        let app = spawn(column, |config| {
            config.auth.sms.sender = beep::config::SmsSender::Twilio;
            config.auth.sms.twilio.base_url = gateway.url.clone();
            config.auth.sms.twilio.account_sid = "AC123".into();
            config.auth.sms.twilio.auth_token = beep::config::Secret::new("tw-secret");
            config.auth.sms.twilio.messaging_service_sid = "MG456".into();
        })
        .await;
        let phone = unique_phone();
        let nonce = request_code(&app, &phone).await;
        let request = gateway.last();
        assert_eq!(request.path, "/2010-04-01/Accounts/AC123/Messages.json");
        let expected_auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("AC123:tw-secret")
        );
        assert_eq!(request.authorization, expected_auth);
        assert_eq!(request.form["To"], phone);
        assert_eq!(request.form["MessagingServiceSid"], "MG456");
        let body = &request.form["Body"];
        assert!(body.starts_with("Your OTP for Beep is "), "{body}");
        let code = &body["Your OTP for Beep is ".len()..][..6];
        let response = verify(&app, &nonce, code, "sms-1").await;
        assert_eq!(response.status(), 200);
        app.stop().await;

        // A gateway failure is a 502 with the JSON body, not a 500 or a hang.
        let failing = fake_twilio::start(500).await;
        let app = spawn(column, |config| {
            config.auth.sms.sender = beep::config::SmsSender::Twilio;
            config.auth.sms.twilio.base_url = failing.url.clone();
            config.auth.sms.twilio.account_sid = "AC123".into();
            config.auth.sms.twilio.auth_token = beep::config::Secret::new("tw-secret");
            config.auth.sms.twilio.from_number = "+15550001111".into();
        })
        .await;
        let response = init(&app, &unique_phone()).await;
        assert_eq!(error_code(response, 502).await, "delivery_failed");
        assert_eq!(failing.last().form["From"], "+15550001111");
        app.stop().await;
    }
}

#[tokio::test]
async fn bad_login_input_gets_clear_4xx() {
    for column in targets() {
        let app = spawn(column, |_| {}).await;
        for (path, body, status, code) in [
            (
                "/login/init",
                json!({"phone_number": "12345"}),
                400,
                "invalid_phone_number",
            ),
            (
                "/login/init",
                json!({"phone_number": "+65 1"}),
                400,
                "invalid_phone_number",
            ),
            (
                "/login/init",
                json!({"phone": "+6591234567"}),
                400,
                "invalid_json",
            ),
            (
                "/login/init/email",
                json!({"email": "not-an-address"}),
                400,
                "invalid_email",
            ),
            (
                "/login/verify",
                json!({"code": "123456", "nonce": "x"}),
                400,
                "invalid_json",
            ),
            (
                "/login/verify",
                json!({"code": "123456", "nonce": "0123456789abcdef0123456789abcdef", "clientid": ""}),
                400,
                "invalid_request",
            ),
            (
                "/login/verify",
                json!({"code": "12e456", "nonce": "not-a-nonce", "clientid": "c"}),
                401,
                "invalid_code",
            ),
            (
                "/login/refresh",
                json!({"refresh_token": "garbage"}),
                401,
                "invalid_refresh_token",
            ),
            (
                "/login/init/bypass",
                json!({"phone_number": "+6591234567"}),
                404,
                "not_found",
            ),
        ] {
            let response = app.post(path).json(&body).send().await.unwrap();
            assert_eq!(error_code(response, status).await, code, "{path} {body}");
        }
        let huge = json!({ "phone_number": "1".repeat(100_000) });
        let response = app.post("/login/init").json(&huge).send().await.unwrap();
        assert_eq!(error_code(response, 413).await, "payload_too_large");
        let response = app.get("/login/init").await;
        assert_eq!(error_code(response, 405).await, "method_not_allowed");
        app.stop().await;
    }
}

#[tokio::test]
async fn known_and_unknown_numbers_get_the_same_answer() {
    for column in columns() {
        let app = spawn(column, |_| {}).await;
        let known = unique_phone();
        login_as(&app, &known, "c").await;
        // Past the wait between codes to one number.
        app.clock().advance(Duration::from_secs(30));
        let mut answers = Vec::new();
        for phone in [known, unique_phone()] {
            let response = init(&app, &phone).await;
            let status = response.status();
            let content_type = response.headers()["content-type"].clone();
            let body = response.text().await.unwrap();
            answers.push((status, content_type, body.len()));
        }
        assert_eq!(answers[0], answers[1]);
        app.stop().await;
    }
}

#[tokio::test]
async fn codes_are_single_use_expire_and_die_after_five_wrong_tries() {
    for column in columns() {
        let app = spawn(column, |config| {
            repeat_logins(config);
            config.auth.otp.ttl_secs = 2;
        })
        .await;
        let phone = unique_phone();

        // Single use.
        let nonce = request_code(&app, &phone).await;
        let code = sent_code(&phone);
        assert_eq!(verify(&app, &nonce, &code, "c").await.status(), 200);
        let response = verify(&app, &nonce, &code, "c").await;
        assert_eq!(error_code(response, 401).await, "invalid_code");

        // Five wrong codes kill the nonce, even for the right code afterwards.
        let nonce = request_code(&app, &phone).await;
        let code = sent_code(&phone);
        let wrong = if code == "000001" { "000002" } else { "000001" };
        for _ in 0..4 {
            let response = verify(&app, &nonce, wrong, "c").await;
            assert_eq!(error_code(response, 401).await, "invalid_code");
        }
        let response = verify(&app, &nonce, wrong, "c").await;
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(error_code(response, 429).await, "too_many_attempts");
        let response = verify(&app, &nonce, &code, "c").await;
        assert_eq!(error_code(response, 429).await, "too_many_attempts");

        // Expiry.
        let nonce = request_code(&app, &phone).await;
        let code = sent_code(&phone);
        app.clock().advance(Duration::from_millis(2200));
        let response = verify(&app, &nonce, &code, "c").await;
        assert_eq!(error_code(response, 401).await, "invalid_code");
        app.stop().await;
    }
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_recover() {
    for column in columns() {
        let app = spawn(column, |config| {
            config.auth.limits.verifies_per_ip = Limit::new(3, 2);
        })
        .await;
        let unknown = "0123456789abcdef0123456789abcdef";
        for _ in 0..3 {
            let response = verify(&app, unknown, "123456", "c").await;
            assert_eq!(error_code(response, 401).await, "invalid_code");
        }
        let response = verify(&app, unknown, "123456", "c").await;
        let wait = retry_after(&response);
        assert!((1..=2).contains(&wait), "Retry-After {wait}");
        assert_eq!(error_code(response, 429).await, "rate_limited");

        app.clock()
            .advance(Duration::from_secs(wait) + Duration::from_millis(100));
        let response = verify(&app, unknown, "123456", "c").await;
        assert_eq!(error_code(response, 401).await, "invalid_code");
        app.stop().await;
    }
}

/// Codes to one number come at growing intervals (30 s, 1 min, 2 min, … at most 15 min),
/// never behind an hour-long wall that anyone could raise for a victim.
#[tokio::test]
async fn codes_to_one_number_wait_a_growing_interval_never_an_hour() {
    for column in columns() {
        let app = spawn(column, |config| {
            config.auth.limits.codes_per_ip = Limit::new(0, 1);
        })
        .await;
        let phone = unique_phone();
        request_code(&app, &phone).await;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let response = init(&app, &phone).await;
            let wait = retry_after(&response);
            assert_eq!(error_code(response, 429).await, "rate_limited");
            waits.push(wait);
            // Another number is not affected.
            request_code(&app, &unique_phone()).await;
            app.clock().advance(Duration::from_secs(wait));
            request_code(&app, &phone).await;
        }
        assert_eq!(waits, [30, 60, 120, 240, 480, 900, 900, 900]);

        // A quiet hour later the interval starts again from the first.
        app.clock().advance(Duration::from_secs(900 + 3600));
        request_code(&app, &phone).await;
        let response = init(&app, &phone).await;
        assert_eq!(retry_after(&response), 30);
        app.stop().await;
    }
}

/// A victim holding a code can always use it, whatever an attacker does to their number.
#[tokio::test]
async fn a_code_already_sent_verifies_while_its_number_is_flooded() {
    for column in columns() {
        let app = spawn(column, |config| {
            config.auth.limits.sms_per_country = Limit::new(2, 60);
        })
        .await;
        let phone = unique_phone();
        let nonce = request_code(&app, &phone).await;
        let code = sent_code(&phone);
        for _ in 0..5 {
            let response = init(&app, &phone).await;
            assert_eq!(error_code(response, 429).await, "rate_limited");
            let response = init(&app, &unique_phone()).await;
            assert!([200, 429].contains(&response.status().as_u16()));
        }
        let response = verify(&app, &nonce, &code, "c").await;
        assert_eq!(response.status(), 200);
        app.stop().await;
    }
}

/// The SMS budget is per destination country: a flood toward one leaves the others alone.
#[tokio::test]
async fn the_sms_budget_is_per_country() {
    for column in columns() {
        let app = spawn(column, |config| {
            config.auth.limits.sms_per_country = Limit::new(2, 60);
        })
        .await;
        request_code(&app, &unique_phone()).await;
        request_code(&app, &unique_phone()).await;
        let refused = unique_phone();
        let response = init(&app, &refused).await;
        let wait = retry_after(&response);
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
        assert_eq!(error_code(response, 429).await, "rate_limited");
        // The United Kingdom (+44) and the North American plan (+1) still get codes.
        request_code(&app, "+44 7911 123456").await;
        request_code(&app, "+1 415 555 2671").await;
        let metrics = app.get("/metrics").await.text().await.unwrap();
        assert!(
            metrics.lines().any(
                |line| line.starts_with("beep_auth_sms_budget_refused_total{country=\"65\"} 1")
            ),
            "{metrics}"
        );

        // A code the budget refused does not count toward its number's interval.
        app.clock().advance(Duration::from_secs(wait));
        request_code(&app, &refused).await;
        let response = init(&app, &refused).await;
        assert_eq!(retry_after(&response), 30);
        app.stop().await;
    }
}

/// Client addresses are counted per IPv4 address and per IPv6 /64.
#[tokio::test]
async fn ipv6_clients_are_limited_per_64() {
    for column in columns() {
        let app = spawn(column, |config| {
            config.http.trust_forwarded_for = true;
            config.auth.limits.codes_per_ip = Limit::new(2, 3600);
        })
        .await;
        let from = |address: &'static str| {
            let app = &app;
            async move {
                app.post("/login/init")
                    .header("x-forwarded-for", address)
                    .json(&json!({ "phone_number": unique_phone() }))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        assert_eq!(from("2001:db8:0:1::1").await, 200);
        assert_eq!(from("2001:db8:0:1::2").await, 200);
        // A third address of the same /64 is the same client.
        assert_eq!(from("2001:db8:0:1:ffff:ffff:ffff:ffff").await, 429);
        assert_eq!(from("2001:db8:0:2::1").await, 200);
        // IPv4 per address; an IPv4-mapped IPv6 address is that IPv4 address.
        assert_eq!(from("192.0.2.1").await, 200);
        assert_eq!(from("::ffff:192.0.2.1").await, 200);
        assert_eq!(from("192.0.2.1").await, 429);
        assert_eq!(from("192.0.2.2").await, 200);
        app.stop().await;
    }
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_session() {
    for column in targets() {
        let app = spawn(column, repeat_logins).await;
        let phone = unique_phone();
        let first = login_as(&app, &phone, "phone-1").await;
        let other = login_as(&app, &phone, "tablet").await;
        let response = refresh(&app, &first.refresh).await;
        assert_eq!(response.status(), 200);
        let second: Value = response.json().await.unwrap();
        let second_access = second["access_token"].as_str().unwrap().to_owned();
        let second_refresh = second["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(second_refresh, first.refresh);
        assert_eq!(second["user_id"], first.user_id.as_str());
        assert_eq!(
            payload(&second_access)["sid"],
            payload(&first.access)["sid"]
        );
        assert_eq!(whoami(&app, &second_access).await.status(), 200);

        // The spent token comes back: the session ends, every token of it is refused.
        let response = refresh(&app, &first.refresh).await;
        assert_eq!(error_code(response, 401).await, "refresh_token_reused");
        let response = refresh(&app, &second_refresh).await;
        assert_eq!(error_code(response, 401).await, "invalid_refresh_token");
        for token in [&first.access, &second_access] {
            let response = whoami(&app, token).await;
            assert!(response.headers().contains_key("www-authenticate"));
            assert_eq!(error_code(response, 401).await, "token_revoked");
        }
        // Other sessions of the same user live on.
        assert_eq!(whoami(&app, &other.access).await.status(), 200);
        assert_eq!(refresh(&app, &other.refresh).await.status(), 200);
        app.stop().await;
    }
}

#[tokio::test]
async fn sessions_are_listed_and_ended_one_by_one() {
    for column in targets() {
        let app = spawn(column, repeat_logins).await;
        let phone = unique_phone();
        let phone_session = login_as(&app, &phone, "phone").await;
        let web_session = login_as(&app, &phone, "web").await;
        let stranger = login(&app).await;

        let response = app
            .client
            .get(app.url("/login/sessions"))
            .bearer_auth(&web_session.access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let sessions: Vec<Value> = response.json().await.unwrap();
        assert_eq!(sessions.len(), 2);
        let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
        assert_eq!(current.len(), 1);
        assert_eq!(current[0]["client_id"], "web");
        let phone_sid = payload(&phone_session.access)["sid"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(sessions.iter().any(|s| s["sid"] == phone_sid.as_str()));
        assert!(sessions[0]["created_at"].as_i64().unwrap() > 1_700_000_000_000);

        // A stranger cannot end it; its owner can.
        let end = |token: &str, sid: &str| {
            app.client
                .delete(app.url(&format!("/login/sessions/{sid}")))
                .bearer_auth(token)
                .send()
        };
        let response = end(&stranger.access, &phone_sid).await.unwrap();
        assert_eq!(error_code(response, 404).await, "session_not_found");
        assert_eq!(whoami(&app, &phone_session.access).await.status(), 200);
        let response = end(&web_session.access, &phone_sid).await.unwrap();
        assert_eq!(response.status(), 204);
        let response = whoami(&app, &phone_session.access).await;
        assert_eq!(error_code(response, 401).await, "token_revoked");
        let response = end(&web_session.access, &phone_sid).await.unwrap();
        assert_eq!(error_code(response, 404).await, "session_not_found");

        // Logout ends the caller's own session only.
        let response = app
            .client
            .post(app.url("/login/logout"))
            .bearer_auth(&web_session.access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        let response = whoami(&app, &web_session.access).await;
        assert_eq!(error_code(response, 401).await, "token_revoked");
        let response = refresh(&app, &web_session.refresh).await;
        assert_eq!(error_code(response, 401).await, "invalid_refresh_token");
        assert_eq!(whoami(&app, &stranger.access).await.status(), 200);
        app.stop().await;
    }
}

/// The private key file and kid of the app's signing key.
fn signing_key(app: &TestApp) -> (jsonwebtoken::EncodingKey, String) {
    let entry = std::fs::read_dir(app.data_dir().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pem"))
        .unwrap();
    let pem = std::fs::read(&entry).unwrap();
    let kid = entry.file_stem().unwrap().to_str().unwrap().to_owned();
    (jsonwebtoken::EncodingKey::from_ed_pem(&pem).unwrap(), kid)
}

fn sign(key: &jsonwebtoken::EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn unsigned(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[tokio::test]
async fn forged_expired_none_and_confused_tokens_are_refused() {
    for column in columns() {
        let app = spawn(column, |_| {}).await;
        let genuine = login(&app).await;
        let claims = payload(&genuine.access);
        let (key, kid) = signing_key(&app);
        assert_eq!(header(&genuine.access)["kid"], kid.as_str());
        // The test's own signature with the real key is accepted: the refusals below are
        // about the tokens, not the test's signing.
        assert_eq!(whoami(&app, &sign(&key, &kid, &claims)).await.status(), 200);

        let now = app.clock().now_secs();
        let mut expired = claims.clone();
        expired["iat"] = json!(now - 7200);
        expired["exp"] = json!(now - 3600);
        let mut other_user = claims.clone();
        other_user["userid"] = json!("u-00000000000000000000000000000000");
        let mut foreign_issuer = claims.clone();
        foreign_issuer["iss"] = json!("evil");
        let mut no_expiry = claims.clone();
        no_expiry.as_object_mut().unwrap().remove("exp");

        // A genuine signature over other claims.
        let genuine_signature = genuine.access.rsplit('.').next().unwrap();
        let forged = format!(
            "{}.{}.{genuine_signature}",
            genuine.access.split('.').next().unwrap(),
            URL_SAFE_NO_PAD.encode(other_user.to_string())
        );
        // alg none, and HS256 keyed with the published public key.
        let jwks: Value = app
            .get("/.well-known/jwks.json")
            .await
            .json()
            .await
            .unwrap();
        let public_x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
        let none = unsigned(
            &json!({"alg": "none", "typ": "JWT", "kid": kid}),
            &claims,
            b"",
        );
        let hs256 = {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            header.kid = Some(kid.clone());
            jsonwebtoken::encode(
                &header,
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(public_x.as_bytes()),
            )
            .unwrap()
        };
        let unknown_kid = sign(&key, "1-ed25519-00000000", &claims);

        for (name, token, code) in [
            ("expired", sign(&key, &kid, &expired), "token_expired"),
            ("forged", forged, "invalid_token"),
            (
                "foreign issuer",
                sign(&key, &kid, &foreign_issuer),
                "invalid_token",
            ),
            ("no expiry", sign(&key, &kid, &no_expiry), "invalid_token"),
            ("alg none", none, "invalid_token"),
            ("HS256 with the public key", hs256, "invalid_token"),
            ("unknown kid", unknown_kid, "invalid_token"),
            ("garbage", "not.a.jwt".to_owned(), "invalid_token"),
        ] {
            let response = whoami(&app, &token).await;
            let challenge = response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(
                challenge.starts_with("Bearer realm=\"beep\", error=\"invalid_token\""),
                "{challenge}"
            );
            assert_eq!(error_code(response, 401).await, code, "{name}");
        }
        let response = app.get("/whoami").await;
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"beep\""
        );
        assert_eq!(error_code(response, 401).await, "missing_token");
        app.stop().await;
    }
}

#[tokio::test]
async fn access_tokens_expire() {
    for column in columns() {
        let app = spawn(column, |config| {
            config.auth.access_token_ttl_secs = 1;
            config.auth.leeway_secs = 0;
        })
        .await;
        let tokens = login(&app).await;
        assert_eq!(whoami(&app, &tokens.access).await.status(), 200);
        app.clock().advance(Duration::from_millis(2100));
        let response = whoami(&app, &tokens.access).await;
        assert_eq!(error_code(response, 401).await, "token_expired");
        // The refresh token still gets a new one.
        let response = refresh(&app, &tokens.refresh).await;
        assert_eq!(response.status(), 200);
        app.stop().await;
    }
}

#[tokio::test]
async fn forward_auth_answers_exactly_as_the_original() {
    for column in targets() {
        let app = spawn(column, |_| {}).await;
        let tokens = login_as(&app, &unique_phone(), "dev-7").await;
        let expected = format!(r#"{{"userid":"{}","clientid":"dev-7"}}"#, tokens.user_id);

        let response = app
            .client
            .get(app.url("/auth"))
            .bearer_auth(&tokens.access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-user-claim"].to_str().unwrap(),
            expected
        );

        // Token in the forwarded URI's query, for EventSource and WebSocket clients; any method.
        for method in [
            reqwest::Method::GET,
            reqwest::Method::POST,
            reqwest::Method::DELETE,
        ] {
            let response = app
                .client
                .request(method, app.url("/auth"))
                .header(
                    "x-forwarded-uri",
                    format!("/heartbeat/subscribe/u-1?token={}", tokens.access),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(
                response.headers()["x-user-claim"].to_str().unwrap(),
                expected
            );
        }
        // The header wins over the query.
        let response = app
            .client
            .get(app.url("/auth"))
            .bearer_auth("garbage")
            .header("x-forwarded-uri", format!("/x?token={}", tokens.access))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(response, 401).await, "invalid_token");

        let response = app.get("/auth").await;
        assert_eq!(error_code(response, 400).await, "missing_token");
        let response = app
            .client
            .get(app.url("/auth"))
            .header("x-forwarded-uri", "/core/user?token=nope")
            .send()
            .await
            .unwrap();
        assert!(!response.headers().contains_key("x-user-claim"));
        assert_eq!(error_code(response, 401).await, "invalid_token");
        let response = app
            .client
            .request(reqwest::Method::OPTIONS, app.url("/auth"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        app.stop().await;
    }
}

#[tokio::test]
async fn a_forwarded_claim_is_trusted_only_when_configured() {
    for column in columns() {
        let claim = r#"{"userid":"u-11111111111111111111111111111111","clientid":"proxy"}"#;
        let app = spawn(column, |_| {}).await;
        let response = whoami_as_proxy(&app, claim).await;
        assert_eq!(error_code(response, 401).await, "missing_token");
        app.stop().await;

        let app = spawn(column, |config| config.auth.trust_forwarded_claim = true).await;
        let response = whoami_as_proxy(&app, claim).await;
        assert_eq!(response.status(), 200);
        let me: Value = response.json().await.unwrap();
        assert_eq!(me["user_id"], "u-11111111111111111111111111111111");
        assert_eq!(me["session_id"], Value::Null);
        let response = whoami_as_proxy(&app, "{not json").await;
        assert_eq!(error_code(response, 400).await, "invalid_claim");
        app.stop().await;
    }
}

#[tokio::test]
async fn jwks_publishes_the_key_and_rotation_keeps_old_tokens_valid() {
    for column in columns() {
        let app = spawn(column, |config| config.auth.keys.rescan_secs = 1).await;
        let before = login(&app).await;
        let jwks: Value = app
            .get("/.well-known/jwks.json")
            .await
            .json()
            .await
            .unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["kty"], "OKP");
        assert_eq!(keys[0]["crv"], "Ed25519");
        assert_eq!(keys[0]["alg"], "EdDSA");
        assert_eq!(keys[0]["use"], "sig");
        assert_eq!(keys[0]["kid"], header(&before.access)["kid"]);
        assert!(keys[0].get("d").is_none(), "private part published");

        // `beep keys rotate` as an operator runs it, against the running server's data dir.
        let new_kid = beep_cli(&app, &["keys", "rotate"]).trim().to_owned();
        eventually("the rotated key to be published", || async {
            let jwks: Value = app
                .get("/.well-known/jwks.json")
                .await
                .json()
                .await
                .unwrap();
            jwks["keys"].as_array().unwrap().len() == 2
        })
        .await;
        let after = login(&app).await;
        assert_eq!(header(&after.access)["kid"], new_kid.as_str());
        assert_eq!(whoami(&app, &before.access).await.status(), 200);
        assert_eq!(whoami(&app, &after.access).await.status(), 200);
        app.stop().await;
    }
}

#[tokio::test]
async fn rs256_keys_and_a_configured_pem_key_work() {
    for column in columns() {
        let app = spawn(column, |config| {
            config.auth.keys.algorithm = SigningAlgorithm::RS256
        })
        .await;
        let tokens = login(&app).await;
        assert_eq!(header(&tokens.access)["alg"], "RS256");
        let jwks: Value = app
            .get("/.well-known/jwks.json")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(jwks["keys"][0]["kty"], "RSA");
        assert_eq!(jwks["keys"][0]["e"], "AQAB");
        assert_eq!(whoami(&app, &tokens.access).await.status(), 200);
        // An EdDSA token claiming the RSA key's kid is refused.
        let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed_key = jsonwebtoken::EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
        let confused = sign(&ed_key, &kid, &payload(&tokens.access));
        let response = whoami(&app, &confused).await;
        assert_eq!(error_code(response, 401).await, "invalid_token");
        app.stop().await;

        let pem_dir = tempfile::tempdir().unwrap();
        let pem_path = pem_dir.path().join("signing.pem");
        std::fs::write(&pem_path, ed.serialize_pem()).unwrap();
        let app = spawn(column, |config| {
            config.auth.keys.private_key_path = Some(pem_path)
        })
        .await;
        let tokens = login(&app).await;
        let kid = header(&tokens.access)["kid"].as_str().unwrap().to_owned();
        assert!(kid.starts_with("pem-"), "{kid}");
        assert_eq!(whoami(&app, &tokens.access).await.status(), 200);
        // The test's copy of the key signs tokens the server accepts: it really signs with it.
        assert_eq!(
            whoami(&app, &sign(&ed_key, &kid, &payload(&tokens.access)))
                .await
                .status(),
            200
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_split_service_verifies_tokens_from_the_jwks_url() {
    for column in columns() {
        let auth = spawn(column, |_| {}).await;
        let tokens = login(&auth).await;
        let jwks_url = auth.url("/.well-known/jwks.json");
        let other = TestApp::spawn_services(
            column,
            &["core"],
            |config| {
                config.auth.jwks_url = jwks_url;
                config.auth.jwks_refresh_secs = 1;
            },
            vec![Arc::new(Whoami)],
        )
        .await;
        eventually("the split service to load the JWKS", || async {
            whoami(&other, &tokens.access).await.status() == 200
        })
        .await;
        let me: Value = whoami(&other, &tokens.access).await.json().await.unwrap();
        assert_eq!(me["user_id"], tokens.user_id.as_str());
        let response = whoami(&other, "a.b.c").await;
        assert_eq!(error_code(response, 401).await, "invalid_token");
        other.stop().await;
        auth.stop().await;
    }
}

#[tokio::test]
async fn blocked_users_lose_their_sessions_and_cannot_log_in() {
    for column in columns() {
        let app = spawn(column, |config| {
            repeat_logins(config);
            config.auth.revocation_sync_secs = 1;
        })
        .await;
        let phone = unique_phone();
        let tokens = login_as(&app, &phone, "c").await;
        let printed = beep_cli(&app, &["users", "block", &tokens.user_id]);
        assert!(printed.contains("1 session(s) ended"), "{printed}");
        eventually("the blocked user's token to be refused", || async {
            whoami(&app, &tokens.access).await.status() == 401
        })
        .await;
        let nonce = request_code(&app, &phone).await;
        let response = verify(&app, &nonce, &sent_code(&phone), "c").await;
        assert_eq!(error_code(response, 403).await, "user_blocked");
        beep_cli(&app, &["users", "unblock", &tokens.user_id]);
        login_as(&app, &phone, "c").await;
        app.stop().await;
    }
}

#[tokio::test]
async fn dev_bypass_and_register_serve_the_original_clients() {
    for column in columns() {
        let app = spawn(column, |config| {
            repeat_logins(config);
            config.auth.dev_bypass = true;
        })
        .await;
        let phone = unique_phone();
        let response = app
            .post("/login/init/bypass")
            .json(&json!({ "phone_number": phone }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let nonce = response.text().await.unwrap();
        let response = verify(&app, &nonce, "000000", "c").await;
        assert_eq!(response.status(), 200);

        // Register: the verified number, not the body's, becomes the user's.
        let phone = unique_phone();
        let nonce = request_code(&app, &phone).await;
        let code = sent_code(&phone);
        let response = app
            .post(&format!("/login/register/{code}/{nonce}"))
            .json(&json!({"first_name": "Ada", "last_name": "Lovelace", "phone_number": "+15550000000"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let user: Value = response.json().await.unwrap();
        assert_eq!(user["phone_number"], phone.as_str());
        assert_eq!(user["first_name"], "Ada");
        assert!(user["id"].as_str().unwrap().starts_with("u-"));
        // The code was spent; a second registration of the number conflicts.
        let response = app
            .post(&format!("/login/register/{code}/{nonce}"))
            .json(&json!({"first_name": "Ada", "last_name": "Lovelace"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(response, 401).await, "invalid_code");
        let nonce = request_code(&app, &phone).await;
        let code = sent_code(&phone);
        let response = app
            .post(&format!("/login/register/{code}/{nonce}"))
            .json(&json!({"first_name": "Ada", "last_name": "Lovelace"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(response, 409).await, "user_exists");
        let phone = unique_phone();
        let nonce = request_code(&app, &phone).await;
        let code = sent_code(&phone);
        let response = app
            .post(&format!("/login/register/{code}/{nonce}"))
            .json(&json!({"first_name": "", "last_name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(response, 400).await, "invalid_profile");
        app.stop().await;
    }
}

/// An SMTP server on loopback that records every message it accepts.
mod smtp_sink {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    use tokio::net::TcpListener;

    #[derive(Debug, Clone, Default)]
    pub struct Mail {
        pub from: String,
        pub to: String,
        pub data: String,
    }

    pub struct Sink {
        pub addr: SocketAddr,
        mails: Arc<Mutex<Vec<Mail>>>,
    }

    impl Sink {
        pub fn last(&self) -> Mail {
            self.mails
                .lock()
                .unwrap()
                .last()
                .cloned()
                .expect("no mail received")
        }
    }

    fn address(line: &str) -> String {
        let start = line.find('<').map_or(0, |i| i + 1);
        let end = line.rfind('>').unwrap_or(line.len());
        line[start..end].to_owned()
    }

    pub async fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&mails);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                    let mut mail = Mail::default();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                        let reply: &[u8] = match verb.as_str() {
                            "EHLO" | "HELO" => b"250-sink\r\n250 8BITMIME\r\n",
                            "MAIL" => {
                                mail.from = address(&line);
                                b"250 OK\r\n"
                            }
                            "RCPT" => {
                                mail.to = address(&line);
                                b"250 OK\r\n"
                            }
                            "DATA" => {
                                write.write_all(b"354 go ahead\r\n").await.unwrap();
                                while let Ok(Some(data)) = lines.next_line().await {
                                    if data == "." {
                                        break;
                                    }
                                    mail.data.push_str(&data);
                                    mail.data.push('\n');
                                }
                                store.lock().unwrap().push(std::mem::take(&mut mail));
                                b"250 queued\r\n"
                            }
                            "QUIT" => {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                break;
                            }
                            _ => b"250 OK\r\n",
                        };
                        write.write_all(reply).await.unwrap();
                    }
                });
            }
        });
        Sink { addr, mails }
    }
}

/// Twilio's Messages endpoint on loopback: records each request, answers `status`.
mod fake_twilio {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

    #[derive(Debug, Clone)]
    pub struct Seen {
        pub path: String,
        pub authorization: String,
        pub form: HashMap<String, String>,
    }

    pub struct Gateway {
        pub url: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Gateway {
        pub fn last(&self) -> Seen {
            self.seen
                .lock()
                .unwrap()
                .last()
                .cloned()
                .expect("no request received")
        }
    }

    pub async fn start(status: u16) -> Gateway {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&seen);
        let server = HttpServer::new(move || {
            let store = Arc::clone(&store);
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let store = Arc::clone(&store);
                async move {
                    assert_eq!(req.method(), "POST");
                    assert_eq!(
                        req.headers().get("content-type").unwrap(),
                        "application/x-www-form-urlencoded"
                    );
                    store.lock().unwrap().push(Seen {
                        path: req.path().to_owned(),
                        authorization: req
                            .headers()
                            .get("authorization")
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .to_owned(),
                        form: form_urlencoded::parse(&body).into_owned().collect(),
                    });
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                        .json(serde_json::json!({"sid": "SM1", "status": "queued"}))
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let addr = server.addrs()[0];
        tokio::spawn(server.run());
        Gateway {
            url: format!("http://{addr}"),
            seen,
        }
    }
}
