//! Routes of one HTTP listener, compiled once: host, path prefix and header matches, tried
//! in order, first match wins; a rule without `match` matches everything.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use shoal_config::{Listener, RouteMatch};

use crate::errors::ProxyError;
use crate::metrics::RequestMetrics;
use crate::service::{ServiceHandle, Settings};

/// A host pattern, as Envoy's virtual host domains take them: exact (case-insensitive),
/// `*.suffix`, `prefix.*`, or `*` for any host (config validation refuses other forms).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    Exact(String),
    /// `*.example.com` keeps `.example.com` and matches any non-empty label before it.
    Suffix(String),
    /// `api.*` keeps `api.` and matches any non-empty rest after it.
    Prefix(String),
}

impl Host {
    fn parse(pattern: &str) -> Host {
        let lower = pattern.to_ascii_lowercase();
        if lower == "*" {
            return Host::Any;
        }
        if let Some(suffix) = lower.strip_prefix('*').filter(|s| s.starts_with('.')) {
            return Host::Suffix(suffix.to_string());
        }
        match lower.strip_suffix('*').filter(|p| p.ends_with('.')) {
            Some(prefix) => Host::Prefix(prefix.to_string()),
            None => Host::Exact(lower),
        }
    }

    /// `host` is already without port.
    fn matches(&self, host: &str) -> bool {
        match self {
            Host::Any => true,
            Host::Exact(exact) => host.eq_ignore_ascii_case(exact),
            Host::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            Host::Prefix(prefix) => {
                host.len() > prefix.len()
                    && host.is_char_boundary(prefix.len())
                    && host[..prefix.len()].eq_ignore_ascii_case(prefix)
            }
        }
    }
}

/// The compiled conditions of one route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Matcher {
    host: Option<Host>,
    path_prefix: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Matcher {
    fn compile(listener: &str, rule: &RouteMatch) -> Result<Matcher, ProxyError> {
        let headers = rule
            .headers
            .iter()
            .map(|(name, value)| {
                match (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    (Ok(n), Ok(v)) => Ok((n, v)),
                    _ => Err(ProxyError::BadHeaderMatch {
                        listener: listener.to_string(),
                        name: name.clone(),
                        value: value.clone(),
                    }),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Matcher {
            host: rule.host.as_deref().map(Host::parse),
            path_prefix: rule.path_prefix.clone(),
            headers,
        })
    }

    fn matches(&self, host: Option<&str>, path: &str, headers: &HeaderMap) -> bool {
        if let Some(pattern) = &self.host {
            match host {
                Some(host) if pattern.matches(host) => {}
                _ => return false,
            }
        }
        if let Some(prefix) = &self.path_prefix {
            if !path.starts_with(prefix.as_str()) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

/// A route: conditions and where matching requests go.
#[derive(Clone)]
pub(crate) struct Route {
    matcher: Matcher,
    pub(crate) service: Arc<ServiceHandle>,
    /// Request metrics for this listener × service, resolved at build time.
    pub(crate) metrics: Arc<RequestMetrics>,
}

/// Finds a service's handle and the listener's request metrics for it, by service name.
pub(crate) type Resolve<'a> =
    dyn FnMut(&str) -> Option<(Arc<ServiceHandle>, Arc<RequestMetrics>)> + 'a;

/// A listener's routes in order.
#[derive(Clone)]
pub(crate) struct Routes {
    routes: Vec<Route>,
    /// Settings of the connections accepted while these routes are current.
    pub(crate) connection: ConnectionSettings,
}

/// Connection-level settings are per service in the config, but a connection is accepted
/// before any request picks a service: the listener uses the most lenient value among its
/// services, and each service's own header limit is checked again per request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionSettings {
    pub(crate) header_read: Duration,
    pub(crate) idle: Duration,
    pub(crate) max_header_bytes: u64,
    pub(crate) max_connections: usize,
}

impl ConnectionSettings {
    fn of<'a>(services: impl Iterator<Item = &'a Arc<ServiceHandle>> + Clone) -> Self {
        let max = |f: &dyn Fn(&Settings) -> u64| {
            services
                .clone()
                .map(|s| f(&s.settings()))
                .max()
                .unwrap_or_default()
        };
        ConnectionSettings {
            header_read: Duration::from_nanos(max(&|s| duration_ns(s.timeouts.header_read))),
            idle: Duration::from_nanos(max(&|s| duration_ns(s.timeouts.idle))),
            max_header_bytes: max(&|s| s.limits.max_request_header_bytes),
            max_connections: usize::try_from(max(&|s| s.limits.max_connections as u64))
                .unwrap_or(usize::MAX),
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Routes {
    /// Compiles a listener's routes; `resolve` finds a service's handle and this listener's
    /// metrics for it. A listener's `service` without routes is one catch-all route; with
    /// routes it is the fallback after them.
    pub(crate) fn compile(
        listener: &Listener,
        resolve: &mut Resolve<'_>,
    ) -> Result<Routes, ProxyError> {
        let unknown = |service: &str| ProxyError::UnknownService {
            listener: listener.name.clone(),
            service: service.to_string(),
        };
        let mut routes = Vec::with_capacity(listener.routes.len() + 1);
        for rule in &listener.routes {
            let matcher = match &rule.matches {
                Some(m) => Matcher::compile(&listener.name, m)?,
                None => Matcher::default(),
            };
            let (service, metrics) =
                resolve(&rule.service).ok_or_else(|| unknown(&rule.service))?;
            routes.push(Route {
                matcher,
                service,
                metrics,
            });
        }
        if let Some(name) = &listener.service {
            let (service, metrics) = resolve(name).ok_or_else(|| unknown(name))?;
            routes.push(Route {
                matcher: Matcher::default(),
                service,
                metrics,
            });
        }
        if routes.is_empty() {
            return Err(ProxyError::NoService {
                listener: listener.name.clone(),
            });
        }
        let connection = ConnectionSettings::of(routes.iter().map(|r| &r.service));
        Ok(Routes { routes, connection })
    }

    /// Recomputes the connection settings from the services' current settings (a reload
    /// compiles routes before it reconfigures the services they send to).
    pub(crate) fn refresh_connection_settings(&mut self) {
        self.connection = ConnectionSettings::of(self.routes.iter().map(|r| &r.service));
    }

    /// The first route matching; `host` is the request's host without port.
    pub(crate) fn find(
        &self,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| route.matcher.matches(host, path, headers))
    }
}

/// The host a request is for, without port: from the URI's authority (HTTP/2 and
/// absolute-form requests) or else the Host header.
pub(crate) fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    if let Some(host) = uri.host() {
        // The URI keeps an IPv6 literal's brackets; the Host header's loses them below.
        return Some(
            host.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host),
        );
    }
    let value = headers.get(http::header::HOST)?.to_str().ok()?;
    Some(strip_port(value))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080` → `::1`.
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(host: Option<&str>, prefix: Option<&str>, headers: &[(&str, &str)]) -> Matcher {
        let rule = RouteMatch {
            host: host.map(str::to_string),
            path_prefix: prefix.map(str::to_string),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        };
        Matcher::compile("web", &rule).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    /// The index of the first matching matcher, as `Routes::find` picks.
    fn first(matchers: &[Matcher], host: Option<&str>, path: &str, h: &HeaderMap) -> Option<usize> {
        matchers.iter().position(|m| m.matches(host, path, h))
    }

    #[test]
    fn first_match_wins() {
        let matchers = vec![
            matcher(Some("api.example.com"), Some("/v1"), &[("x-canary", "1")]),
            matcher(Some("api.example.com"), Some("/v1"), &[]),
            matcher(Some("API.example.com"), None, &[]),
            matcher(None, Some("/static"), &[]),
            Matcher::default(),
        ];
        let none = HeaderMap::new();
        let canary = headers(&[("x-canary", "1")]);
        assert_eq!(
            first(&matchers, Some("api.example.com"), "/v1/users", &canary),
            Some(0)
        );
        assert_eq!(
            first(&matchers, Some("api.example.com"), "/v1/users", &none),
            Some(1)
        );
        assert_eq!(
            first(&matchers, Some("Api.Example.com"), "/v2", &canary),
            Some(2)
        );
        assert_eq!(
            first(&matchers, Some("www.example.com"), "/static/a.css", &none),
            Some(3)
        );
        assert_eq!(first(&matchers, None, "/", &none), Some(4));
        assert_eq!(first(&matchers[..4], Some("other"), "/", &none), None);
    }

    #[test]
    fn header_values_must_match_exactly() {
        let m = matcher(None, None, &[("x-canary", "1")]);
        assert!(!m.matches(None, "/", &headers(&[("x-canary", "0")])));
        assert!(m.matches(None, "/", &headers(&[("x-canary", "0"), ("X-Canary", "1")])));
        assert!(!m.matches(None, "/", &HeaderMap::new()));
    }

    #[test]
    fn wildcard_hosts() {
        let m = matcher(Some("*.example.com"), None, &[]);
        assert!(m.matches(Some("a.example.com"), "/", &HeaderMap::new()));
        assert!(m.matches(Some("A.B.EXAMPLE.com"), "/", &HeaderMap::new()));
        assert!(!m.matches(Some("example.com"), "/", &HeaderMap::new()));
        assert!(!m.matches(Some(".example.com"), "/", &HeaderMap::new()));
        assert!(!m.matches(None, "/", &HeaderMap::new()));
    }

    #[test]
    fn any_host_and_prefix_hosts() {
        let any = matcher(Some("*"), Some("/star"), &[]);
        assert!(any.matches(Some("anything.example"), "/star", &HeaderMap::new()));
        assert!(any.matches(Some("127.0.0.1"), "/star", &HeaderMap::new()));
        // A rule on the host needs one.
        assert!(!any.matches(None, "/star", &HeaderMap::new()));
        let prefix = matcher(Some("api.*"), None, &[]);
        assert!(prefix.matches(Some("api.example.com"), "/", &HeaderMap::new()));
        assert!(prefix.matches(Some("API.local"), "/", &HeaderMap::new()));
        assert!(!prefix.matches(Some("api."), "/", &HeaderMap::new()));
        assert!(!prefix.matches(Some("web.api.com"), "/", &HeaderMap::new()));
    }

    #[test]
    fn host_comes_without_port() {
        let h = headers(&[("host", "api.example.com:8080")]);
        assert_eq!(
            request_host(&"/x".parse().unwrap(), &h),
            Some("api.example.com")
        );
        let h = headers(&[("host", "[::1]:8080")]);
        assert_eq!(request_host(&"/x".parse().unwrap(), &h), Some("::1"));
        let uri: http::Uri = "http://h2.example.com:80/x".parse().unwrap();
        assert_eq!(
            request_host(&uri, &HeaderMap::new()),
            Some("h2.example.com")
        );
        // An IPv6 authority as the Host header gives it: without brackets.
        let uri: http::Uri = "http://[::1]:8443/x".parse().unwrap();
        assert_eq!(request_host(&uri, &HeaderMap::new()), Some("::1"));
    }
}
