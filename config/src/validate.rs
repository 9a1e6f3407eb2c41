//! Checks of meaning that types alone cannot express. Every problem is collected (a user
//! fixes a file in one pass, not one error per run), each at the dotted path of the value to
//! change: map keys joined by `.`, list items as `[index]` — the same style `serde_yaml_ng`
//! uses for type errors, e.g. `listeners[0].routes[1].service`, `services.web.scale.max`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::error::{closest, ConfigError, ConfigErrors};
use crate::schema::{
    Balance, Config, Container, HashOn, Health, Limits, Listener, Mount, Outlier, Protocol,
    Retries, Scale, ScaleMetric, Service, Timeouts, Upstreams,
};

/// The most proxy worker threads `workers` may ask for.
pub const MAX_WORKERS: usize = 1024;
/// The smallest `resources.memory` a replica may have: below it even a static binary fails
/// to start, which would look like a crash loop rather than a config mistake.
pub const MIN_MEMORY: u64 = 4 << 20;
/// The largest `resources.pids`: one below Linux's ceiling on process ids
/// (`PID_MAX_LIMIT`, the most `pids.max` takes), which the runtime's init takes up.
pub const MAX_PIDS: u64 = (1 << 22) - 1;
/// The longest `runtime.subnet` prefix: a /31 or /32 leaves no address for a replica.
pub const MAX_SUBNET_PREFIX: u8 = 30;
/// Signal names `stop_signal` accepts, also without the `SIG` prefix: those that ask a
/// process to end, among them the graceful stops of common servers (nginx's SIGQUIT,
/// Apache httpd's SIGWINCH). SIGSTOP and other job-control signals would only pause it
/// until the SIGKILL.
pub const STOP_SIGNALS: [&str; 11] = [
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGWINCH",
    "SIGABRT", "SIGALRM", "SIGPWR",
];

pub(crate) fn validate(config: &Config, file: &str) -> Result<(), ConfigErrors> {
    let mut check = Check {
        file,
        config,
        errors: Vec::new(),
    };
    check.top_level();
    for (index, listener) in config.listeners.iter().enumerate() {
        check.listener(&format!("listeners[{index}]"), index, listener);
    }
    for (name, service) in &config.services {
        check.service(&format!("services.{name}"), name, service);
    }
    if check.errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(check.errors))
    }
}

struct Check<'a> {
    file: &'a str,
    config: &'a Config,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors
            .push(ConfigError::at_path(self.file, path, message));
    }

    /// Records `message` at `path` unless `ok`.
    fn ensure(&mut self, ok: bool, path: impl Into<String>, message: impl Into<String>) {
        if !ok {
            self.error(path, message);
        }
    }

    fn positive(&mut self, value: Duration, path: String) {
        self.ensure(
            !value.is_zero(),
            path,
            "must be longer than 0; write e.g. `500ms` or `2s`",
        );
    }

    fn top_level(&mut self) {
        let config = self.config;
        self.ensure(
            config.workers <= MAX_WORKERS,
            "workers",
            format!(
                "{} worker threads is more than the limit of {MAX_WORKERS}; use 0 for one per core",
                config.workers
            ),
        );
        if let Some(token) = &config.admin.token_file {
            self.ensure(
                !token.as_os_str().is_empty(),
                "admin.token_file",
                "is empty; give the path of a file holding the token, or remove the key",
            );
        }
        if let Err(message) = check_subnet(&config.runtime.subnet) {
            self.error("runtime.subnet", message);
        }
    }

    fn listener(&mut self, path: &str, index: usize, listener: &Listener) {
        let config = self.config;
        if listener.name.trim().is_empty() {
            self.error(format!("{path}.name"), "is empty; give the listener a name");
        }
        let earlier = &config.listeners[..index];
        if let Some(first) = earlier.iter().position(|l| l.name == listener.name) {
            self.error(
                format!("{path}.name"),
                format!(
                    "listener name `{}` is already used by listeners[{first}]; names must be unique",
                    listener.name
                ),
            );
        }
        if let Some(first) = earlier.iter().position(|l| overlap(l.bind, listener.bind)) {
            self.error(
                format!("{path}.bind"),
                format!(
                    "{} is already bound by listeners[{first}] ({}); each listener needs its own address",
                    listener.bind, earlier[first].bind
                ),
            );
        } else if overlap(config.admin.listen, listener.bind) {
            self.error(
                format!("{path}.bind"),
                format!(
                    "{} is the admin API's address (admin.listen: {}); give the listener another",
                    listener.bind, config.admin.listen
                ),
            );
        }
        if let Some(service) = &listener.service {
            self.service_ref(format!("{path}.service"), service);
        }
        match listener.protocol {
            Protocol::Tcp => {
                self.ensure(
                    listener.service.is_some(),
                    format!("{path}.service"),
                    "a tcp listener needs `service`: the service its connections go to",
                );
                self.ensure(
                    listener.routes.is_empty(),
                    format!("{path}.routes"),
                    "tcp listeners do not route requests; remove `routes` and set `service`, \
                     or use `protocol: http`",
                );
                self.tcp_hash(path, listener.service.as_deref());
            }
            Protocol::Http => match (&listener.service, listener.routes.is_empty()) {
                (None, true) => self.error(
                    path,
                    "an http listener needs `service` (one service) or `routes`",
                ),
                (Some(_), false) => self.error(
                    format!("{path}.service"),
                    "set either `service` or `routes`, not both; for a default, end `routes` \
                     with a rule without `match`",
                ),
                _ => {}
            },
        }
        let last = listener.routes.len().saturating_sub(1);
        for (i, route) in listener.routes.iter().enumerate() {
            let route_path = format!("{path}.routes[{i}]");
            self.service_ref(format!("{route_path}.service"), &route.service);
            let matches_all = route.matches.as_ref().is_none_or(|m| {
                m.host.is_none() && m.path_prefix.is_none() && m.headers.is_empty()
            });
            if matches_all && i != last {
                self.error(
                    route_path.clone(),
                    format!(
                        "a route without `match` matches every request, so routes[{}..] after \
                         it are never used; move it last",
                        i + 1
                    ),
                );
            }
            if let Some(matches) = &route.matches {
                if let Some(host) = &matches.host {
                    if let Some(why) = host_pattern_error(host) {
                        self.error(format!("{route_path}.match.host"), why);
                    }
                }
                if let Some(prefix) = &matches.path_prefix {
                    self.ensure(
                        prefix.starts_with('/'),
                        format!("{route_path}.match.path_prefix"),
                        format!("`{prefix}` must start with `/`"),
                    );
                }
            }
        }
        if let Some(tls) = &listener.tls {
            self.ensure(
                !tls.certificates.is_empty(),
                format!("{path}.tls.certificates"),
                "is empty; list at least one { cert, key }, or remove `tls`",
            );
            for (i, certificate) in tls.certificates.iter().enumerate() {
                let cert_path = format!("{path}.tls.certificates[{i}]");
                self.ensure(
                    !certificate.cert.as_os_str().is_empty(),
                    format!("{cert_path}.cert"),
                    "is empty; give the path of a PEM certificate chain",
                );
                self.ensure(
                    !certificate.key.as_os_str().is_empty(),
                    format!("{cert_path}.key"),
                    "is empty; give the path of a PEM private key",
                );
                // One name, one certificate: which of two a client gets would be an accident
                // of order (Envoy refuses such a listener too).
                for (j, name) in certificate.sni.iter().enumerate() {
                    let earlier = tls.certificates[..i]
                        .iter()
                        .position(|c| c.sni.iter().any(|n| n.eq_ignore_ascii_case(name)));
                    if let Some(earlier) = earlier {
                        self.error(
                            format!("{cert_path}.sni[{j}]"),
                            format!(
                                "`{name}` is already served by certificates[{earlier}]; \
                                 list each name under one certificate"
                            ),
                        );
                    }
                }
            }
        }
    }

    /// `name` must be a service of the config; suggests the closest one when it is not.
    /// A tcp listener sees no headers, cookies or paths: only `client_ip` can be hashed.
    fn tcp_hash(&mut self, path: &str, service: Option<&str>) {
        let hash_on = service
            .and_then(|name| self.config.services.get(name))
            .and_then(|s| s.hash_on.as_ref());
        if let (Some(name), Some(hash_on)) = (service, hash_on) {
            if *hash_on != HashOn::ClientIp {
                self.error(
                    format!("{path}.service"),
                    format!(
                        "service `{name}` hashes on `{hash_on}`, which a tcp listener cannot \
                         see; give it `hash_on: client_ip` or serve it over http"
                    ),
                );
            }
        }
    }

    fn service_ref(&mut self, path: String, name: &str) {
        let services = &self.config.services;
        if services.contains_key(name) {
            return;
        }
        let hint = match closest(name, services.keys().map(String::as_str)) {
            Some(best) => format!("did you mean `{best}`?"),
            None if services.is_empty() => "define it under `services:`".to_string(),
            None => {
                let known: Vec<String> = services.keys().map(|k| format!("`{k}`")).collect();
                format!("known services: {}", known.join(", "))
            }
        };
        self.error(path, format!("no service named `{name}`; {hint}"));
    }

    fn service(&mut self, path: &str, name: &str, service: &Service) {
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        self.ensure(
            valid_name,
            path,
            format!(
                "service name `{name}` may hold only letters, digits, `-` and `_`, and must \
                 start with a letter or digit (it names replicas, cgroups and metrics)"
            ),
        );
        match (&service.container, &service.upstreams) {
            (Some(container), None) => self.container(&format!("{path}.container"), container),
            (None, Some(upstreams)) => self.upstreams(&format!("{path}.upstreams"), upstreams),
            (Some(_), Some(_)) => self.error(
                path,
                "set exactly one of `container` (shoal runs the replicas) or `upstreams` \
                 (existing backends), not both",
            ),
            (None, None) => self.error(
                path,
                "set exactly one of `container` (shoal runs the replicas) or `upstreams` \
                 (existing backends)",
            ),
        }
        match (service.balance, &service.hash_on) {
            (Balance::ConsistentHash, None) => self.error(
                format!("{path}.hash_on"),
                "`balance: consistent_hash` needs `hash_on`: client_ip, header:NAME, \
                 cookie:NAME or path",
            ),
            (Balance::ConsistentHash, Some(_)) | (_, None) => {}
            (_, Some(_)) => self.error(
                format!("{path}.hash_on"),
                "is only used with `balance: consistent_hash`; set that balance or remove `hash_on`",
            ),
        }
        self.health(&format!("{path}.health"), &service.health);
        self.outlier(&format!("{path}.outlier"), &service.outlier);
        self.retries(&format!("{path}.retries"), &service.retries);
        self.timeouts(&format!("{path}.timeouts"), &service.timeouts);
        self.limits(&format!("{path}.limits"), &service.limits);
        // `drain_timeout: 0s` is allowed, as HAProxy and Envoy allow a zero drain: a replica
        // leaving stops as soon as it is out of balancing.
        if service.container.is_some() {
            self.scale(&format!("{path}.scale"), &service.scale);
        } else if service.upstreams.is_some() && service.scale != Scale::default() {
            self.error(
                format!("{path}.scale"),
                "applies to container services only; shoal does not start or stop upstreams, \
                 so remove `scale`",
            );
        }
    }

    fn container(&mut self, path: &str, container: &Container) {
        let sources = [
            container.image.is_some(),
            container.rootfs.is_some(),
            container.host,
        ];
        if sources.iter().filter(|set| **set).count() != 1 {
            self.error(
                path,
                "set exactly one of `image` (an OCI or docker-save image), `rootfs` (an \
                 unpacked directory) or `host: true` (the host's own files)",
            );
        }
        for (key, value) in [("image", &container.image), ("rootfs", &container.rootfs)] {
            if value.as_ref().is_some_and(|v| v.as_os_str().is_empty()) {
                self.error(format!("{path}.{key}"), "is empty; give a path");
            }
        }
        if container.command.is_empty() && (container.host || container.rootfs.is_some()) {
            self.error(
                format!("{path}.command"),
                "is empty; without an image there is no entrypoint, so give the program and \
                 its arguments, e.g. [\"/usr/bin/server\", \"--port\", \"${PORT}\"]",
            );
        }
        if container
            .command
            .first()
            .is_some_and(|program| program.is_empty())
        {
            self.error(format!("{path}.command[0]"), "the program to run is empty");
        }
        for key in container.env.keys() {
            self.ensure(
                !key.is_empty() && !key.contains(['=', '\0']),
                format!("{path}.env"),
                format!("`{key}` is not a variable name; names are non-empty and hold no `=`"),
            );
            // Shoal sets these per replica, and probes the port it set: an app told another
            // port would never pass a check (Cloud Run reserves PORT the same way).
            self.ensure(
                key != "PORT" && key != "SHOAL_REPLICA",
                format!("{path}.env.{key}"),
                format!("`{key}` is set by shoal for each replica; use `port:` to choose the app's port, and `${{{key}}}` to read it"),
            );
        }
        self.ensure(
            container.workdir.starts_with('/'),
            format!("{path}.workdir"),
            format!("`{}` must be an absolute path", container.workdir),
        );
        if let Some(user) = &container.user {
            self.ensure(
                is_user(user),
                format!("{path}.user"),
                format!("`{user}` is not `USER[:GROUP]`, each a number or a name (e.g. \"1000:1000\", \"app\")"),
            );
        }
        self.ensure(
            container.port > 0,
            format!("{path}.port"),
            "must be the port the app listens on (1-65535)",
        );
        self.ensure(
            signal_name(&container.stop_signal).is_some(),
            format!("{path}.stop_signal"),
            format!(
                "`{}` is not a signal shoal can send; use one of {}",
                container.stop_signal,
                STOP_SIGNALS.join(", ")
            ),
        );
        self.positive(container.stop_timeout, format!("{path}.stop_timeout"));
        let resources = &container.resources;
        if let Some(cpus) = resources.cpus {
            self.ensure(
                cpus.is_finite() && cpus > 0.0,
                format!("{path}.resources.cpus"),
                format!("{cpus} must be above 0 (e.g. 0.5 for half a core), or null for no limit"),
            );
        }
        if let Some(memory) = resources.memory {
            self.ensure(
                memory >= MIN_MEMORY,
                format!("{path}.resources.memory"),
                format!("{memory} bytes is below the minimum of 4Mi; write e.g. `64Mi`"),
            );
        }
        if let Some(pids) = resources.pids {
            self.ensure(
                (1..=MAX_PIDS).contains(&pids),
                format!("{path}.resources.pids"),
                format!("must be 1 to {MAX_PIDS}, or null for no limit"),
            );
        }
        for (i, mount) in container.mounts.iter().enumerate() {
            let mount_path = format!("{path}.mounts[{i}]");
            let target = match mount {
                Mount::Bind { source, target, .. } => {
                    self.ensure(
                        !source.as_os_str().is_empty(),
                        format!("{mount_path}.source"),
                        "is empty; give the host path to bind",
                    );
                    target
                }
                Mount::Tmpfs { target, .. } => target,
            };
            self.ensure(
                target.is_absolute(),
                format!("{mount_path}.target"),
                format!(
                    "`{}` must be an absolute path inside the container",
                    target.display()
                ),
            );
        }
    }

    fn upstreams(&mut self, path: &str, upstreams: &Upstreams) {
        if upstreams.static_.is_empty() && upstreams.dns.is_none() {
            self.error(
                path,
                "lists no backend; give `static` addresses (e.g. [\"127.0.0.1:9001\"]) or a \
                 `dns` block",
            );
        }
        for (i, address) in upstreams.static_.iter().enumerate() {
            let at = format!("{path}.static[{i}]");
            if address.port() == 0 || address.ip().is_unspecified() {
                self.error(
                    at,
                    format!("{address} is no address to connect to; give a backend's IP and port"),
                );
            } else if upstreams.static_[..i].contains(address) {
                self.error(
                    at,
                    format!("{address} is listed twice, which would send it twice the share"),
                );
            }
        }
        if let Some(dns) = &upstreams.dns {
            self.ensure(
                !dns.name.trim().is_empty(),
                format!("{path}.dns.name"),
                "is empty; give the DNS name to resolve",
            );
            if dns.record != crate::schema::DnsRecord::Srv {
                self.ensure(
                    dns.port > 0,
                    format!("{path}.dns.port"),
                    "0 is not a port; give the port the resolved addresses serve on",
                );
            }
            self.positive(dns.refresh, format!("{path}.dns.refresh"));
        }
    }

    fn health(&mut self, path: &str, health: &Health) {
        self.positive(health.interval, format!("{path}.interval"));
        // A timeout longer than the interval is allowed, as in Envoy and Kubernetes: a round
        // of checks waits for the last one before the next starts, so they never overlap,
        // and `interval: 500ms` alone must not trip over the 1s default timeout.
        self.positive(health.timeout, format!("{path}.timeout"));
        self.ensure(
            health.healthy_threshold >= 1,
            format!("{path}.healthy_threshold"),
            "must be at least 1",
        );
        self.ensure(
            health.unhealthy_threshold >= 1,
            format!("{path}.unhealthy_threshold"),
            "must be at least 1",
        );
        if let Some(http) = &health.http {
            self.ensure(
                http.path.starts_with('/'),
                format!("{path}.http.path"),
                format!("`{}` must start with `/`", http.path),
            );
        }
    }

    fn outlier(&mut self, path: &str, outlier: &Outlier) {
        self.ensure(
            outlier.consecutive_failures >= 1,
            format!("{path}.consecutive_failures"),
            "must be at least 1",
        );
        self.ensure(
            outlier.max_ejected_percent <= 100,
            format!("{path}.max_ejected_percent"),
            format!(
                "{} is not a percentage (0-100)",
                outlier.max_ejected_percent
            ),
        );
    }

    fn retries(&mut self, path: &str, retries: &Retries) {
        self.ensure(
            retries.budget_percent <= 100,
            format!("{path}.budget_percent"),
            format!("{} is not a percentage (0-100)", retries.budget_percent),
        );
    }

    fn timeouts(&mut self, path: &str, timeouts: &Timeouts) {
        self.positive(timeouts.connect, format!("{path}.connect"));
        self.positive(timeouts.request, format!("{path}.request"));
        self.positive(timeouts.idle, format!("{path}.idle"));
        self.positive(timeouts.header_read, format!("{path}.header_read"));
    }

    fn limits(&mut self, path: &str, limits: &Limits) {
        for (key, value) in [
            ("max_connections", limits.max_connections as u64),
            ("max_request_header_bytes", limits.max_request_header_bytes),
            ("max_queued_requests", limits.max_queued_requests as u64),
        ] {
            self.ensure(value > 0, format!("{path}.{key}"), "must be at least 1");
        }
    }

    fn scale(&mut self, path: &str, scale: &Scale) {
        self.ensure(
            scale.max >= 1,
            format!("{path}.max"),
            "must be at least 1 (use `min: 0` to allow scaling to zero)",
        );
        if scale.min > scale.max {
            self.error(
                format!("{path}.max"),
                format!("{} is below min ({})", scale.max, scale.min),
            );
        } else if let Some(initial) = scale.initial {
            if initial < scale.min || initial > scale.max {
                self.error(
                    format!("{path}.initial"),
                    format!(
                        "{initial} is outside min..max ({}..{})",
                        scale.min, scale.max
                    ),
                );
            }
        }
        self.ensure(
            scale.target.is_finite() && scale.target > 0.0,
            format!("{path}.target"),
            format!("{} must be above 0", scale.target),
        );
        self.ensure(
            scale.utilization > 0.0 && scale.utilization <= 1.0,
            format!("{path}.utilization"),
            format!(
                "{} must be a fraction above 0 and at most 1 (e.g. 0.7)",
                scale.utilization
            ),
        );
        self.ensure(
            (0.0..1.0).contains(&scale.tolerance),
            format!("{path}.tolerance"),
            format!(
                "{} must be at least 0 and below 1 (e.g. 0.1)",
                scale.tolerance
            ),
        );
        self.ensure(
            scale.panic_threshold >= 1.0 && scale.panic_threshold.is_finite(),
            format!("{path}.panic_threshold"),
            format!(
                "{} must be at least 1 (2.0: panic at twice the target)",
                scale.panic_threshold
            ),
        );
        for (key, rate) in [
            ("scale_up_rate", scale.scale_up_rate),
            ("scale_down_rate", scale.scale_down_rate),
        ] {
            self.ensure(
                rate > 1.0 && rate.is_finite(),
                format!("{path}.{key}"),
                format!("{rate} must be above 1 (a factor per decision)"),
            );
        }
        self.positive(scale.tick, format!("{path}.tick"));
        self.positive(scale.window, format!("{path}.window"));
        self.positive(scale.panic_window, format!("{path}.panic_window"));
        self.positive(
            scale.cold_start_timeout,
            format!("{path}.cold_start_timeout"),
        );
        self.ensure(
            scale.window >= scale.tick,
            format!("{path}.window"),
            format!(
                "{:?} is shorter than tick ({:?}); a window holds at least one tick",
                scale.window, scale.tick
            ),
        );
        // Panic is Knative's (concurrency, rps); the HPA rule of `metric: cpu` has none.
        let panics = scale.metric != ScaleMetric::Cpu;
        self.ensure(
            !panics || scale.panic_window <= scale.window,
            format!("{path}.panic_window"),
            format!(
                "{:?} is longer than window ({:?}); the panic window is the short one",
                scale.panic_window, scale.window
            ),
        );
        self.ensure(
            !panics || scale.panic_window >= scale.tick,
            format!("{path}.panic_window"),
            format!(
                "{:?} is shorter than tick ({:?}); a window holds at least one tick",
                scale.panic_window, scale.tick
            ),
        );
    }
}

/// Whether `text` names a container's user as the runtime takes it: `USER` or `USER:GROUP`,
/// each a number or a name of letters, digits, `_`, `-` and `.`, looked up in the
/// container's `/etc/passwd` and `/etc/group` when it starts.
pub fn is_user(text: &str) -> bool {
    // A number is an id and must fit one; a name may not start with `-` (useradd's rule).
    let part = |p: &str| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            return p.parse::<u32>().is_ok();
        }
        !p.starts_with('-')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    match text.split_once(':') {
        Some((user, group)) => part(user) && part(group),
        None => part(text),
    }
}

/// The canonical name (`SIGTERM`) of a `stop_signal` value, which may omit the `SIG` prefix
/// and is case-insensitive, or be the signal's number (`15`, as Docker's `--stop-signal`
/// takes it); `None` when it is not one shoal sends.
pub fn signal_name(text: &str) -> Option<&'static str> {
    let text = text.trim();
    if let Ok(number) = text.parse::<u8>() {
        // Linux's numbers (the same on x86 and arm) of the signals in STOP_SIGNALS.
        const NUMBERS: [(u8, &str); 11] = [
            (1, "SIGHUP"),
            (2, "SIGINT"),
            (3, "SIGQUIT"),
            (6, "SIGABRT"),
            (9, "SIGKILL"),
            (10, "SIGUSR1"),
            (12, "SIGUSR2"),
            (14, "SIGALRM"),
            (15, "SIGTERM"),
            (28, "SIGWINCH"),
            (30, "SIGPWR"),
        ];
        return NUMBERS
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, name)| *name);
    }
    let upper = text.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    STOP_SIGNALS.iter().copied().find(|name| &name[3..] == bare)
}

/// Parses an IPv4 CIDR: the network address and the prefix length.
pub fn parse_subnet(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (address, prefix) = text.trim().split_once('/')?;
    Some((
        address.parse().ok()?,
        prefix.parse().ok().filter(|p| *p <= 32)?,
    ))
}

/// Why a route's `host` could never match, if it could not. Routes match the request's
/// host without its port; a pattern is a name, `*` (any host), `*.suffix` or `prefix.*`.
fn host_pattern_error(pattern: &str) -> Option<String> {
    if pattern.trim().is_empty() {
        return Some("is empty; give a host name or remove the key".into());
    }
    if pattern == "*" {
        return None;
    }
    let name = pattern
        .strip_prefix("*.")
        .or_else(|| pattern.strip_suffix(".*"))
        .unwrap_or(pattern);
    if name.is_empty() || name.contains('*') {
        return Some(format!(
            "`{pattern}`: `*` may be the whole pattern (any host), its first label \
             (`*.example.com`) or its last (`api.*`)"
        ));
    }
    if name.parse::<std::net::Ipv6Addr>().is_ok() {
        return None;
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return Some(format!(
            "`{pattern}`: write an IPv6 address without brackets, `{inner}`"
        ));
    }
    if let Some((host, port)) = name.rsplit_once(':') {
        let hint = if port.bytes().all(|b| b.is_ascii_digit()) {
            format!("; routes match the host without its port: `{host}`")
        } else {
            String::new()
        };
        return Some(format!("`{pattern}` is not a host name{hint}"));
    }
    if name.contains(|c: char| c.is_whitespace() || c == '/') {
        return Some(format!("`{pattern}` is not a host name"));
    }
    None
}

fn check_subnet(text: &str) -> Result<(), String> {
    let Some((address, prefix)) = parse_subnet(text) else {
        return Err(format!(
            "`{text}` is not an IPv4 CIDR; write e.g. `10.213.0.0/16`"
        ));
    };
    if prefix > MAX_SUBNET_PREFIX {
        return Err(format!(
            "/{prefix} leaves no room for replicas; use a prefix of /{MAX_SUBNET_PREFIX} or shorter"
        ));
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let network = Ipv4Addr::from(u32::from(address) & mask);
    if network != address {
        return Err(format!(
            "`{text}` has host bits set; did you mean `{network}/{prefix}`?"
        ));
    }
    Ok(())
}

/// Whether two listening addresses cannot both be bound: the same port on the same address,
/// or on any address when one of them is the wildcard (`0.0.0.0`, `::`). Port 0 asks the
/// kernel for a free port, which never clashes.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
