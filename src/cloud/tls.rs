//! Building the cloud HTTP client: rustls on the `ring` provider, HTTP/2 with keep-alive
//! PINGs, the trust anchors, the optional mTLS identity and the bearer token.
//!
//! There is deliberately no switch that disables certificate verification: `cloud.ca_file`
//! narrows trust to a private CA; without it the system roots are used.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::{Certificate, Identity, redirect};

use crate::config::CloudConfig;

/// Why the uplink could not be set up; all are configuration or file problems.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Reads a secret (token, private key), refusing a file others can read or anyone but
/// its owner can write: a leaked device identity is worse than a daemon that will not
/// start. Group read is allowed (root:tether 0640 is how the service reads it).
pub(crate) fn read_secret(path: &Path) -> Result<Vec<u8>, SetupError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| SetupError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        return Err(SetupError::Invalid {
            path: path.to_owned(),
            what: format!(
                "holds a secret but its permissions are {mode:03o}; allow at most 0640 (chmod 600, or 640 with group tether)"
            ),
        });
    }
    read(path)
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|source| SetupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Installs ring as the process's rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What the client trusts and presents, read once from the files `[cloud]` names, so the
/// client can be built again (for another PING interval) without touching the disk.
#[derive(Clone)]
pub struct Credentials {
    roots: Option<Vec<Certificate>>,
    identity: Option<Identity>,
    /// The `Authorization` header value, if the gateway has a token.
    pub authorization: Option<HeaderValue>,
}

impl Credentials {
    pub fn load(cfg: &CloudConfig) -> Result<Credentials, SetupError> {
        let roots = match &cfg.ca_file {
            None => None,
            Some(path) => {
                let certs = Certificate::from_pem_bundle(&read(path)?).map_err(|e| {
                    SetupError::Invalid {
                        path: path.clone(),
                        what: format!("not a PEM certificate bundle: {e}"),
                    }
                })?;
                if certs.is_empty() {
                    return Err(SetupError::Invalid {
                        path: path.clone(),
                        what: "holds no certificate".into(),
                    });
                }
                Some(certs)
            }
        };
        let identity = match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend_from_slice(&read_secret(key)?);
                Some(Identity::from_pem(&pem).map_err(|e| SetupError::Invalid {
                    path: cert.clone(),
                    what: format!("client certificate and key do not form an identity: {e}"),
                })?)
            }
            _ => None,
        };
        Ok(Credentials {
            roots,
            identity,
            authorization: load_token(cfg)?,
        })
    }

    /// The client `builder` makes, trusting and presenting these.
    fn apply(&self, mut builder: reqwest::ClientBuilder) -> Result<reqwest::Client, SetupError> {
        if let Some(certs) = &self.roots {
            builder = builder.tls_certs_only(certs.clone());
        }
        if let Some(identity) = &self.identity {
            builder = builder.identity(identity.clone());
        }
        builder
            .build()
            .map_err(|e| SetupError::Client(e.to_string()))
    }
}

/// The HTTP client for `cfg`, with HTTP/2 PINGs every `ping_interval` (the config's, or
/// the cloud's `ping_s`).
pub fn build_client(
    cfg: &CloudConfig,
    ping_interval: Duration,
    credentials: &Credentials,
) -> Result<reqwest::Client, SetupError> {
    install_crypto_provider();
    let builder = reqwest::Client::builder()
        .https_only(true)
        // A redirect could carry the token to another host; the protocol has none.
        .redirect(redirect::Policy::none())
        .user_agent(concat!("tetherd/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(cfg.connect_timeout)
        .http2_keep_alive_interval(ping_interval)
        .http2_keep_alive_timeout(cfg.ping_timeout)
        .http2_keep_alive_while_idle(true)
        // TCP keepalive only for a link HTTP/2 PINGs leave quiet for longer than they
        // should: on a metered link with rare PINGs, probes every 75 s would cost more
        // than the PINGs the cloud chose (`ping_s`).
        .tcp_keepalive(ping_interval + cfg.ping_timeout)
        // HTTP/2 multiplexes everything over one connection; a cloud that speaks only
        // HTTP/1.1 needs two (the held poll and an early flush), and both stay pooled.
        .pool_max_idle_per_host(2);
    credentials.apply(builder)
}

/// A client for `tetherd diagnose`: the daemon's trust and identity, no token, and the
/// peer's certificate kept in each response (`reqwest::tls::TlsInfo`).
pub fn build_probe_client(
    cfg: &CloudConfig,
    credentials: &Credentials,
) -> Result<reqwest::Client, SetupError> {
    install_crypto_provider();
    let builder = reqwest::Client::builder()
        .https_only(true)
        .redirect(redirect::Policy::none())
        .user_agent(concat!("tetherd-diagnose/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(cfg.connect_timeout)
        .tls_info(true);
    credentials.apply(builder)
}

/// The `Authorization` header value, from `cloud.token_file` or systemd's credential.
pub fn load_token(cfg: &CloudConfig) -> Result<Option<HeaderValue>, SetupError> {
    let path = match &cfg.token_file {
        Some(p) => p.clone(),
        None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) if Path::new(&dir).join("token").exists() => Path::new(&dir).join("token"),
            _ => return Ok(None),
        },
    };
    let raw = read_secret(&path)?;
    let token = String::from_utf8(raw).map_err(|_| SetupError::Invalid {
        path: path.clone(),
        what: "token is not UTF-8".into(),
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(SetupError::Invalid {
            path,
            what: "token file is empty".into(),
        });
    }
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| SetupError::Invalid {
            path: path.clone(),
            what: "token holds characters not allowed in an HTTP header".into(),
        })?;
    // Keeps it out of HPACK tables and out of `Debug` output.
    value.set_sensitive(true);
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn secrets_with_loose_permissions_are_refused() {
        let dir = std::env::temp_dir().join(format!(
            "tether-secret-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "t0ken\n").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o640, true),
            (0o400, true),
            (0o644, false),
            (0o660, false),
            (0o604, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let got = read_secret(&path);
            assert_eq!(got.is_ok(), ok, "mode {mode:o}");
            if let Err(e) = got {
                let text = e.to_string();
                assert!(
                    text.contains(&format!("{mode:03o}")) && !text.contains("t0ken"),
                    "{text}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
