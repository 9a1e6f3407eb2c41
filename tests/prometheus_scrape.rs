//! A real Prometheus server (Debian's `prometheus`) scrapes shoal's `/metrics`, and its
//! query API returns `shoal_http_requests_total` for the service.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";

#[test]
fn prometheus_scrapes_request_counters() {
    if !require(
        std::path::Path::new(PROMETHEUS).exists(),
        "Debian package prometheus",
    ) {
        return;
    }
    let (_backend, upstream) = demo_backend("b1");
    let port = free_port();
    let daemon = Daemon::start(&format!(
        "admin: {{ listen: \"{{ADMIN}}\" }}\nlisteners:\n  - {{ name: web, bind: \"127.0.0.1:{port}\", service: web }}\nservices:\n  web:\n    upstreams: {{ static: [\"{upstream}\"] }}\n"
    ));
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..7 {
        assert_eq!(http_get(proxy, "/", &[]).expect("GET").status, 200);
    }

    let dir = TempDir::new("prometheus");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: shoal\n    static_configs:\n      - targets: [\"{}\"]\n",
            daemon.admin
        ),
    )
    .expect("write prometheus config");
    let web: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start prometheus");
    let _prometheus = Proc {
        child,
        name: "prometheus".into(),
    };

    let query = "/api/v1/query?query=shoal_http_requests_total%7Bservice%3D%22web%22%7D";
    let answer = eventually(
        Duration::from_secs(90),
        "prometheus to return the counter",
        || {
            let response = http_get(web, query, &[]).ok()?;
            let value: serde_json::Value = serde_json::from_str(&response.body).ok()?;
            let result = value["data"]["result"].as_array()?.first()?.clone();
            Some(result)
        },
    );
    assert_eq!(answer["metric"]["service"], "web");
    assert_eq!(answer["metric"]["listener"], "web");
    assert_eq!(answer["metric"]["code"], "200");
    assert_eq!(answer["value"][1], "7", "prometheus saw {answer}");
}
