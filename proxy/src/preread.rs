//! The first request head of a connection, read on the raw socket before a server gets it.
//!
//! Reading the first head here answers an oversized (431), malformed (400) or slow (408)
//! one with SPEC's statuses and its error header, and tells HTTP/2 prior knowledge (the
//! connection preface) from HTTP/1 without a second sniffing layer. Later requests on a
//! keep-alive connection are checked by [`crate::http1`] in the same way (with
//! [`check_fields`] and [`reject`]).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::errors::OwnError;
use crate::io;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most header fields accepted in one request head (hyper's limit is set to match).
pub(crate) const MAX_HEADERS: usize = 256;

/// What the connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Preread {
    /// A whole first head (and whatever followed it) has arrived.
    Ready(Protocol, BytesMut),
    /// The client went away before sending a request.
    Closed,
    /// The client gets this error and the connection closes.
    Reject(OwnError),
}

enum Inspect {
    Complete(Protocol),
    Partial,
    Invalid(OwnError),
}

/// Reads until the first request head is complete, within `timeout` and `limit` bytes.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
    limit: u64,
) -> Preread {
    let mut buf = BytesMut::with_capacity(4096);
    let read = async {
        loop {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Preread::Closed,
                Ok(_) => {}
            }
            match inspect(&mut buf, limit) {
                Inspect::Complete(protocol) => {
                    return Preread::Ready(protocol, std::mem::take(&mut buf))
                }
                Inspect::Invalid(error) => return Preread::Reject(error),
                Inspect::Partial if buf.len() as u64 > limit => {
                    return Preread::Reject(OwnError::HeaderTooLarge)
                }
                Inspect::Partial => {}
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Preread::Reject(OwnError::HeaderTimeout))
}

/// Rewrites a request line's `HTTP/1.2` to `HTTP/1.9` as `HTTP/1.1`, which RFC 9110 §2.5
/// asks a server to take it for (as nginx does); true when it did. The line is the first
/// after any empty ones (RFC 9112 §2.2), and may not have its end yet: httparse refuses the
/// version as soon as it has read it.
pub(crate) fn as_http11(buf: &mut BytesMut) -> bool {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let end = buf[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(buf.len(), |at| start + at);
    let line = buf[start..end]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[start..end]);
    let Some(minor_at) = line.len().checked_sub(1) else {
        return false;
    };
    if !(line[..minor_at].ends_with(b" HTTP/1.") && matches!(line[minor_at], b'2'..=b'9')) {
        return false;
    }
    buf[start + minor_at] = b'1';
    true
}

fn inspect(buf: &mut BytesMut, limit: u64) -> Inspect {
    if buf.len() >= H2_PREFACE.len() {
        if buf.starts_with(H2_PREFACE) {
            return Inspect::Complete(Protocol::Http2);
        }
    } else if H2_PREFACE.starts_with(buf) {
        return Inspect::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(length)) => {
            if length as u64 > limit {
                Inspect::Invalid(OwnError::HeaderTooLarge)
            } else {
                match check(&request) {
                    Ok(()) => Inspect::Complete(Protocol::Http1),
                    Err(error) => Inspect::Invalid(error),
                }
            }
        }
        Ok(httparse::Status::Partial) => Inspect::Partial,
        Err(httparse::Error::TooManyHeaders) => Inspect::Invalid(OwnError::HeaderTooLarge),
        Err(httparse::Error::Version) if as_http11(buf) => inspect(buf, limit),
        Err(_) => Inspect::Invalid(OwnError::BadRequest),
    }
}

/// What httparse lets through but hyper or RFC 9112 reject: an unparsable target, and
/// what [`check_fields`] finds.
fn check(request: &httparse::Request<'_, '_>) -> Result<(), OwnError> {
    if request
        .path
        .is_none_or(|path| path.parse::<http::Uri>().is_err())
    {
        return Err(OwnError::BadRequest);
    }
    check_fields(request)
}

/// [`check`] without the target, which [`crate::http1`] parses into the request's URI. A
/// missing or repeated Host on HTTP/1.1 and ambiguous framing (conflicting Content-Length,
/// a Transfer-Encoding with a Content-Length or in HTTP/1.0, chunked not last or twice),
/// which is how request smuggling starts, are 400. A transfer coding other than chunked is
/// 501 (RFC 9112 §6.1), as nginx answers it: shoal would have to pass the coded body on
/// under a framing it does not decode.
pub(crate) fn check_fields(request: &httparse::Request<'_, '_>) -> Result<(), OwnError> {
    let mut hosts = 0;
    let mut content_length: Option<&[u8]> = None;
    // Transfer codings across every Transfer-Encoding field, in order.
    let mut codings = 0;
    let mut chunked_last = false;
    let mut unsupported = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("host") {
            if !valid_host(header.value) {
                return Err(OwnError::BadRequest);
            }
            hosts += 1;
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = header.value.trim_ascii();
            // All digits, and a length that fits: a longer one is no body anyone can send.
            let fits = std::str::from_utf8(value).is_ok_and(|v| v.parse::<u64>().is_ok());
            if !value.iter().all(u8::is_ascii_digit) || !fits {
                return Err(OwnError::BadRequest);
            }
            if content_length.is_some_and(|seen| seen != value) {
                return Err(OwnError::BadRequest);
            }
            content_length = Some(value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in header.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                // An empty item (`chunked,`, or an empty field) is no framing to trust.
                if coding.is_empty() {
                    return Err(OwnError::BadRequest);
                }
                // chunked only once, and last (RFC 9112 §6.1).
                if chunked_last {
                    return Err(OwnError::BadRequest);
                }
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                unsupported |= !chunked_last;
                codings += 1;
            }
        }
    }
    if codings > 0 {
        if content_length.is_some() || request.version != Some(1) || !chunked_last {
            return Err(OwnError::BadRequest);
        }
        if unsupported {
            return Err(OwnError::NotImplemented);
        }
    }
    let hosts_valid = match request.version {
        Some(1) => hosts == 1,
        _ => hosts <= 1,
    };
    if hosts_valid {
        Ok(())
    } else {
        Err(OwnError::BadRequest)
    }
}

/// Whether a `Host` value is an authority (RFC 9112 §3.2: a request whose Host is invalid
/// gets a 400): a registered name, IPv4 address or bracketed IPv6 address, and an optional
/// port of digits. An empty host is not: an `http` URI's host may not be (RFC 9110
/// §4.2.1), and upstreams would be sent it.
pub(crate) fn valid_host(value: &[u8]) -> bool {
    let value = value.trim_ascii();
    let (host, port) = match value.strip_prefix(b"[") {
        Some(bracketed) => {
            let Some(end) = bracketed.iter().position(|&b| b == b']') else {
                return false;
            };
            let (address, rest) = bracketed.split_at(end);
            let address_byte = |b: &u8| b.is_ascii_hexdigit() || b":.".contains(b);
            if address.is_empty() || !address.iter().all(address_byte) {
                return false;
            }
            match &rest[1..] {
                [] => (&[][..], None),
                [b':', port @ ..] => (&[][..], Some(port)),
                _ => return false,
            }
        }
        None => match value.iter().rposition(|&b| b == b':') {
            Some(0) => return false,
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None if value.is_empty() => return false,
            None => (value, None),
        },
    };
    host.iter().all(|&b| NAME_BYTES[b as usize])
        && port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// The bytes of a registered name (RFC 3986 `reg-name`: unreserved, sub-delims and `%`), as
/// a table: this runs on every HTTP/1 request.
const NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"-._~!$&'()*+,;=%";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
};

/// Sends an error response on a raw connection, then closes it as [`io::close_lingering`] does.
pub(crate) async fn reject<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, error: OwnError) {
    if stream.write_all(&error.raw_response()).await.is_err() {
        return;
    }
    io::close_lingering(stream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[u8]) -> Preread {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut input = input;
        rt.block_on(read_head(&mut input, Duration::from_secs(1), 1024))
    }

    #[test]
    fn host_values() {
        for good in [
            "a",
            "a.example:8080",
            "127.0.0.1",
            "[::1]:443",
            "[2001:db8::1]",
            "a:",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "a b", "a:port", "[]", "[::1", "[::1]x", "a:123456", "a/b", "a@b", "", " ", ":80",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    /// HTTP/1.2 to 1.9 are read as 1.1: after empty lines too, and with the request line
    /// not yet whole (httparse refuses the version before the line's end arrives).
    #[test]
    fn a_higher_minor_version_is_read_as_http11() {
        let mut whole = BytesMut::from(&b"\r\nGET / HTTP/1.2\r\nHost: a\r\n\r\n"[..]);
        assert!(matches!(
            inspect(&mut whole, 1024),
            Inspect::Complete(Protocol::Http1)
        ));
        assert_eq!(&whole[..], b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        for partial in [&b"GET / HTTP/1.2"[..], b"GET / HTTP/1.9\r"] {
            let mut buf = BytesMut::from(partial);
            assert!(
                matches!(inspect(&mut buf, 1024), Inspect::Partial),
                "{partial:?}"
            );
        }
        for refused in [&b"GET / HTTP/1.12\r\n\r\n"[..], b"GET / HTTP/2.0\r\n\r\n"] {
            let mut buf = BytesMut::from(refused);
            assert!(
                matches!(
                    inspect(&mut buf, 1024),
                    Inspect::Invalid(OwnError::BadRequest)
                ),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn complete_heads_pass_with_what_follows() {
        let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(
            check(raw),
            Preread::Ready(Protocol::Http1, BytesMut::from(&raw[..]))
        );
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00";
        assert!(matches!(check(h2), Preread::Ready(Protocol::Http2, _)));
        assert!(matches!(
            check(b"GET / HTTP/1.0\r\n\r\n"),
            Preread::Ready(Protocol::Http1, _)
        ));
    }

    #[test]
    fn malformed_heads_are_refused() {
        use OwnError::{BadRequest, NotImplemented};
        for (raw, error) in [
            (&b"GET / HTTP/1.1\r\nHost a\r\n\r\n"[..], BadRequest),
            (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", BadRequest),
            (b"GARBAGE\r\n\r\n", BadRequest),
            (b"GET / HTTP/1.1\r\n\r\n", BadRequest),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", BadRequest),
            // Codings shoal does not decode (RFC 9112 §6.1: 501).
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", NotImplemented),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", NotImplemented),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n", NotImplemented),
        ] {
            assert_eq!(
                check(raw),
                Preread::Reject(error),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert!(matches!(check(chunked), Preread::Ready(Protocol::Http1, _)));
    }

    #[test]
    fn big_heads_are_too_large() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(check(&raw), Preread::Reject(OwnError::HeaderTooLarge));
        raw.extend_from_slice(b"\r\n\r\n");
        assert_eq!(check(&raw), Preread::Reject(OwnError::HeaderTooLarge));
    }

    #[test]
    fn early_close_is_just_closed() {
        assert_eq!(check(b""), Preread::Closed);
        assert_eq!(check(b"GET / HT"), Preread::Closed);
    }
}
