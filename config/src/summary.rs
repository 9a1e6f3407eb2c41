//! The human summary `shoal validate` prints for a good config.

use std::fmt::Write;

use crate::schema::{Balance, Config, DnsRecord, Protocol, RouteMatch, Service};

impl Config {
    /// A short description: each listener with its bind, protocol and where it routes, each
    /// service with its kind, balancer and scale range. Every line ends in `\n`.
    ///
    /// ```text
    /// listeners:
    ///   web  127.0.0.1:8080  http  api.example.com/v1 -> api, * -> web
    /// services:
    ///   api  upstreams: 127.0.0.1:9001, 127.0.0.1:9002  round_robin
    ///   web  container: image images/web.tar  p2c_ewma  scale 1-10 on concurrency
    /// ```
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, so the results are ignored on purpose.
        let _ = writeln!(out, "listeners:");
        if self.listeners.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for listener in &self.listeners {
            let protocol = match (listener.protocol, listener.tls.is_some()) {
                (Protocol::Http, false) => "http",
                (Protocol::Http, true) => "https",
                (Protocol::Tcp, false) => "tcp",
                (Protocol::Tcp, true) => "tcp+tls",
            };
            let target = match &listener.service {
                Some(service) => format!("-> {service}"),
                None => listener
                    .routes
                    .iter()
                    .map(|route| {
                        let rule = route.matches.as_ref().map_or("*".to_string(), describe);
                        format!("{rule} -> {}", route.service)
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let _ = writeln!(
                out,
                "  {}  {}  {protocol}  {target}",
                listener.name, listener.bind
            );
        }
        let _ = writeln!(out, "services:");
        if self.services.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for (name, service) in &self.services {
            let _ = writeln!(out, "  {name}  {}", describe_service(service));
        }
        out
    }
}

fn describe(matches: &RouteMatch) -> String {
    let mut rule = String::new();
    if let Some(host) = &matches.host {
        rule.push_str(host);
    }
    if let Some(prefix) = &matches.path_prefix {
        rule.push_str(prefix);
    }
    for (name, value) in &matches.headers {
        if !rule.is_empty() {
            rule.push(' ');
        }
        let _ = write!(rule, "[{name}: {value}]");
    }
    if rule.is_empty() {
        rule.push('*');
    }
    rule
}

fn describe_service(service: &Service) -> String {
    let balance = match service.balance {
        Balance::RoundRobin => "round_robin".to_string(),
        Balance::LeastRequest => "least_request".to_string(),
        Balance::P2cEwma => "p2c_ewma".to_string(),
        Balance::ConsistentHash => match &service.hash_on {
            Some(key) => format!("consistent_hash on {key}"),
            None => "consistent_hash".to_string(),
        },
    };
    if let Some(container) = &service.container {
        let source = match (&container.image, &container.rootfs) {
            (Some(image), _) => format!("image {}", image.display()),
            (None, Some(rootfs)) => format!("rootfs {}", rootfs.display()),
            (None, None) => "host".to_string(),
        };
        let scale = &service.scale;
        let metric = scale.metric.as_str();
        format!(
            "container: {source}  {balance}  scale {}-{} on {metric} (target {})",
            scale.min, scale.max, scale.target
        )
    } else if let Some(upstreams) = &service.upstreams {
        let mut backends: Vec<String> = upstreams.static_.iter().map(ToString::to_string).collect();
        if let Some(dns) = &upstreams.dns {
            let port = match dns.record {
                DnsRecord::Srv => String::new(),
                DnsRecord::A | DnsRecord::Aaaa => format!(":{}", dns.port),
            };
            backends.push(format!("dns {}{port}", dns.name));
        }
        format!("upstreams: {}  {balance}", backends.join(", "))
    } else {
        balance
    }
}
