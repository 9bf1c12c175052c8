//! `/openapi.json` against the routes actually mounted, both ways.
//!
//! Documented → served: every documented path and method is asked for and must reach a
//! handler (not the unrouted 404, not a 405). Served → documented: for every documented path,
//! every method the document does not list must be a 405 whose `Allow` is exactly the
//! documented methods; and a path nobody documents cannot be mounted at all, since
//! utoipa-actix-web's `.service` is the only way routes are mounted (clippy refuses the
//! others, `clippy.toml`).

use std::collections::BTreeSet;

use beep::config::PermissionsRoute;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Column, TestApp};

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "head", "patch"];

/// A value for a path parameter that its declared pattern accepts.
fn example(parameter: &Value) -> String {
    let pattern = parameter["schema"]["pattern"].as_str().unwrap_or_default();
    if pattern.starts_with("^c-") {
        "c-0123456789abcdef0123456789abcdef".into()
    } else if pattern.starts_with("^u-") {
        "u-0123456789abcdef0123456789abcdef".into()
    } else if parameter["schema"]["type"] == "integer" {
        "1".into()
    } else {
        "x".into()
    }
}

fn concrete_path(path: &str, operation: &Value) -> String {
    let mut concrete = path.to_owned();
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        if parameter["in"] == "path" {
            let name = parameter["name"].as_str().unwrap();
            concrete = concrete.replace(&format!("{{{name}}}"), &example(parameter));
        }
    }
    assert!(
        !concrete.contains('{'),
        "{path}: a path parameter is undocumented"
    );
    concrete
}

async fn is_unrouted(response: reqwest::Response) -> bool {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    status == 405 || (status == 404 && message.starts_with("no route for"))
}

/// Every `$ref` in the document names something in its components.
fn dangling_refs(doc: &Value, node: &Value, found: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                let pointer = reference.trim_start_matches('#');
                if doc.pointer(pointer).is_none() {
                    found.push(reference.clone());
                }
            }
            map.values().for_each(|v| dangling_refs(doc, v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| dangling_refs(doc, v, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_lists_exactly_the_served_routes() {
    let app = TestApp::spawn_with(
        Column::Embedded,
        |config| config.permissions.route = PermissionsRoute::Public,
        Vec::new(),
    )
    .await;
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut dangling = Vec::new();
    dangling_refs(&doc, &doc, &mut dangling);
    assert!(dangling.is_empty(), "dangling $refs: {dangling:?}");
    // A user's phone number is hidden (null) from those who may not see it.
    let phone = &doc["components"]["schemas"]["User"]["properties"]["phone_number"];
    assert!(
        phone["type"]
            .as_array()
            .is_some_and(|types| types.contains(&json!("null"))),
        "User.phone_number: {phone}"
    );

    let paths = doc["paths"].as_object().unwrap();
    // Every service's prefix is there, and the platform's routes.
    for prefix in [
        "/login/",
        "/core/",
        "/store/",
        "/webrtc/",
        "/permissions/",
        "/healthz",
        "/openapi.json",
    ] {
        assert!(
            paths.keys().any(|path| path.starts_with(prefix)),
            "nothing under {prefix}"
        );
    }
    let mut operations = 0;
    for (path, item) in paths {
        let documented: BTreeSet<&str> = METHODS
            .iter()
            .copied()
            .filter(|method| item.get(*method).is_some())
            .collect();
        assert!(!documented.is_empty(), "{path} has no operation");
        for method in METHODS {
            let operation = item.get(method).unwrap_or_else(|| {
                documented
                    .first()
                    .and_then(|m| item.get(*m))
                    .unwrap_or(&Value::Null)
            });
            let url = app.url(&concrete_path(path, operation));
            let method_name = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app.client.request(method_name, &url).send().await.unwrap();
            if documented.contains(method) {
                operations += 1;
                assert!(
                    operation["responses"].as_object().is_some_and(|r| r
                        .keys()
                        .any(|status| status.starts_with('2') || status == "101")),
                    "{method} {path}: no success response documented"
                );
                assert!(
                    !is_unrouted(response).await,
                    "{method} {path} is documented but not served"
                );
            } else {
                assert_eq!(
                    response.status(),
                    405,
                    "{method} {path} is served but not documented"
                );
                let allow: BTreeSet<String> = response.headers()["allow"]
                    .to_str()
                    .unwrap()
                    .split(", ")
                    .map(str::to_lowercase)
                    .collect();
                let expected: BTreeSet<String> =
                    documented.iter().map(|m| (*m).to_owned()).collect();
                assert_eq!(allow, expected, "{path}: Allow");
            }
        }
    }
    assert!(operations >= 40, "only {operations} operations documented");
    app.stop().await;
}

#[tokio::test]
async fn only_compiled_and_hosted_services_are_documented() {
    let app = TestApp::spawn_services(Column::Embedded, &["core"], |_| {}, Vec::new()).await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.keys().any(|path| path.starts_with("/core/")));
    assert!(!paths.keys().any(|path| path.starts_with("/login/")));
    assert!(!paths.keys().any(|path| path.starts_with("/store/")));
    // A route of a service not hosted here is a plain 404.
    let response = app.post("/login/init").send().await.unwrap();
    assert_eq!(response.status(), 404);
    app.stop().await;
}
