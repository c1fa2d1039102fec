//! How the agent checks the gateway's certificate, for HTTP (reqwest) and the WebSocket
//! (tokio-tungstenite) alike: one rustls client configuration (ring, the provider both
//! libraries already use) trusting either the system's root certificates or only the CA
//! certificates of `ca-file`.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::transport::TransportError;

/// The trust settings of the agent's connections (cheap to clone).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    source: String,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("trusts", &self.source)
            .finish_non_exhaustive()
    }
}

fn tls_error(message: String) -> TransportError {
    TransportError::Tls { message }
}

impl ClientTls {
    /// Trusts the system's root certificates (`/etc/ssl/certs`, or `SSL_CERT_FILE` /
    /// `SSL_CERT_DIR`); read once per process. When the system has none (a minimal
    /// container), the Mozilla roots compiled into the agent.
    pub fn system_roots() -> Result<Self, TransportError> {
        static SYSTEM: OnceLock<ClientTls> = OnceLock::new();
        if let Some(tls) = SYSTEM.get() {
            return Ok(tls.clone());
        }
        let loaded = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
        let source = if added == 0 {
            tracing::warn!(
                errors = loaded.errors.len(),
                "No system root certificates found; trusting the Mozilla roots built into \
                 the agent (set ca-file to trust a private CA)."
            );
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            "built-in Mozilla roots".to_owned()
        } else {
            format!("{added} system root certificates")
        };
        let tls = Self::with_roots(roots, source)?;
        Ok(SYSTEM.get_or_init(|| tls).clone())
    }

    /// Trusts only the CA certificates in the PEM file `path` (a private CA).
    pub fn from_ca_file(path: &Path) -> Result<Self, TransportError> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| tls_error(format!("ca-file {}: {e}", path.display())))?;
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(tls_error(format!(
                "ca-file {}: no usable CA certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
                path.display()
            )));
        }
        Self::with_roots(roots, format!("ca-file {}", path.display()))
    }

    /// What the configuration asks for: `ca-file` when set, else the system's roots.
    pub fn for_config(config: &crate::AgentConfig) -> Result<Self, TransportError> {
        match &config.ca_file {
            Some(path) => Self::from_ca_file(path),
            None => Self::system_roots(),
        }
    }

    fn with_roots(roots: RootCertStore, source: String) -> Result<Self, TransportError> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
            source,
        })
    }

    /// The rustls configuration (for tokio-tungstenite's connector).
    pub(crate) fn rustls(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.config)
    }

    /// A copy of the rustls configuration (reqwest takes one by value).
    pub(crate) fn rustls_owned(&self) -> rustls::ClientConfig {
        (*self.config).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let err = ClientTls::from_ca_file(&path).unwrap_err();
        assert!(err.to_string().contains("ca-file"), "{err}");
        let err = ClientTls::from_ca_file(&dir.path().join("missing.pem")).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }

    #[test]
    fn system_roots_load() {
        let tls = ClientTls::system_roots().unwrap();
        assert!(format!("{tls:?}").contains("root"), "{tls:?}");
    }
}
