//! rustls configuration: the server side (certificates chosen by SNI, ALPN h2 and
//! http/1.1, session resumption as the policy says) and the client side per
//! region (CA bundle, optional client certificate).

pub(crate) mod tickets;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{RegionTls, Resumption, TlsSpec};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read PEM certificates: {source}")]
    Certs {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path}: no certificate in the file")]
    NoCert { path: PathBuf },
    #[error("{path}: cannot read a PEM private key: {source}")]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path}: unsupported private key: {source}")]
    KeyType {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{cert} and {key} do not belong together: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("{path}: bad CA certificate: {source}")]
    Ca {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS settings rejected: {0}")]
    Config(#[from] rustls::Error),
    #[error("resumption.ticket_keys: {0}")]
    TicketKeys(#[from] tickets::TicketKeyError),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certs {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Key {
        path: path.to_owned(),
        source,
    })
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert)?;
    let der = read_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|source| TlsError::KeyType {
            path: key.to_owned(),
            source,
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|source| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })?;
    Ok(ck)
}

/// Picks a certificate by SNI: exact name, then `*.parent`, then the first certificate.
#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn lookup(&self, sni: &str) -> Arc<CertifiedKey> {
        let sni = sni.to_ascii_lowercase();
        if let Some(k) = self.by_name.get(&sni) {
            return k.clone();
        }
        if let Some((_, parent)) = sni.split_once('.') {
            if let Some(k) = self.by_name.get(&format!("*.{parent}")) {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match hello.server_name() {
            Some(name) => self.lookup(name),
            None => self.default.clone(),
        })
    }
}

/// The names each certificate of a TLS listener covers, chosen the way the
/// SNI resolver chooses the certificate: a request's Host must be one of the
/// names of the certificate its connection was given (else 421).
#[derive(Debug, Default)]
pub struct CertNames {
    by_name: HashMap<String, usize>,
    names: Vec<Arc<[Box<str>]>>,
}

impl CertNames {
    pub fn of(spec: &TlsSpec) -> Self {
        let mut out = CertNames::default();
        for (i, c) in spec.certificates.iter().enumerate() {
            for n in &c.server_names {
                out.by_name.entry(n.to_ascii_lowercase()).or_insert(i);
            }
            out.names.push(
                c.server_names
                    .iter()
                    .map(|n| n.to_ascii_lowercase().into())
                    .collect(),
            );
        }
        out
    }

    /// The names of the certificate a connection with this SNI gets.
    pub fn for_sni(&self, sni: Option<&str>) -> Option<Arc<[Box<str>]>> {
        let i = sni
            .map(str::to_ascii_lowercase)
            .and_then(|sni| {
                self.by_name.get(&sni).copied().or_else(|| {
                    let (_, parent) = sni.split_once('.')?;
                    self.by_name.get(&format!("*.{parent}")).copied()
                })
            })
            .unwrap_or(0);
        self.names.get(i).cloned()
    }
}

/// Whether `host` (lower case, no port) is one of `names` (`*.parent` covers
/// one label). A certificate configured without names covers any host.
pub fn covers(names: &[Box<str>], host: &str) -> bool {
    names.is_empty()
        || names.iter().any(|n| {
            **n == *host
                || n.strip_prefix("*.").is_some_and(|parent| {
                    host.split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == parent)
                })
        })
}

/// Server-side config for one TLS listener; advertises h2 and http/1.1 by ALPN.
pub fn server_config(spec: &TlsSpec) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    Ok(Arc::new(server_config_for(spec, &[b"h2", b"http/1.1"])?))
}

/// The same certificates, resolver and resumption for a QUIC endpoint: ALPN
/// `h3` only. With `early_data`, 0-RTT is offered on resumed connections (QUIC
/// allows no other size than all or nothing), and resumption is stateful only:
/// each ticket is good for one early flight, on this instance (rustls refuses
/// early data with stateless tickets, which could be replayed anywhere).
pub fn quic_server_config(
    spec: &TlsSpec,
    early_data: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = server_config_for(spec, &[b"h3"])?;
    if early_data {
        cfg.max_early_data_size = u32::MAX;
        cfg.ticketer = Arc::new(NoTickets);
    }
    Ok(cfg)
}

/// Stateless tickets off: resumption through the session cache only.
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

fn server_config_for(spec: &TlsSpec, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let mut by_name = HashMap::new();
    let mut default = None;
    for c in &spec.certificates {
        let key = Arc::new(certified_key(&c.cert, &c.key)?);
        for n in &c.server_names {
            by_name.entry(n.clone()).or_insert_with(|| key.clone());
        }
        default.get_or_insert(key);
    }
    let default = default.ok_or_else(|| TlsError::NoCert {
        path: PathBuf::from("(no certificate configured)"),
    })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { by_name, default }));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    resumption(&mut cfg, &spec.resumption)?;
    Ok(cfg)
}

/// Session cache and tickets as the listener's policy says; with neither, no
/// TLS 1.3 ticket is sent at all and every connection pays a full handshake.
fn resumption(cfg: &mut rustls::ServerConfig, r: &Resumption) -> Result<(), TlsError> {
    cfg.session_storage = if r.session_cache > 0 {
        rustls::server::ServerSessionMemoryCache::new(r.session_cache)
    } else {
        Arc::new(rustls::server::NoServerSessionStorage {})
    };
    if r.tickets {
        cfg.ticketer = match &r.ticket_keys {
            Some(path) => tickets::FileTicketer::start(path, r.ticket_rotation)?,
            None => tickets::rotating(r.ticket_rotation)?,
        };
    }
    if r.session_cache == 0 && !r.tickets {
        cfg.send_tls13_tickets = 0;
    }
    Ok(())
}

/// Client-side config for one region: its CA bundle (or the Mozilla roots) and
/// its client certificate for mTLS, when set. ALPN is left to the connector.
pub fn client_config(tls: &RegionTls) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            for c in read_certs(path)? {
                roots.add(c).map_err(|source| TlsError::Ca {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let der = read_key(key)?;
            builder
                .with_client_auth_cert(chain, der)
                .map_err(|source| TlsError::Mismatch {
                    cert: cert.clone(),
                    key: key.clone(),
                    source,
                })?
        }
        _ => builder.with_no_client_auth(),
    })
}

/// TLS client configs with the ALPN of each protocol, built once per region.
pub fn alpn_configs(
    base: &rustls::ClientConfig,
) -> (Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>) {
    let mut h1 = base.clone();
    h1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut h2 = base.clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    (Arc::new(h1), Arc::new(h2))
}
