//! Tests of the whole pipeline: text in, `Config` or located errors out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::schema::*;
use crate::{parse_with_env, ConfigErrors, Location};

const FILE: &str = "f.yaml";

fn test_env(name: &str) -> Option<String> {
    match name {
        "BIND" => Some("127.0.0.1:7000".into()),
        "PORT" => Some("7001".into()),
        "WORKERS" => Some("3".into()),
        "IMAGE" => Some("images/from-env.tar".into()),
        "TRICKY" => Some("a: b # c".into()),
        "SHOAL_BIN" => Some("/opt/shoal/bin/shoal".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_with_env(text, FILE, &test_env)
}

fn valid(text: &str) -> Config {
    match parse(text) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}---\n{text}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

/// Asserts that validation reports an error at exactly `path`.
#[track_caller]
fn assert_error_at(text: &str, path: &str) {
    let ConfigErrors(errors) = parse(text).expect_err(text);
    assert!(
        errors
            .iter()
            .any(|e| e.location == Location::Path(path.to_string())
                && e.to_string().starts_with(&format!("{FILE}: {path}: "))),
        "no error at `{path}` for:\n{text}\ngot:\n{}",
        ConfigErrors(errors.clone())
    );
}

#[test]
fn static_upstreams_are_addresses_to_connect_to_each_once() {
    for (list, index) in [
        ("[\"127.0.0.1:0\"]", 0),
        ("[\"0.0.0.0:80\"]", 0),
        ("[\"[::]:80\"]", 0),
        (
            "[\"127.0.0.1:9001\", \"127.0.0.1:9002\", \"127.0.0.1:9001\"]",
            2,
        ),
    ] {
        assert_error_at(
            &with_service(&format!("    upstreams: {{ static: {list} }}\n")),
            &format!("services.web.upstreams.static[{index}]"),
        );
    }
}

/// A config with one service `web` behind a listener; `service` is the service's YAML body
/// (indented by four spaces).
fn with_service(service: &str) -> String {
    format!(
        "listeners:\n  - {{ name: l, bind: 127.0.0.1:8080, service: web }}\nservices:\n  web:\n{service}"
    )
}

const UPSTREAMS: &str = "    upstreams: { static: [\"127.0.0.1:9001\"] }\n";

/// A container service `web` (host mode) with extra container keys and extra service keys.
fn container(container_keys: &str, service_keys: &str) -> String {
    with_service(&format!(
        "    container:\n      host: true\n      command: [/bin/server]\n{container_keys}{service_keys}"
    ))
}

// ---- defaults --------------------------------------------------------------------------

#[test]
fn empty_documents_are_all_defaults() {
    for text in ["", "\n# nothing\n", "{}\n"] {
        let config = valid(text);
        assert_eq!(config.workers, 0);
        assert_eq!(
            config.admin.listen,
            "127.0.0.1:9900".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.admin.token_file, None);
        assert_eq!(config.runtime.state_dir, None);
        assert_eq!(config.runtime.subnet, "10.213.0.0/16");
        assert!(config.listeners.is_empty());
        assert!(config.services.is_empty());
    }
}

#[test]
fn defaults_match_spec() {
    let config = valid(
        "listeners:\n  - { name: web, bind: 127.0.0.1:8080, service: web }\n\
         services:\n  web:\n    container: { image: images/web.tar }\n",
    );
    let listener = &config.listeners[0];
    assert_eq!(listener.protocol, Protocol::Http);
    assert_eq!(listener.tls, None);
    assert!(listener.routes.is_empty());

    let web = &config.services["web"];
    let c = web.container.as_ref().unwrap();
    assert_eq!(c.rootfs, None);
    assert!(!c.host);
    assert!(c.command.is_empty());
    assert!(c.env.is_empty());
    assert_eq!(c.workdir, "/");
    assert_eq!(c.user, None);
    assert_eq!(c.port, 8080);
    assert_eq!(c.network, Network::Isolated);
    assert_eq!(c.resources.cpus, None);
    assert_eq!(c.resources.memory, None);
    assert_eq!(c.resources.pids, Some(1024));
    assert!(c.mounts.is_empty());
    assert!(!c.read_only);
    assert_eq!(c.stop_signal, "SIGTERM");
    assert_eq!(c.stop_timeout, Duration::from_secs(10));
    assert_eq!(c.restart, Restart::OnFailure);
    assert_eq!(web.upstreams, None);
    assert_eq!(web.balance, Balance::P2cEwma);
    assert_eq!(web.hash_on, None);

    let h = &web.health;
    assert_eq!(h.http, None);
    assert_eq!(h.interval, Duration::from_secs(2));
    assert_eq!(h.timeout, Duration::from_secs(1));
    assert_eq!(h.healthy_threshold, 1);
    assert_eq!(h.unhealthy_threshold, 3);

    assert_eq!(web.outlier.consecutive_failures, 5);
    assert_eq!(web.outlier.ejection, Duration::from_secs(10));
    assert_eq!(web.outlier.max_ejected_percent, 50);

    assert_eq!(web.retries.attempts, 2);
    assert_eq!(
        web.retries.on,
        [
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::Status(502),
            RetryOn::Status(503),
            RetryOn::Status(504)
        ]
    );
    assert_eq!(web.retries.budget_percent, 20);

    assert_eq!(web.timeouts.connect, Duration::from_secs(1));
    assert_eq!(web.timeouts.request, Duration::from_secs(30));
    assert_eq!(web.timeouts.idle, Duration::from_secs(60));
    assert_eq!(web.timeouts.header_read, Duration::from_secs(10));

    assert_eq!(web.limits.max_connections, 10_000);
    assert_eq!(web.limits.max_request_header_bytes, 64 * 1024);
    assert_eq!(web.limits.max_queued_requests, 1000);
    assert_eq!(web.drain_timeout, Duration::from_secs(30));

    let s = &web.scale;
    assert_eq!((s.min, s.max, s.initial), (1, 10, None));
    assert_eq!(s.initial(), 1);
    assert_eq!(s.metric, ScaleMetric::Concurrency);
    assert_eq!(s.target, 100.0);
    assert_eq!(s.utilization, 0.7);
    assert_eq!(s.tolerance, 0.1);
    assert_eq!(s.window, Duration::from_secs(60));
    assert_eq!(s.panic_window, Duration::from_secs(6));
    assert_eq!(s.panic_threshold, 2.0);
    assert_eq!(s.scale_up_rate, 1000.0);
    assert_eq!(s.scale_down_rate, 2.0);
    assert_eq!(s.scale_down_delay, Duration::ZERO);
    assert_eq!(s.zero_grace, Duration::from_secs(30));
    assert_eq!(s.cold_start_timeout, Duration::from_secs(30));
    assert_eq!(s.tick, Duration::from_secs(1));
}

#[test]
fn nested_defaults_match_spec() {
    let config = valid(&with_service(
        "    upstreams: { dns: { name: web.internal, port: 80 } }\n    health: { http: {} }\n",
    ));
    let web = &config.services["web"];
    let dns = web.upstreams.as_ref().unwrap().dns.as_ref().unwrap();
    assert_eq!(dns.record, DnsRecord::A);
    assert_eq!(dns.refresh, Duration::from_secs(10));
    assert_eq!(dns.nameserver, None);
    let http = web.health.http.as_ref().unwrap();
    assert_eq!(http.path, "/healthz");
    assert_eq!(
        http.expect,
        StatusRange {
            low: 200,
            high: 399
        }
    );
}

#[test]
fn a_nameserver_without_a_port_uses_53() {
    let nameserver = |text: &str| {
        let config = valid(&with_service(&format!(
            "    upstreams: {{ dns: {{ name: web.internal, nameserver: \"{text}\" }} }}\n"
        )));
        config.services["web"]
            .upstreams
            .as_ref()
            .unwrap()
            .dns
            .as_ref()
            .unwrap()
            .nameserver
    };
    assert_eq!(nameserver("10.0.0.2"), Some("10.0.0.2:53".parse().unwrap()));
    assert_eq!(
        nameserver("127.0.0.1:5353"),
        Some("127.0.0.1:5353".parse().unwrap())
    );
    assert_eq!(nameserver("fd00::2"), Some("[fd00::2]:53".parse().unwrap()));
    assert_eq!(
        nameserver("[fd00::2]:5353"),
        Some("[fd00::2]:5353".parse().unwrap())
    );
    let wrong = errors(&with_service(
        "    upstreams: { dns: { name: web.internal, nameserver: dns.example } }\n",
    ));
    assert!(
        wrong
            .iter()
            .any(|e| e.contains("`dns.example` is not a nameserver address")),
        "{wrong:?}"
    );
}

// ---- examples ---------------------------------------------------------------------------

#[test]
fn every_example_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let config = match parse_with_env(&text, &path.display().to_string(), &test_env) {
            Ok(config) => config,
            Err(errors) => panic!("{} is not valid:\n{errors}", path.display()),
        };
        assert!(!config.summary().is_empty());
        seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    for expected in [
        "static-lb.yaml",
        "container-service.yaml",
        "scale-to-zero.yaml",
        "full.yaml",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "examples/{expected} is missing"
        );
    }
}

#[test]
fn container_example_keeps_replica_variables() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let config = crate::load(&dir.join("container-service.yaml"));
    // `load` reads the real environment; SHOAL_BIN has a default, so it is valid either way.
    let config = config.unwrap();
    let hello = config.services["hello"].container.as_ref().unwrap();
    assert_eq!(
        hello.command,
        [
            "/shoal",
            "demo-backend",
            "--port",
            "${PORT}",
            "--bind",
            "127.0.0.1"
        ]
    );
    assert_eq!(hello.env["LOG_PREFIX"], "replica ${SHOAL_REPLICA}");

    let text = std::fs::read_to_string(dir.join("container-service.yaml")).unwrap();
    let config = parse(&text).unwrap();
    let hello = config.services["hello"].container.as_ref().unwrap();
    assert_eq!(
        hello.mounts,
        [Mount::Bind {
            source: "/opt/shoal/bin/shoal".into(),
            target: "/shoal".into(),
            readonly: true,
        }]
    );
}

#[test]
fn full_example_is_spec_defaults() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let text = std::fs::read_to_string(dir.join("full.yaml")).unwrap();
    let config = parse(&text).unwrap();
    let web = &config.services["web"];
    let defaults = Service::default();
    assert_eq!(web.health, defaults.health);
    assert_eq!(web.outlier, defaults.outlier);
    assert_eq!(web.retries, defaults.retries);
    assert_eq!(web.timeouts, defaults.timeouts);
    assert_eq!(web.limits, defaults.limits);
    // Written out, `initial` is kept as written; it starts as many replicas as the default.
    assert_eq!(
        web.scale,
        Scale {
            initial: Some(1),
            ..defaults.scale.clone()
        }
    );
    assert_eq!(web.scale.initial(), defaults.scale.initial());
    let container = web.container.as_ref().unwrap();
    assert_eq!(
        Container {
            command: Vec::new(),
            host: false,
            ..container.clone()
        },
        Container::default()
    );
    assert_eq!(config.admin, Admin::default());
    assert_eq!(config.runtime, Runtime::default());
}

// ---- load -------------------------------------------------------------------------------

#[test]
fn unreadable_file_is_one_error_naming_it() {
    let ConfigErrors(errors) =
        crate::load(std::path::Path::new("/nonexistent/shoal.yaml")).unwrap_err();
    assert_eq!(errors.len(), 1);
    let text = errors[0].to_string();
    assert!(
        text.starts_with("/nonexistent/shoal.yaml: cannot read"),
        "{text}"
    );
    assert!(text.contains("No such file"), "{text}");
}

// ---- syntax and type errors -------------------------------------------------------------

#[test]
fn syntax_error_has_line_and_column() {
    let text = "workers: 1\nadmin:\n  listen: 127.0.0.1:9900\n\ttoken_file: x\n";
    let ConfigErrors(found) = parse(text).unwrap_err();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].location, Location::Syntax { line: 4, column: 1 });
    assert!(
        found[0].to_string().starts_with("f.yaml:4:1: "),
        "{}",
        found[0]
    );

    // An unclosed quote is noticed at the end of the file; the message says where it began.
    let text = "listeners:\n  - name: web\n    bind: \"127.0.0.1:80\n";
    assert_eq!(
        errors(text),
        ["f.yaml:4:1: found unexpected end of stream, while scanning a quoted scalar at line 3 column 11"]
    );
}

#[test]
fn type_error_has_line_column_and_path() {
    let text = "services:\n  web:\n    upstreams: { static: [\"127.0.0.1:1\"] }\n    scale:\n      max: lots\n";
    assert_eq!(
        errors(text),
        ["f.yaml:5:12: services.web.scale.max: invalid type: string \"lots\", expected a whole number"]
    );
    let text =
        "services:\n  web:\n    drain_timeout: 30\n    upstreams: { static: [\"127.0.0.1:1\"] }\n";
    assert_eq!(
        errors(text),
        ["f.yaml:3:20: services.web.drain_timeout: duration `30` has no unit; write e.g. `250ms`, `2s`, `1m` or `1h`"]
    );
}

#[test]
fn unknown_keys_suggest_the_closest() {
    assert_eq!(
        errors("admin:\n  lisen: 127.0.0.1:9900\n"),
        ["f.yaml:2:3: admin: unknown key `lisen`; did you mean `listen`?"]
    );
    assert_eq!(
        errors("servces: {}\n"),
        ["f.yaml:1:1: unknown key `servces`; did you mean `services`?"]
    );
    assert_eq!(
        errors("admin:\n  zzz: 1\n"),
        ["f.yaml:2:3: admin: unknown key `zzz`; expected one of `listen`, `token_file`"]
    );
    let text = with_service(&format!("{UPSTREAMS}    balance: round_robbin\n"));
    assert_eq!(
        errors(&text),
        ["f.yaml:6:14: services.web.balance: unknown value `round_robbin`; did you mean `round_robin`?"]
    );
}

// ---- interpolation ----------------------------------------------------------------------

#[test]
fn interpolates_set_and_default_values() {
    let config = valid(
        "# a comment mentioning ${NOT_SET} is not interpolated\n\
         workers: ${WORKERS}\n\
         admin: { listen: \"${ADMIN:-127.0.0.1:9999}\" }\n\
         listeners:\n  - name: l\n    bind: ${BIND}\n    service: web\n\
         services:\n  web:\n    container:\n      image: ${IMAGE}\n      user: \"${USER_ID:-1000}:1000\"\n      \
         env:\n        ${KEY}: ${TRICKY}\n        ESCAPED: $${HOME}\n",
    );
    assert_eq!(config.workers, 3);
    assert_eq!(
        config.admin.listen,
        "127.0.0.1:9999".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        config.listeners[0].bind,
        "127.0.0.1:7000".parse::<SocketAddr>().unwrap()
    );
    let container = config.services["web"].container.as_ref().unwrap();
    assert_eq!(
        container.image.as_deref(),
        Some(std::path::Path::new("images/from-env.tar"))
    );
    assert_eq!(container.user.as_deref(), Some("1000:1000"));
    let env: BTreeMap<String, String> = [
        ("${KEY}".to_string(), "a: b # c".to_string()),
        ("ESCAPED".to_string(), "${HOME}".to_string()),
    ]
    .into();
    assert_eq!(container.env, env);
}

#[test]
fn unset_variable_without_default_is_an_error_naming_it() {
    let text = "listeners:\n  - name: l\n    bind: ${NOT_SET}\n";
    assert_eq!(
        errors(text),
        ["f.yaml:3:11: listeners[0].bind: environment variable `NOT_SET` is not set; set it, or give a default with `${NOT_SET:-default}`"]
    );
}

#[test]
fn replica_variables_are_left_for_the_runtime() {
    let config = valid(
        "listeners:\n  - { name: l, bind: \"127.0.0.1:${PORT}\", service: web }\n\
         services:\n  web:\n    container:\n      host: true\n      \
         command: [\"${SHOAL_BIN}\", demo-backend, --port, \"${PORT}\", \"--name=${SHOAL_REPLICA}\"]\n      \
         env: { LISTEN: \":${PORT:-80}\" }\n",
    );
    // Outside a container's command and env, PORT is an ordinary variable.
    assert_eq!(config.listeners[0].bind.port(), 7001);
    let container = config.services["web"].container.as_ref().unwrap();
    assert_eq!(
        container.command,
        [
            "/opt/shoal/bin/shoal",
            "demo-backend",
            "--port",
            "${PORT}",
            "--name=${SHOAL_REPLICA}"
        ]
    );
    assert_eq!(container.env["LISTEN"], ":${PORT:-80}");
}

// ---- semantic rules: one failing case each, at its exact path ---------------------------

#[test]
fn listener_rules() {
    let two = |a: &str, b: &str| {
        format!("listeners:\n  - {a}\n  - {b}\nservices:\n  web:\n{UPSTREAMS}  api:\n{UPSTREAMS}")
    };
    assert_error_at(
        &two(
            "{ name: x, bind: 127.0.0.1:1, service: web }",
            "{ name: x, bind: 127.0.0.1:2, service: web }",
        ),
        "listeners[1].name",
    );
    assert_error_at(
        &two(
            "{ name: x, bind: 127.0.0.1:1, service: web }",
            "{ name: y, bind: 127.0.0.1:1, service: web }",
        ),
        "listeners[1].bind",
    );
    // The wildcard address takes the port on every address, the admin API's included.
    assert_error_at(
        &two(
            "{ name: x, bind: 0.0.0.0:1, service: web }",
            "{ name: y, bind: 127.0.0.1:1, service: web }",
        ),
        "listeners[1].bind",
    );
    valid(&two(
        "{ name: x, bind: 127.0.0.1:1, service: web }",
        "{ name: y, bind: 127.0.0.2:1, service: web }",
    ));
    assert_error_at(
        &format!(
            "admin: {{ listen: 127.0.0.1:9900 }}\n{}",
            two(
                "{ name: x, bind: 127.0.0.1:1, service: web }",
                "{ name: y, bind: 0.0.0.0:9900, service: web }",
            )
        ),
        "listeners[1].bind",
    );
    let one = |l: &str| two("{ name: x, bind: 127.0.0.1:1, service: web }", l);
    assert_error_at(
        &one("{ name: y, bind: 127.0.0.1:2, service: wbe }"),
        "listeners[1].service",
    );
    assert_error_at(
        &one("{ name: y, bind: 127.0.0.1:2, routes: [{ match: { path_prefix: /a }, service: web }, { service: nope }] }"),
        "listeners[1].routes[1].service",
    );
    assert_error_at(&one("{ name: y, bind: 127.0.0.1:2 }"), "listeners[1]");
    assert_error_at(
        &one("{ name: y, bind: 127.0.0.1:2, service: web, routes: [{ service: api }] }"),
        "listeners[1].service",
    );
    assert_error_at(
        &one("{ name: y, bind: 127.0.0.1:2, protocol: tcp }"),
        "listeners[1].service",
    );
    assert_error_at(
        &one("{ name: y, bind: 127.0.0.1:2, protocol: tcp, service: web, routes: [{ service: api }] }"),
        "listeners[1].routes",
    );
    assert_error_at(
        &one("{ name: y, bind: 127.0.0.1:2, routes: [{ service: web }, { match: { host: a.example }, service: api }] }"),
        "listeners[1].routes[0]",
    );
    assert_error_at(
        &one("{ name: y, bind: 127.0.0.1:2, routes: [{ service: web }, { service: api }] }"),
        "listeners[1].routes[0]",
    );
    assert_error_at(
        &one("{ name: y, bind: 127.0.0.1:2, routes: [{ match: { path_prefix: v1 }, service: web }] }"),
        "listeners[1].routes[0].match.path_prefix",
    );
    assert_error_at(
        &one("{ name: y, bind: 127.0.0.1:2, service: web, tls: { certificates: [{ cert: \"\", key: k.pem }] } }"),
        "listeners[1].tls.certificates[0].cert",
    );
    assert_error_at(
        &one("{ name: y, bind: 127.0.0.1:2, service: web, tls: { certificates: [{ cert: c.pem, key: \"\" }] } }"),
        "listeners[1].tls.certificates[0].key",
    );
    assert_error_at(
        &one("{ name: y, bind: 127.0.0.1:2, service: web, tls: { certificates: [] } }"),
        "listeners[1].tls.certificates",
    );
    assert_error_at(
        &one("{ name: y, bind: 127.0.0.1:2, service: web, tls: { certificates: [{ cert: a.pem, key: a.key, sni: [a.example, b.example] }, { cert: b.pem, key: b.key, sni: [c.example, B.Example] }] } }"),
        "listeners[1].tls.certificates[1].sni[1]",
    );
}

#[test]
fn service_kind_rules() {
    assert_error_at(&with_service("    balance: round_robin\n"), "services.web");
    assert_error_at(
        &with_service(&format!(
            "{UPSTREAMS}    container: {{ host: true, command: [x] }}\n"
        )),
        "services.web",
    );
    assert_error_at(
        &with_service("    upstreams: { static: [] }\n"),
        "services.web.upstreams",
    );
    assert_error_at(
        &with_service("    upstreams: { dns: { name: web.internal, port: 0 } }\n"),
        "services.web.upstreams.dns.port",
    );
    let dns = valid(&with_service(
        "    upstreams: { dns: { name: web.internal } }\n",
    ));
    let dns = dns.services["web"]
        .upstreams
        .as_ref()
        .unwrap()
        .dns
        .as_ref()
        .unwrap();
    assert_eq!(dns.port, 80, "SPEC's default port");
    valid(&with_service(
        "    upstreams: { dns: { name: _http._tcp.web, type: srv } }\n",
    ));
    assert_error_at(
        &with_service(&format!("{UPSTREAMS}    scale: {{ max: 3 }}\n")),
        "services.web.scale",
    );
    let text = "listeners:\n  - { name: l, bind: 127.0.0.1:1, service: \"a b\" }\nservices:\n  \"a b\":\n    upstreams: { static: [\"127.0.0.1:1\"] }\n";
    assert_error_at(text, "services.a b");
}

#[test]
fn container_rules() {
    let c = |keys: &str| with_service(&format!("    container: {{ {keys} }}\n"));
    assert_error_at(&c("command: [x]"), "services.web.container");
    assert_error_at(
        &c("image: i.tar, host: true, command: [x]"),
        "services.web.container",
    );
    assert_error_at(&c("image: i.tar, rootfs: /r"), "services.web.container");
    assert_error_at(&c("host: true"), "services.web.container.command");
    assert_error_at(&c("rootfs: /srv/root"), "services.web.container.command");
    valid(&c("image: i.tar"));
    assert_error_at(&c("image: i.tar, port: 0"), "services.web.container.port");
    assert_error_at(
        &c("image: i.tar, stop_signal: SIGSTOP"),
        "services.web.container.stop_signal",
    );
    assert_error_at(
        &c("image: i.tar, stop_signal: TERMINATE"),
        "services.web.container.stop_signal",
    );
    valid(&c("image: i.tar, stop_signal: INT"));
    valid(&c("image: i.tar, stop_signal: SIGKILL"));
    valid(&c("image: i.tar, stop_signal: SIGWINCH"));
    valid(&c("image: i.tar, stop_signal: pwr"));
    // Numbers, as Docker's `--stop-signal` takes them: SIGTERM's, and not SIGSTOP's (19).
    valid(&c("image: i.tar, stop_signal: 15"));
    assert_eq!(crate::signal_name("15"), Some("SIGTERM"));
    assert_eq!(crate::signal_name("30"), Some("SIGPWR"));
    assert_error_at(
        &c("image: i.tar, stop_signal: 19"),
        "services.web.container.stop_signal",
    );
    for reserved in ["PORT", "SHOAL_REPLICA"] {
        assert_error_at(
            &c(&format!("image: i.tar, env: {{ {reserved}: \"9000\" }}")),
            &format!("services.web.container.env.{reserved}"),
        );
    }
    valid(&c("image: i.tar, env: { APP_PORT: \"${PORT}\" }"));
    for bad in [
        "\"1000:\"",
        "\":1000\"",
        "\"a b\"",
        "\"app:x:y\"",
        "\"99999999999\"",
        "\"-1\"",
    ] {
        assert_error_at(
            &c(&format!("image: i.tar, user: {bad}")),
            "services.web.container.user",
        );
    }
    // Names are looked up in the container's /etc/passwd and /etc/group, as Docker does.
    for good in [
        "\"1000\"",
        "\"1000:1000\"",
        "nobody",
        "app:staff",
        "\"www-data:1000\"",
    ] {
        valid(&c(&format!("image: i.tar, user: {good}")));
    }
    assert_error_at(
        &c("image: i.tar, resources: { cpus: 0 }"),
        "services.web.container.resources.cpus",
    );
    assert_error_at(
        &c("image: i.tar, resources: { memory: 1Mi }"),
        "services.web.container.resources.memory",
    );
    valid(&c("image: i.tar, resources: { memory: 4Mi, cpus: 0.1 }"));
    assert_error_at(
        &c("image: i.tar, resources: { pids: 0 }"),
        "services.web.container.resources.pids",
    );
    // Past Linux's ceiling the kernel would refuse the write at the replica's start.
    assert_error_at(
        &c("image: i.tar, resources: { pids: 4194304 }"),
        "services.web.container.resources.pids",
    );
    valid(&c(
        "image: i.tar, resources: { pids: 4194303, memory: 64m }",
    ));
    assert_error_at(
        &c("image: i.tar, mounts: [{ type: tmpfs, target: tmp }]"),
        "services.web.container.mounts[0].target",
    );
    assert_error_at(
        &c("image: i.tar, mounts: [{ type: tmpfs, target: /tmp }, { type: bind, source: ./d, target: data }]"),
        "services.web.container.mounts[1].target",
    );
    assert_error_at(
        &c("image: i.tar, workdir: app"),
        "services.web.container.workdir",
    );
    assert_error_at(
        &c("image: i.tar, stop_timeout: 0s"),
        "services.web.container.stop_timeout",
    );
}

#[test]
fn balance_rules() {
    assert_error_at(
        &with_service(&format!("{UPSTREAMS}    hash_on: client_ip\n")),
        "services.web.hash_on",
    );
    assert_error_at(
        &with_service(&format!("{UPSTREAMS}    balance: consistent_hash\n")),
        "services.web.hash_on",
    );
    valid(&with_service(&format!(
        "{UPSTREAMS}    balance: consistent_hash\n    hash_on: cookie:sid\n"
    )));
}

#[test]
fn scale_rules() {
    let s = |keys: &str| container("", &format!("    scale: {{ {keys} }}\n"));
    valid(&s(
        "min: 0, initial: 0, max: 1, scale_down_delay: 0s, zero_grace: 0s",
    ));
    assert_error_at(&s("min: 3, max: 2, initial: 3"), "services.web.scale.max");
    assert_error_at(&s("min: 0, max: 0, initial: 0"), "services.web.scale.max");
    assert_error_at(&s("min: 2, initial: 1"), "services.web.scale.initial");
    // Without `initial`, its default of 1 gives way to a higher `min`, as Knative's
    // initial-scale does to min-scale.
    assert_eq!(
        valid(&s("min: 2, max: 5")).services["web"].scale.initial(),
        2
    );
    assert_eq!(valid(&s("min: 0")).services["web"].scale.initial(), 1);
    assert_error_at(&s("max: 3, initial: 4"), "services.web.scale.initial");
    assert_error_at(&s("target: 0"), "services.web.scale.target");
    assert_error_at(&s("utilization: 0"), "services.web.scale.utilization");
    assert_error_at(&s("utilization: 1.5"), "services.web.scale.utilization");
    valid(&s("utilization: 1"));
    assert_error_at(&s("tolerance: 1"), "services.web.scale.tolerance");
    assert_error_at(&s("tolerance: -0.1"), "services.web.scale.tolerance");
    valid(&s("tolerance: 0"));
    assert_error_at(
        &s("panic_threshold: 0.5"),
        "services.web.scale.panic_threshold",
    );
    assert_error_at(&s("scale_up_rate: 1"), "services.web.scale.scale_up_rate");
    assert_error_at(
        &s("scale_down_rate: 1"),
        "services.web.scale.scale_down_rate",
    );
    assert_error_at(
        &s("window: 500ms, panic_window: 500ms"),
        "services.web.scale.window",
    );
    assert_error_at(
        &s("window: 10s, panic_window: 20s"),
        "services.web.scale.panic_window",
    );
    assert_error_at(
        &s("tick: 2s, panic_window: 1s"),
        "services.web.scale.panic_window",
    );
    // `metric: cpu` has no panic mode: its short window is not checked.
    valid(&s("metric: cpu, window: 4s"));
    assert_error_at(&s("tick: 0s"), "services.web.scale.tick");
    assert_error_at(
        &s("cold_start_timeout: 0s"),
        "services.web.scale.cold_start_timeout",
    );
}

#[test]
fn durations_must_be_positive() {
    for (key, yaml) in [
        ("health.interval", "health: { interval: 0s }"),
        ("health.timeout", "health: { timeout: 0s }"),
        ("timeouts.connect", "timeouts: { connect: 0s }"),
        ("timeouts.request", "timeouts: { request: 0ms }"),
        ("timeouts.idle", "timeouts: { idle: 0s }"),
        ("timeouts.header_read", "timeouts: { header_read: 0s }"),
        ("scale.window", "scale: { window: 0s }"),
    ] {
        assert_error_at(
            &container("", &format!("    {yaml}\n")),
            &format!("services.web.{key}"),
        );
    }
    // A zero drain stops a replica as soon as it leaves balancing.
    valid(&container("", "    drain_timeout: 0s\n"));
}

#[test]
fn health_outlier_retry_and_limit_rules() {
    let u = |yaml: &str| with_service(&format!("{UPSTREAMS}    {yaml}\n"));
    for short_interval in [
        "health: { interval: 500ms }",
        "health: { interval: 1s, timeout: 2s }",
    ] {
        // A timeout past the interval only delays the next check.
        valid(&u(short_interval));
    }
    assert_error_at(
        &u("health: { healthy_threshold: 0 }"),
        "services.web.health.healthy_threshold",
    );
    assert_error_at(
        &u("health: { unhealthy_threshold: 0 }"),
        "services.web.health.unhealthy_threshold",
    );
    assert_error_at(
        &u("health: { http: { path: healthz } }"),
        "services.web.health.http.path",
    );
    assert_error_at(
        &u("outlier: { max_ejected_percent: 101 }"),
        "services.web.outlier.max_ejected_percent",
    );
    assert_error_at(
        &u("outlier: { consecutive_failures: 0 }"),
        "services.web.outlier.consecutive_failures",
    );
    // As `max_ejected_percent: 0`, an ejection of no time turns ejection off.
    valid(&u("outlier: { ejection: 0s }"));
    assert_error_at(
        &u("retries: { budget_percent: 101 }"),
        "services.web.retries.budget_percent",
    );
    for key in [
        "max_connections",
        "max_request_header_bytes",
        "max_queued_requests",
    ] {
        assert_error_at(
            &u(&format!("limits: {{ {key}: 0 }}")),
            &format!("services.web.limits.{key}"),
        );
    }
}

#[test]
fn top_level_rules() {
    assert_error_at("workers: 2000\n", "workers");
    valid("workers: 1024\n");
    assert_error_at("admin: { token_file: \"\" }\n", "admin.token_file");
    for subnet in [
        "10.0.0.0/31",
        "nonsense",
        "10.0.0.1/16",
        "fd00::/64",
        "10.0.0.0/33",
    ] {
        assert_error_at(
            &format!("runtime: {{ subnet: \"{subnet}\" }}\n"),
            "runtime.subnet",
        );
    }
    valid("runtime: { subnet: 10.0.0.0/30 }\n");
}

#[test]
fn every_error_is_reported() {
    let text = "workers: 5000\n\
                listeners:\n  - { name: a, bind: 127.0.0.1:1, service: nope }\n  - { name: a, bind: 127.0.0.1:1, service: web }\n\
                services:\n  web:\n    container: { host: true }\n    scale: { min: 5, max: 2 }\n";
    let found = errors(text);
    for path in [
        "workers",
        "listeners[0].service",
        "listeners[1].name",
        "listeners[1].bind",
        "services.web.container.command",
        "services.web.scale.max",
    ] {
        assert!(
            found
                .iter()
                .any(|e| e.starts_with(&format!("f.yaml: {path}: "))),
            "missing {path} in {found:#?}"
        );
    }
    assert_eq!(found.len(), 6, "{found:#?}");
}

#[test]
fn summary_names_listeners_and_services() {
    let config = valid(
        "listeners:\n  - name: web\n    bind: 127.0.0.1:8080\n    routes:\n      - { match: { path_prefix: /api }, service: api }\n      - service: app\n\
         services:\n  api:\n    upstreams: { static: [\"127.0.0.1:9001\"] }\n    balance: consistent_hash\n    hash_on: header:X-User\n  \
         app:\n    container: { image: web.tar }\n    scale: { min: 0, initial: 0, max: 4 }\n",
    );
    assert_eq!(
        config.summary(),
        "listeners:\n  web  127.0.0.1:8080  http  /api -> api, * -> app\n\
         services:\n  api  upstreams: 127.0.0.1:9001  consistent_hash on header:x-user\n  \
         app  container: image web.tar  p2c_ewma  scale 0-4 on concurrency (target 100)\n"
    );
}

#[test]
fn tcp_listeners_hash_only_on_the_client_ip() {
    let tcp = |hash_on: &str| {
        format!(
            "listeners:\n  - {{ name: l, bind: 127.0.0.1:8080, protocol: tcp, service: web }}\nservices:\n  web:\n{UPSTREAMS}    balance: consistent_hash\n    hash_on: {hash_on}\n"
        )
    };
    valid(&tcp("client_ip"));
    for hash_on in ["path", "header:x-user", "cookie:session"] {
        assert_error_at(&tcp(hash_on), "listeners[0].service");
    }
    // the same service behind an http listener may hash on anything
    valid(&with_service(&format!(
        "{UPSTREAMS}    balance: consistent_hash\n    hash_on: header:x-user\n"
    )));
}

#[test]
fn every_error_of_reading_is_reported_not_just_the_first() {
    let text = "listeners:\n  - { name: web, bind: \"127.0.0.1:8080\", service: web, rutes: [] }\nservices:\n  web:\n    upstreams: { static: [\"127.0.0.1:9001\"] }\n    balance: random\n    timeouts: { connect: 5x }\n    limits: { max_request_header_bytes: 12Zi }\n";
    let found = errors(text);
    // The first keeps its position; those found after it are placed by their path.
    assert!(
        found[0].starts_with(&format!("{FILE}:2:")) && found[0].contains("unknown key `rutes`"),
        "{found:#?}"
    );
    for path in [
        "services.web.balance: unknown value `random`",
        "services.web.timeouts.connect: ",
        "services.web.limits.max_request_header_bytes: ",
    ] {
        assert!(
            found
                .iter()
                .any(|e| e.starts_with(&format!("{FILE}: {path}"))),
            "no error at {path}: {found:#?}"
        );
    }
    assert_eq!(found.len(), 4, "{found:#?}");
    // Interpolated values read back as they were first read: no error of their own, and an
    // unset variable's value is taken out like any other bad one.
    let found = errors(&format!(
        "workers: ${{WORKERS}}\nadmin: {{ lisen: x }}\n{}",
        with_service(&format!("{UPSTREAMS}    drain_timeout: ${{UNSET_VAR}}\n"))
    ));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].contains("unknown key `lisen`"), "{found:#?}");
    assert!(found[1].contains("UNSET_VAR"), "{found:#?}");
    // A syntax error stops the reading: nothing after it can be placed.
    assert_eq!(errors("workers: [\nadmin: {").len(), 1);
}

#[test]
fn errors_of_reading_hide_neither_the_next_key_nor_errors_of_meaning() {
    // A misspelt key a list item needs (`bnd` for `bind`) no longer ends the reading, and
    // once the rest reads, its errors of meaning are listed after those of reading: only
    // not one about a value taken out (here `scale.max`, whose default is below `min`).
    let text = "listeners:\n  - { name: web, bnd: \"127.0.0.1:8080\", service: nosvc }\n\
                services:\n  web:\n    upstreams: { static: [\"127.0.0.1:9001\"] }\n    balanse: round_robin\n\
                \x20 app:\n    container: { host: true, command: [/bin/true] }\n    scale: { min: 20, max: lots }\n";
    let found = errors(text);
    let at = |path: &str| {
        found
            .iter()
            .any(|e| e.starts_with(&format!("{FILE}: {path}: ")))
    };
    assert!(found[0].contains("unknown key `bnd`"), "{found:#?}");
    assert!(at("services.web"), "balanse: {found:#?}");
    assert!(at("services.app.scale.max"), "{found:#?}");
    assert!(at("listeners[0].service"), "nosvc: {found:#?}");
    assert_eq!(found.len(), 4, "{found:#?}");
    // None when a whole section was taken out: every listener would name no service.
    let found = errors(&format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:8080\", service: web }}\nservics:\n  web:\n{UPSTREAMS}"
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].contains("unknown key `servics`"), "{found:#?}");
    // Nor one about what holds a value taken out: this `upstreams` lists a backend.
    let found = errors(&with_service(
        "    upstreams: { dns: { name: web.internal, nameserver: notanip } }\n",
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
}

#[test]
fn a_value_that_cannot_be_left_out_hides_no_other_error() {
    // A required field (`bind`) or a list item that cannot be read: a stand-in takes its
    // place, so the reading and then the errors of meaning go on.
    let meaning =
        "  z:\n    container: { host: true, command: [x] }\n    scale: { min: 3, max: 2 }\n";
    for (bad, at) in [
        (
            "listeners: [ { name: web, bind: \"localhost:8080\", service: a } ]\nservices:\n  a: { upstreams: { static: [\"127.0.0.1:1\"] } }\n",
            "listeners[0].bind",
        ),
        (
            "listeners: [ { name: web, bind: \"127.0.0.1:8080\", service: a } ]\nservices:\n  a: { upstreams: { static: [\"127.0.0.1:1\", \"127.0.0.1:99999\", \"127.0.0.1:3\"] } }\n",
            "services.a.upstreams.static[1]",
        ),
        (
            "listeners: [ { name: web, bind: \"127.0.0.1:8080\", service: a } ]\nservices:\n  a: { upstreams: { static: [\"127.0.0.1:1\"] }, retries: { on: [999] } }\n",
            "services.a.retries.on[0]",
        ),
    ] {
        let found = errors(&format!("{bad}{meaning}"));
        assert!(found[0].contains(at), "{found:#?}");
        assert!(
            found
                .iter()
                .any(|e| e.starts_with(&format!("{FILE}: services.z.scale.max: "))),
            "{found:#?}"
        );
        assert_eq!(found.len(), 2, "{found:#?}");
    }
    // A misspelt key a list item needs, then a second unknown key in the same item.
    let found = errors(
        "listeners: [ { name: web, bnd: \"127.0.0.1:8080\", protocl: http, service: a } ]\nservices:\n  a: { upstreams: { static: [\"127.0.0.1:1\"] }, balance: random }\n",
    );
    assert!(found[0].contains("unknown key `bnd`"), "{found:#?}");
    assert!(
        found.iter().any(|e| e.contains("unknown key `protocl`")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.starts_with(&format!("{FILE}: services.a.balance: "))),
        "{found:#?}"
    );
    assert_eq!(found.len(), 3, "{found:#?}");
}

/// A name given twice does not hide the file's other errors, before it or after it, nor do
/// they hide it.
#[test]
fn a_name_given_twice_leaves_the_other_errors_listed() {
    let service = |port: &str| format!("    upstreams: {{ static: [\"127.0.0.1:{port}\"] }}\n");
    let after = format!(
        "services:\n  w:\n{}  b:\n{}  w:\n{}  c:\n{}",
        service("9001"),
        service("99999"),
        service("9002"),
        service("70000")
    );
    let found = errors(&after);
    for expected in [
        "services.b.upstreams.static[0]: not an IP address",
        "services.c.upstreams.static[0]: not an IP address",
        "services: `w` appears twice",
    ] {
        assert!(
            found.iter().any(|e| e.contains(expected)),
            "{expected}: {found:#?}"
        );
    }
    assert_eq!(found.len(), 3, "{found:#?}");

    // Names as written: `0x10` and `16` are two, as are `~` and `"null"`; one given three
    // times is one error.
    let found = errors(&container(
        "      env: { 0x10: a, 16: b, ~: c, \"null\": d, A: x, A: y, A: z }\n",
        "    balance: nope\n",
    ));
    assert!(
        found.iter().any(|e| e.contains("`A` appears twice")),
        "{found:#?}"
    );
    assert!(
        found.iter().any(|e| e.contains("unknown value `nope`")),
        "{found:#?}"
    );
    assert_eq!(found.len(), 2, "{found:#?}");

    // A key that is a list: still both errors.
    let found = errors(&container(
        "      env:\n        ? [a, b]\n        : x\n",
        "    balance: nope\n",
    ));
    assert!(
        found.iter().any(|e| e.contains("unknown value `nope`")),
        "{found:#?}"
    );
    assert!(found.len() >= 2, "{found:#?}");

    // A struct's field given twice, then an unknown key: both, the field once.
    let found = errors(&format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:8080\", bind: \"127.0.0.1:8081\", service: w }}\nservices:\n  w:\n{}    colour: blue\n",
        service("9001")
    ));
    assert!(
        found[0].contains("listeners[0]: duplicate field `bind`"),
        "{found:#?}"
    );
    assert!(
        found
            .get(1)
            .is_some_and(|e| e.contains("unknown key `colour`")),
        "{found:#?}"
    );
    assert_eq!(found.len(), 2, "{found:#?}");
}

/// A route's host pattern that could never match is an error; the forms that match pass.
#[test]
fn route_hosts_are_names_or_wildcards() {
    let route = |host: &str| {
        format!(
            "listeners:\n  - {{ name: web, bind: \"127.0.0.1:8080\", routes: [{{ match: {{ host: \"{host}\" }}, service: w }}] }}\nservices:\n  w:\n    upstreams: {{ static: [\"127.0.0.1:9001\"] }}\n"
        )
    };
    for good in [
        "api.example.com",
        "*",
        "*.example.com",
        "api.*",
        "127.0.0.1",
        "::1",
        "localhost",
    ] {
        valid(&route(good));
    }
    for (bad, why) in [
        ("port.com:8080", "without its port: `port.com`"),
        ("a*b.com", "`*` may be the whole pattern"),
        ("*.*", "`*` may be the whole pattern"),
        ("*example.com", "`*` may be the whole pattern"),
        ("[::1]", "without brackets, `::1`"),
        ("two words", "is not a host name"),
        ("", "is empty"),
    ] {
        let found = errors(&route(bad));
        assert!(
            found
                .iter()
                .any(|e| e.contains("listeners[0].routes[0].match.host") && e.contains(why)),
            "{bad}: {found:#?}"
        );
    }
}

#[test]
fn a_located_error_names_its_path() {
    let Err(ConfigErrors(found)) = crate::parse(
        "services:\n  w: { upstreams: { static: [\"127.0.0.1:1\"] }, balance: 5 }\n",
        FILE,
    ) else {
        panic!("a bad balance was accepted");
    };
    assert!(
        matches!(found[0].location, Location::Syntax { .. }),
        "{found:?}"
    );
    assert_eq!(found[0].path(), Some("services.w.balance"));
    let Err(ConfigErrors(syntax)) = crate::parse("listeners: [\n  - { name: x\n", FILE) else {
        panic!("bad YAML was accepted");
    };
    assert_eq!(syntax[0].path(), None, "{syntax:?}");
    // Two unknown top-level keys: the first is located by position, the second by path,
    // and neither has a path to give.
    let Err(ConfigErrors(top)) = crate::parse("foo: 1\nbar: 2\nservices: {}\n", FILE) else {
        panic!("unknown keys were accepted");
    };
    assert_eq!(top.len(), 2, "{top:?}");
    assert!(top.iter().all(|error| error.path().is_none()), "{top:?}");
}

#[test]
fn a_name_given_twice_is_an_error_not_a_silent_overwrite() {
    let service = "    upstreams: { static: [\"127.0.0.1:9001\"] }\n";
    let twice = format!("services:\n  w:\n{service}  w:\n{service}");
    let found = errors(&twice);
    assert!(
        found
            .iter()
            .any(|e| e.starts_with(&format!("{FILE}:2:3: services: "))
                && e.contains("`w` appears twice")),
        "{found:?}"
    );
    let env = errors(&container("      env: { A: \"1\", A: \"2\" }\n", ""));
    assert!(
        env.iter().any(|e| e.contains("`A` appears twice")),
        "{env:?}"
    );
    let headers = errors(&format!(
        "listeners:\n  - {{ bind: \"127.0.0.1:8080\", routes: [{{ match: {{ headers: {{ x-a: \"1\", x-a: \"2\" }} }}, service: w }}] }}\nservices:\n  w:\n{service}"
    ));
    assert!(
        headers.iter().any(|e| e.contains("`x-a` appears twice")),
        "{headers:?}"
    );
}

#[test]
fn a_mount_error_names_the_mount() {
    let found = errors(&container(
        "      mounts:\n        - { type: tmpfs, target: /tmp }\n        - { type: bind, source: ./d, target: /d, read_only: true }\n",
        "",
    ));
    assert!(
        found.iter().any(|e| e
            .contains("services.web.container.mounts[1]: unknown key `read_only`")
            && e.contains("did you mean `readonly`")),
        "{found:?}"
    );
    for (mount, expected) in [
        ("{ type: bind, target: /d }", "a bind mount needs `source`"),
        (
            "{ type: bind, source: ./d, target: /d, size: 1Mi }",
            "`size` is for tmpfs mounts",
        ),
        (
            "{ type: tmpfs, target: /t, readonly: true }",
            "are for bind mounts",
        ),
    ] {
        let found = errors(&container(&format!("      mounts: [{mount}]\n"), ""));
        assert!(
            found.iter().any(|e| e.contains(expected)),
            "{mount}: {found:?}"
        );
    }
    let config = valid(&container(
        "      mounts: [{ type: bind, source: ./d, target: /d, readonly: true }, { type: tmpfs, target: /t, size: 1Mi }]\n",
        "",
    ));
    let mounts = &config.services["web"]
        .container
        .as_ref()
        .expect("container")
        .mounts;
    assert_eq!(
        mounts,
        &[
            Mount::Bind {
                source: "./d".into(),
                target: "/d".into(),
                readonly: true
            },
            Mount::Tmpfs {
                target: "/t".into(),
                size: Some(1 << 20)
            }
        ]
    );
}
