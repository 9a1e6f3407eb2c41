//! TLS termination with rustls (ring provider, TLS 1.3 and 1.2, rustls' default modern
//! cipher suites only).
//!
//! A listener's `tls.certificates` become one [`Acceptor`] whose certificate is chosen by
//! SNI: each certificate answers the names in its `sni` list, exact (`a.example.com`) or
//! wildcard (`*.example.com`, one label deep as RFC 6125 says). A certificate with an
//! empty `sni` list answers the DNS names of its own subjectAltName (or its common name
//! when it has none), so the common case needs no list at all. The first certificate
//! listed is the default: it answers clients that send no SNI or a name nothing matches,
//! which is what nginx and HAProxy do rather than failing the handshake.
//!
//! [`check_tls`] loads everything the same way and reports every problem with the file it
//! is in; `shoal validate` and start-up call it, and [`Acceptor::reload`] re-reads the
//! files on a config reload, keeping the old certificates when the new ones are bad.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use shoal_config::{Certificate, Tls};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

/// ALPN protocol ids offered by HTTP listeners, preferred first.
pub(crate) const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";
/// Offered too, as nginx does: rustls refuses a client whose ALPN list shares nothing with
/// the server's, and curl 7.88 sends only `http/1.0` for `--http1.0`.
const ALPN_HTTP10: &[u8] = b"http/1.0";

/// Checks a listener's `tls` block the way the proxy loads it: every certificate and key
/// file is read and parsed, each key must match its certificate, and each `sni` entry must
/// be a host name or a `*.` wildcard. Relative paths start at `base` (the config file's
/// directory). Returns one message per problem, each naming its file and starting with the
/// certificate's place in the list (`certificates[1]: `) when it is about one; empty when the
/// proxy would load it.
pub fn check_tls(tls: &Tls, base: &Path) -> Vec<String> {
    match load(tls, base) {
        Ok(_) => Vec::new(),
        Err(errors) => errors,
    }
}

/// The certificates of `tls` that are expired or not valid yet, one message each naming its
/// file. They are served all the same, as HAProxy, nginx and Envoy serve them: the client
/// decides what a lapsed certificate means to it, and refusing one would keep every listener
/// down at the next start, and every reload refused. `shoal validate` prints these, and the
/// proxy logs them each time it loads the certificates.
pub fn tls_validity_warnings(tls: &Tls, base: &Path) -> Vec<String> {
    load(tls, base).map_or_else(|_| Vec::new(), |loaded| loaded.lapsed)
}

/// Logs what [`tls_validity_warnings`] reports, for certificates just loaded.
fn warn_of_validity(lapsed: &[String]) {
    for warning in lapsed {
        tracing::warn!("{warning}; serving it anyway");
    }
}

/// What the client negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// Offer `h2` and `http/1.1` (HTTP listeners).
    Http,
    /// Offer nothing (TCP listeners: the bytes are not ours to interpret).
    None,
}

/// A listener's TLS settings, swappable on reload while connections keep the config they
/// were accepted with.
pub(crate) struct Acceptor {
    config: ArcSwap<ServerConfig>,
    alpn: Alpn,
}

impl Acceptor {
    /// Loads the certificates; the errors are [`check_tls`]'s.
    pub(crate) fn new(tls: &Tls, base: &Path, alpn: Alpn) -> Result<Acceptor, Vec<String>> {
        let loaded = load(tls, base)?;
        let config = server_config(loaded.resolver, alpn)?;
        warn_of_validity(&loaded.lapsed);
        Ok(Acceptor {
            config: ArcSwap::from_pointee(config),
            alpn,
        })
    }

    /// Re-reads the certificates. On any error the old ones stay in use; new connections
    /// get the new ones, open connections are not touched.
    pub(crate) fn reload(&self, tls: &Tls, base: &Path) -> Result<(), Vec<String>> {
        let loaded = load(tls, base)?;
        let config = server_config(loaded.resolver, self.alpn)?;
        warn_of_validity(&loaded.lapsed);
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// Runs the server handshake on `stream`.
    pub(crate) async fn accept<S>(&self, stream: S) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
            .accept(stream)
            .await
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(resolver: Resolver, alpn: Alpn) -> Result<ServerConfig, Vec<String>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| vec![format!("cannot set up TLS: {e}")])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    if alpn == Alpn::Http {
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec(), ALPN_HTTP10.to_vec()];
    }
    // Stateless TLS 1.3 tickets let clients resume without a server-side session cache
    // growing with them; without a ticketer only the (bounded) in-memory cache resumes.
    if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(config)
}

/// Picks a certificate by SNI.
struct Resolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Resolver {
    fn find(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name else {
            return self.default.clone();
        };
        // rustls hands over SNI already lower-cased and without a trailing dot.
        if let Some(key) = self.exact.get(name) {
            return key.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
            .clone()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.find(client_hello.server_name()))
    }
}

/// A listener's certificates, loaded.
struct Loaded {
    resolver: Resolver,
    /// [`tls_validity_warnings`]'s messages.
    lapsed: Vec<String>,
}

/// Loads every certificate of `tls` into a resolver, or every error found.
fn load(tls: &Tls, base: &Path) -> Result<Loaded, Vec<String>> {
    let provider = provider();
    let now = unix_now();
    let mut errors = Vec::new();
    let mut lapsed = Vec::new();
    let mut default = None;
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for (at, certificate) in tls.certificates.iter().enumerate() {
        let (errors_before, lapsed_before) = (errors.len(), lapsed.len());
        let loaded = load_one(certificate, base, &provider, now, &mut errors, &mut lapsed);
        // Each message names the entry it is about, for `validate` to locate it.
        for message in errors[errors_before..]
            .iter_mut()
            .chain(&mut lapsed[lapsed_before..])
        {
            message.insert_str(0, &format!("certificates[{at}]: "));
        }
        let Some((key, own_names)) = loaded else {
            continue;
        };
        let key = Arc::new(key);
        let names = if certificate.sni.is_empty() {
            own_names
        } else {
            certificate.sni.clone()
        };
        for name in names {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            // Earlier certificates win a name listed twice, as they win the default.
            match name.strip_prefix("*.") {
                Some(parent) if valid_host(parent) => {
                    wildcard.entry(parent.to_string()).or_insert(key.clone());
                }
                None if valid_host(&name) => {
                    exact.entry(name).or_insert(key.clone());
                }
                _ => errors.push(format!(
                    "certificates[{at}]: {}: sni `{name}` is neither a host name nor `*.` \
                     followed by one",
                    resolve(base, &certificate.cert).display()
                )),
            }
        }
        default.get_or_insert(key);
    }
    match default {
        Some(default) if errors.is_empty() => Ok(Loaded {
            resolver: Resolver {
                exact,
                wildcard,
                default,
            },
            lapsed,
        }),
        _ => {
            if errors.is_empty() {
                errors.push("tls.certificates is empty".to_string());
            }
            Err(errors)
        }
    }
}

fn valid_host(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    base.join(path)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// One certificate chain and its key, checked, with the DNS names the certificate itself
/// carries; problems go to `errors`.
fn load_one(
    certificate: &Certificate,
    base: &Path,
    provider: &CryptoProvider,
    now: i64,
    errors: &mut Vec<String>,
    lapsed: &mut Vec<String>,
) -> Option<(CertifiedKey, Vec<String>)> {
    let cert_path = resolve(base, &certificate.cert);
    let key_path = resolve(base, &certificate.key);
    let chain = read_chain(&cert_path).map_err(|e| errors.push(e)).ok();
    let key = read_key(&key_path).map_err(|e| errors.push(e)).ok();
    let chain = chain?;
    let names = match inspect(&chain[0], now) {
        Ok((names, problem)) => {
            if let Some(problem) = problem {
                lapsed.push(format!("{}: {problem}", cert_path.display()));
            }
            names
        }
        Err(error) => {
            errors.push(format!("{}: {error}", cert_path.display()));
            return None;
        }
    };
    let key = provider
        .key_provider
        .load_private_key(key?)
        .map_err(|e| {
            errors.push(format!(
                "{}: unsupported private key: {e}",
                key_path.display()
            ))
        })
        .ok()?;
    let certified = CertifiedKey::new(chain, key);
    if let Err(error) = certified.keys_match() {
        let why = match error {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "does not match".to_string()
            }
            // webpki's error comes through rustls only as text. `openssl x509 -req` without
            // extensions makes such a certificate, which nginx and HAProxy would serve.
            other if other.to_string().contains("UnsupportedCertVersion") => {
                errors.push(format!(
                    "{}: an X.509 v1 certificate, which rustls does not load: make a v3 one \
                     (`openssl req -x509`, or `openssl x509 -req` with `-extfile` or \
                     `-copy_extensions`)",
                    cert_path.display()
                ));
                return None;
            }
            other => format!("cannot be checked against ({other})"),
        };
        errors.push(format!(
            "{}: the private key {why} the certificate in {}",
            key_path.display(),
            cert_path.display()
        ));
        return None;
    }
    Some((certified, names))
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(path, &e))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate found (expected PEM `BEGIN CERTIFICATE` blocks)",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path)?;
    // rustls reads no encrypted key, PKCS#8 or OpenSSL's older form; nginx would ask for its
    // passphrase.
    let has = |marker: &[u8]| pem.windows(marker.len()).any(|w| w == marker);
    if has(b"BEGIN ENCRYPTED PRIVATE KEY") || has(b"Proc-Type: 4,ENCRYPTED") {
        return Err(format!(
            "{}: the private key is encrypted, which shoal does not read: decrypt it \
             (`openssl pkey -in KEY -out PLAIN.key`) and keep the file private",
            path.display()
        ));
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{}: no private key found (expected a PEM PKCS#8, RSA or EC private key)",
            path.display()
        ),
        other => malformed(path, &other),
    })
}

/// What is wrong with a PEM file, in words: the pem module prints the marker lines it
/// names as lists of bytes.
fn malformed(path: &Path, error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    let why = match error {
        Error::MissingSectionEnd { end_marker } => format!(
            "a section has no `-----END {}-----` line (is the file cut short?)",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => format!(
            "a malformed `-----BEGIN` line: `{}`",
            String::from_utf8_lossy(line)
        ),
        other => other.to_string(),
    };
    format!("{}: malformed PEM: {why}", path.display())
}

/// Why the certificate is not valid at `now`, if it is not.
fn validity_problem(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    now: i64,
) -> Option<String> {
    let validity = cert.validity();
    if now > validity.not_after.timestamp() {
        Some(format!("certificate expired on {}", validity.not_after))
    } else if now < validity.not_before.timestamp() {
        Some(format!(
            "certificate is not valid before {}",
            validity.not_before
        ))
    } else {
        None
    }
}

/// The leaf certificate's DNS names, and why it is not valid at `now` if it is not.
fn inspect(der: &CertificateDer<'_>, now: i64) -> Result<(Vec<String>, Option<String>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let problem = validity_problem(&cert, now);
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .filter(|cn| valid_host(cn.strip_prefix("*.").unwrap_or(cn)))
                .map(str::to_string),
        );
    }
    Ok((names, problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert!(valid_host("a.example.com"));
        assert!(valid_host("localhost"));
        assert!(!valid_host(""));
        assert!(!valid_host("a..b"));
        assert!(!valid_host("*.a"));
        assert!(!valid_host("a b"));
    }

    #[test]
    fn a_pem_file_cut_short_is_said_in_words() {
        let key = rcgen::KeyPair::generate().expect("key").serialize_pem();
        let path = std::env::temp_dir().join(format!("shoal-cut-{}.key", std::process::id()));
        std::fs::write(&path, &key[..key.len() / 2]).expect("write");
        let error = read_key(&path).map(|_| ()).expect_err("a key cut short");
        let _ = std::fs::remove_file(&path);
        assert!(
            error.ends_with("malformed PEM: a section has no `-----END PRIVATE KEY-----` line (is the file cut short?)"),
            "{error}"
        );
    }
}
