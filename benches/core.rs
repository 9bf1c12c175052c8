//! core and permissions figures, in release mode (`cargo bench --bench core [-- list|access|orm]`):
//! - `GET /core/user/conversation` for a user with 50 conversations, on SQLite and on
//!   PostgreSQL, against `GET /healthz` on the same server in the same run;
//! - `may_access`: a cached answer in nanoseconds, an uncached one (read from core) in
//!   microseconds, in-process and with Redis;
//! - sea-orm against sqlx: `GET /core/user/id/{id}` as core serves it against the same route
//!   with the same query written directly in sqlx, same app, same run.
//!
//! PostgreSQL and Redis parts run when `BEEP_TEST_POSTGRES_URL` / `BEEP_TEST_REDIS_URL` are set
//! (each part gets a fresh database or key prefix).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use beep::app::{self, Hosting, RunningApp};
use beep::platform::http::Caller;
use beep::platform::ids::random_hex128;
use beep::platform::service::{Routes, Service};
use beep::platform::users::UserRecord;
use sea_orm::{ConnectionTrait as _, DatabaseBackend, DatabaseConnection};

#[allow(dead_code)]
#[path = "common/load.rs"]
mod load;
use load::{CONNECTIONS, PIPELINE, compare, median, wanted};

#[allow(dead_code)]
#[path = "../tests/common/login.rs"]
mod login;
use login::access_token;

const CONVERSATIONS: usize = 50;
const ROUNDS: usize = 15;
const ROUND: Duration = Duration::from_secs(1);

fn main() {
    let runtime = load::client_runtime();
    println!(
        "# beep core bench ({} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    runtime.block_on(async {
        let postgres = std::env::var("BEEP_TEST_POSTGRES_URL").ok();
        let redis = std::env::var("BEEP_TEST_REDIS_URL").ok();
        if wanted("list") {
            list(None).await;
            if let Some(url) = &postgres {
                list(Some(url)).await;
            }
        }
        if wanted("access") {
            access(None).await;
            if let Some(url) = &redis {
                access(Some(url)).await;
            }
        }
        if wanted("orm") {
            orm(None).await;
            if let Some(url) = &postgres {
                orm(Some(url)).await;
            }
        }
    });
}

/// A fresh app with one HTTP worker on SQLite, or on a new database of `postgres`.
struct Bench {
    running: Option<RunningApp>,
    _dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

async fn start(postgres: Option<&str>, redis: Option<&str>, extra: Vec<Arc<dyn Service>>) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let mut config = load::app_config(dir.path());
    login::allow_bypass(&mut config);
    let name = format!("bench{}", &random_hex128()[..12]);
    let mut database = None;
    if let Some(url) = postgres {
        let admin = sea_orm::Database::connect(url).await.unwrap();
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let (base, _) = url.rsplit_once('/').unwrap();
        config.database.url = format!("{base}/{name}");
        database = Some((url.to_owned(), name.clone()));
    }
    if let Some(url) = redis {
        config.cache.url = url.to_owned();
        config.cache.prefix = format!("{name}:");
    }
    let running = app::start(
        config,
        beep::services::COMPILED,
        Hosting {
            extra_services: extra,
            ..Hosting::default()
        },
    )
    .await
    .unwrap();
    Bench {
        running: Some(running),
        _dir: dir,
        postgres: database,
    }
}

impl Bench {
    fn backend(&self) -> &'static str {
        if self.postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    }

    /// Serves in the background; answers the address, a stop handle and the platform.
    fn serve(
        &mut self,
    ) -> (
        std::net::SocketAddr,
        beep::app::AppHandle,
        beep::platform::Platform,
    ) {
        let running = self.running.take().unwrap();
        let served = (running.addr(), running.handle(), running.platform().clone());
        tokio::spawn(running.run());
        served
    }

    async fn finish(self, handle: beep::app::AppHandle) {
        handle.stop(true).await;
        if let Some((url, name)) = self.postgres {
            let admin = sea_orm::Database::connect(url.as_str()).await.unwrap();
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .unwrap();
        }
    }
}

fn get(path: &str, token: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\r\n")
}

/// Two authenticated GETs side by side (`(name, path)` each), printed under `title`.
async fn compare_gets(
    addr: std::net::SocketAddr,
    token: &str,
    title: &str,
    reference: (&str, &str),
    candidate: (&str, &str),
) {
    let comparison = compare(
        addr,
        get(reference.1, token).as_bytes(),
        get(candidate.1, token).as_bytes(),
        ROUNDS,
        ROUND,
    )
    .await;
    println!(
        "{title}, 1 server worker, {CONNECTIONS} connections x {PIPELINE} pipelined, {ROUNDS} rounds of {ROUND:?}:"
    );
    comparison.print(reference.0, candidate.0);
}

/// The caller's user id, from `GET /core/user?phone_number=`.
async fn user_id(client: &reqwest::Client, base: &str, token: &str, n: u32) -> String {
    let phone: String = form_urlencoded::byte_serialize(login::phone(n).as_bytes()).collect();
    let user: UserRecord = client
        .get(format!("{base}/core/user?phone_number={phone}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    user.id
}

async fn list(postgres: Option<&str>) {
    let mut bench = start(postgres, None, Vec::new()).await;
    let (addr, handle, _) = bench.serve();
    let base = format!("http://{addr}");
    let token = access_token(&base, 1).await;
    let client = reqwest::Client::new();
    for n in 0..CONVERSATIONS {
        let response = client
            .post(format!("{base}/core/user/conversation"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "title": format!("conversation {n:02}"), "picture": "0123456789abcdef0123456789abcdef.png" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let listed: Vec<serde_json::Value> = client
        .get(format!("{base}/core/user/conversation"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), CONVERSATIONS);
    let title = format!(
        "GET /core/user/conversation ({CONVERSATIONS} conversations) on {}",
        bench.backend()
    );
    compare_gets(
        addr,
        &token,
        &title,
        ("GET /healthz", "/healthz"),
        ("GET /core/user/conversation", "/core/user/conversation"),
    )
    .await;
    bench.finish(handle).await;
}

async fn access(redis: Option<&str>) {
    use beep::platform::membership::MembershipSource as _;
    let mut bench = start(None, redis, Vec::new()).await;
    let (addr, handle, platform) = bench.serve();
    let base = format!("http://{addr}");
    let token = access_token(&base, 1).await;
    let client = reqwest::Client::new();
    let user = user_id(&client, &base, &token, 1).await;
    let conversation = login::new_conversation(&base, &token, "bench", &[]).await;
    // The same parts `app::build_services` wires, over the running app's platform.
    let core = beep::services::core::Core::new(&platform, None);
    let permissions =
        beep::services::permissions::Permissions::new(&platform, core.conversations.clone());
    let checker = &permissions.checker;
    let mut workers = beep::platform::workers::Workers::new();
    permissions.start(&mut workers);
    while !checker.is_listening() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(checker.check(&user, &conversation).await.unwrap());

    let cached_ns = per_call_ns(200_000, || async {
        black_box(checker.check(&user, &conversation).await.unwrap());
    })
    .await;
    // Misses: users this process has never asked about, answered from core's table (and
    // cached for next time).
    const STRANGERS: usize = 2_000;
    let strangers: Vec<String> = (0..STRANGERS)
        .map(|_| format!("u-{}", random_hex128()))
        .collect();
    let started = Instant::now();
    for stranger in &strangers {
        assert!(!checker.check(stranger, &conversation).await.unwrap());
    }
    let uncached_us = started.elapsed().as_secs_f64() * 1e6 / STRANGERS as f64;
    let started = Instant::now();
    for _ in 0..STRANGERS {
        black_box(
            core.conversations
                .is_member(&user, &conversation)
                .await
                .unwrap(),
        );
    }
    let source_us = started.elapsed().as_secs_f64() * 1e6 / STRANGERS as f64;
    let cache = if redis.is_some() {
        "in-process + Redis"
    } else {
        "in-process"
    };
    println!("may_access with the {cache} cache, SQLite memberships:");
    println!("  cached answer: {cached_ns:.0} ns per call (median of 9 batches of 200000)");
    println!("  uncached answer (membership read, answer cached): {uncached_us:.1} us per call");
    println!("  of which the membership read alone: {source_us:.1} us per call");
    if redis.is_some() {
        // Another replica's first question about those users: answered from Redis.
        let replica =
            beep::services::permissions::Permissions::new(&platform, core.conversations.clone());
        replica.start(&mut workers);
        while !replica.checker.is_listening() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = Instant::now();
        for stranger in &strangers {
            assert!(
                !replica
                    .checker
                    .check(stranger, &conversation)
                    .await
                    .unwrap()
            );
        }
        let shared_us = started.elapsed().as_secs_f64() * 1e6 / STRANGERS as f64;
        println!(
            "  answer cached by another replica (read from Redis): {shared_us:.1} us per call"
        );
    }
    workers.shutdown(Duration::from_secs(1)).await;
    bench.finish(handle).await;
}

/// Median over 9 batches of the time per call of `work`, `calls` per batch.
async fn per_call_ns<F, Fut>(calls: usize, work: F) -> f64
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut samples = Vec::new();
    for _ in 0..9 {
        let started = Instant::now();
        for _ in 0..calls {
            work().await;
        }
        samples.push(started.elapsed().as_secs_f64() * 1e9 / calls as f64);
    }
    median(samples)
}

/// `GET /bench/sqlx/user/{id}`: core's `GET /core/user/id/{id}` with the same query written
/// in sqlx directly, behind the same middleware and extractor.
struct SqlxUser {
    db: Arc<OnceLock<DatabaseConnection>>,
}

/// The whole row, as sea-orm reads it.
type UserRow = (
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
);

/// The query core's `Users::by_id` makes, in each dialect.
const SELECT_USER_POSTGRES: &str = r#"SELECT "id", "username", "bio", "profile_pic", "first_name", "last_name", "phone_number", "email", "created_at" FROM "user" WHERE "id" = $1"#;
const SELECT_USER_SQLITE: &str = r#"SELECT "id", "username", "bio", "profile_pic", "first_name", "last_name", "phone_number", "email", "created_at" FROM "user" WHERE "id" = ?"#;

async fn sqlx_user(db: &DatabaseConnection, id: &str) -> Option<UserRow> {
    match db.get_database_backend() {
        DatabaseBackend::Postgres => sea_orm::sqlx::query_as::<_, UserRow>(SELECT_USER_POSTGRES)
            .bind(id)
            .fetch_optional(db.get_postgres_connection_pool())
            .await
            .unwrap(),
        _ => sea_orm::sqlx::query_as::<_, UserRow>(SELECT_USER_SQLITE)
            .bind(id)
            .fetch_optional(db.get_sqlite_connection_pool())
            .await
            .unwrap(),
    }
}

impl Service for SqlxUser {
    fn name(&self) -> &'static str {
        "bench"
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "test-only routes stay out of the API document"
    )]
    fn routes(&self, cfg: &mut Routes<'_>) {
        let db = Arc::clone(&self.db);
        // Test-only routes: mounted, not documented.
        cfg.map(|cfg| {
            cfg.app_data(web::Data::new(db)).route(
                "/bench/sqlx/user/{id}",
                web::get().to(
                    |_caller: Caller,
                     db: web::Data<Arc<OnceLock<DatabaseConnection>>>,
                     id: web::Path<String>| async move {
                        let db = db.get().unwrap();
                        match sqlx_user(db, &id).await {
                            Some((
                                id,
                                username,
                                bio,
                                profile_pic,
                                first_name,
                                last_name,
                                phone,
                                _,
                                _,
                            )) => HttpResponse::Ok().json(UserRecord {
                                id,
                                username,
                                bio,
                                profile_pic,
                                first_name,
                                last_name,
                                phone_number: Some(phone.unwrap_or_default()),
                            }),
                            None => HttpResponse::NotFound().finish(),
                        }
                    },
                ),
            )
        });
    }
}

async fn orm(postgres: Option<&str>) {
    let db = Arc::new(OnceLock::new());
    let mut bench = start(
        postgres,
        None,
        vec![Arc::new(SqlxUser {
            db: Arc::clone(&db),
        })],
    )
    .await;
    let (addr, handle, platform) = bench.serve();
    db.set(platform.db.connection().clone()).ok().unwrap();
    let base = format!("http://{addr}");
    let token = access_token(&base, 1).await;
    let client = reqwest::Client::new();
    let user = user_id(&client, &base, &token, 1).await;
    let core_path = format!("/core/user/id/{user}");
    let sqlx_path = format!("/bench/sqlx/user/{user}");
    // Both answer the same bytes, so they cost the same to send.
    let body = |path: String| {
        let client = client.clone();
        let url = format!("{base}{path}");
        let token = token.clone();
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert_eq!(body(core_path.clone()).await, body(sqlx_path.clone()).await);
    let title = format!(
        "GET /core/user/id/{{id}} (sea-orm) against the same query in sqlx, on {}",
        bench.backend()
    );
    compare_gets(
        addr,
        &token,
        &title,
        ("sqlx", &sqlx_path),
        ("sea-orm", &core_path),
    )
    .await;

    // The queries alone, in-process, without HTTP.
    let connection = platform.db.connection().clone();
    let users = beep::services::core::users::Users::new(
        connection.clone(),
        platform.clock.clone(),
        beep::services::core::pictures::PictureNames::default(),
    );
    let mut ratios = Vec::new();
    let (mut orm_us, mut raw_us) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        let started = Instant::now();
        for _ in 0..2_000 {
            black_box(users.by_id(&user).await.unwrap());
        }
        let orm = started.elapsed().as_secs_f64() * 1e6 / 2_000.0;
        let started = Instant::now();
        for _ in 0..2_000 {
            black_box(sqlx_user(&connection, &user).await);
        }
        let raw = started.elapsed().as_secs_f64() * 1e6 / 2_000.0;
        ratios.push(raw / orm);
        orm_us.push(orm);
        raw_us.push(raw);
    }
    println!(
        "  the query alone: sea-orm {:.1} us, sqlx {:.1} us, ratio sqlx time / sea-orm time {}",
        median(orm_us),
        median(raw_us),
        load::spread(&ratios)
    );
    bench.finish(handle).await;
}
