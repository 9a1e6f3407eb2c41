//! The `date` field shoal adds to a response that has none (RFC 9110 §6.6.1 asks an origin
//! server for it; hyper adds it too). Its text changes once a second, so each thread keeps
//! the last one it formatted.

use std::cell::RefCell;
use std::time::SystemTime;

use http::HeaderValue;

/// Calls `f` with the `date` value for now.
pub(crate) fn with_now<R>(f: impl FnOnce(&HeaderValue) -> R) -> R {
    thread_local! {
        static DATE: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(cached, value)| {
        if *cached != second {
            // An HTTP-date is ASCII letters, digits, spaces, commas and colons: always a
            // valid field value.
            if let Ok(formatted) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
                *cached = second;
                *value = formatted;
            }
        }
        f(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_an_http_date_of_now() {
        let value = with_now(HeaderValue::clone);
        let text = value.to_str().unwrap();
        let parsed = httpdate::parse_http_date(text).unwrap();
        let age = SystemTime::now().duration_since(parsed).unwrap();
        assert!(age.as_secs() < 5, "{text:?} is not now");
    }
}
