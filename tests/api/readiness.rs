//! Start-up and readiness: every configured backend is probed, and one that does not answer
//! turns `/readyz` into a 503 that names it, while the process stays alive.

use sea_orm::{ConnectionTrait, Statement};

use crate::helpers::{Column, NATS, POSTGRES, REDIS, S3, TestApp, columns, env};

#[tokio::test]
async fn ready_when_every_backend_answers() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let response = app.get("/readyz").await;
        assert_eq!(response.status(), 200, "{column:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ready");
        let expected = |var: &str, real: &str, embedded: &str| {
            if column == Column::Real && env(var).is_some() {
                real.to_owned()
            } else {
                embedded.to_owned()
            }
        };
        let backends = &body["backends"];
        assert_eq!(
            backends["database"]["backend"],
            expected(POSTGRES, "postgres", "sqlite")
        );
        assert_eq!(
            backends["cache"]["backend"],
            expected(REDIS, "redis", "memory")
        );
        assert_eq!(backends["bus"]["backend"], expected(NATS, "nats", "memory"));
        assert_eq!(backends["blobs"]["backend"], expected(S3, "s3", "local"));
        for name in ["database", "cache", "bus", "blobs"] {
            assert_eq!(
                backends[name]["state"], "up",
                "{name} on {column:?}: {body}"
            );
        }
        assert_eq!(
            app.get("/healthz")
                .await
                .json::<serde_json::Value>()
                .await
                .unwrap()["status"],
            "ok"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_backend_that_does_not_answer_makes_readiness_503() {
    // Nothing listens on port 1: the app still starts, and says what is down.
    let app = TestApp::spawn_with(
        Column::Embedded,
        |config| {
            config.bus.url = "nats://127.0.0.1:1".into();
            config.cache.url = "redis://127.0.0.1:1".into();
        },
        Vec::new(),
    )
    .await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["backends"]["bus"]["state"], "down", "{body}");
    assert_eq!(body["backends"]["cache"]["state"], "down", "{body}");
    assert!(
        body["backends"]["bus"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert_eq!(body["backends"]["database"]["state"], "up");
    assert_eq!(body["backends"]["blobs"]["state"], "up");
    app.stop().await;
}

#[tokio::test]
async fn a_missing_bucket_makes_readiness_503() {
    let Some(endpoint) = env(S3) else { return };
    let app = TestApp::spawn_with(
        Column::Embedded,
        |config| {
            config.blobs.url = "s3://no-such-bucket-for-beep".into();
            config.blobs.s3.endpoint = endpoint;
            config.blobs.s3.allow_http = true;
            config.blobs.s3.access_key_id = "test".into();
            config.blobs.s3.secret_access_key = beep::config::Secret::new("test");
        },
        Vec::new(),
    )
    .await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["backends"]["blobs"]["state"], "down", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn each_service_has_its_own_migration_table() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let db = app.platform().db.connection();
        let backend = db.get_database_backend();
        let sql = match app.platform().db.backend() {
            "sqlite" => "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            _ => "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
        };
        let tables: Vec<String> = db
            .query_all_raw(Statement::from_string(backend, sql))
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get_by_index::<String>(0).unwrap())
            .collect();
        for service in beep::services::COMPILED {
            assert!(
                tables.contains(&format!("{service}_migrations")),
                "{service} on {column:?}: {tables:?}"
            );
        }
        assert!(
            !tables.contains(&"seaql_migrations".to_owned()),
            "{tables:?}"
        );
        app.stop().await;
    }
}
