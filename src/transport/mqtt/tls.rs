//! The optional MQTT-over-TLS listener (`mqtt.tls_listen`).
//!
//! Each handshake runs in its connection's own task under `mqtt.connect_timeout`, so a
//! socket that connects and says nothing costs one task and one slot for a bounded time
//! and never blocks other clients (the accept loop only accepts). After the handshake the
//! connection is served exactly like a plain one (`conn::serve` is generic over the stream).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::cloud::tls::{SetupError, read, read_secret};

/// Builds the acceptor from PEM files; the key file must not be readable by others.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, SetupError> {
    let invalid = |path: &Path, what: String| SetupError::Invalid {
        path: path.to_owned(),
        what,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(cert, "holds no certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read_secret(key)?)
        .map_err(|e| invalid(key, format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Client(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| invalid(cert, format!("certificate and key do not match: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
