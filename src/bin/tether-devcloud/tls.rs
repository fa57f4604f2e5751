//! Certificates and the rustls server configuration.
//!
//! The cert dir holds a CA and a server certificate it signed. They are generated on the
//! first run and reused afterwards, so a gateway configured to trust `ca.pem` keeps
//! trusting the devcloud across restarts.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, date_time_ymd,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: no certificate found")]
    NoCertificate { path: PathBuf },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TlsSetupError + '_ {
    move |source| TlsSetupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The crypto provider everything here uses: ring, the only one compiled in.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server config: certificates from `cert_dir` (created if needed), ALPN `h2`
/// then `http/1.1`, and mandatory client certificates when `client_ca` is given.
pub fn server_config(
    cert_dir: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    ensure_certificates(cert_dir)?;

    let mut chain = load_certs(&cert_dir.join(SERVER_CERT))?;
    let ca = load_certs(&cert_dir.join(CA_CERT))?;
    // Present the full chain (leaf, then CA) so tools that inspect or pin the chain see
    // the issuer; skip the CA if server.pem already carries it.
    for cert in ca {
        if !chain.contains(&cert) {
            chain.push(cert);
        }
    }
    let key_path = cert_dir.join(SERVER_KEY);
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|source| TlsSetupError::Pem {
        path: key_path.clone(),
        source,
    })?;

    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(path)? {
                roots.add(cert)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = if crate::breaks::on(crate::breaks::Break::Http1Only) {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

/// All PEM certificates in `path`; at least one.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem_err = |source| TlsSetupError::Pem {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Makes sure the four PEM files exist, generating what is missing.
///
/// An existing CA is never replaced: if only the server files are gone, a new server
/// certificate is issued by the existing CA (which must then be one this program made,
/// since the issuer name is rebuilt from our own CA parameters).
fn ensure_certificates(dir: &Path) -> Result<(), TlsSetupError> {
    let exists = |name: &str| dir.join(name).is_file();
    if exists(CA_CERT) && exists(CA_KEY) && exists(SERVER_CERT) && exists(SERVER_KEY) {
        return Ok(());
    }
    create_private_dir(dir)?;

    let ca_params = ca_params()?;
    let ca_key = if exists(CA_CERT) && exists(CA_KEY) {
        let path = dir.join(CA_KEY);
        let pem = fs::read_to_string(&path).map_err(io_err(&path))?;
        log::warn!(
            "issuing a new server certificate from the existing CA in {}",
            dir.display()
        );
        KeyPair::from_pem(&pem)?
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params.self_signed(&key)?;
        write_file(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)?;
        log::info!("generated a new devcloud CA in {}", dir.display());
        key
    };
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tether devcloud");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_file(&dir.join(SERVER_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join(SERVER_CERT), cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// The CA's parameters. They double as the issuer description when re-signing with an
/// existing CA key, so they must stay stable across versions.
fn ca_params() -> Result<CertificateParams, TlsSetupError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Tether devcloud CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tether devcloud");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    Ok(params)
}

/// A fixed, long validity: test machines with odd clocks must still accept the chain.
fn set_validity(params: &mut CertificateParams) {
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2100, 1, 1);
}

fn create_private_dir(dir: &Path) -> Result<(), TlsSetupError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err(dir))
}

/// Writes a whole file with the given mode (the mode matters for keys, which must never
/// be readable by others even for an instant, hence set at creation).
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsSetupError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_err(path))
}
