//! Header rewriting: hop-by-hop headers are removed in both directions (RFC 9110 §7.6.1),
//! `X-Forwarded-*` are added towards the upstream, every request carries an `x-request-id`
//! both ways, and `Expect: 100-continue`, which shoal answers itself, goes no further.

use std::cell::RefCell;
use std::io::Write;
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
pub(crate) static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub(crate) static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

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

/// Whether a Transfer-Encoding value names a coding other than chunked, the only one shoal
/// decodes: a body so coded cannot be passed on, since each side frames it anew.
pub(crate) fn is_coded(value: &HeaderValue) -> bool {
    tokens(value).any(|coding| !coding.eq_ignore_ascii_case(b"chunked"))
}

/// The comma-separated tokens of a header value, trimmed, empty ones left out.
pub(crate) fn tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// Which message [`strip_hop_by_hop`] strips.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    Request,
    Response,
}

/// Removes hop-by-hop headers. With `upgrade`, `Upgrade` and `Connection: upgrade` stay so
/// the protocol switch reaches the other side.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, message: Message, upgrade: bool) {
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
    // Not hop-by-hop, but shoal answers `Expect: 100-continue` itself (as Envoy and nginx
    // do): the upstream gets the body without having to ask for it.
    if present.expect && message == Message::Request && expects_continue(headers) {
        headers.remove(header::EXPECT);
    }
    // TE is hop-by-hop, but `TE: trailers` is how a client says it accepts trailers (gRPC
    // needs it), so in a request that one value survives. In a response it means nothing.
    if present.te && message == Message::Response {
        headers.remove(header::TE);
    } else if present.te {
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
        if present.upgrade {
            drop_h2c(headers);
        }
    } else if present.upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// An Upgrade that offers h2c beside another protocol goes on without it: shoal serves h2c
/// as plain HTTP/1.1 ([`is_h2c`]), and an upstream that chose it would switch the tunnel to
/// HTTP/2 without the `HTTP2-Settings` it needs, which is hop-by-hop and gone.
fn drop_h2c(headers: &mut HeaderMap) {
    let values = headers.get_all(header::UPGRADE);
    if !values.iter().any(|value| tokens(value).any(is_h2c)) {
        return;
    }
    let kept: Vec<&[u8]> = values
        .iter()
        .flat_map(tokens)
        .filter(|protocol| !is_h2c(protocol))
        .collect();
    // Tokens of valid values joined by commas are a valid value.
    match HeaderValue::from_bytes(&kept.join(&b", "[..])) {
        Ok(value) if !kept.is_empty() => headers.insert(header::UPGRADE, value),
        _ => headers.remove(header::UPGRADE),
    };
}

/// Whether a request's `Expect` asks for `100 Continue`.
pub(crate) fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Which hop-by-hop headers a message has, and whether it has `Expect`.
#[derive(Default)]
struct HopByHop {
    connection: bool,
    keep_alive: bool,
    proxy_connection: bool,
    transfer_encoding: bool,
    te: bool,
    upgrade: bool,
    expect: bool,
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
        } else if name == header::EXPECT {
            self.expect = true;
        } else if name == KEEP_ALIVE {
            self.keep_alive = true;
        } else if name == PROXY_CONNECTION {
            self.proxy_connection = true;
        }
    }
}

/// Removes the headers that `Connection` names, which are hop-by-hop too (except
/// `Upgrade` when the switch is passed on, and `Host` and `x-request-id`, which this hop
/// needs).
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
        // A client may not take away what the hop needs: `Host` (an HTTP/1.1 request
        // without it is invalid) and its request id, which the upstream is to log as the
        // client does.
        if upgrade && name == header::UPGRADE || name == header::HOST || name == X_REQUEST_ID {
            continue;
        }
        headers.remove(name);
    }
}

/// The fields this hop sets on a request going upstream, kept beside the client's fields
/// rather than put into their map: shoal's own client writes them after the client's, as
/// nginx's proxy module writes its own lines, and only a request that goes through hyper's
/// client gets them put into its map ([`Added::put_into`]). Put into the map, five fields
/// made it grow past the room it came with (an HTTP/2 request of three fields has room for
/// six), a new allocation with every field moved, on every request.
#[derive(Default)]
pub(crate) struct Added {
    /// The target's authority, which replaces the client's Host (see `forward`), and is then
    /// the X-Forwarded-Host too.
    host: Option<HeaderValue>,
    /// The client's X-Forwarded-For with the client's address appended.
    forwarded_for: Option<HeaderValue>,
    forwarded_proto: Option<HeaderValue>,
    /// The client's Host, when the target names none.
    forwarded_host: Option<HeaderValue>,
    /// The id shoal made; a client's own stays among its fields.
    request_id: Option<HeaderValue>,
}

impl Added {
    /// What this hop sets on a request with fields `headers`, from which the fields it
    /// replaces are removed: `X-Forwarded-For` (appended to what the client sent),
    /// `X-Forwarded-Proto` and `X-Forwarded-Host` (what this hop saw: `proto`, and the
    /// target's host or else the Host field), `Host` when the target names one (else
    /// `default_host` when the client sent no Host: an HTTP/1.0 request may lack one, an
    /// HTTP/1.1 one, as upstreams are spoken to, may not), and the `x-request-id` shoal
    /// made, if it made one. `client` is the client's address as a value
    /// ([`address_value`]), made once for its connection.
    pub(crate) fn new(
        headers: &mut HeaderMap,
        client: &HeaderValue,
        proto: &'static str,
        target_host: Option<HeaderValue>,
        default_host: &HeaderValue,
        made_request_id: Option<HeaderValue>,
    ) -> Added {
        // One pass over the names finds which of the replaced fields the client sent: most
        // clients send none, and every `remove` of an absent name still hashes it.
        let (mut host, mut forwarded_for, mut forwarded_proto, mut forwarded_host) =
            (false, false, false, false);
        for name in headers.keys() {
            host |= name == header::HOST;
            forwarded_for |= name == X_FORWARDED_FOR;
            forwarded_proto |= name == X_FORWARDED_PROTO;
            forwarded_host |= name == X_FORWARDED_HOST;
        }
        let added = Added {
            forwarded_for: forwarded_for_value(headers, client, forwarded_for),
            forwarded_proto: Some(HeaderValue::from_static(proto)),
            forwarded_host: match target_host {
                Some(_) => None,
                None => headers.get(header::HOST).cloned(),
            },
            request_id: made_request_id,
            host: target_host.or_else(|| (!host).then(|| default_host.clone())),
        };
        if host && added.host.is_some() {
            headers.remove(header::HOST);
        }
        if forwarded_for {
            headers.remove(&X_FORWARDED_FOR);
        }
        if forwarded_proto {
            headers.remove(&X_FORWARDED_PROTO);
        }
        if forwarded_host {
            headers.remove(&X_FORWARDED_HOST);
        }
        added
    }

    /// The fields, in the order they are written.
    fn fields(&self) -> impl Iterator<Item = (&'static HeaderName, &HeaderValue)> {
        [
            (&HOST, self.host.as_ref()),
            (&X_FORWARDED_FOR, self.forwarded_for.as_ref()),
            (&X_FORWARDED_PROTO, self.forwarded_proto.as_ref()),
            (
                &X_FORWARDED_HOST,
                self.host.as_ref().or(self.forwarded_host.as_ref()),
            ),
            (&X_REQUEST_ID, self.request_id.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }

    /// The value this hop sets for the field `name` (any case), if it sets it.
    pub(crate) fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.fields()
            .find(|(field, _)| field.as_str().eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// Appends the fields as HTTP/1.1 header lines.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        for (name, value) in self.fields() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Puts the fields into `headers`, replacing any there, for a client that sends a map.
    pub(crate) fn put_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.fields() {
            headers.insert(name, value.clone());
        }
    }
}

static HOST: HeaderName = header::HOST;

/// The client's address as a header value, made once for each connection: `X-Forwarded-For`
/// of its requests that came with none is this value, shared.
pub(crate) fn address_value(client: IpAddr) -> HeaderValue {
    let (ip, ip_len) = ip_text(client);
    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(&ip[..ip_len]))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// `X-Forwarded-For`: the client's address, after the addresses of the fields the client
/// sent (`prior`: whether it sent any). An empty field names no hop and adds nothing.
fn forwarded_for_value(
    headers: &HeaderMap,
    client: &HeaderValue,
    prior: bool,
) -> Option<HeaderValue> {
    if !prior {
        return Some(client.clone());
    }
    let ip = client.as_bytes();
    let priors = || {
        headers
            .get_all(&X_FORWARDED_FOR)
            .into_iter()
            .filter(|prior| !prior.is_empty())
    };
    let prior_len: usize = priors().map(|prior| prior.len() + 2).sum();
    // A buffer of exactly the value's length, which becomes the header's bytes as it is (one
    // with room to spare would need a second allocation to be shared).
    let mut value = Vec::with_capacity(prior_len + ip.len());
    for prior in priors() {
        value.extend_from_slice(prior.as_bytes());
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(ip);
    HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
}

/// The longest text of an address: an IPv6 one ending in IPv4 form.
const MAX_IP_TEXT: usize = 45;

/// `ip` as text, and its length. IPv4 is written digit by digit: through `fmt` it cost more
/// than all the rest of `X-Forwarded-For`'s making.
fn ip_text(ip: IpAddr) -> ([u8; MAX_IP_TEXT], usize) {
    let mut text = [0u8; MAX_IP_TEXT];
    let len = match ip {
        IpAddr::V4(ip) => {
            let mut at = 0;
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    text[at] = b'.';
                    at += 1;
                }
                if octet >= 100 {
                    text[at] = b'0' + octet / 100;
                    at += 1;
                }
                if octet >= 10 {
                    text[at] = b'0' + octet / 10 % 10;
                    at += 1;
                }
                text[at] = b'0' + octet % 10;
                at += 1;
            }
            at
        }
        IpAddr::V6(ip) => {
            let mut rest = &mut text[..];
            // 45 bytes hold every IPv6 text, so the write cannot run out of room.
            let _ = write!(rest, "{ip}");
            MAX_IP_TEXT - rest.len()
        }
    };
    (text, len)
}

/// The request's `x-request-id`: the client's, or when it sent none a new one (a random UUID
/// v4), which is also returned second, to go upstream with the fields this hop adds
/// ([`Added`]). The first is for the response.
pub(crate) fn request_id(headers: &mut HeaderMap) -> (HeaderValue, Option<HeaderValue>) {
    let given = headers
        .get(&X_REQUEST_ID)
        .map(|id| (!id.is_empty()).then(|| id.clone()));
    let (mut id, made) = match given {
        Some(Some(given)) => (given, None),
        empty_or_absent => {
            // An empty id identifies nothing: one is made, as when it is absent.
            if empty_or_absent.is_some() {
                headers.remove(&X_REQUEST_ID);
            }
            let made = new_request_id();
            (made.clone(), Some(made))
        }
    };
    // A value that never repeats: HTTP/2's header compression would add each one to the
    // connection's table, pushing out the headers that do repeat. Sensitive values are
    // sent literally instead.
    id.set_sensitive(true);
    (id, made)
}

/// Request ids are made this many at a time, as text in one buffer that each id is a slice
/// of: one allocation and one call to the random generator a batch instead of a request, and
/// the id's copy for the response shares the buffer instead of allocating.
const IDS_PER_BATCH: usize = 64;
/// A UUID's text: 32 hex digits and 4 dashes.
const ID_LEN: usize = 36;

thread_local! {
    /// What is left of this thread's current batch of ids.
    static UNUSED_IDS: RefCell<Bytes> = const { RefCell::new(Bytes::new()) };
}

fn new_request_id() -> HeaderValue {
    let id = UNUSED_IDS.with_borrow_mut(|unused| {
        if unused.is_empty() {
            *unused = id_batch();
        }
        unused.split_to(ID_LEN)
    });
    HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// [`IDS_PER_BATCH`] random UUIDs (version 4, RFC 9562 §5.4) as text, one after another.
fn id_batch() -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut random = [0u8; 16 * IDS_PER_BATCH];
    rand::rng().fill(&mut random[..]);
    let mut text = Vec::with_capacity(ID_LEN * IDS_PER_BATCH);
    for bytes in random.chunks_exact_mut(16) {
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        for (i, byte) in bytes.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                text.push(b'-');
            }
            text.push(HEX[usize::from(byte >> 4)]);
            text.push(HEX[usize::from(byte & 0x0f)]);
        }
    }
    // Exactly as long as its allocation, so it is shared without another.
    Bytes::from(text)
}

/// A request head's size as HTTP/1.1 sends it, the size the listener's own limit counts:
/// `METHOD target HTTP/1.1\r\n`, each header as `name: value\r\n`, and the blank line.
pub(crate) fn head_size(method: &http::Method, headers: &HeaderMap, target_len: usize) -> u64 {
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let line = method.as_str().len() + 1 + target_len + " HTTP/1.1\r\n".len();
    (line + fields + 2) as u64
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
        strip_hop_by_hop(&mut headers, Message::Request, false);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, vec!["host", "x-kept"]);
    }

    #[test]
    fn connection_cannot_name_away_host_or_the_request_id() {
        let mut headers = map(&[
            ("connection", "host, x-request-id, x-a"),
            ("host", "a"),
            ("x-request-id", "abc"),
            ("x-a", "1"),
        ]);
        strip_hop_by_hop(&mut headers, Message::Request, false);
        assert_eq!(headers["host"], "a");
        assert_eq!(headers["x-request-id"], "abc");
        assert!(!headers.contains_key("x-a"));
    }

    #[test]
    fn te_trailers_survives_in_requests() {
        let mut headers = map(&[("te", "trailers, gzip")]);
        strip_hop_by_hop(&mut headers, Message::Request, false);
        assert_eq!(headers.get("te").unwrap(), "trailers");
        let mut headers = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut headers, Message::Response, false);
        assert!(headers.get("te").is_none());
    }

    #[test]
    fn only_an_expectation_of_100_continue_stays_behind() {
        for (value, kept) in [
            ("100-continue", false),
            ("100-Continue", false),
            ("x", true),
        ] {
            let mut headers = map(&[("expect", value), ("accept", "*/*")]);
            strip_hop_by_hop(&mut headers, Message::Request, false);
            assert_eq!(headers.contains_key("expect"), kept, "{value}");
            assert!(headers.contains_key("accept"));
        }
        let mut response = map(&[("expect", "100-continue")]);
        strip_hop_by_hop(&mut response, Message::Response, false);
        assert!(response.contains_key("expect"));
    }

    #[test]
    fn upgrade_keeps_the_switch() {
        let mut headers = map(&[
            ("connection", "Upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("sec-websocket-key", "abc"),
        ]);
        strip_hop_by_hop(&mut headers, Message::Request, true);
        assert_eq!(headers.get("connection").unwrap(), "upgrade");
        assert_eq!(headers.get("upgrade").unwrap(), "websocket");
        assert!(headers.get("x-secret").is_none());
        assert!(headers.get("sec-websocket-key").is_some());
    }

    #[test]
    fn an_upgrade_goes_on_without_h2c() {
        for offered in [
            &[("upgrade", "h2c, websocket")][..],
            &[("upgrade", "h2c"), ("upgrade", "websocket")],
        ] {
            let mut headers = map(offered);
            headers.insert("connection", HeaderValue::from_static("upgrade"));
            strip_hop_by_hop(&mut headers, Message::Request, true);
            let upgrade: Vec<_> = headers.get_all("upgrade").iter().collect();
            assert_eq!(upgrade, ["websocket"], "{offered:?}");
        }
    }

    #[test]
    fn an_empty_forwarded_for_names_no_hop() {
        for fields in [&[""][..], &["", "203.0.113.7"]] {
            let mut headers = map(&[("host", "example.com")]);
            for field in fields {
                headers.append(&X_FORWARDED_FOR, HeaderValue::from_static(field));
            }
            let added = from_127_0_0_1(&mut headers);
            let expected = if fields.len() == 1 {
                "127.0.0.1"
            } else {
                "203.0.113.7, 127.0.0.1"
            };
            assert_eq!(
                added.get("x-forwarded-for").unwrap(),
                expected,
                "{fields:?}"
            );
        }
    }

    #[test]
    fn forwarded_for_appends() {
        let mut headers = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "gopher"),
            ("host", "example.com"),
            ("accept", "*/*"),
        ]);
        let added = from_127_0_0_1(&mut headers);
        assert_eq!(
            added.get("X-Forwarded-For").unwrap(),
            "203.0.113.7, 10.0.0.1, 127.0.0.1"
        );
        assert_eq!(added.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(added.get("x-forwarded-host").unwrap(), "example.com");
        // The client's Host stays where it was; the fields replaced leave the map.
        assert_eq!(added.get("host"), None);
        let mut left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "host"]);
        let mut out = Vec::new();
        added.write(&mut out);
        assert_eq!(
            out,
            b"x-forwarded-for: 203.0.113.7, 10.0.0.1, 127.0.0.1\r\n\
              x-forwarded-proto: http\r\nx-forwarded-host: example.com\r\n"
        );
    }

    /// What this hop adds to a request with `headers` and an origin-form target from
    /// 127.0.0.1, on a listener bound to 127.0.0.1:8080.
    fn from_127_0_0_1(headers: &mut HeaderMap) -> Added {
        Added::new(
            headers,
            &address_value("127.0.0.1".parse().unwrap()),
            "http",
            None,
            &HeaderValue::from_static("127.0.0.1:8080"),
            None,
        )
    }

    #[test]
    fn a_request_without_host_gets_the_listener_s() {
        let added = from_127_0_0_1(&mut map(&[("accept", "*/*")]));
        assert_eq!(added.get("host").unwrap(), "127.0.0.1:8080");
    }

    #[test]
    fn a_target_host_replaces_the_host_field() {
        let mut headers = map(&[("host", "old.example"), ("x-forwarded-host", "spoofed")]);
        let made = new_request_id();
        let added = Added::new(
            &mut headers,
            &address_value("::1".parse().unwrap()),
            "https",
            Some(HeaderValue::from_static("new.example")),
            &HeaderValue::from_static("127.0.0.1:8080"),
            Some(made.clone()),
        );
        assert!(headers.is_empty());
        added.put_into(&mut headers);
        assert_eq!(headers["host"], "new.example");
        assert_eq!(headers["x-forwarded-host"], "new.example");
        assert_eq!(headers["x-forwarded-for"], "::1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-request-id"], made);
        assert_eq!(headers.len(), 5);
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
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let (text, len) = ip_text(ip.parse().unwrap());
            assert_eq!(std::str::from_utf8(&text[..len]).unwrap(), ip);
        }
    }

    #[test]
    fn request_ids_stay_unique_and_well_formed_across_batches() {
        let ids: Vec<HeaderValue> = (0..3 * IDS_PER_BATCH + 1)
            .map(|_| new_request_id())
            .collect();
        let unique: std::collections::HashSet<&[u8]> =
            ids.iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids {
            let text = id.to_str().unwrap();
            assert_eq!(text.len(), ID_LEN);
            let dashes: Vec<usize> = text.match_indices('-').map(|(at, _)| at).collect();
            assert_eq!(dashes, [8, 13, 18, 23]);
            assert_eq!(&text[14..15], "4");
            assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"));
            assert!(text
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }

    #[test]
    fn request_id_is_kept_or_made() {
        let mut headers = map(&[("x-request-id", "abc")]);
        assert_eq!(
            request_id(&mut headers),
            (HeaderValue::from_static("abc"), None)
        );
        assert_eq!(headers["x-request-id"], "abc");
        let mut headers = HeaderMap::new();
        let (id, made) = request_id(&mut headers);
        assert_eq!(made.as_ref(), Some(&id));
        assert!(headers.is_empty());
        let text = id.to_str().unwrap();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4");
        assert_ne!(request_id(&mut HeaderMap::new()).0, id);
        let mut headers = map(&[("x-request-id", "")]);
        let (id, made) = request_id(&mut headers);
        assert_eq!(id.len(), 36);
        assert_eq!(made, Some(id.clone()));
        assert!(headers.is_empty());
        // what goes back to the client stays out of HTTP/2's compression table
        assert!(id.is_sensitive());
    }
}
