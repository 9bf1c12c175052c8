//! The running system: open the platform, migrate and build the services, spawn their workers
//! once, serve HTTP, and on SIGINT/SIGTERM (or `RunningApp::stop`) shut down in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};

use crate::config::Config;
use crate::platform::http;
use crate::platform::http::cors::CorsPolicy;
use crate::platform::http::request::{self, PlatformLayer};
use crate::platform::workers::Workers;
use crate::platform::{Platform, PlatformError, health};
use crate::services::{self, Service};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Service(#[from] services::BuildError),
    #[error("{0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Options that belong to how the app is hosted rather than to its configuration.
#[derive(Default)]
pub struct Hosting {
    /// Stop on SIGINT/SIGTERM; off in tests, which stop the app themselves.
    pub handle_signals: bool,
    /// Services hosted beside the compiled-in ones, behind the same middleware (tests use it
    /// to exercise the platform through routes no real service has yet).
    pub extra_services: Vec<Arc<dyn Service>>,
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
    let tls = tls_config(&config)?;

    // Checked again by `services::build`; here so a wrong name touches nothing.
    services::check_compiled(service_names)?;
    let platform = Platform::open(config).await?;
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
    let mut services = services::build(service_names, &platform)?;
    if !platform.identity.has_keys() && platform.config.auth.jwks_url.is_empty() {
        tracing::warn!(
            "no token signing keys: this process hosts no auth service and auth.jwks_url is \
             empty, so every authenticated request will be refused"
        );
    }
    services.extend(hosting.extra_services);

    let config = Arc::clone(&platform.config);
    let wrapper = Arc::new(request::RequestPolicy {
        metrics: config.telemetry.metrics.then(|| platform.metrics.clone()),
        cors,
        security_headers: request::RequestPolicy::security_headers(
            config.server.tls.cert_path.is_some(),
        ),
    });
    let app_platform = platform.clone();
    let app_services = services.clone();
    let factory = move || {
        let platform = app_platform.clone();
        let config = Arc::clone(&platform.config);
        let services = app_services.clone();
        let wrapper = Arc::clone(&wrapper);
        App::new()
            .app_data(web::Data::new(platform))
            .configure(|cfg| http::configure_extractors(&config.http, cfg))
            .configure(|cfg| health::routes(cfg, config.telemetry.metrics))
            .configure(|cfg| services.iter().for_each(|service| service.routes(cfg)))
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
        .shutdown_timeout(config.server.shutdown_timeout_secs);
    if !hosting.handle_signals {
        server = server.disable_signals();
    }
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

fn tls_config(config: &Config) -> Result<Option<rustls::ServerConfig>, StartError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let (Some(cert_path), Some(key_path)) =
        (&config.server.tls.cert_path, &config.server.tls.key_path)
    else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| StartError::Tls(format!("{}: {err}", cert_path.display())))?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|err| StartError::Tls(format!("{}: {err}", key_path.display())))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map(Some)
        .map_err(|err| StartError::Tls(err.to_string()))
}

impl RunningApp {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// A handle that stops the server gracefully: `handle.stop(true)`.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
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
