//! Logging in through the development bypass (`auth.dev_bypass`), and the first calls after it
//! (a conversation, joining its call), for benches and for tests of a `beep serve` child
//! process: no sender runs and no code has to be read from a log.

use serde_json::json;

/// Opens the development bypass on `config` and lifts the login limits, for many logins from
/// one address.
pub fn allow_bypass(config: &mut beep::config::Config) {
    config.auth.dev_bypass = true;
    config.auth.dev_bypass_in_release = true;
    let off = beep::config::Limit::new(0, 1);
    config.auth.limits.resend.first_secs = 0;
    config.auth.limits.codes_per_ip = off;
    config.auth.limits.verifies_per_ip = off;
}

/// A valid, distinct Singapore mobile number for each `n`.
pub fn phone(n: u32) -> String {
    let mut candidate = n;
    loop {
        let phone = format!("+659{:07}", candidate % 10_000_000);
        if beep::platform::users::PhoneNumber::parse(&phone).is_ok() {
            return phone;
        }
        candidate = candidate.wrapping_add(7_919);
    }
}

pub async fn nonce(client: &reqwest::Client, base: &str, phone: &str) -> String {
    client
        .post(format!("{base}/login/init/bypass"))
        .json(&json!({ "phone_number": phone }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn verify(client: &reqwest::Client, base: &str, nonce: &str) -> reqwest::Response {
    client
        .post(format!("{base}/login/verify"))
        .json(&json!({ "code": "000000", "nonce": nonce, "clientid": "bench" }))
        .send()
        .await
        .unwrap()
}

pub async fn access_token(base: &str, n: u32) -> String {
    let client = reqwest::Client::new();
    let nonce = nonce(&client, base, &phone(n)).await;
    let response = verify(&client, base, &nonce).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Logs in as the user of `phone` on `client`: the access token and the user id.
pub async fn token_and_user(base: &str, phone: &str, client: &str) -> (String, String) {
    let http = reqwest::Client::new();
    let nonce = nonce(&http, base, phone).await;
    let body: serde_json::Value = http
        .post(format!("{base}/login/verify"))
        .header("accept", "application/json")
        .json(&json!({ "code": "000000", "nonce": nonce, "clientid": client }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["user_id"].as_str().unwrap().to_owned(),
    )
}

/// A conversation titled `title`, created by the holder of `token`, with the users `members`
/// added: its id.
pub async fn new_conversation(base: &str, token: &str, title: &str, members: &[&str]) -> String {
    let client = reqwest::Client::new();
    let created: serde_json::Value = client
        .post(format!("{base}/core/user/conversation"))
        .bearer_auth(token)
        .json(&json!({ "title": title }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conversation = created["id"].as_str().unwrap().to_owned();
    for user in members {
        let added = client
            .post(format!(
                "{base}/core/user/conversation/{conversation}/member"
            ))
            .bearer_auth(token)
            .json(&json!({ "id": user }))
            .send()
            .await
            .unwrap();
        assert_eq!(added.status(), 200);
    }
    conversation
}

/// Joins `conversation`'s call (`POST /webrtc/join`) as the holder of `token`.
pub async fn join_call(base: &str, token: &str, conversation: &str) {
    let joined = reqwest::Client::new()
        .post(format!("{base}/webrtc/join/{conversation}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(joined.status(), 200);
}
