//! Header rewriting: hop-by-hop headers are removed in both directions (RFC 9110 §7.6.1),
//! `X-Forwarded-*` are added towards the upstream, and every request carries an
//! `x-request-id` both ways.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;
use rand::Rng;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_SHOAL_ERROR: HeaderName = HeaderName::from_static("x-shoal-error");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether the headers ask to switch protocols (`Connection: upgrade` and `Upgrade: …`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|protocol| !is_h2c(protocol.as_bytes()))
        && connection_has(headers, "upgrade")
}

/// An `Upgrade: h2c` (HTTP/2 from HTTP/1.1, RFC 7540 §3.2, dropped by RFC 9113) is served as
/// the plain HTTP/1.1 request it also is, its upgrade headers removed with the other
/// hop-by-hop ones, as Envoy and nginx do: passed on, it would switch the upstream, not
/// shoal, to HTTP/2, with its `HTTP2-Settings` already removed as hop-by-hop.
pub(crate) fn is_h2c(protocol: &[u8]) -> bool {
    protocol.trim_ascii().eq_ignore_ascii_case(b"h2c")
}

/// Whether an HTTP/1 request's `Host` fields are as RFC 9112 §3.2 asks: exactly one in
/// HTTP/1.1 (at most one in HTTP/1.0), holding an authority.
pub(crate) fn valid_hosts(headers: &HeaderMap, version: Version) -> bool {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => crate::preread::valid_host(host.as_bytes()),
        (None, None) => version < Version::HTTP_11,
        _ => false,
    }
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers. With `upgrade`, `Upgrade` and `Connection: upgrade` stay so
/// the protocol switch reaches the other side.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names finds which hop-by-hop headers are there: most messages carry
    // none or only `Connection`, and every `remove` of an absent name still hashes it.
    let mut present = HopByHop::default();
    for name in headers.keys() {
        present.note(name);
    }
    if present.connection {
        remove_connection_named(headers, upgrade);
        headers.remove(header::CONNECTION);
    }
    if present.keep_alive {
        headers.remove(&KEEP_ALIVE);
    }
    if present.proxy_connection {
        headers.remove(&PROXY_CONNECTION);
    }
    if present.transfer_encoding {
        headers.remove(header::TRANSFER_ENCODING);
    }
    // TE is hop-by-hop, but `TE: trailers` is how a client says it accepts trailers (gRPC
    // needs it), so that one value survives.
    if present.te {
        let trailers = headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
        headers.remove(header::TE);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present.upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// Which hop-by-hop headers a message has.
#[derive(Default)]
struct HopByHop {
    connection: bool,
    keep_alive: bool,
    proxy_connection: bool,
    transfer_encoding: bool,
    te: bool,
    upgrade: bool,
}

impl HopByHop {
    fn note(&mut self, name: &HeaderName) {
        if name == header::CONNECTION {
            self.connection = true;
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == header::TE {
            self.te = true;
        } else if name == header::UPGRADE {
            self.upgrade = true;
        } else if name == KEEP_ALIVE {
            self.keep_alive = true;
        } else if name == PROXY_CONNECTION {
            self.proxy_connection = true;
        }
    }
}

/// Removes the headers that `Connection` names, which are hop-by-hop too (except
/// `Upgrade` when the switch is passed on).
fn remove_connection_named(headers: &mut HeaderMap, upgrade: bool) {
    // The names are collected before any is removed, which is the one allocation here and
    // only when Connection lists something other than keep-alive/close/upgrade.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            let token = token.trim();
            if token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || token.eq_ignore_ascii_case("keep-alive")
                || token.eq_ignore_ascii_case("upgrade")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        if upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
}

/// Adds `X-Forwarded-For` (appended to what the client sent), `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (set to what this hop saw).
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    // The value is built in one buffer that becomes the header's bytes without a copy.
    let mut value = Vec::with_capacity(64);
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        value.extend_from_slice(prior.as_bytes());
        value.extend_from_slice(b", ");
    }
    push_ip(&mut value, client);
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(&X_FORWARDED_HOST, host.clone());
    }
}

/// Appends `ip` as text. IPv4 is written digit by digit: through `fmt` it cost more than
/// all the rest of [`add_forwarded`].
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(ip) => out.extend_from_slice(ip.to_string().as_bytes()),
    }
}

/// The request's `x-request-id`, generated (a random UUID v4) and set when absent.
pub(crate) fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    let id = headers.entry(&X_REQUEST_ID).or_insert_with(new_request_id);
    // An empty id identifies nothing: one is made, as when it is absent.
    if id.is_empty() {
        *id = new_request_id();
    }
    let mut id = id.clone();
    // A value that never repeats: HTTP/2's header compression would add each one to the
    // connection's table, pushing out the headers that do repeat. Sensitive values are
    // sent literally instead.
    id.set_sensitive(true);
    id
}

fn new_request_id() -> HeaderValue {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// An estimate of a request head's size on the wire: each header as `name: value\r\n`.
pub(crate) fn head_size(headers: &HeaderMap, target_len: usize) -> u64 {
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    (target_len + 16 + fields) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("x-kept", "2"),
            ("host", "example.com"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, vec!["host", "x-kept"]);
    }

    #[test]
    fn te_trailers_survives() {
        let mut headers = map(&[("te", "trailers, gzip")]);
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.get("te").unwrap(), "trailers");
    }

    #[test]
    fn upgrade_keeps_the_switch() {
        let mut headers = map(&[
            ("connection", "Upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers.get("connection").unwrap(), "upgrade");
        assert_eq!(headers.get("upgrade").unwrap(), "websocket");
        assert!(headers.get("x-secret").is_none());
        assert!(headers.get("sec-websocket-key").is_some());
    }

    #[test]
    fn forwarded_for_appends() {
        let mut headers = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        let host = HeaderValue::from_static("example.com");
        add_forwarded(
            &mut headers,
            "127.0.0.1".parse().unwrap(),
            "http",
            Some(&host),
        );
        assert_eq!(
            headers.get("x-forwarded-for").unwrap(),
            "203.0.113.7, 10.0.0.1, 127.0.0.1"
        );
        assert_eq!(headers.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(headers.get("x-forwarded-host").unwrap(), "example.com");
    }

    #[test]
    fn client_addresses_are_written_as_text() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "::1",
            "::ffff:10.0.0.1",
            "2001:db8::7",
        ] {
            let mut out = Vec::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), ip);
        }
    }

    #[test]
    fn request_id_is_kept_or_made() {
        let mut headers = map(&[("x-request-id", "abc")]);
        assert_eq!(ensure_request_id(&mut headers), "abc");
        let mut headers = HeaderMap::new();
        let id = ensure_request_id(&mut headers);
        assert_eq!(headers.get("x-request-id"), Some(&id));
        let text = id.to_str().unwrap();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4");
        assert_ne!(ensure_request_id(&mut HeaderMap::new()), id);
        let mut headers = map(&[("x-request-id", "")]);
        let made = ensure_request_id(&mut headers);
        assert_eq!(made.len(), 36);
        assert_eq!(headers.get("x-request-id"), Some(&made));
        // what goes back to the client stays out of HTTP/2's compression table
        assert!(id.is_sensitive());
    }
}
