//! The running system, as the diagram reads: open the platform, build the services and wire
//! the seams between them, spawn their workers once, serve HTTP, and on SIGINT/SIGTERM (or
//! `RunningApp::stop`) shut down in order. Each service is prepared (what its answers depend on
//! is loaded) before the port opens.
//!
//! ```text
//!             core ──UserDirectory──▶ auth
//!             core ──MembershipSource──▶ permissions ──AccessCheck──▶ bites
//!             core ──RelationCheck──▶ heartbeat
//!             core ──PictureUsage──▶ pictures ◀──AccessCheck── permissions
//!         pictures ──PictureCatalog──▶ core
//!   everyone ◀── bus (core's events: memberships, profiles) ──▶ everyone
//! ```
//!
//! A seam is a trait in `platform/` answered by the service that owns the data. When the
//! owner is in this process it answers in-process; when it is not, and the bus is NATS, the
//! asker reaches it over NATS request/reply (`platform/rpc.rs`, `platform/remote.rs`), and
//! every owner here answers its seams there for the processes that do not host it. Without
//! NATS, a binary hosting an asker without its owner refuses to start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use utoipa_actix_web::AppExt as _;

use crate::config::Config;
use crate::platform::clock::Clock;
use crate::platform::http::cors::CorsPolicy;
use crate::platform::http::openapi::{self, ApiDocument};
use crate::platform::http::request::{self, PlatformLayer};
use crate::platform::http::{self, tls};
#[cfg(any(feature = "bites", feature = "pictures"))]
use crate::platform::membership::SharedAccess;
#[cfg(feature = "permissions")]
use crate::platform::membership::SharedMembership;
#[cfg(feature = "heartbeat")]
use crate::platform::membership::SharedRelations;
#[cfg(feature = "core")]
use crate::platform::pictures::SharedCatalog;
#[cfg(feature = "pictures")]
use crate::platform::pictures::SharedUsage;
use crate::platform::service::{Routes, Service};
use crate::platform::sessions::SessionWatch;
#[cfg(feature = "auth")]
use crate::platform::users::SharedDirectory;
use crate::platform::workers::Workers;
use crate::platform::{Platform, PlatformError, health};
#[allow(
    unused_imports,
    reason = "which services are used depends on the features"
)]
use crate::services::{self, COMPILED};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Service(#[from] BuildError),
    #[error("{0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("rendering the OpenAPI document: {0}")]
    OpenApi(#[source] serde_json::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("service {0:?} is not compiled into this binary")]
    Unknown(String),
    #[error("{service} needs {owner} in the same process ({seam})")]
    MissingSeam {
        service: &'static str,
        seam: &'static str,
        owner: &'static str,
    },
    #[error("{service}: {source}")]
    Service {
        service: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Refuses a service name that is not compiled into this binary.
pub fn check_compiled(names: &[&str]) -> Result<(), BuildError> {
    match names.iter().find(|name| !COMPILED.contains(name)) {
        Some(unknown) => Err(BuildError::Unknown((*unknown).to_owned())),
        None => Ok(()),
    }
}

/// The seams between services: each is answered by the service that owns the data, and
/// empty when that service is not hosted here.
#[derive(Default)]
#[allow(dead_code, reason = "which seams are asked depends on the features")]
struct Seams {
    /// "The user behind this login, created if new": core, asked by auth.
    #[cfg(feature = "auth")]
    users: Option<SharedDirectory>,
    /// "Is U a member of C", from the tables: core, asked by permissions.
    #[cfg(feature = "permissions")]
    memberships: Option<SharedMembership>,
    /// "May U touch C", cached: permissions, asked by bites and pictures.
    #[cfg(any(feature = "bites", feature = "pictures"))]
    access: Option<SharedAccess>,
    /// "May V see U's presence": core, asked by heartbeat.
    #[cfg(feature = "heartbeat")]
    relations: Option<SharedRelations>,
    /// "Is this a picture name pictures stored": pictures, asked by core.
    #[cfg(feature = "core")]
    catalog: Option<SharedCatalog>,
    /// "Who shows this picture": core, asked by pictures.
    #[cfg(feature = "pictures")]
    picture_usage: Option<SharedUsage>,
}

/// The seam `service` asks, or why it cannot start without `owner`.
#[allow(dead_code, reason = "which seams are asked depends on the features")]
fn ask<T: Clone>(
    seam: &Option<T>,
    service: &'static str,
    name: &'static str,
    owner: &'static str,
) -> Result<T, BuildError> {
    seam.clone().ok_or(BuildError::MissingSeam {
        service,
        seam: name,
        owner,
    })
}

/// The seam `service` asks: in-process when `owner` is hosted here, else over NATS (`remote`),
/// else why it cannot start.
#[allow(dead_code, reason = "which seams are asked depends on the features")]
fn ask_or_remote<T: Clone>(
    seam: &Option<T>,
    platform: &Platform,
    (service, name, owner): (&'static str, &'static str, &'static str),
    remote: impl FnOnce(crate::platform::bus::Bus) -> T,
) -> Result<T, BuildError> {
    match seam {
        Some(seam) => Ok(seam.clone()),
        None if platform.bus.nats().is_some() => Ok(remote(platform.bus.clone())),
        None => ask(seam, service, name, owner),
    }
}

/// Builds the named services in `COMPILED` order (an owner before its askers) and wires each
/// seam from its owner to the services that ask it.
#[allow(unused_variables, unused_mut, reason = "depends on the features")]
pub fn build_services(
    names: &[&str],
    platform: &Platform,
) -> Result<Vec<Arc<dyn Service>>, BuildError> {
    check_compiled(names)?;
    let hosted = |name: &str| names.contains(&name);
    let mut seams = Seams::default();
    // What this process's owners answer for processes that do not host them.
    let mut answers = crate::platform::rpc::Answers::default();
    let mut built: Vec<Arc<dyn Service>> = Vec::with_capacity(names.len());

    // pictures' store answers core, and pictures asks core: the store comes first.
    #[cfg(feature = "pictures")]
    let picture_store = hosted("pictures").then(|| services::pictures::Pictures::store(platform));
    #[cfg(all(feature = "pictures", feature = "core"))]
    {
        seams.catalog = picture_store.clone().map(|store| store as SharedCatalog);
    }
    #[cfg(feature = "pictures")]
    if let Some(store) = &picture_store {
        services::pictures::Pictures::answer(store, &mut answers);
    }

    #[cfg(feature = "core")]
    if hosted("core") {
        // Without pictures here, over NATS when it runs elsewhere (else names are checked by
        // their shape only).
        let catalog = seams.catalog.clone().or_else(|| {
            platform.bus.nats().is_some().then(|| {
                Arc::new(crate::platform::remote::RemoteCatalog::new(
                    platform.bus.clone(),
                )) as SharedCatalog
            })
        });
        let core = services::core::Core::new(platform, catalog);
        #[cfg(feature = "auth")]
        {
            seams.users = Some(Arc::clone(&core.users) as SharedDirectory);
        }
        #[cfg(feature = "permissions")]
        {
            seams.memberships = Some(Arc::clone(&core.conversations) as SharedMembership);
        }
        core.answer(&mut answers);
        #[cfg(feature = "heartbeat")]
        {
            seams.relations = Some(Arc::clone(&core.relations) as SharedRelations);
        }
        #[cfg(feature = "pictures")]
        {
            seams.picture_usage = Some(Arc::clone(&core.picture_uses) as SharedUsage);
        }
        built.push(Arc::new(core));
    }
    #[cfg(feature = "permissions")]
    if hosted("permissions") {
        let memberships = ask_or_remote(
            &seams.memberships,
            platform,
            ("permissions", "MembershipSource", "core"),
            |bus| Arc::new(crate::platform::remote::RemoteMembership::new(bus)) as SharedMembership,
        )?;
        let permissions = services::permissions::Permissions::new(platform, memberships);
        permissions.answer(&mut answers);
        #[cfg(any(feature = "bites", feature = "pictures"))]
        {
            seams.access = Some(Arc::clone(&permissions.checker) as SharedAccess);
        }
        built.push(Arc::new(permissions));
    }
    #[cfg(feature = "auth")]
    if hosted("auth") {
        let users = ask_or_remote(
            &seams.users,
            platform,
            ("auth", "UserDirectory", "core"),
            |bus| Arc::new(crate::platform::remote::RemoteDirectory::new(bus)) as SharedDirectory,
        )?;
        let auth =
            services::auth::Auth::new(platform, users).map_err(|err| BuildError::Service {
                service: "auth",
                source: err.into(),
            })?;
        built.push(Arc::new(auth));
    }
    #[cfg(feature = "heartbeat")]
    if hosted("heartbeat") {
        let relations = ask_or_remote(
            &seams.relations,
            platform,
            ("heartbeat", "RelationCheck", "core"),
            |bus| {
                let remote = crate::platform::remote::RemoteRelations::new(bus);
                built.push(remote.follower());
                remote as SharedRelations
            },
        )?;
        built.push(Arc::new(services::heartbeat::Heartbeat::new(
            platform, relations,
        )));
    }
    #[cfg(feature = "pictures")]
    if let Some(store) = picture_store {
        let usage = ask_or_remote(
            &seams.picture_usage,
            platform,
            ("pictures", "PictureUsage", "core"),
            |bus| Arc::new(crate::platform::remote::RemoteUsage::new(bus)) as SharedUsage,
        )?;
        let access = ask_or_remote(
            &seams.access,
            platform,
            ("pictures", "AccessCheck", "permissions"),
            |bus| Arc::new(crate::platform::remote::RemoteAccess::new(bus)) as SharedAccess,
        )?;
        built.push(Arc::new(services::pictures::Pictures::new(
            platform, store, usage, access,
        )));
    }
    #[cfg(feature = "bites")]
    if hosted("bites") {
        let access = ask_or_remote(
            &seams.access,
            platform,
            ("bites", "AccessCheck", "permissions"),
            |bus| Arc::new(crate::platform::remote::RemoteAccess::new(bus)) as SharedAccess,
        )?;
        let bites =
            services::bites::Bites::new(platform, access).map_err(|err| BuildError::Service {
                service: "bites",
                source: err.into(),
            })?;
        built.push(Arc::new(bites));
    }
    if !answers.is_empty() && platform.bus.nats().is_some() {
        built.push(answers.into_service(platform.bus.clone()));
    }
    Ok(built)
}

/// Options that belong to how the app is hosted rather than to its configuration.
#[derive(Default)]
pub struct Hosting {
    /// Stop on SIGINT/SIGTERM; off in tests, which stop the app themselves.
    pub handle_signals: bool,
    /// Services hosted beside the compiled-in ones, behind the same middleware (tests use it
    /// to exercise the platform through routes no real service has yet).
    pub extra_services: Vec<Arc<dyn Service>>,
    /// The system's time, or one a test can advance.
    pub clock: Clock,
}

/// A started app: bound, serving once `run` is awaited.
pub struct RunningApp {
    addr: SocketAddr,
    platform: Platform,
    server: Server,
    workers: Workers,
}

/// Opens the platform, applies the services' migrations, builds them and binds the server.
pub async fn start(
    config: Config,
    service_names: &[&str],
    hosting: Hosting,
) -> Result<RunningApp, StartError> {
    // Settings that can be refused are checked before anything is opened.
    let cors = config
        .http
        .cors
        .enabled
        .then(|| CorsPolicy::new(&config.http.cors))
        .transpose()
        .map_err(StartError::Config)?;
    let tls = tls::server_config(&config.server.tls)?;

    // Checked again by `build_services`; here so a wrong name touches nothing.
    check_compiled(service_names)?;
    raise_open_file_limit();
    let platform = Platform::open(config, hosting.clock).await?;
    for name in service_names {
        let applied = platform
            .db
            .migrate(name)
            .await
            .map_err(PlatformError::from)?;
        if applied > 0 {
            tracing::info!(service = name, applied, "migrations applied");
        }
    }
    let mut services = build_services(service_names, &platform)?;
    if !platform.identity.has_keys() && platform.config.auth.jwks_url.is_empty() {
        tracing::warn!(
            "no token signing keys: this process hosts no auth service and auth.jwks_url is \
             empty, so every authenticated request will be refused"
        );
    }
    services.extend(hosting.extra_services);
    // Before the port opens: a request must never meet a verifier that has not yet loaded
    // the revocations it depends on.
    for service in &services {
        service
            .prepare()
            .await
            .map_err(|source| BuildError::Service {
                service: service.name(),
                source,
            })?;
    }

    let config = Arc::clone(&platform.config);
    let wrapper = Arc::new(request::RequestPolicy {
        body_timeout: Duration::from_secs(config.http.body_timeout_secs.max(1)),
        metrics: config.telemetry.metrics.then(|| platform.metrics.clone()),
        cors,
        security_headers: request::RequestPolicy::security_headers(
            config.server.tls.cert_path.is_some(),
        ),
    });
    // Every route, in the order actix matches them; the document is collected once from the
    // same mounting each worker does, so it lists exactly what is served.
    let mount = {
        let services = services.clone();
        let metrics = config.telemetry.metrics;
        move |cfg: &mut Routes<'_>| {
            health::routes(cfg, metrics);
            openapi::routes(cfg);
            #[cfg(feature = "web")]
            crate::web::routes(cfg);
            services.iter().for_each(|service| service.routes(cfg));
        }
    };
    let (_, collected) = App::new()
        .into_utoipa_app()
        .openapi(openapi::skeleton())
        .configure(&mount)
        .split_for_parts();
    let document = web::Data::new(ApiDocument::new(collected).map_err(StartError::OpenApi)?);

    let app_platform = platform.clone();
    let factory = move || {
        let platform = app_platform.clone();
        let config = Arc::clone(&platform.config);
        let wrapper = Arc::clone(&wrapper);
        App::new()
            .app_data(web::Data::new(platform))
            .app_data(document.clone())
            .configure(|cfg| http::configure_extractors(&config.http, cfg))
            .into_utoipa_app()
            .configure(&mount)
            .default_service(web::to(openapi::unrouted))
            .into_app()
            .wrap(PlatformLayer(wrapper))
    };

    let workers_count = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let listen = config.server.listen;
    let mut server = HttpServer::new(factory)
        .workers(workers_count)
        // Responses and stream events are written as soon as they are ready; with Nagle's
        // algorithm a second small write waits for the client's delayed ACK (40 ms).
        .tcp_nodelay(true)
        // A client that goes away (FIN) ends its streams at once, giving back its places
        // under `http.max_streams_per_user`; allowed half-closed, they would linger until a
        // keep-alive write failed.
        .h1_allow_half_closed(false)
        // Clients reconnecting together (after a restart, a network blip) are queued rather
        // than refused: actix's default is 2,048.
        .backlog(4096)
        .shutdown_timeout(config.server.shutdown_timeout_secs);
    // Signals are ours: a stop first ends the long-lived connections (see `AppHandle`).
    server = server.disable_signals();
    let bound = match tls {
        Some(tls) => server.bind_rustls_0_23(listen, tls),
        None => server.bind(listen),
    }
    .map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    let addr = bound.addrs().first().copied().unwrap_or(listen);
    let server = bound.run();
    if hosting.handle_signals {
        let handle = AppHandle {
            server: server.handle(),
            sessions: platform.sessions.clone(),
        };
        tokio::spawn(async move {
            let graceful = stop_signal().await;
            tracing::info!(graceful, "stop signal received; shutting down");
            let stopping = handle.stop(graceful);
            if !graceful {
                return stopping.await;
            }
            tokio::select! {
                () = stopping => {}
                _ = stop_signal() => {
                    tracing::warn!("second stop signal: stopping without waiting");
                    handle.stop(false).await;
                }
            }
        });
    }

    // Workers start once the port is ours, so a failed start leaves nothing running.
    let mut workers = Workers::new();
    platform.start(&mut workers);
    for service in &services {
        service.start(&mut workers);
    }
    tracing::info!(%addr, tls = config.server.tls.cert_path.is_some(), services = ?service_names, "beep is serving");
    Ok(RunningApp {
        addr,
        platform,
        server,
        workers,
    })
}

/// Stops a running app.
#[derive(Clone)]
pub struct AppHandle {
    server: ServerHandle,
    sessions: SessionWatch,
}

impl AppHandle {
    /// Stops the server and ends the SSE streams and signalling sockets (each belongs to a
    /// session; clients reconnect elsewhere or later). Graceful lets other in-flight requests
    /// finish, up to `server.shutdown_timeout_secs`. The returned future resolves once
    /// stopped; the stop itself starts at once.
    pub fn stop(&self, graceful: bool) -> impl Future<Output = ()> + use<> {
        // The listener stops first, so a client reconnecting at once is not let in only to
        // be ended.
        let stopped = self.server.stop(graceful);
        let ended = self.sessions.end_all();
        if ended > 0 {
            tracing::info!(ended, "open streams and sockets ended for the shutdown");
        }
        stopped
    }
}

/// Waits for a stop signal; whether it asks for a graceful stop. As actix-web's own handling:
/// SIGTERM (service managers, container runtimes) is graceful, SIGINT (Ctrl-C) and SIGQUIT
/// are not.
async fn stop_signal() -> bool {
    use tokio::signal::unix::{SignalKind, signal};
    let received = |kind: SignalKind, name: &'static str| async move {
        match signal(kind) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for {name}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = received(SignalKind::terminate(), "SIGTERM") => true,
        () = received(SignalKind::interrupt(), "SIGINT") => false,
        () = received(SignalKind::quit(), "SIGQUIT") => false,
    }
}

/// Every stream, socket and connection is a file descriptor, and the soft limit is often
/// 1,024: it is raised to the hard limit, so the per-user caps decide, not the OS.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(current), Some(maximum)) = (limit.current, limit.maximum) else {
        return;
    };
    if current >= maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: Some(maximum),
        maximum: Some(maximum),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(from = current, to = maximum, "open file limit raised"),
        Err(err) => tracing::warn!(error = %err, current, "cannot raise the open file limit"),
    }
}

impl RunningApp {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// A handle that stops the server: `handle.stop(true)`.
    pub fn handle(&self) -> AppHandle {
        AppHandle {
            server: self.server.handle(),
            sessions: self.platform.sessions.clone(),
        }
    }

    /// Serves until stopped, then shuts down in order: in-flight requests finish (up to
    /// `server.shutdown_timeout_secs`), workers stop and flush, backends close.
    pub async fn run(self) -> std::io::Result<()> {
        let served = self.server.await;
        tracing::info!("HTTP server stopped; stopping workers");
        let grace = Duration::from_secs(self.platform.config.server.shutdown_timeout_secs);
        self.workers.shutdown(grace).await;
        self.platform.close().await;
        tracing::info!("shutdown complete");
        served
    }
}
