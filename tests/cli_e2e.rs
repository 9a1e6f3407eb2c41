//! The CLI surface: `validate` output and exit codes, `status` against a running daemon.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

fn shoal(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(SHOAL).args(args).output().expect("run shoal");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Writes `text` as `name` in `dir`; returns its path.
fn config_file(dir: &TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write the config");
    path
}

#[test]
fn validate_accepts_a_good_config() {
    let dir = TempDir::new("validate");
    let path = config_file(&dir, "good.yaml", "listeners:\n  - { name: web, bind: \"127.0.0.1:8080\", service: web }\nservices:\n  web:\n    upstreams: { static: [\"127.0.0.1:9001\"] }\n");
    let (code, stdout, stderr) = shoal(&["validate", "-c", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("web"), "{stdout}");
    // --json gives the summary as data too.
    let (code, stdout, _) = shoal(&[
        "validate",
        "--json",
        "-c",
        path.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, 0, "{stdout}");
    let value: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(value["valid"], true);
    assert_eq!(value["listeners"][0]["bind"], "127.0.0.1:8080", "{value}");
    assert_eq!(value["listeners"][0]["service"], "web", "{value}");
    assert_eq!(value["services"][0]["kind"], "upstreams", "{value}");
}

/// SPEC: the examples are configs `shoal validate` accepts, with its file checks (images,
/// root filesystems, certificates), not only parsed.
#[test]
fn validate_accepts_every_example() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("an entry of examples/").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let (code, stdout, stderr) = shoal(&["validate", "-c", path.to_str().expect("utf-8 path")]);
        assert_eq!(code, 0, "{}:\n{stdout}{stderr}", path.display());
        checked += 1;
    }
    assert!(
        checked >= 4,
        "only {checked} examples found in {}",
        dir.display()
    );
}

#[test]
fn validate_looks_for_container_images_and_root_filesystems() {
    let dir = TempDir::new("validate");
    let layout = dir.path().join("layout");
    std::fs::create_dir_all(&layout).expect("mkdir");
    // One image named `latest`; its blobs are read only when a replica starts.
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":1,"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#,
        "1".repeat(64)
    );
    std::fs::write(layout.join("index.json"), index).expect("write");
    let tarred = std::process::Command::new("tar")
        .args(["-cf", "layout.tar", "-C", "layout", "."])
        .current_dir(dir.path())
        .status()
        .expect("tar");
    assert!(tarred.success());
    std::fs::write(dir.path().join("garbage.tar"), b"not a tar at all").expect("write");
    std::fs::create_dir_all(dir.path().join("empty")).expect("mkdir");
    let services = [
        ("a", "image: missing.tar"),
        ("b", "rootfs: layout.tar"),
        ("c", "image: garbage.tar"),
        ("d", "image: empty"),
        ("ok1", "rootfs: ."),
        ("ok2", "image: layout"),
        ("ok3", "image: layout.tar"),
        ("ok4", "image: \"layout.tar:latest\""),
        ("e", "image: \"layout:v2\""),
    ];
    let mut text =
        "listeners:\n  - { name: web, bind: \"127.0.0.1:8080\", service: a }\nservices:\n"
            .to_string();
    for (name, source) in services {
        text += &format!("  {name}:\n    container: {{ {source}, command: [/bin/true] }}\n");
    }
    let path = config_file(&dir, "containers.yaml", &text);
    let (code, stdout, stderr) = shoal(&["validate", "-c", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    for (service, problem) in [
        ("a.container.image", "missing.tar: No such file"),
        ("b.container.rootfs", "layout.tar is not a directory"),
        ("c.container.image", "garbage.tar is not a tar archive"),
        (
            "d.container.image",
            "is a directory but neither an OCI image layout",
        ),
        ("e.container.image", "no image named `v2`; it holds latest"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("services.{service}: ")))
            .unwrap_or_else(|| panic!("no error for {service}: {stderr}"));
        assert!(line.contains(problem), "{line}");
    }
    assert!(!stderr.contains("services.ok"), "{stderr}");
}

/// `docker run IMAGE CMD` takes the command without `--`; `shoal run` says where it goes
/// instead of only that a word was unexpected. Found before anything runs, so no root.
#[test]
fn run_says_the_command_goes_after_a_double_dash() {
    let tip = "give the command after `--`";
    for args in [
        &["run", "image", "echo", "hi"][..],
        &["run", "--rootfs", "/nonexistent", "echo", "hi"],
        &["run", "--rootfs", "/nonexistent", "sh", "-c", "true"],
        &["run", "--host", "true"],
        &["run", "image", "echo", "--", "hi"],
    ] {
        let (code, _, err) = shoal(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(tip), "{args:?}: {err}");
    }
    // Not for an unknown option, nor an image beside --host when the command is after
    // `--`, nor outside `run`.
    for args in [
        &["run", "--bogus", "--rootfs", "/x", "--", "true"][..],
        &["run", "--rootfs", "/x", "--host", "--", "true"],
        &["run", "--host", "image.tar", "--", "true"],
        &["ps", "extra"],
    ] {
        let (code, _, err) = shoal(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(!err.contains(tip), "{args:?}: {err}");
    }
}

#[test]
fn a_report_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new("validate");
    let path = config_file(&dir, "good.yaml", "listeners:\n  - { name: web, bind: \"127.0.0.1:8080\", service: web }\nservices:\n  web:\n    upstreams: { static: [\"127.0.0.1:9001\"] }\n");
    // `shoal validate | head -0`: the reader is gone before the first line is written.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let output = Command::new(SHOAL)
        .args(["validate", "-c", path.to_str().expect("utf-8 path")])
        .stdout(writer)
        .output()
        .expect("run shoal");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}",
        output.status
    );
}

#[test]
fn validate_reports_syntax_errors_with_line_and_column() {
    let dir = TempDir::new("validate");
    let path = config_file(
        &dir,
        "bad.yaml",
        "listeners:\n  - name: web\n    bind: [unclosed\n",
    );
    let file = path.to_str().expect("utf-8 path");
    let (code, _, stderr) = shoal(&["validate", "-c", file]);
    assert_eq!(code, 2, "{stderr}");
    let line = stderr.lines().next().unwrap_or_default();
    let rest = line
        .strip_prefix(&format!("{file}:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let mut parts = rest.splitn(3, ':');
    assert!(
        parts.next().is_some_and(|l| l.parse::<u32>().is_ok()),
        "{stderr}"
    );
    assert!(
        parts.next().is_some_and(|c| c.parse::<u32>().is_ok()),
        "{stderr}"
    );
    let (_, stdout, _) = shoal(&["validate", "--json", "-c", file]);
    let value: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let first = &value["details"][0];
    assert!(
        first["line"].as_u64().is_some() && first["column"].as_u64().is_some(),
        "{value}"
    );
}

#[test]
fn validate_reports_meaning_errors_with_their_path() {
    let dir = TempDir::new("validate");
    let path = config_file(&dir, "bad.yaml", "listeners:\n  - { name: web, bind: \"127.0.0.1:8080\", service: nowhere }\nservices:\n  web:\n    container: { host: true, command: [/bin/true] }\n    scale: { min: 3, max: 2 }\n");
    let file = path.to_str().expect("utf-8 path");
    let (code, _, stderr) = shoal(&["validate", "-c", file]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("{file}: services.web.scale")),
        "{stderr}"
    );
    assert!(stderr.contains("nowhere"), "{stderr}");
    // --json: each error as text, and as data with its path.
    let (code, stdout, _) = shoal(&["validate", "--json", "-c", file]);
    assert_eq!(code, 2, "{stdout}");
    let value: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(value["valid"], false);
    let details = value["details"].as_array().expect("details");
    assert!(
        details.iter().any(|d| d["file"] == file
            && d["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("services.web.scale"))
            && d["line"].is_null()),
        "{value}"
    );
    assert_eq!(
        details.len(),
        value["errors"].as_array().map_or(0, Vec::len)
    );
}

#[test]
fn status_prints_services_and_endpoints() {
    let (_backend, upstream) = demo_backend("b1");
    let port = free_port();
    let daemon = Daemon::start(&format!(
        "admin: {{ listen: \"{{ADMIN}}\" }}\nlisteners:\n  - {{ name: web, bind: \"127.0.0.1:{port}\", service: web }}\nservices:\n  web:\n    upstreams: {{ static: [\"{upstream}\"] }}\n"
    ));
    let admin = format!("http://{}", daemon.admin);
    let (code, stdout, stderr) = shoal(&["status", "--admin", &admin]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("web")), "{stdout}");
    assert!(stdout.contains(&upstream.to_string()), "{stdout}");
    assert!(
        !stdout.contains("---"),
        "no min-max for upstreams: {stdout}"
    );
    // The endpoint table: as many headings as cells, one of them AGE (SPEC's columns).
    let heads = stdout
        .lines()
        .find(|l| l.starts_with("SERVICE") && l.contains(" ID "))
        .expect("endpoint table");
    let row = stdout
        .lines()
        .find(|l| l.contains(&upstream.to_string()))
        .expect("endpoint row");
    assert!(heads.split_whitespace().any(|h| h == "AGE"), "{stdout}");
    assert_eq!(
        heads.split_whitespace().count(),
        row.split_whitespace().count(),
        "{stdout}"
    );

    // Logged to a file, not a terminal: plain `key=value`, no colour codes.
    let log = daemon.log();
    assert!(
        log.contains(&format!("listener=web address=127.0.0.1:{port}")),
        "{log}"
    );
    assert!(!log.contains('\x1b'), "{log}");

    let (code, stdout, _) = shoal(&["status", "--admin", &admin, "--json"]);
    assert_eq!(code, 0);
    let value: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(value["services"][0]["name"], "web");
    assert_eq!(
        value["services"][0]["endpoints"][0]["address"],
        upstream.to_string()
    );

    let (code, _, stderr) = shoal(&["status", "nosuch", "--admin", &admin]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no service named `nosuch`"), "{stderr}");

    // Without --admin, the daemon the config describes is asked (its admin.listen).
    let output = Command::new(SHOAL)
        .args(["status", "--json", "-c"])
        .arg(daemon.dir.path().join("shoal.yaml"))
        .env_remove("SHOAL_ADMIN")
        .output()
        .expect("run shoal");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(value["services"][0]["name"], "web");
}

#[test]
fn a_daemon_whose_log_reader_has_gone_serves_on_and_stops_cleanly() {
    // `shoal up 2>&1 | head`: the reader of its stderr goes away while it runs.
    let dir = TempDir::new("stderr");
    let admin = format!("127.0.0.1:{}", free_port());
    let path = config_file(
        &dir,
        "c.yaml",
        &format!(
            "admin: {{ listen: \"{admin}\" }}\nlisteners:\n  - {{ name: web, bind: \"127.0.0.1:{}\", service: web }}\nservices:\n  web:\n    upstreams: {{ static: [\"127.0.0.1:9\"] }}\n",
            free_port()
        ),
    );
    let (reader, writer) = std::io::pipe().expect("pipe");
    let child = Command::new(SHOAL)
        .args(["up", "-c", path.to_str().expect("utf-8 path")])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(writer)
        .spawn()
        .expect("start shoal up");
    let mut daemon = Proc {
        child,
        name: "shoal".into(),
    };
    let admin: std::net::SocketAddr = admin.parse().expect("address");
    wait_http_ok(admin, "/readyz", Duration::from_secs(15));
    drop(reader);
    // A reload logs what it did: the lines go nowhere, and the daemon answers on.
    let reload = b"POST /api/v1/reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let answer = raw_request(admin, reload, Duration::from_secs(10)).expect("reload");
    assert_eq!(answer.status, 200, "{}", answer.body);
    wait_http_ok(admin, "/readyz", Duration::from_secs(5));
    // Shutdown logs too; it panicked on the closed pipe (exit 101).
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(Some(0)));
}

#[test]
fn up_names_a_listener_it_cannot_bind_and_why_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    let dir = TempDir::new("bind");
    let path = config_file(
        &dir,
        "c.yaml",
        &format!(
            "admin: {{ listen: \"127.0.0.1:{}\" }}\nlisteners:\n  - {{ name: web, bind: \"127.0.0.1:{port}\", service: web }}\nservices:\n  web:\n    upstreams: {{ static: [\"127.0.0.1:9\"] }}\n",
            free_port()
        ),
    );
    let (code, _, stderr) = shoal(&["up", "-c", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot bind listener `web` on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("change the listener's `bind`"), "{stderr}");
    // The admin API's address gets the same hints, naming its own key.
    let path = config_file(
        &dir,
        "admin.yaml",
        &format!(
            "admin: {{ listen: \"127.0.0.1:{port}\" }}\nlisteners:\n  - {{ name: web, bind: \"127.0.0.1:{}\", service: web }}\nservices:\n  web:\n    upstreams: {{ static: [\"127.0.0.1:9\"] }}\n",
            free_port()
        ),
    );
    let (code, _, stderr) = shoal(&["up", "-c", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot bind the admin API on 127.0.0.1:{port}"))
            && stderr.contains("change `admin.listen`"),
        "{stderr}"
    );
}

#[test]
fn status_without_a_daemon_says_what_to_do() {
    let port = free_port();
    let (code, _, stderr) = shoal(&["status", "--admin", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("shoal up"), "{stderr}");
}

#[test]
fn reload_of_a_file_that_does_not_parse_prints_its_errors() {
    // The file cannot say where its daemon listens: the CLI must not ask the default
    // address (where another daemon, or none, may listen), but say what is wrong.
    let dir = TempDir::new("reload");
    let path = config_file(
        &dir,
        "broken.yaml",
        "admin: { listen: \"127.0.0.1:9\" }\nlisteners: [ { name: web\n",
    );
    let file = path.to_str().expect("utf-8 path");
    let (code, _, stderr) = shoal(&["reload", "-c", file]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.starts_with(&format!("{file}:3:")), "{stderr}");
    assert!(!stderr.contains("cannot reach"), "{stderr}");
}

#[test]
fn an_admin_address_that_is_no_url_is_bad_usage() {
    for admin in ["notaurl", "127.0.0.1:9"] {
        for command in [&["status"][..], &["scale", "web", "2"], &["reload"]] {
            let mut args = command.to_vec();
            args.extend(["--admin", admin]);
            let (code, _, stderr) = shoal(&args);
            assert_eq!(code, 2, "{args:?}: {stderr}");
            assert!(
                stderr.contains("not a valid admin URL"),
                "{args:?}: {stderr}"
            );
        }
    }
}

#[test]
fn validate_opens_tls_files_and_names_the_bad_one() {
    let dir = TempDir::new("validate");
    std::fs::write(dir.path().join("a.pem"), "not a certificate\n").expect("write");
    let path = config_file(&dir, "tls.yaml", "listeners:\n  - name: web\n    bind: \"127.0.0.1:8443\"\n    service: web\n    tls:\n      certificates:\n        - { cert: a.pem, key: missing.key }\n        - { cert: b.pem, key: b.key }\nservices:\n  web:\n    upstreams: { static: [\"127.0.0.1:9001\"] }\n");
    let file = path.to_str().expect("utf-8 path");
    let (code, _, stderr) = shoal(&["validate", "-c", file]);
    assert_eq!(code, 2, "{stderr}");
    // Located at the entry in the list, and naming the file.
    for (entry, name) in [(0, "missing.key"), (1, "b.pem")] {
        assert!(
            stderr.contains(&format!("{file}: listeners[0].tls.certificates[{entry}]: "))
                && stderr
                    .lines()
                    .any(|line| line.contains(&format!("certificates[{entry}]"))
                        && line.contains(name)),
            "{stderr}"
        );
    }
}

/// An expired certificate is served (as HAProxy and nginx serve it) and reported.
#[test]
fn validate_warns_of_an_expired_certificate_and_passes() {
    let dir = TempDir::new("validate");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["old.example.com".to_string()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2001, 1, 1);
    params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let cert = params.self_signed(&key).expect("certificate");
    std::fs::write(dir.path().join("old.pem"), cert.pem()).expect("write");
    std::fs::write(dir.path().join("old.key"), key.serialize_pem()).expect("write");
    let path = config_file(&dir, "tls.yaml", "listeners:\n  - name: web\n    bind: \"127.0.0.1:8443\"\n    service: web\n    tls:\n      certificates:\n        - { cert: old.pem, key: old.key }\nservices:\n  web:\n    upstreams: { static: [\"127.0.0.1:9001\"] }\n");
    let file = path.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = shoal(&["validate", "-c", file]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: {file}: listeners[0].tls.certificates[0]: "
        )) && stderr.contains("old.pem: certificate expired"),
        "{stderr}"
    );
}

/// A bind mount's missing source is warned of, located, and passes: it may be made after
/// the config is written, but until then no replica can start.
#[test]
fn validate_warns_of_a_missing_bind_mount_source_and_passes() {
    let dir = TempDir::new("validate");
    let path = config_file(&dir, "mounts.yaml", "listeners:\n  - { name: web, bind: \"127.0.0.1:8080\", service: web }\nservices:\n  web:\n    container:\n      rootfs: .\n      command: [/bin/true]\n      mounts:\n        - { type: tmpfs, target: /t }\n        - { type: bind, source: nowhere, target: /x }\n        - { type: bind, source: ., target: /y, readonly: true }\n        - { type: bind, source: mounts.yaml/under, target: /z }\n");
    let file = path.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = shoal(&["validate", "-c", file]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(
        warnings[0].starts_with(&format!(
            "warning: {file}: services.web.container.mounts[1].source: cannot read nowhere: "
        )) && warnings[0].contains("replicas cannot start until it exists"),
        "{stderr}"
    );
    // A file where a directory should be is as missing.
    assert!(
        warnings[1].contains("mounts[3].source: cannot read mounts.yaml/under"),
        "{stderr}"
    );
}

#[test]
fn simulate_replays_a_trace_through_the_real_policy() {
    let root = env!("CARGO_MANIFEST_DIR");
    let config = format!("{root}/examples/scale-to-zero.yaml");
    let trace = format!("{root}/examples/traces/step.csv");
    let (code, stdout, stderr) = shoal(&["simulate", "-c", &config, "--trace", &trace]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("sleepy"), "{stdout}");
    assert!(stdout.contains("summary:"), "{stdout}");

    let (code, stdout, stderr) = shoal(&["simulate", "-c", &config, "--trace", &trace, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let value: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let service = &value["services"][0];
    assert_eq!(service["name"], "sleepy");
    let timeline = service["timeline"].as_array().expect("timeline");
    let peak = timeline.iter().filter_map(|c| c["desired"].as_u64()).max();
    assert_eq!(
        peak,
        Some(5),
        "the step to 300 in flight reaches scale.max: {stdout}"
    );
    assert_eq!(
        timeline.last().and_then(|c| c["desired"].as_u64()),
        Some(0),
        "back to zero"
    );

    let dir = TempDir::new("simulate");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "0,10\nten,20\n").expect("write");
    let (code, _, stderr) = shoal(&[
        "simulate",
        "-c",
        &config,
        "--trace",
        bad.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("bad.csv:2"), "{stderr}");
}

#[test]
fn admin_api_answers_head_and_refuses_other_methods_with_405() {
    let (_backend, upstream) = demo_backend("b1");
    let daemon = Daemon::start(&format!(
        "admin: {{ listen: \"{{ADMIN}}\" }}\nlisteners:\n  - {{ name: web, bind: \"127.0.0.1:{}\", service: web }}\nservices:\n  web:\n    upstreams: {{ static: [\"{upstream}\"] }}\n",
        free_port()
    ));
    let ask = |method: &str, path: &str| {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        raw_request(daemon.admin, request.as_bytes(), Duration::from_secs(10)).expect("answer")
    };
    for path in ["/healthz", "/readyz", "/metrics", "/api/v1/status"] {
        let head = ask("HEAD", path);
        assert_eq!(head.status, 200, "HEAD {path}: {head:?}");
        assert!(head.body.is_empty(), "HEAD {path} has no body: {head:?}");
    }
    for (method, path, allow) in [
        ("POST", "/api/v1/status", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("GET", "/api/v1/reload", "POST"),
        ("GET", "/api/v1/services/web/scale", "POST"),
    ] {
        let refused = ask(method, path);
        assert_eq!(refused.status, 405, "{method} {path}: {refused:?}");
        assert_eq!(refused.header("allow"), Some(allow), "{method} {path}");
    }
    assert_eq!(ask("GET", "/api/v1/nothing").status, 404);
    // A service's endpoints are one segment deep: more, or a trailing slash, is no endpoint
    // whatever the method.
    for (method, path) in [
        ("POST", "/api/v1/services/web/scale/"),
        ("POST", "/api/v1/services/a/b/scale"),
        ("GET", "/api/v1/services/web/"),
        ("POST", "/api/v1/services/"),
    ] {
        let answer = ask(method, path);
        assert_eq!(answer.status, 404, "{method} {path}: {answer:?}");
    }
    // A body over the admin's limit is 413, as Envoy and nginx answer it.
    let big = format!(
        "POST /api/v1/services/web/scale HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 70000\r\n\r\n{}",
        " ".repeat(70_000)
    );
    let answer =
        raw_request(daemon.admin, big.as_bytes(), Duration::from_secs(10)).expect("answer");
    assert_eq!(answer.status, 413, "{answer:?}");

    // Over HTTP/2 too (hyper drops a HEAD answer's body only over HTTP/1.1): the h2 client
    // refuses a HEAD answer that carries data.
    let admin = daemon.admin;
    h2c_client().block_on(|client| async move {
        let response = client
            .head(format!("http://{admin}/metrics"))
            .send()
            .await
            .expect("HEAD over HTTP/2");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        assert!(response.bytes().await.expect("no body").is_empty());
    });
}

#[test]
fn a_missing_or_empty_admin_token_file_is_an_invalid_config() {
    let dir = TempDir::new("validate");
    std::fs::write(dir.path().join("empty-token"), " \n").expect("write the empty token");
    for (token_file, error) in [
        ("no-such-token", "cannot read no-such-token"),
        ("empty-token", "empty-token is empty"),
    ] {
        let path = config_file(&dir, "token.yaml", &format!("admin: {{ listen: \"127.0.0.1:9\", token_file: {token_file} }}\nlisteners:\n  - {{ name: web, bind: \"127.0.0.1:8\", service: web }}\nservices:\n  web:\n    upstreams: {{ static: [\"127.0.0.1:9001\"] }}\n"));
        let file = path.to_str().expect("utf-8 path");
        for command in ["validate", "up"] {
            let (code, _, stderr) = shoal(&[command, "-c", file]);
            assert_eq!(code, 2, "{command}: {stderr}");
            assert!(
                stderr.contains(&format!("{file}: admin.token_file: {error}")),
                "{command}: {stderr}"
            );
        }
    }
}

/// A missing file the config names is listed with the errors of meaning, not only once
/// they are fixed.
#[test]
fn a_missing_file_is_listed_with_the_errors_of_meaning() {
    let dir = TempDir::new("validate");
    let path = config_file(&dir, "both.yaml", "admin: { listen: \"127.0.0.1:9\", token_file: no-such-token }\nlisteners:\n  - { name: web, bind: \"127.0.0.1:8\", service: web }\nservices:\n  web:\n    container: { host: true, command: [/bin/true] }\n    scale: { min: 1, max: 2, initial: 9 }\n");
    let file = path.to_str().expect("utf-8 path");
    let (code, _, stderr) = shoal(&["validate", "-c", file]);
    assert_eq!(code, 2, "{stderr}");
    for error in [
        format!("{file}: services.web.scale.initial: "),
        format!("{file}: admin.token_file: cannot read no-such-token"),
    ] {
        assert!(stderr.contains(&error), "no `{error}` in:\n{stderr}");
    }
    // And with an error of reading before them.
    let path = config_file(&dir, "read.yaml", "admin: { listen: \"127.0.0.1:9\", token_file: no-such-token }\nlisteners:\n  - { name: web, bind: \"localhost:8\", service: web }\nservices:\n  web:\n    container: { host: true, command: [/bin/true] }\n    scale: { min: 1, max: 2, initial: 9 }\n");
    let file = path.to_str().expect("utf-8 path");
    let (code, _, stderr) = shoal(&["validate", "-c", file]);
    assert_eq!(code, 2, "{stderr}");
    for error in [
        format!("{file}:3:"),
        format!("{file}: services.web.scale.initial: "),
        format!("{file}: admin.token_file: cannot read no-such-token"),
    ] {
        assert!(stderr.contains(&error), "no `{error}` in:\n{stderr}");
    }
}

/// `shoal up` where there is no `./shoal.yaml` says how to name one.
#[test]
fn a_missing_default_config_says_how_to_name_one() {
    let dir = TempDir::new("noconfig");
    for command in ["up", "validate"] {
        let output = Command::new(SHOAL)
            .arg(command)
            .current_dir(dir.path())
            .env_remove("SHOAL_CONFIG")
            .output()
            .expect("run shoal");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("./shoal.yaml"), "{command}: {stderr}");
        assert!(stderr.contains("-c FILE"), "{command}: {stderr}");
        assert!(stderr.contains("shoal demo"), "{command}: {stderr}");
    }
}

#[test]
fn admin_posts_need_the_token_and_reload_prints_a_broken_files_errors() {
    let (_backend, upstream) = demo_backend("b1");
    let secrets = TempDir::new("token");
    let token = secrets.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("write the token");
    let daemon = Daemon::start(&format!(
        "admin: {{ listen: \"{{ADMIN}}\", token_file: \"{}\" }}\nlisteners:\n  - {{ name: web, bind: \"127.0.0.1:{}\", service: web }}\nservices:\n  web:\n    upstreams: {{ static: [\"{upstream}\"] }}\n",
        token.display(),
        free_port()
    ));
    let reload_with = |authorization: &str| {
        let request = format!("POST /api/v1/reload HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n{authorization}Content-Length: 0\r\n\r\n");
        raw_request(daemon.admin, request.as_bytes(), Duration::from_secs(10)).expect("answer")
    };
    let refused = reload_with("");
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    // The scheme's name is case-insensitive (RFC 9110 §11.1).
    let lower_case = reload_with("Authorization: bearer s3cret\r\n");
    assert_eq!(lower_case.status, 200, "{lower_case:?}");

    let health = http_get(daemon.admin, "/healthz", &[]).expect("healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    assert_eq!(
        health.header("content-type"),
        Some("text/plain; charset=utf-8")
    );

    // A file that no longer validates still gives the CLI its token, and the CLI prints
    // what the daemon finds wrong with the file.
    let path = daemon.dir.path().join("shoal.yaml");
    let text = std::fs::read_to_string(&path).expect("read the config");
    std::fs::write(&path, format!("{text}bogus_key: 1\n")).expect("break the config");
    let admin = format!("http://{}", daemon.admin);
    let file = path.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = shoal(&["reload", "-c", file, "--admin", &admin]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("the old one keeps serving"), "{stderr}");
    assert!(stderr.contains("bogus_key"), "{stderr}");
    // Scaling a service that does not exist, or one without replicas, is bad usage.
    for service in ["nope", "web"] {
        let (code, stdout, stderr) = shoal(&["scale", service, "2", "-c", file, "--admin", &admin]);
        assert_eq!(code, 2, "scale {service}: {stdout}{stderr}");
    }

    // The daemon keeps its token until it restarts: a changed token file's is refused, with
    // what to do, and SHOAL_ADMIN_TOKEN still reaches it.
    std::fs::write(&path, &text).expect("mend the config");
    std::fs::write(&token, "n3w\n").expect("change the token");
    let (code, stdout, stderr) = shoal(&["reload", "-c", file, "--admin", &admin]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("refused the admin token (401 Unauthorized)")
            && stderr.contains("set SHOAL_ADMIN_TOKEN to the daemon's token"),
        "{stderr}"
    );
    let output = Command::new(SHOAL)
        .args(["reload", "-c", file, "--admin", &admin])
        .env("SHOAL_ADMIN_TOKEN", "s3cret")
        .output()
        .expect("run shoal");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[test]
fn container_commands_exit_2_on_an_invalid_config() {
    let dir = TempDir::new("validate");
    let path = config_file(&dir, "bad.yaml", "workers: many\n");
    let file = path.to_str().expect("utf-8 path");
    for args in [
        &["ps", "-c", file][..],
        &["logs", "-c", file, "web-1"][..],
        &["run", "-c", file, "--host", "--", "true"][..],
    ] {
        let (code, stdout, stderr) = shoal(args);
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains("workers"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_named_config_that_is_missing_is_an_error() {
    let dir = TempDir::new("missing");
    let missing = dir.path().join("nosuch.yaml");
    let file = missing.to_str().expect("utf-8 path");
    for args in [
        &["ps", "-c", file][..],
        &["logs", "-c", file, "web-1"][..],
        &["run", "-c", file, "--host", "--", "true"][..],
        &["reload", "-c", file, "--admin", "http://127.0.0.1:1"][..],
        &[
            "scale",
            "-c",
            file,
            "--admin",
            "http://127.0.0.1:1",
            "web",
            "1",
        ][..],
    ] {
        let (code, stdout, stderr) = shoal(args);
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains("nosuch.yaml"), "{args:?}: {stderr}");
    }
    // status reads the config only for the admin address: given one, it needs none.
    let (code, stdout, stderr) = shoal(&["status", "-c", file]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    let (code, _, stderr) = shoal(&["status", "-c", file, "--admin", "http://127.0.0.1:1"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("nosuch.yaml"), "{stderr}");
    let output = Command::new(SHOAL)
        .args(["ps"])
        .env("SHOAL_CONFIG", &missing)
        .output()
        .expect("run shoal");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    // The default ./shoal.yaml may be absent: SPEC's defaults then apply (and this replica
    // is not found there).
    let output = Command::new(SHOAL)
        .args(["logs", "no-such-replica-0"])
        .current_dir(dir.path())
        .env_remove("SHOAL_CONFIG")
        .output()
        .expect("run shoal");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no-such-replica-0"), "{output:?}");
    assert!(!stderr.contains("shoal.yaml"), "{output:?}");
}

#[test]
fn run_refuses_bad_names_and_limits_no_container_could_start_under() {
    for args in [
        &["run", "--memory", "100", "--host", "--", "true"][..],
        &[
            "run",
            "--pids",
            "18446744073709551615",
            "--host",
            "--",
            "true",
        ][..],
        &["run", "--pids", "0", "--host", "--", "true"][..],
        &["run", "--pids", "4194304", "--host", "--", "true"][..],
        &["run", "--name", "a/b", "--host", "--", "true"][..],
        &["run", "--workdir", "rel", "--host", "--", "true"][..],
        &["run", "--cpus", "100000", "--host", "--", "true"][..],
        &["run", "--hostname", &"h".repeat(65), "--host", "--", "true"][..],
    ] {
        let (code, stdout, stderr) = shoal(args);
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(args[2]), "{args:?}: {stderr}");
    }
}

#[test]
fn a_relative_state_dir_starts_at_the_configs_directory() {
    let dir = TempDir::new("statedir");
    let path = config_file(&dir, "c.yaml", "runtime: { state_dir: state }\n");
    let (code, stdout, stderr) = shoal(&["ps", "-c", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        dir.path().join("state").is_dir(),
        "ps opened {}",
        dir.path().join("state").display()
    );
}

#[test]
fn demo_backend_refuses_what_it_cannot_do() {
    let (_backend, addr) = demo_backend("b1");
    let get =
        |request: &[u8]| raw_request(addr, request, Duration::from_secs(10)).expect("a response");
    let sleep = get(b"GET /sleep?ms=abc HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
    assert_eq!(sleep.status, 400, "{sleep:?}");
    let echo = get(b"GET /echo HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
    assert_eq!(echo.status, 405, "{echo:?}");
    assert_eq!(echo.header("allow"), Some("POST"), "{echo:?}");
}

/// Stopped by a signal, it ends by that signal, as a server without a handler would: a
/// replica something else stops has not exited successfully, for `restart: on_failure`.
#[test]
fn demo_backend_ends_by_the_signal_that_stopped_it() {
    use std::os::unix::process::ExitStatusExt;
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let (mut backend, _) = demo_backend("b1");
        backend.signal(signal);
        assert_eq!(
            backend.wait_exit(Duration::from_secs(10)),
            Some(None),
            "it exited with a status"
        );
        let status = backend.child.wait().expect("status");
        assert_eq!(status.signal(), Some(signal), "{status:?}");
    }
}

#[test]
fn demo_backend_answers_head_like_get() {
    let (_backend, addr) = demo_backend("b1");
    let head = raw_request(
        addr,
        b"HEAD / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .expect("HEAD /");
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.body.is_empty(), "{head:?}");
}

/// A client that sends its request and then shuts its sending side (`nc -N`, socat, a test
/// of a tcp listener's half-close) gets the whole answer, as from nginx.
#[test]
fn demo_backend_answers_a_client_that_half_closes() {
    use std::io::{Read, Write};
    let (_backend, addr) = demo_backend("b1");
    let requests: [&[u8]; 2] = [
        b"GET / HTTP/1.1\r\nHost: b\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello",
    ];
    for request in requests {
        for _ in 0..20 {
            let mut stream = std::net::TcpStream::connect(addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            stream.write_all(request).expect("send");
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("half-close");
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).expect("read");
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
            assert!(
                answer.ends_with("hello from b1\n") || answer.ends_with("hello"),
                "{answer:?}"
            );
        }
    }
}
