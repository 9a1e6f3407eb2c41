//! `shoal status [SERVICE]`: the daemon's services and endpoints as tables (or JSON).

use anyhow::bail;
use http::{Method, StatusCode};
use serde_json::Value;

use crate::admin_client;

pub fn run(admin: &str, service: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let path = match service {
        Some(name) => format!("/api/v1/services/{name}"),
        None => "/api/v1/status".to_string(),
    };
    let (status, body) = admin_client::request(admin, Method::GET, &path, None, None)?;
    if status == StatusCode::NOT_FOUND {
        // A name the config does not have is bad usage, as with `shoal scale`.
        eprintln!("shoal: no service named `{}`", service.unwrap_or_default());
        return Ok(crate::EXIT_USAGE);
    }
    if !status.is_success() {
        bail!("the daemon answered {status}: {body}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(0);
    }
    let services = match service {
        Some(_) => vec![body],
        None => body["services"].as_array().cloned().unwrap_or_default(),
    };
    print!("{}", render(&services));
    Ok(0)
}

/// Two tables: one row per service, then one row per endpoint.
fn render(services: &[Value]) -> String {
    let mut rows = vec![[
        "SERVICE",
        "KIND",
        "READY/DESIRED",
        "MIN-MAX",
        "IN-FLIGHT",
        "RPS",
        "P99",
        "LAST DECISION",
    ]
    .map(String::from)
    .to_vec()];
    let mut endpoint_rows = vec![[
        "SERVICE",
        "ID",
        "STATE",
        "ADDRESS",
        "HEALTH",
        "AGE",
        "IN-FLIGHT",
        "RESTARTS",
        "CPU",
        "MEMORY",
    ]
    .map(String::from)
    .to_vec()];
    for service in services {
        let name = field(&service["name"]);
        let replicas = &service["replicas"];
        let load = &service["load"];
        let decision = &service["scale"]["last_decision"];
        rows.push(vec![
            name.clone(),
            field(&service["kind"]),
            format!(
                "{}/{}",
                field(&replicas["ready"]),
                field(&replicas["desired"])
            ),
            // Services with `upstreams:` have no bounds: one dash, not `---`.
            match (&replicas["min"], &replicas["max"]) {
                (Value::Null, Value::Null) => "-".to_string(),
                (min, max) => format!("{}-{}", field(min), field(max)),
            },
            field(&load["in_flight"]),
            number(&load["rps"], 1),
            match load["p99_ms"].as_f64() {
                Some(ms) => format!("{ms:.1}ms"),
                None => "-".to_string(),
            },
            if decision.is_object() {
                format!(
                    "{}→{} {}",
                    field(&decision["from"]),
                    field(&decision["to"]),
                    field(&decision["reason"])
                )
            } else {
                "-".to_string()
            },
        ]);
        for endpoint in service["endpoints"].as_array().into_iter().flatten() {
            endpoint_rows.push(vec![
                name.clone(),
                field(&endpoint["id"]),
                field(&endpoint["state"]),
                field(&endpoint["address"]),
                match endpoint["healthy"].as_bool() {
                    Some(true) => "healthy".to_string(),
                    Some(false) => "unhealthy".to_string(),
                    None => "-".to_string(),
                },
                endpoint["started_at"]
                    .as_str()
                    .and_then(age)
                    .unwrap_or_else(|| "-".to_string()),
                field(&endpoint["in_flight"]),
                field(&endpoint["restarts"]),
                match endpoint["cpu_seconds"].as_f64() {
                    Some(s) => format!("{s:.2}s"),
                    None => "-".to_string(),
                },
                match endpoint["memory_bytes"].as_u64() {
                    Some(b) => format!("{:.1}Mi", b as f64 / (1024.0 * 1024.0)),
                    None => "-".to_string(),
                },
            ]);
        }
    }
    let mut out = table(&rows);
    if endpoint_rows.len() > 1 {
        out.push('\n');
        out.push_str(&table(&endpoint_rows));
    }
    out
}

/// How long ago an RFC 3339 time (`2026-01-01T00:00:00Z`) was, as `45s`, `12m` or `3h`.
fn age(started_at: &str) -> Option<String> {
    let started = humantime::parse_rfc3339(started_at).ok()?;
    let age = std::time::SystemTime::now()
        .duration_since(started)
        .unwrap_or_default()
        .as_secs();
    Some(match age {
        0..=119 => format!("{age}s"),
        120..=7199 => format!("{}m", age / 60),
        _ => format!("{}h", age / 3600),
    })
}

fn field(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn number(value: &Value, decimals: usize) -> String {
    value
        .as_f64()
        .map(|n| format!("{n:.decimals$}"))
        .unwrap_or_else(|| "-".to_string())
}

/// Left-aligned columns separated by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(
            age("1970-01-01T00:00:00Z").map(|a| a.ends_with('h')),
            Some(true)
        );
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        assert!(age(&now).is_some_and(|a| a.ends_with('s')));
        assert_eq!(age("yesterday"), None);
    }

    #[test]
    fn renders_services_and_endpoints() {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let services = vec![serde_json::json!({
            "name": "web", "kind": "upstreams",
            "replicas": {"desired": 3, "ready": 2, "min": 1, "max": 10},
            "load": {"in_flight": 4, "rps": 12.25, "p99_ms": 8.0},
            "endpoints": [{"id": "127.0.0.1:9001", "address": "127.0.0.1:9001",
                           "state": "ready", "healthy": true, "in_flight": 4, "restarts": 2,
                           "started_at": now}]
        })];
        let out = render(&services);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("SERVICE"));
        assert!(lines[1].starts_with("web"));
        assert!(lines[1].contains("2/3"));
        assert!(lines[1].contains("12.2"));
        assert!(lines[1].contains("8.0ms"));
        assert!(lines[1].contains(" 1-10 "), "{out}");
        assert!(lines[3].starts_with("SERVICE  ID"));
        assert!(lines[4].contains("127.0.0.1:9001"));
        // Every endpoint cell sits under its own heading, the age under AGE.
        let heads: Vec<&str> = lines[3].split_whitespace().collect();
        let cells: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(heads.len(), cells.len(), "{out}");
        let at = |name: &str| heads.iter().position(|h| *h == name).expect(name);
        assert_eq!(cells[at("HEALTH")], "healthy");
        assert!(cells[at("AGE")].ends_with('s'), "{out}");
        assert_eq!(cells[at("IN-FLIGHT")], "4");
        assert_eq!(cells[at("RESTARTS")], "2");
    }
}
