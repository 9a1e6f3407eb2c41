//! The human forms of durations (`250ms`, `2s`, `1m`, `1h`) and sizes (`512`, `64Ki`,
//! `128Mi`, `1Gi`), and the small string-encoded enums of the schema.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::schema::{HashOn, RetryOn, StatusRange};

/// Parses `250ms`, `2s`, `1m`, `1h` (a number and a unit; decimals like `1.5s` too), and
/// sums of them as Go's durations in Envoy's and Knative's configs write them (`1h30m`,
/// `1m30s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let mut seconds = 0.0;
    let mut rest = text;
    loop {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| {
                format!("duration `{text}` has no unit; write e.g. `250ms`, `2s`, `1m` or `1h`")
            })?;
        let (number, after) = rest.split_at(split);
        let value: f64 = number.parse().map_err(|_| {
            format!("`{text}` is not a duration; write e.g. `250ms`, `2s`, `1m` or `1h`")
        })?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        seconds += match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => {
                return Err(format!(
                    "unknown duration unit `{unit}` in `{text}`; use ms, s, m or h"
                ))
            }
        };
        if next.is_empty() {
            break;
        }
        rest = next;
    }
    match Duration::try_from_secs_f64(seconds) {
        // Timers add durations to the clock; a year is longer than any timeout or interval
        // needs, and the sum stays far from the clock's limit.
        Ok(duration) if duration <= MAX_DURATION => Ok(duration),
        _ => Err(format!(
            "duration `{text}` is out of range; the longest is 8760h (a year)"
        )),
    }
}

/// The longest duration a config may give.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A size as SPEC writes them (`512`, `64Ki`, `128Mi`, `1Gi`) or as Docker and Kubernetes
/// read them (`docker run --memory`, Compose, resource quantities): `k`, `m`, `g` and `t` in
/// either case are the same binary units (`64m` and `64M` are 64 MiB), a trailing `B` or `b`
/// is allowed (`64MiB`, `1gb`), and a number with a unit may have a fraction (`1.5g`,
/// `0.5Gi`), rounded down to whole bytes as Docker does.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let not_a_size =
        || format!("`{text}` is not a size; write e.g. `512`, `64Ki`, `128Mi`, `1.5Gi` or `1Gi`");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    // `1.5`, but not `1.` or `1.5.5` (nor `.5`, whose whole part does not parse).
    let (whole, fraction) = match number.split_once('.') {
        None => (number, ""),
        Some((whole, fraction))
            if !fraction.is_empty() && fraction.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (whole, fraction)
        }
        Some(_) => return Err(not_a_size()),
    };
    let whole: u64 = whole.parse().map_err(|_| not_a_size())?;
    let unit = unit.strip_suffix(['B', 'b']).unwrap_or(unit);
    let prefix = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match prefix {
        "" if unit.is_empty() => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        _ => {
            return Err(format!(
                "unknown size unit `{unit}` in `{text}`; use Ki, Mi, Gi or Ti (also written \
                 k, m, g, t, KiB, MB…), or none for bytes"
            ))
        }
    };
    if shift == 0 && !fraction.is_empty() {
        return Err(format!(
            "size `{text}` has a fraction of a byte; give whole bytes or a unit (`1.5Ki`)"
        ));
    }
    let too_large = || format!("size `{text}` is too large");
    let whole = whole.checked_mul(1 << shift).ok_or_else(too_large)?;
    // The fraction's bytes in integers, so that `0.5Gi` is exactly half of `1Gi`. Digits
    // past the 15th are dropped, which can lower the result by a byte at most.
    let digits = &fraction[..fraction.len().min(15)];
    let part = match digits {
        "" => 0,
        _ => {
            let numerator: u128 = digits.parse().map_err(|_| not_a_size())?;
            let denominator = 10u128.pow(digits.len() as u32);
            u64::try_from((numerator << shift) / denominator).map_err(|_| too_large())?
        }
    };
    whole.checked_add(part).ok_or_else(too_large)
}

/// Reads a scalar (number or text) and converts its text inside the visitor. Converting
/// there, rather than after `deserialize` returns, matters for error positions: the YAML
/// deserializer attaches the scalar's line, column and path only to errors raised while it
/// is reading that scalar; later ones are reported at the enclosing map.
struct Scalar<T> {
    expecting: &'static str,
    convert: fn(&str) -> Result<T, String>,
}

impl<T> de::Visitor<'_> for Scalar<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.convert)(text).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }
}

const DURATION: Scalar<Duration> = Scalar {
    expecting: "a duration like `250ms`, `2s`, `1m` or `1h`",
    convert: parse_duration,
};

const SIZE: Scalar<u64> = Scalar {
    expecting: "a size like `512`, `64Ki`, `128Mi` or `1Gi`",
    convert: parse_size,
};

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DURATION)
}

pub(crate) fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(SIZE)
}

pub(crate) fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct OptSize;

    impl<'de> de::Visitor<'de> for OptSize {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a size like `64Mi`, or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
            d.deserialize_any(SIZE).map(Some)
        }
    }

    d.deserialize_option(OptSize)
}

/// A DNS server: `IP:PORT` (`[IPv6]:PORT`), or a bare IP on port 53.
pub(crate) fn de_opt_nameserver<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    let text = text.trim();
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map(Some)
        .map_err(|_| {
            de::Error::custom(format!(
                "`{text}` is not a nameserver address: expected an IP (port 53) or IP:PORT, like `10.0.0.2` or `127.0.0.1:5353`"
            ))
        })
}

/// How the error of a name given twice in one map ends.
const REPEATED: &str = "appears twice; each name may appear once";

/// The error of `key` given twice in one map.
pub(crate) fn repeated_key(key: &str) -> String {
    format!("`{key}` {REPEATED}")
}

/// Whether an error's message is that of a name given twice: in a map of names (see
/// [`de_unique_keys`]), or a struct's field as serde words it.
pub(crate) fn is_repeated_key(message: &str) -> bool {
    message.ends_with(REPEATED) || message.starts_with("duplicate field `")
}

/// A map whose keys may each appear once (service names, `env`, route `headers`), as YAML
/// itself requires: serde's own map keeps the last of a repeated key and silently drops
/// the rest (a whole service, say). The error is raised while the map is read, so it
/// carries the line and column of the map.
pub(crate) fn de_unique_keys<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct UniqueKeys<V>(PhantomData<V>);

    impl<'de, V: Deserialize<'de>> de::Visitor<'de> for UniqueKeys<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(de::Error::custom(repeated_key(&key)));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }

    d.deserialize_map(UniqueKeys(PhantomData))
}

impl std::str::FromStr for HashOn {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        // A header or cookie name is an RFC 9110 token: nothing else can be sent as one.
        let token = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        let named = |prefix: &str| {
            text.strip_prefix(prefix)
                .filter(|name| token(name))
                .map(str::to_string)
        };
        match text {
            "client_ip" => Ok(HashOn::ClientIp),
            "path" => Ok(HashOn::Path),
            _ => {
                if let Some(name) = named("header:") {
                    Ok(HashOn::Header(name.to_ascii_lowercase()))
                } else if let Some(name) = named("cookie:") {
                    Ok(HashOn::Cookie(name))
                } else {
                    Err(format!(
                        "`{text}` is not a hash key; use client_ip, header:NAME, cookie:NAME or \
                         path, with NAME of letters, digits and !#$%&'*+-.^_`|~"
                    ))
                }
            }
        }
    }
}

/// The form it is written in the config, e.g. `header:x-user`.
impl std::fmt::Display for HashOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashOn::ClientIp => f.write_str("client_ip"),
            HashOn::Header(name) => write!(f, "header:{name}"),
            HashOn::Cookie(name) => write!(f, "cookie:{name}"),
            HashOn::Path => f.write_str("path"),
        }
    }
}

impl<'de> Deserialize<'de> for HashOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Scalar {
            expecting: "client_ip, header:NAME, cookie:NAME or path",
            convert: str::parse,
        })
    }
}

impl std::str::FromStr for RetryOn {
    type Err = String;

    /// `connect_failure`, `reset` or an HTTP status like `503`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "connect_failure" => Ok(RetryOn::ConnectFailure),
            "reset" => Ok(RetryOn::Reset),
            other => other
                .parse::<u64>()
                .map_err(|_| {
                    format!("`{other}` is not a retry condition; use connect_failure, reset or a status like 503")
                })
                .and_then(status)
                .map(RetryOn::Status),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Scalar {
            expecting: "connect_failure, reset or an HTTP status",
            convert: str::parse,
        })
    }
}

impl std::str::FromStr for StatusRange {
    type Err = String;

    /// `"200-399"` or a single status `"200"`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a status range; write e.g. \"200-399\" or \"200\"");
        let (low, high) = match text.split_once('-') {
            Some((low, high)) => (low.trim(), high.trim()),
            None => (text.trim(), text.trim()),
        };
        let low = low.parse::<u64>().map_err(|_| bad()).and_then(status)?;
        let high = high.parse::<u64>().map_err(|_| bad()).and_then(status)?;
        if low <= high {
            Ok(StatusRange { low, high })
        } else {
            Err(bad())
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Scalar {
            expecting: "a status range like \"200-399\"",
            convert: str::parse,
        })
    }
}

fn status(n: u64) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("{n} is not an HTTP status (100-599)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5d").is_err());
        // Sums, as Go writes them.
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m30.5s"), Ok(Duration::from_millis(90_500)));
        assert_eq!(parse_duration("2s500ms"), Ok(Duration::from_millis(2500)));
        for bad in ["1h30", "1h-30m", "1 h", "", "h", "1hh"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("1h5x").unwrap_err(),
            "unknown duration unit `x` in `1h5x`; use ms, s, m or h"
        );
        assert_eq!(
            parse_duration("8760h"),
            Ok(Duration::from_secs(365 * 24 * 3600))
        );
        assert!(parse_duration("8761h").is_err());
        assert!(parse_duration("999999999h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64Ki"), Ok(65536));
        assert_eq!(parse_size("128Mi"), Ok(128 << 20));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        // Docker's forms: one binary unit whatever the case, `B` allowed.
        for (text, value) in [
            ("64m", 64 << 20),
            ("64M", 64 << 20),
            ("2k", 2048),
            ("1gb", 1 << 30),
            ("64MiB", 64 << 20),
            ("512B", 512),
        ] {
            assert_eq!(parse_size(text), Ok(value), "{text}");
        }
        // Fractions with a unit, as Docker (`1.5g`) and Kubernetes (`0.5Gi`) take them,
        // rounded down to whole bytes.
        for (text, value) in [
            ("1.5g", 3 << 29),
            ("0.5Gi", 1 << 29),
            ("1.5Mi", 3 << 19),
            ("0.001Ki", 1),
            ("0.0001Ki", 0),
            ("2.25KiB", 2304),
        ] {
            assert_eq!(parse_size(text), Ok(value), "{text}");
        }
        assert_eq!(
            parse_size("1.5"),
            Err("size `1.5` has a fraction of a byte; give whole bytes or a unit (`1.5Ki`)".into())
        );
        for bad in [
            "12Qi",
            "5i",
            "5iB",
            "Mi",
            "-1",
            "64 Mi",
            ".5Gi",
            "1.Gi",
            "1..5Gi",
            "1.5.5Gi",
            "16777216.5Ti",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn hash_keys() {
        assert_eq!("client_ip".parse(), Ok(HashOn::ClientIp));
        assert_eq!("header:X-User".parse(), Ok(HashOn::Header("x-user".into())));
        assert!("header:bad name".parse::<HashOn>().is_err());
        assert!("cookie:a;b".parse::<HashOn>().is_err());
        assert_eq!("cookie:sid".parse(), Ok(HashOn::Cookie("sid".into())));
        assert!("header:".parse::<HashOn>().is_err());
    }
}
