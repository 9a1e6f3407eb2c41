//! An HTTP/1 message body taken off the front of a connection's read buffer as its framing
//! delimits it (RFC 9112 §6, §7.1): a length, the chunked coding, or the end of the
//! connection. shoal's client reads upstream responses with it ([`crate::client`]), and
//! shoal's HTTP/1 server the request bodies it streams ([`crate::http1`]).

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

use crate::preread::MAX_HEADERS;

/// A chunk-size line longer than this (extensions included) is refused.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;

/// Where a body is, between calls to [`Decoder::decode`].
pub(crate) enum Decoder {
    /// This many bytes of the body are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the connection ends (a response without length or coding).
    UntilClose,
    Done,
}

pub(crate) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// What [`Decoder::decode`] found in the buffer.
pub(crate) enum Decoded {
    Frame(Frame<Bytes>),
    /// The body has ended.
    End,
    /// More input is needed.
    More,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("malformed chunked body: {0}")]
    Malformed(&'static str),
    #[error("chunk-size line over {MAX_CHUNK_LINE} bytes, or trailer section over the limit")]
    TooLarge,
}

impl Decoder {
    /// A body of `length` bytes.
    pub(crate) fn length(length: u64) -> Decoder {
        match length {
            0 => Decoder::Done,
            n => Decoder::Length(n),
        }
    }

    pub(crate) fn chunked() -> Decoder {
        Decoder::Chunked(Chunk::Size)
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Decoder::Done)
    }

    /// The bytes of body still to come, when the framing says.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// The input ended: that ends a body delimited by it (`true`); any other is cut short.
    pub(crate) fn end_of_input(&mut self) -> bool {
        let ends = matches!(self, Decoder::UntilClose | Decoder::Done);
        if ends {
            *self = Decoder::Done;
        }
        ends
    }

    /// Takes the body's next frame off the front of `read`: data as it comes (sharing
    /// `read`'s memory), then the trailers of a chunked body if it has any. A trailer
    /// section over `max_trailers` bytes is refused. Inlined: it is on every response's
    /// path (callgrind: 36 fewer instructions a proxied GET than as a call of its own).
    #[inline]
    pub(crate) fn decode(
        &mut self,
        read: &mut BytesMut,
        max_trailers: usize,
    ) -> Result<Decoded, DecodeError> {
        loop {
            match self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(remaining) | Decoder::Chunked(Chunk::Data(remaining))
                    if !read.is_empty() =>
                {
                    let take = read
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    let data = read.split_to(take).freeze();
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        *self = match self {
                            Decoder::Length(_) => Decoder::Done,
                            _ => Decoder::Chunked(Chunk::DataEnd),
                        };
                    }
                    return Ok(Decoded::Frame(Frame::data(data)));
                }
                Decoder::UntilClose if !read.is_empty() => {
                    return Ok(Decoded::Frame(Frame::data(read.split().freeze())));
                }
                Decoder::Chunked(Chunk::Size) => {
                    if let Some(end) = line_end(read)? {
                        let size = chunk_size(&read[..end])?;
                        let _ = read.split_to(end + 2);
                        *self = Decoder::Chunked(match size {
                            0 => Chunk::Trailers,
                            n => Chunk::Data(n),
                        });
                        continue;
                    }
                    if read.len() > MAX_CHUNK_LINE {
                        return Err(DecodeError::TooLarge);
                    }
                }
                Decoder::Chunked(Chunk::DataEnd) if read.len() >= 2 => {
                    if &read[..2] != b"\r\n" {
                        return Err(DecodeError::Malformed("chunk without CRLF"));
                    }
                    let _ = read.split_to(2);
                    *self = Decoder::Chunked(Chunk::Size);
                    continue;
                }
                Decoder::Chunked(Chunk::Trailers) => {
                    if read.starts_with(b"\r\n") {
                        let _ = read.split_to(2);
                        *self = Decoder::Done;
                        return Ok(Decoded::End);
                    }
                    if let Some(end) = find(read, b"\r\n\r\n") {
                        let section = read.split_to(end + 4);
                        *self = Decoder::Done;
                        return Ok(Decoded::Frame(Frame::trailers(trailers(&section)?)));
                    }
                    if read.len() > max_trailers {
                        return Err(DecodeError::TooLarge);
                    }
                }
                Decoder::Length(_)
                | Decoder::UntilClose
                | Decoder::Chunked(Chunk::Data(_) | Chunk::DataEnd) => {}
            }
            return Ok(Decoded::More);
        }
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Where the line at the start of `bytes` ends (its CR), once its LF is in. A bare LF
/// is refused rather than waited past.
fn line_end(bytes: &[u8]) -> Result<Option<usize>, DecodeError> {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(lf) if lf > 0 && bytes[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(DecodeError::Malformed("chunk-size line without CRLF")),
        None => Ok(None),
    }
}

/// The size on a chunk-size line: hex digits, then nothing or (after optional blanks) `;`
/// and extensions, which are ignored but may hold no control characters.
fn chunk_size(line: &[u8]) -> Result<u64, DecodeError> {
    let invalid = || DecodeError::Malformed("invalid chunk size");
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    let extensions = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    let well_formed = digits > 0
        && (extensions.is_empty() || extensions[0] == b';')
        && !extensions
            .iter()
            .any(|&b| b.is_ascii_control() && b != b'\t');
    if !well_formed {
        return Err(invalid());
    }
    line[..digits].iter().try_fold(0u64, |size, &digit| {
        let value = char::from(digit).to_digit(16).ok_or_else(invalid)?;
        size.checked_mul(16)
            .and_then(|size| size.checked_add(u64::from(value)))
            .ok_or_else(invalid)
    })
}

/// The trailer fields of a chunked body (`section` ends with the blank line).
fn trailers(section: &[u8]) -> Result<HeaderMap, DecodeError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let invalid = || DecodeError::Malformed("invalid trailer section");
    let fields = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(invalid()),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| invalid())?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| invalid())?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes all of `input`, fed in pieces of `step` bytes: the data, the trailers.
    fn decode_all(
        mut decoder: Decoder,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), DecodeError> {
        let (mut read, mut data, mut trailers) = (BytesMut::new(), Vec::new(), None);
        let mut pieces = input.chunks(step);
        loop {
            match decoder.decode(&mut read, 1024)? {
                Decoded::Frame(frame) => match frame.into_data() {
                    Ok(bytes) => data.extend_from_slice(&bytes),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Decoded::End => return Ok((data, trailers)),
                Decoded::More => match pieces.next() {
                    Some(piece) => read.extend_from_slice(piece),
                    None if decoder.end_of_input() => return Ok((data, trailers)),
                    None => return Err(DecodeError::Malformed("cut short")),
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_pieces() {
        let input = b"5\r\nhello\r\n6;ext=\"v\"\r\n world\r\n0\r\nx-sum: 11\r\n\r\n";
        for step in [1, 2, 7, input.len()] {
            let (data, trailers) = decode_all(Decoder::chunked(), input, step).unwrap();
            assert_eq!(data, b"hello world", "pieces of {step}");
            assert_eq!(trailers.expect("trailers")["x-sum"], "11");
        }
        let (data, trailers) = decode_all(Decoder::chunked(), b"0\r\n\r\n", 1).unwrap();
        assert!(data.is_empty() && trailers.is_none());
    }

    #[test]
    fn lengths_end_where_they_say_and_until_close_at_the_end() {
        let (data, _) = decode_all(Decoder::length(5), b"hello", 2).unwrap();
        assert_eq!(data, b"hello");
        assert!(decode_all(Decoder::length(6), b"hello", 2).is_err());
        let (data, _) = decode_all(Decoder::UntilClose, b"to the end", 3).unwrap();
        assert_eq!(data, b"to the end");
        assert_eq!(Decoder::length(0).remaining(), Some(0));
        assert_eq!(Decoder::chunked().remaining(), None);
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for input in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5;a\x01\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"2\r\nabXY",
            b"0\r\nnot a field\r\n\r\n",
        ] {
            let decoded = decode_all(Decoder::chunked(), input, input.len());
            assert!(
                matches!(decoded, Err(DecodeError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let long = [b'1'; MAX_CHUNK_LINE + 1];
        assert!(matches!(
            decode_all(Decoder::chunked(), &long, long.len()),
            Err(DecodeError::TooLarge)
        ));
        let mut trailers = b"0\r\nx-big: ".to_vec();
        trailers.extend_from_slice(&[b'a'; 2000]);
        assert!(matches!(
            decode_all(Decoder::chunked(), &trailers, trailers.len()),
            Err(DecodeError::TooLarge)
        ));
    }
}
