//! `shoal simulate -c FILE --trace TRACE.csv`: each container service's real scaling policy
//! against a load trace, in simulated time; prints the replica timeline and a summary.
//!
//! The simulation itself (and the trace format) is `shoal_autoscaler::simulate`; this
//! command reads the files, picks the services and prints.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use shoal_autoscaler::simulate::{simulate, Change, Simulation, Summary, Trace};
use shoal_config::{Config, Scale, ScaleMetric};

use crate::EXIT_USAGE;

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Load trace: CSV lines `seconds,value` (concurrency or rps, per the service's
    /// scale.metric; cpu: demand in % of one replica's cpus). Values hold until the next
    /// line; the simulation ends at the last one. A header line and `#` comments are allowed.
    #[arg(long, value_name = "TRACE.csv")]
    pub trace: PathBuf,

    /// Only this service (default: every container service).
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,

    /// Simulated cold start: how long a new replica takes to become ready.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = shoal_config::units::parse_duration)]
    pub ready_delay: Duration,
}

#[derive(Serialize)]
struct Output<'a> {
    services: Vec<ServiceOutput<'a>>,
}

#[derive(Serialize)]
struct ServiceOutput<'a> {
    name: &'a str,
    metric: &'static str,
    timeline: &'a [Change],
    summary: &'a Summary,
}

pub fn run(args: SimulateArgs, config: &Path, json: bool) -> anyhow::Result<i32> {
    let config = match shoal_config::load(config) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(EXIT_USAGE);
        }
    };
    let text = match std::fs::read_to_string(&args.trace) {
        Ok(text) => text,
        Err(e) => {
            return usage(format!(
                "cannot read the trace {}: {e}",
                args.trace.display()
            ))
        }
    };
    let trace = match Trace::parse(&text) {
        Ok(trace) => trace,
        Err(e) => {
            return usage(format!(
                "{}:{}: {}",
                args.trace.display(),
                e.line,
                e.message
            ))
        }
    };
    let services = match pick(&config, args.service.as_deref()) {
        Ok(services) => services,
        Err(message) => return usage(message),
    };

    let mut results = Vec::new();
    for (name, scale) in services {
        match simulate(scale, &trace, args.ready_delay) {
            Ok(sim) => results.push((name, scale, sim)),
            Err(e) => return usage(format!("{name}: {e}")),
        }
    }

    if json {
        let output = Output {
            services: results
                .iter()
                .map(|(name, scale, sim)| ServiceOutput {
                    name,
                    metric: scale.metric.as_str(),
                    timeline: &sim.timeline,
                    summary: &sim.summary,
                })
                .collect(),
        };
        println!("{}", serde_json::to_string(&output)?);
    } else {
        let texts: Vec<String> = results
            .iter()
            .map(|(name, scale, sim)| render(name, scale, args.ready_delay, sim))
            .collect();
        print!("{}", texts.join("\n"));
    }
    Ok(0)
}

fn usage(message: String) -> anyhow::Result<i32> {
    eprintln!("shoal: {message}");
    Ok(EXIT_USAGE)
}

/// The services to simulate: the one asked for, or every container service.
fn pick<'a>(config: &'a Config, only: Option<&str>) -> Result<Vec<(&'a str, &'a Scale)>, String> {
    let containers = || {
        config
            .services
            .iter()
            .filter(|(_, service)| service.container.is_some())
            .map(|(name, service)| (name.as_str(), &service.scale))
    };
    match only {
        Some(name) => match config.services.get_key_value(name) {
            Some((key, service)) if service.container.is_some() => {
                Ok(vec![(key.as_str(), &service.scale)])
            }
            Some(_) => Err(format!(
                "service `{name}` has upstreams, not a container: only container services scale"
            )),
            None => {
                let known: Vec<&str> = config.services.keys().map(String::as_str).collect();
                Err(format!(
                    "no service `{name}` in the config (services: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ))
            }
        },
        None => {
            let all: Vec<_> = containers().collect();
            if all.is_empty() {
                Err("the config has no container service to simulate (scale: applies to container services only)".to_owned())
            } else {
                Ok(all)
            }
        }
    }
}

/// A header, the change points and the summary of one service.
fn render(name: &str, scale: &Scale, ready_delay: Duration, sim: &Simulation) -> String {
    let metric = scale.metric.as_str();
    let mut out = String::new();
    let aim = match scale.metric {
        ScaleMetric::Cpu => format!("target {}%, tolerance {}", scale.target, scale.tolerance),
        ScaleMetric::Concurrency | ScaleMetric::Rps => format!(
            "target {} × {}, panic_window {}, panic_threshold {:?}",
            scale.target,
            scale.utilization,
            secs(scale.panic_window),
            scale.panic_threshold
        ),
    };
    let _ = writeln!(
        out,
        "{name}: {metric}, {aim}, window {}, tick {}, {}..{} replicas, ready delay {}",
        secs(scale.window),
        secs(scale.tick),
        scale.min,
        scale.max,
        secs(ready_delay)
    );
    let _ = writeln!(
        out,
        "{:>8}  {:>9}  {:>7}  {:>5}  {:>8}  {:<5}  reason",
        "t", "load", "desired", "ready", "starting", "panic"
    );
    for change in &sim.timeline {
        let _ = writeln!(
            out,
            "{:>8}  {:>9.1}  {:>7}  {:>5}  {:>8}  {:<5}  {}",
            secs(change.at),
            change.load,
            change.desired,
            change.ready,
            change.starting,
            if change.panic { "panic" } else { "" },
            change.reason.as_deref().unwrap_or("")
        );
    }
    let s = &sim.summary;
    let _ = write!(
        out,
        "summary: {} simulated, peak {} replicas ({} ready), {:.1} replica-seconds, \
         {:.1}s over target, {:.1}s in panic, {} scale-ups, {} scale-downs",
        secs(s.duration),
        s.peak_replicas,
        s.peak_ready,
        s.replica_seconds,
        s.over_target_seconds,
        s.panic_seconds,
        s.scale_ups,
        s.scale_downs
    );
    match (s.first_load_step, s.time_to_first_scale_up) {
        (Some(step), Some(after)) => {
            let _ = write!(
                out,
                ", first scale-up {} after the load step at {}",
                secs(after),
                secs(step)
            );
        }
        (Some(step), None) => {
            let _ = write!(out, ", no scale-up after the load step at {}", secs(step));
        }
        (None, _) => {}
    }
    out.push('\n');
    out
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "
services:
  web:
    container: { host: true, command: [\"/bin/true\"] }
    scale: { min: 1, max: 5, window: 20s, panic_window: 4s }
  api:
    upstreams: { static: [\"127.0.0.1:9001\"] }
";

    #[test]
    fn picks_container_services_and_explains_the_rest() {
        let config = shoal_config::parse(CONFIG, "test.yaml").unwrap();
        let all = pick(&config, None).unwrap();
        assert_eq!(all.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["web"]);
        assert!(pick(&config, Some("api"))
            .unwrap_err()
            .contains("has upstreams"));
        assert_eq!(
            pick(&config, Some("nope")).unwrap_err(),
            "no service `nope` in the config (services: api, web)"
        );
    }

    #[test]
    fn renders_a_timeline_and_a_summary() {
        let config = shoal_config::parse(CONFIG, "test.yaml").unwrap();
        let scale = &config.services["web"].scale;
        let trace = Trace::parse("0,50\n10,300\n40,0\n80,0\n").unwrap();
        let sim = simulate(scale, &trace, Duration::from_secs(2)).unwrap();
        let text = render("web", scale, Duration::from_secs(2), &sim);
        assert!(text.starts_with("web: concurrency, target 100 × 0.7, panic_window 4s"));
        assert!(text.contains("initial 1 (scale.initial)"));
        assert!(text.contains("first scale-up 1s after the load step at 10s"));
        let json = serde_json::to_value(ServiceOutput {
            name: "web",
            metric: "concurrency",
            timeline: &sim.timeline,
            summary: &sim.summary,
        })
        .unwrap();
        assert_eq!(json["summary"]["peak_replicas"], 5);
        assert_eq!(json["timeline"][0]["at"], 0.0);
    }
}
