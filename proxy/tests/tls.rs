//! TLS termination: certificates chosen by SNI (exact, wildcard, the certificate's own
//! names, the default), ALPN h2 and http/1.1 through the HTTP path, and `check_tls`.
//! Certificates are generated here with rcgen, self-signed, and trusted by the client.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use common::{echo_backend, TestProxy};

/// A fresh directory for one test's files, removed when dropped.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(test: &str) -> Scratch {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "shoal-tls-{}-{test}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A self-signed certificate for `names`; writes `<stem>.pem` and `<stem>.key` in `dir`.
struct Cert {
    pem: String,
    cert: PathBuf,
    key: PathBuf,
}

fn cert(dir: &Path, stem: &str, names: &[&str]) -> Cert {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names).unwrap();
    write(
        dir,
        stem,
        generated.cert.pem(),
        generated.key_pair.serialize_pem(),
    )
}

fn write(dir: &Path, stem: &str, pem: String, key: String) -> Cert {
    let cert = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key_path, key).unwrap();
    Cert {
        pem,
        cert,
        key: key_path,
    }
}

fn client_config(trusted: &[&Cert], alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        for der in CertificateDer::pem_slice_iter(cert.pem.as_bytes()) {
            roots.add(der.unwrap()).unwrap();
        }
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// The DER of the certificate the server presented.
fn presented(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(cert: &Cert) -> Vec<u8> {
    CertificateDer::from_pem_slice(cert.pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Two certificates: A (`a.example.com`, also 127.0.0.1 for SNI-less clients) listed with
/// an explicit `sni`, B (`b.example.com`, `*.w.example.com`) relying on its own names.
async fn two_cert_proxy(test: &str) -> (TestProxy, Cert, Cert) {
    let dir = scratch(test);
    let a = cert(&dir, "a", &["a.example.com", "127.0.0.1"]);
    let b = cert(&dir, "b", &["b.example.com", "*.w.example.com"]);
    let backend = echo_backend("one").await;
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    service: svc\n    tls:\n      certificates:\n        - {{ cert: \"{}\", key: \"{}\", sni: [a.example.com] }}\n        - {{ cert: \"{}\", key: \"{}\" }}\nservices:\n  svc:\n    upstreams: {{ static: [\"{}\"] }}\n",
        a.cert.display(),
        a.key.display(),
        b.cert.display(),
        b.key.display(),
        backend.addr
    );
    (common::proxy(&yaml).await, a, b)
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let (proxy, a, b) = two_cert_proxy("sni").await;
    let trust_both = client_config(&[&a, &b], &[b"http/1.1"]);

    let stream = connect(proxy.addr, trust_both.clone(), "a.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&stream), der(&a));
    let stream = connect(proxy.addr, trust_both.clone(), "b.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&stream), der(&b));
    // B lists no `sni`, so its own wildcard name answers.
    let stream = connect(proxy.addr, trust_both.clone(), "x.w.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&stream), der(&b));
    // No SNI (an IP address): the first certificate is the default.
    let stream = connect(proxy.addr, trust_both.clone(), "127.0.0.1")
        .await
        .unwrap();
    assert_eq!(presented(&stream), der(&a));
    // An unknown name also gets the default, which this client then refuses: the
    // handshake fails on the client's side, and the proxy counts it.
    assert!(connect(proxy.addr, trust_both, "c.example.com")
        .await
        .is_err());
    assert!(
        common::eventually(std::time::Duration::from_secs(2), || {
            common::metric(
                &proxy.registry,
                "shoal_tls_handshake_errors_total",
                &[("listener", "web")],
            ) == 1.0
        })
        .await
    );
}

#[tokio::test]
async fn alpn_h2_serves_http2() {
    let (proxy, a, _b) = two_cert_proxy("h2").await;
    let config = client_config(&[&a], &[b"h2", b"http/1.1"]);
    let stream = connect(proxy.addr, config, "a.example.com").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for _ in 0..3 {
        let request = Request::get("https://a.example.com/over-h2")
            .body(Full::<Bytes>::default())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), Version::HTTP_2);
        let echoed: std::collections::BTreeMap<String, Vec<String>> =
            serde_json::from_str(response.headers()["x-echo"].to_str().unwrap()).unwrap();
        assert_eq!(echoed["x-forwarded-host"], vec!["a.example.com"]);
        assert_eq!(echoed["x-forwarded-proto"], vec!["https"]);
        let _ = response.into_body().collect().await.unwrap();
    }
}

#[tokio::test]
async fn http11_only_clients_get_http11() {
    let (proxy, _a, b) = two_cert_proxy("h1").await;
    // A GET over HTTP/1 on a connection whose ALPN offered only `alpn` (or nothing).
    let get_offering = |alpn: &'static [&'static [u8]], expected: Option<&'static [u8]>| {
        let config = client_config(&[&b], alpn);
        async move {
            let stream = connect(proxy.addr, config, "b.example.com").await.unwrap();
            assert_eq!(stream.get_ref().1.alpn_protocol(), expected);
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let request = Request::get("/over-h1")
                .header("host", "b.example.com")
                .body(Full::<Bytes>::default())
                .unwrap();
            sender.send_request(request).await.unwrap()
        }
    };
    let response = get_offering(&[b"http/1.1"], Some(b"http/1.1")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_11);

    // A client offering no ALPN at all speaks HTTP/1.1 too, and one offering only
    // http/1.0 (as curl 7.88 does for --http1.0) is served, not refused.
    assert_eq!(get_offering(&[], None).await.status(), 200);
    let response = get_offering(&[b"http/1.0"], Some(b"http/1.0")).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn plaintext_on_a_tls_listener_fails_the_handshake() {
    let (proxy, _a, _b) = two_cert_proxy("plain").await;
    let text = common::raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        std::time::Duration::from_secs(2),
    )
    .await;
    assert!(!text.contains("HTTP/1.1 200"), "{text}");
}

fn tls_block(certs: &[(&Path, &Path)]) -> shoal_config::Tls {
    shoal_config::Tls {
        certificates: certs
            .iter()
            .map(|(cert, key)| shoal_config::Certificate {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                sni: Vec::new(),
            })
            .collect(),
    }
}

#[test]
fn check_tls_accepts_good_certificates_with_relative_paths() {
    let dir = scratch("good");
    cert(&dir, "a", &["a.example.com"]);
    let tls = tls_block(&[(Path::new("a.pem"), Path::new("a.key"))]);
    assert_eq!(shoal_proxy::check_tls(&tls, &dir), Vec::<String>::new());
}

#[test]
fn check_tls_reports_a_mismatched_key() {
    let dir = scratch("mismatch");
    let a = cert(&dir, "a", &["a.example.com"]);
    let b = cert(&dir, "b", &["b.example.com"]);
    let errors = shoal_proxy::check_tls(&tls_block(&[(&a.cert, &b.key)]), &dir);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(&*b.key.display().to_string()),
        "{errors:?}"
    );
    assert!(errors[0].contains("does not match"), "{errors:?}");
}

#[test]
fn check_tls_reports_missing_and_garbage_files() {
    let dir = scratch("missing");
    let a = cert(&dir, "a", &["a.example.com"]);
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.join("missing.key");
    let errors =
        shoal_proxy::check_tls(&tls_block(&[(&a.cert, &missing), (&garbage, &a.key)]), &dir);
    assert_eq!(errors.len(), 2, "{errors:?}");
    // Each names its entry in the list first, for `validate` to locate it.
    assert!(errors[0].starts_with("certificates[0]: "), "{errors:?}");
    assert!(errors[0].contains("missing.key") && errors[0].contains("cannot read"));
    assert!(errors[1].starts_with("certificates[1]: "), "{errors:?}");
    assert!(errors[1].contains("garbage.pem") && errors[1].contains("no certificate"));
}

#[test]
fn an_encrypted_key_is_named_as_such() {
    let dir = scratch("encrypted");
    let a = cert(&dir, "a", &["a.example.com"]);
    // Only the markers matter: rustls reads no encrypted key, PKCS#8 or legacy OpenSSL.
    for (stem, pem) in [
        ("pkcs8", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG\n-----END ENCRYPTED PRIVATE KEY-----\n"),
        ("legacy", "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nMIIFHDBOBgkqhkiG\n-----END RSA PRIVATE KEY-----\n"),
    ] {
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&key, pem).unwrap();
        let errors = shoal_proxy::check_tls(&tls_block(&[(&a.cert, &key)]), &dir);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("the private key is encrypted"), "{stem}: {errors:?}");
    }
}

/// An X.509 v1 certificate (what `openssl x509 -req` makes without extensions) is refused
/// with a message that says so and how to make one rustls loads, not one that blames the key.
#[test]
fn a_version_1_certificate_is_named_as_such() {
    let dir = scratch("v1");
    let generated = rcgen::generate_simple_self_signed(vec!["v1.example.com".into()]).unwrap();
    let der = as_version_1(generated.cert.der());
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    );
    let v1 = write(&dir, "v1", pem, generated.key_pair.serialize_pem());
    let errors = shoal_proxy::check_tls(&tls_block(&[(&v1.cert, &v1.key)]), &dir);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("v1.pem: an X.509 v1 certificate"),
        "{errors:?}"
    );
}

/// `v3` (a DER certificate) as X.509 v1: its TBSCertificate without the version ([0]) and
/// the extensions ([3]). The signature no longer holds, which loading a certificate does not
/// check.
fn as_version_1(v3: &[u8]) -> Vec<u8> {
    // (tag, content, what follows) of the DER element at the front of `der`.
    fn element(der: &[u8]) -> (u8, &[u8], &[u8]) {
        let (length, head) = match der[1] {
            short if short < 0x80 => (usize::from(short), 2),
            0x81 => (usize::from(der[2]), 3),
            0x82 => (usize::from(der[2]) << 8 | usize::from(der[3]), 4),
            _ => panic!("a certificate over 64 KiB"),
        };
        (der[0], &der[head..head + length], &der[head + length..])
    }
    fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }
    let (_, certificate, _) = element(v3);
    let (_, tbs, signature) = element(certificate);
    let mut fields = Vec::new();
    let mut rest = tbs;
    while !rest.is_empty() {
        let (tag, content, next) = element(rest);
        if tag != 0xa0 && tag != 0xa3 {
            fields.extend(encode(tag, content));
        }
        rest = next;
    }
    let tbs = encode(0x30, &fields);
    encode(0x30, &[tbs, signature.to_vec()].concat())
}

/// Expired and not-yet-valid certificates are served, as HAProxy, nginx and Envoy serve
/// them, and reported as warnings.
#[tokio::test]
async fn expired_and_future_certificates_are_served_and_reported() {
    let dir = scratch("expired");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["old.example.com".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2001, 1, 1);
    params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let old = params.self_signed(&key).unwrap();
    let old = write(&dir, "old", old.pem(), key.serialize_pem());

    let mut params = rcgen::CertificateParams::new(vec!["new.example.com".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2200, 1, 1);
    params.not_after = rcgen::date_time_ymd(2201, 1, 1);
    let new = params.self_signed(&key).unwrap();
    let new = write(&dir, "new", new.pem(), key.serialize_pem());

    let tls = tls_block(&[(&old.cert, &old.key), (&new.cert, &new.key)]);
    assert_eq!(shoal_proxy::check_tls(&tls, &dir), Vec::<String>::new());
    let warnings = shoal_proxy::tls_validity_warnings(&tls, &dir);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("old.pem") && warnings[0].contains("expired"));
    assert!(warnings[1].contains("new.pem") && warnings[1].contains("not valid before"));

    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    service: svc\n    tls: {{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}\nservices:\n  svc:\n    upstreams: {{ static: [\"127.0.0.1:1\"] }}\n",
        old.cert.display(),
        old.key.display()
    );
    let config = shoal_config::parse(&yaml, "test.yaml").unwrap();
    let registry = prometheus::Registry::new();
    let proxy = shoal_proxy::Proxy::new(&config, &registry).unwrap();
    proxy.bind().await.unwrap();
    let addr = proxy.local_addr("web").unwrap();
    // The server presents the expired certificate; refusing it is the client's decision.
    let config = client_config(&[&old], &[b"http/1.1"]);
    let error = connect(addr, config, "old.example.com").await.unwrap_err();
    assert!(error.to_string().contains("certificate expired"), "{error}");
}

#[test]
fn bad_certificates_fail_the_proxy() {
    let dir = scratch("fail");
    let a = cert(&dir, "a", &["a.example.com"]);
    let b = cert(&dir, "b", &["b.example.com"]);
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    service: svc\n    tls: {{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}\nservices:\n  svc:\n    upstreams: {{ static: [\"127.0.0.1:1\"] }}\n",
        a.cert.display(),
        b.key.display(),
    );
    let config = shoal_config::parse(&yaml, "test.yaml").unwrap();
    let error = shoal_proxy::Proxy::new(&config, &prometheus::Registry::new())
        .err()
        .unwrap();
    assert!(error.to_string().contains("does not match"), "{error}");
}

#[tokio::test]
async fn reload_swaps_certificates_and_keeps_old_ones_on_error() {
    let dir = scratch("reload");
    let first = cert(&dir, "site", &["a.example.com"]);
    let backend = echo_backend("one").await;
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    service: svc\n    tls: {{ certificates: [{{ cert: site.pem, key: site.key }}] }}\nservices:\n  svc:\n    upstreams: {{ static: [\"{}\"] }}\n",
        backend.addr
    );
    let config = shoal_config::parse(&yaml, "test.yaml").unwrap();
    let proxy = shoal_proxy::Proxy::with_base(&config, &prometheus::Registry::new(), &dir).unwrap();
    proxy.bind().await.unwrap();
    let addr = proxy.local_addr("web").unwrap();
    let stream = connect(addr, client_config(&[&first], &[]), "a.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&stream), der(&first));

    let second = cert(&dir, "site", &["a.example.com"]);
    assert!(proxy.reload_certificates(&config, &dir).is_empty());
    let stream = connect(addr, client_config(&[&second], &[]), "a.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&stream), der(&second));

    std::fs::write(&second.key, "broken").unwrap();
    let errors = proxy.reload_certificates(&config, &dir);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("site.key"), "{errors:?}");
    let stream = connect(addr, client_config(&[&second], &[]), "a.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&stream), der(&second));
}

#[tokio::test]
async fn a_client_that_sends_its_whole_body_before_reading_is_answered_over_tls() {
    let dir = scratch("duplex");
    let a = cert(&dir, "a", &["a.example.com"]);
    let (up, read) = common::full_duplex_upstream(common::SENT_BEFORE_READING).await;
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    service: svc\n    tls:\n      certificates:\n        - {{ cert: \"{}\", key: \"{}\" }}\nservices:\n  svc:\n    upstreams: {{ static: [\"{up}\"] }}\n",
        a.cert.display(),
        a.key.display(),
    );
    let proxy = common::proxy(&yaml).await;
    let config = client_config(&[&a], &[b"http/1.1"]);
    let stream = connect(proxy.addr, config, "a.example.com").await.unwrap();
    common::send_whole_body_then_read(stream, read).await;
}
