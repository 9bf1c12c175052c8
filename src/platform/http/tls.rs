//! HTTPS: the server's certificate and key, read when `server.tls` names both.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Pem {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// The rustls server settings, or `None` when TLS is off.
pub fn server_config(config: &TlsConfig) -> Result<Option<rustls::ServerConfig>, TlsError> {
    let (Some(cert_path), Some(key_path)) = (&config.cert_path, &config.key_path) else {
        return Ok(None);
    };
    let pem_error = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| TlsError::Pem { path, source }
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(pem_error(cert_path))?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(pem_error(key_path))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(Some(config))
}
