//! The web client: served at `/` from files inside the binary, with their types, validators
//! and a policy that allows only the page's own files.

use crate::helpers::{TestApp, columns, error_code};

/// The accessible names the issue gives every control (and the browser test uses).
const CONTROLS: [&str; 12] = [
    "Phone number",
    "Email",
    "Send code",
    "Code",
    "Sign in",
    "Sign out",
    "New conversation",
    "Title",
    "Create",
    "Add member",
    "Talk",
    "Search",
];

#[tokio::test]
async fn the_web_client_is_served_with_its_types_validators_and_policy() {
    // Files inside the binary: one column is enough.
    for column in columns().into_iter().take(1) {
        let app = TestApp::spawn(column).await;
        let page = app.get("/").await;
        assert_eq!(page.status(), 200);
        let headers = page.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("default-src 'none'")
                && policy.contains("script-src 'self'")
                && !policy.contains("unsafe"),
            "{policy}"
        );
        let etag = headers["etag"].to_str().unwrap().to_owned();
        let html = page.text().await.unwrap();
        for name in CONTROLS {
            assert!(
                html.contains(&format!(">{name}")),
                "no control named {name}"
            );
        }
        // What the policy would block: inline script and style.
        assert!(!html.contains("<script>") && !html.contains(" style="));

        let client = reqwest::Client::new();
        let again = client
            .get(app.url("/"))
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "an unchanged page is not sent again");
        assert_eq!(again.headers()["etag"], etag.as_str());

        for (path, kind) in [
            ("/web/app.js", "text/javascript; charset=utf-8"),
            ("/web/app.css", "text/css; charset=utf-8"),
        ] {
            let file = app.get(path).await;
            assert_eq!(file.status(), 200, "{path}");
            assert_eq!(file.headers()["content-type"], kind, "{path}");
            assert_ne!(file.headers()["etag"], etag.as_str(), "{path}");
            assert!(!file.bytes().await.unwrap().is_empty(), "{path}");
        }
        assert_eq!(
            error_code(app.get("/web/nope.js").await, 404).await,
            "not_found"
        );
        assert_eq!(
            error_code(app.get("/web/..%2Fapp.js").await, 404).await,
            "not_found"
        );
        app.stop().await;
    }
}
