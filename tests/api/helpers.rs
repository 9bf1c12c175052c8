//! Starting the app for a test, with storage of its own on whichever backends the column uses.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, Once};

use beep::app::AppHandle;
use beep::app::{self, Hosting};
use beep::config::{Config, Secret};
use beep::platform::Platform;
use beep::platform::clock::Clock;
use beep::platform::ids::random_hex128;
use beep::platform::service::Service;
use sea_orm::{ConnectionTrait, Database};
use tempfile::TempDir;
use tokio::task::JoinHandle;

pub const POSTGRES: &str = "BEEP_TEST_POSTGRES_URL";
pub const REDIS: &str = "BEEP_TEST_REDIS_URL";
pub const NATS: &str = "BEEP_TEST_NATS_URL";
pub const S3: &str = "BEEP_TEST_S3_ENDPOINT";
/// A running deployment to test instead of starting the app (e.g. `deploy/split-local`'s
/// `http://127.0.0.1:8080`), and the log file its `log` OTP sender writes codes to.
pub const BASE_URL: &str = "BEEP_TEST_BASE_URL";
pub const OTP_LOG: &str = "BEEP_TEST_OTP_LOG";

/// Which backends a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// SQLite, in-process cache and bus, local directory: no outside service.
    Embedded,
    /// Every backend whose `BEEP_TEST_*` variable is set; `.ci/run` sets them all.
    Real,
    /// The deployment at `BEEP_TEST_BASE_URL`, spoken to only over the network, configured as
    /// its operator configured it.
    Deployed,
}

pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The embedded column always; the real one when any real backend is configured. None when
/// the run targets a deployment (`BEEP_TEST_BASE_URL`): these tests need the app in this
/// process (its clock, its configuration, its internals).
pub fn columns() -> Vec<Column> {
    if env(BASE_URL).is_some() {
        return Vec::new();
    }
    let mut columns = vec![Column::Embedded];
    if [POSTGRES, REDIS, NATS, S3]
        .iter()
        .any(|name| env(name).is_some())
    {
        columns.push(Column::Real);
    }
    columns
}

/// For tests that speak to the app only as a client does (HTTP, SSE, WebRTC) and need nothing
/// but the configuration `.ci/run` gives a deployment: [`columns`], or only the deployment at
/// `BEEP_TEST_BASE_URL` when it is set.
pub fn targets() -> Vec<Column> {
    if env(BASE_URL).is_some() {
        vec![Column::Deployed]
    } else {
        columns()
    }
}

/// [`targets`] for tests that run once: the embedded app, or the deployment.
pub fn target() -> Column {
    if env(BASE_URL).is_some() {
        Column::Deployed
    } else {
        Column::Embedded
    }
}

/// Codes the `log` OTP sender wrote, as `(destination, code)`, in order.
static SENT_CODES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Logs to the test output, and keeps what the `log` OTP sender writes so tests can log in
/// the way a developer reading the log would.
fn init_test_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::new(
            std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let _ = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(filter),
            )
            .with(
                OtpCapture.with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                    meta.target() == beep::services::auth::senders::LOG_TARGET
                })),
            )
            .try_init();
    });
}

use tracing_subscriber::Layer as _;

struct OtpCapture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for OtpCapture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != beep::services::auth::senders::LOG_TARGET {
            return;
        }
        #[derive(Default)]
        struct Fields {
            destination: Option<String>,
            code: Option<String>,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "code" {
                    self.code = Some(value.to_owned());
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "destination" => self.destination = Some(format!("{value:?}")),
                    "code" => self.code = Some(format!("{value:?}").trim_matches('"').to_owned()),
                    _ => {}
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let (Some(destination), Some(code)) = (fields.destination, fields.code) {
            SENT_CODES.lock().unwrap().push((destination, code));
        }
    }
}

/// The last code the `log` sender wrote for `destination` (E.164 phone or lowercased email),
/// waiting up to 5 s for it: captured in this process, or read from `BEEP_TEST_OTP_LOG` when
/// testing a deployment.
pub fn sent_code(destination: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let log = env(OTP_LOG);
    loop {
        let found = match &log {
            None => captured_code(destination),
            Some(path) => {
                captured_code(destination).or_else(|| logged_code(Path::new(path), destination))
            }
        };
        if let Some(code) = found {
            return code;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no code was sent to {destination} (log: {log:?})"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The last code this process's `log` sender wrote for `destination`.
fn captured_code(destination: &str) -> Option<String> {
    SENT_CODES
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(to, _)| to == destination)
        .map(|(_, code)| code.clone())
}

/// The last code for `destination` in a deployment's log. Reads both of beep's log formats
/// (`telemetry.log_format`): JSON (`"destination":"…","code":"…"`) and the plain one
/// (`destination=… code="…"`).
fn logged_code(path: &Path, destination: &str) -> Option<String> {
    let log = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("{OTP_LOG}={}: {err}", path.display()));
    log.lines().rev().find_map(|line| {
        if !line.contains(beep::services::auth::senders::LOG_TARGET) {
            return None;
        }
        let (to, code) = match serde_json::from_str::<serde_json::Value>(line) {
            // beep's JSON format flattens an event's fields to the top level.
            Ok(json) => (
                json["destination"].as_str()?.to_owned(),
                json["code"].as_str()?.to_owned(),
            ),
            Err(_) => (
                plain_field(line, "destination")?,
                plain_field(line, "code")?,
            ),
        };
        (to == destination).then_some(code)
    })
}

/// `name=value` or `name="value"` in a plain log line.
fn plain_field(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let value = line[start..].split_whitespace().next()?;
    Some(value.trim_matches('"').to_owned())
}

/// A valid Singapore mobile number no other test uses (E.164).
pub fn unique_phone() -> String {
    loop {
        let digits = u32::from_str_radix(&random_hex128()[..8], 16).unwrap() % 10_000_000;
        let phone = format!("+659{digits:07}");
        // Not every range is allocated; the server validates against the numbering plan.
        if beep::platform::users::PhoneNumber::parse(&phone).is_ok() {
            return phone;
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// `http://host:port`, without a trailing slash.
    base: String,
    pub client: reqwest::Client,
    /// The app itself; `None` when the test speaks to a deployment.
    inside: Option<InProcess>,
    data_dir: TempDir,
}

/// What a test holds of an app it started in its own process.
struct InProcess {
    platform: Platform,
    clock: Clock,
    handle: AppHandle,
    task: JoinHandle<std::io::Result<()>>,
    postgres_database: Option<String>,
}

/// A test's own namespace on shared servers: database, key prefix, subjects, bucket.
pub fn unique_name() -> String {
    format!("t{}", &random_hex128()[..16])
}

/// The configuration of a fresh app on `column`, with storage no other test sees.
pub async fn test_config(column: Column, data_dir: &TempDir) -> (Config, Option<String>) {
    // The S3 bucket is made with reqwest before any app has installed it.
    beep::platform::install_crypto_provider();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.data_dir = data_dir.path().to_owned();
    config.server.workers = 1;
    config.server.shutdown_timeout_secs = 5;
    let mut postgres_database = None;
    if column == Column::Real {
        let name = unique_name();
        if let Some(url) = env(POSTGRES) {
            create_postgres_database(&url, &name).await;
            config.database.url = with_database(&url, &name);
            postgres_database = Some(name.clone());
        }
        if let Some(url) = env(REDIS) {
            config.cache.url = url;
            config.cache.prefix = format!("{name}:");
        }
        if let Some(url) = env(NATS) {
            config.bus.url = url;
            config.bus.subject_prefix = name.clone();
        }
        if let Some(endpoint) = env(S3) {
            create_bucket(&endpoint, &name).await;
            config.blobs.url = format!("s3://{name}");
            config.blobs.s3.endpoint = endpoint;
            config.blobs.s3.allow_http = true;
            config.blobs.s3.access_key_id = "test".into();
            config.blobs.s3.secret_access_key = Secret::new("test");
        }
    }
    (config, postgres_database)
}

impl TestApp {
    pub async fn spawn(column: Column) -> Self {
        Self::spawn_with(column, |_| {}, Vec::new()).await
    }

    /// Starts the app with `adjust` applied to its configuration and `extra_services` hosted
    /// beside the compiled-in ones.
    pub async fn spawn_with(
        column: Column,
        adjust: impl FnOnce(&mut Config),
        extra_services: Vec<Arc<dyn Service>>,
    ) -> Self {
        Self::spawn_services(column, beep::services::COMPILED, adjust, extra_services).await
    }

    /// Starts an app hosting only `services` (as a split binary would).
    pub async fn spawn_services(
        column: Column,
        services: &[&str],
        adjust: impl FnOnce(&mut Config),
        extra_services: Vec<Arc<dyn Service>>,
    ) -> Self {
        init_test_logging();
        let data_dir = tempfile::tempdir().unwrap();
        if column == Column::Deployed {
            // A deployment runs as its operator configured it: `adjust` and extra services
            // cannot reach it, which is why only `targets()` tests come here.
            return Self::deployed(data_dir);
        }
        let (mut config, postgres_database) = test_config(column, &data_dir).await;
        adjust(&mut config);
        Self::start(
            config,
            services,
            extra_services,
            postgres_database,
            data_dir,
        )
        .await
    }

    async fn start(
        config: Config,
        services: &[&str],
        extra_services: Vec<Arc<dyn Service>>,
        postgres_database: Option<String>,
        data_dir: TempDir,
    ) -> Self {
        let clock = Clock::adjustable();
        let running = app::start(
            config,
            services,
            Hosting {
                handle_signals: false,
                extra_services,
                clock: clock.clone(),
            },
        )
        .await
        .unwrap_or_else(|err| panic!("{services:?} did not start: {err}"));
        Self::serve(running, clock, postgres_database, data_dir)
    }

    fn deployed(data_dir: TempDir) -> Self {
        beep::platform::install_crypto_provider();
        let base = env(BASE_URL)
            .unwrap_or_else(|| panic!("{BASE_URL} is not set"))
            .trim_end_matches('/')
            .to_owned();
        let authority = base
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("{BASE_URL}={base}: expected http://host:port"));
        let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("{BASE_URL}={base}: expected http://host:port"));
        // Counted by `.ci/run` (with --show-output), so a run that tested nothing is seen.
        println!("against the deployment at {base}");
        Self {
            addr,
            base,
            client: reqwest::Client::new(),
            inside: None,
            data_dir,
        }
    }

    fn inside(&self) -> &InProcess {
        self.inside
            .as_ref()
            .expect("this test needs the app in its own process: iterate columns(), not targets()")
    }

    /// The app's platform (configuration, database, cache, bus).
    pub fn platform(&self) -> &Platform {
        &self.inside().platform
    }

    /// The app's clock: `app.clock().advance(…)` skips to an expiry instead of sleeping to it.
    pub fn clock(&self) -> &Clock {
        &self.inside().clock
    }

    /// Whether the app runs in this process (not a deployment the test speaks to).
    pub fn in_process(&self) -> bool {
        self.inside.is_some()
    }

    /// Starts another process of the same deployment beside `first` (its database, cache,
    /// bus and blobs; a data directory of its own), hosting only `services`, as split
    /// binaries run. The database stays `first`'s to drop.
    pub async fn spawn_beside(
        first: &TestApp,
        services: &[&str],
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = (*first.platform().config).clone();
        config.server.data_dir = data_dir.path().to_owned();
        adjust(&mut config);
        Self::start(config, services, Vec::new(), None, data_dir).await
    }

    fn serve(
        running: app::RunningApp,
        clock: Clock,
        postgres_database: Option<String>,
        data_dir: TempDir,
    ) -> Self {
        let addr = running.addr();
        let handle = running.handle();
        let platform = running.platform().clone();
        let task = tokio::spawn(running.run());
        Self {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            inside: Some(InProcess {
                platform,
                clock,
                handle,
                task,
                postgres_database,
            }),
            data_dir,
        }
    }

    /// Stops the app and starts it again, hosting every compiled service, on the same data
    /// directory and database, with `adjust` applied to its configuration.
    pub async fn restart(
        self,
        adjust: impl FnOnce(&mut Config),
        extra_services: Vec<Arc<dyn Service>>,
    ) -> Self {
        let inside = self
            .inside
            .expect("restart needs the app in this process: iterate columns(), not targets()");
        inside.handle.stop(true).await;
        inside.task.await.unwrap().unwrap();
        let mut config = (*inside.platform.config).clone();
        drop(inside.platform);
        adjust(&mut config);
        let clock = Clock::adjustable();
        let running = app::start(
            config,
            beep::services::COMPILED,
            Hosting {
                handle_signals: false,
                extra_services,
                clock: clock.clone(),
            },
        )
        .await
        .unwrap_or_else(|err| panic!("app did not start again: {err}"));
        Self::serve(running, clock, inside.postgres_database, self.data_dir)
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// Graceful stop, then the test's PostgreSQL database is dropped.
    pub async fn stop(self) {
        self.stop_keeping_data().await;
    }

    /// [`Self::stop`], handing back the data directory so a test can look inside.
    pub async fn stop_keeping_data(self) -> TempDir {
        let Some(inside) = self.inside else {
            return self.data_dir; // a deployment is its operator's to stop
        };
        inside.handle.stop(true).await;
        inside.task.await.unwrap().unwrap();
        if let (Some(name), Some(url)) = (inside.postgres_database, env(POSTGRES)) {
            let admin = Database::connect(url.as_str()).await.unwrap();
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .unwrap();
        }
        self.data_dir
    }
}

async fn create_postgres_database(url: &str, name: &str) {
    let admin = Database::connect(url)
        .await
        .unwrap_or_else(|err| panic!("{POSTGRES}={url} does not answer: {err}"));
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
}

/// `postgres://host:5432/test?x=y` with the database `name` instead of `test`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_end..]
        .find('/')
        .map_or(base.len(), |i| authority_end + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if !query.is_empty() {
        out.push('?');
        out.push_str(query);
    }
    out
}

async fn create_bucket(endpoint: &str, name: &str) {
    let response = reqwest::Client::new()
        .put(format!("{}/{name}", endpoint.trim_end_matches('/')))
        .send()
        .await
        .unwrap_or_else(|err| panic!("{S3}={endpoint} does not answer: {err}"));
    assert!(
        response.status().is_success(),
        "creating bucket {name}: {}",
        response.status()
    );
}

/// Asserts the JSON error body and returns its code.
pub async fn error_code(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "error without a JSON content type"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "error without a message: {body}");
    body["error"]["code"].as_str().unwrap().to_owned()
}

/// A new conversation of `owner`'s with `others` added as members; its id.
pub async fn conversation_of(
    app: &TestApp,
    owner: &crate::auth::Tokens,
    others: &[&crate::auth::Tokens],
) -> String {
    let response = app
        .post("/core/user/conversation")
        .bearer_auth(&owner.access)
        .json(&serde_json::json!({ "title": "test" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for other in others {
        let response = app
            .post(&format!("/core/user/conversation/{id}/member"))
            .bearer_auth(&owner.access)
            .json(&serde_json::json!({ "id": other.user_id }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    id
}
