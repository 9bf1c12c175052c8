//! The `beep` binaries as an operator runs them: configuration layering, errors that name the
//! bad key, graceful shutdown on SIGTERM, and split binaries that migrate only their service.

use std::io::Write as _;
use std::process::Command;

use crate::served::{BEEP, Served, beep};

fn printed_config(command: &mut Command) -> toml::Value {
    let output = command.arg("config").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap()
}

#[test]
fn configuration_layers_defaults_file_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nlisten = \"127.0.0.1:9001\"\nworkers = 3\n[cache]\nprefix = \"file:\"\n",
    )
    .unwrap();
    // Defaults only where nothing is set.
    let value = printed_config(&mut beep(dir.path()));
    assert_eq!(value["server"]["listen"].as_str(), Some("127.0.0.1:9001"));
    assert_eq!(value["server"]["workers"].as_integer(), Some(3));
    assert_eq!(value["bus"]["url"].as_str(), Some("memory"));
    // The environment beats the file; a BEEP_ variable that is not BEEP_<SECTION>__<KEY> is
    // not configuration and is ignored.
    let value = printed_config(
        beep(dir.path())
            .env("BEEP_SERVER__WORKERS", "5")
            .env("BEEP_BUS__URL", "nats://127.0.0.1:4222")
            .env("BEEP_TEST_POSTGRES_URL", "postgres://ignored"),
    );
    assert_eq!(value["server"]["workers"].as_integer(), Some(5));
    assert_eq!(value["bus"]["url"].as_str(), Some("nats://127.0.0.1:4222"));
    assert_eq!(value["cache"]["prefix"].as_str(), Some("file:"));
    // Flags beat everything.
    let value = printed_config(
        beep(dir.path())
            .env("BEEP_SERVER__LISTEN", "127.0.0.1:9002")
            .args(["--listen", "127.0.0.1:9003", "--data-dir", "/srv/beep"]),
    );
    assert_eq!(value["server"]["listen"].as_str(), Some("127.0.0.1:9003"));
    assert_eq!(value["server"]["data_dir"].as_str(), Some("/srv/beep"));
}

#[test]
fn secrets_are_masked_when_printed() {
    let dir = tempfile::tempdir().unwrap();
    let value = printed_config(
        beep(dir.path())
            .env("BEEP_BLOBS__S3__SECRET_ACCESS_KEY", "s3cr3t-key")
            .env("BEEP_DATABASE__URL", "postgres://beep:pa55word@db/beep"),
    );
    assert_eq!(
        value["blobs"]["s3"]["secret_access_key"].as_str(),
        Some("********")
    );
    assert_eq!(
        value["database"]["url"].as_str(),
        Some("postgres://beep:********@db/beep")
    );
}

fn failing_config(command: &mut Command) -> String {
    let output = command.arg("config").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn unknown_keys_are_errors_that_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "[server]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let message = failing_config(beep(dir.path()).arg("--config").arg(&file));
    assert!(message.contains("lisen"), "{message}");
    assert!(message.contains("typo.toml"), "{message}");

    let message = failing_config(beep(dir.path()).env("BEEP_CAHCE__URL", "memory"));
    assert!(message.to_lowercase().contains("cahce"), "{message}");

    let message = failing_config(beep(dir.path()).env("BEEP_SERVER__WORKERS", "many"));
    assert!(
        message.contains("server.workers") || message.contains("WORKERS"),
        "{message}"
    );

    let message = failing_config(beep(dir.path()).args(["--config", "/nonexistent/beep.toml"]));
    assert!(message.contains("/nonexistent/beep.toml"), "{message}");
}

#[test]
fn prints_its_version() {
    let output = Command::new(BEEP).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        format!("beep {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &[]);
    let (status, logs) = served.stop();
    assert!(status.success(), "{status:?}");
    assert!(logs.contains("shutdown complete"), "{logs}");
    assert!(dir.path().join("data/beep.db").exists());
}

#[test]
fn json_logs_carry_the_request_id_on_the_request_lines() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        dir.path(),
        &[
            ("BEEP_TELEMETRY__LOG_FORMAT", "json"),
            ("BEEP_TELEMETRY__LOG_FILTER", "info,beep=debug"),
        ],
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", served.port)).unwrap();
    write!(
        stream,
        "GET /no/such/page HTTP/1.1\r\nHost: x\r\nX-Request-ID: trace-me-42\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    assert!(
        response
            .to_lowercase()
            .contains("x-request-id: trace-me-42"),
        "{response}"
    );
    let (_, logs) = served.stop();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let served_line = lines
        .iter()
        .find(|line| line["message"] == "request served" && line["path"] == "/no/such/page")
        .unwrap_or_else(|| panic!("no request line in {logs}"));
    assert_eq!(
        served_line["span"]["request_id"], "trace-me-42",
        "{served_line}"
    );
    assert_eq!(served_line["path"], "/no/such/page");
    assert_eq!(served_line["status"], 404);
}

#[cfg(feature = "core")]
#[test]
fn a_split_binary_migrates_only_its_own_service() {
    let dir = tempfile::tempdir().unwrap();
    let printed = crate::served::run_ok(
        Command::new(env!("CARGO_BIN_EXE_beep-core"))
            .current_dir(dir.path())
            .args(["migrate", "--data-dir", "data"])
            .env_remove("BEEP_DATABASE__URL"),
    );
    assert_eq!(printed.trim(), "core: 3 migration(s) applied");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tables = runtime.block_on(async {
        use sea_orm::{ConnectionTrait, Database, Statement};
        let url = format!("sqlite://{}", dir.path().join("data/beep.db").display());
        let db = Database::connect(url).await.unwrap();
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|row| row.try_get_by_index::<String>(0).unwrap())
            .collect::<Vec<_>>()
    });
    // core's tables and tracking table, none of auth's.
    assert_eq!(
        tables,
        [
            "contact",
            "conversation",
            "core_migrations",
            "member",
            "user"
        ]
    );
}

#[test]
fn a_start_that_cannot_succeed_exits_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let output = beep(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "data"])
        .env("BEEP_SERVER__TLS__CERT_PATH", "/nonexistent/cert.pem")
        .env("BEEP_SERVER__TLS__KEY_PATH", "/nonexistent/key.pem")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
    // Nothing was opened before the refusal.
    assert!(!dir.path().join("data").exists());
}
