//! `shoal demo`: the daemon on a built-in config, with a note of what to try.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::daemon;

const CONFIG: &str = include_str!("../demo.yaml");

pub fn run() -> anyhow::Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "shoal demo runs its replicas as containers, which needs root (namespaces, cgroups \
             and mounts); run it as root, e.g. `sudo shoal demo`"
        );
    }
    let exe = std::env::current_exe().context("cannot find the running shoal binary")?;
    let text = CONFIG.replace("@SHOAL_EXE@", &exe.to_string_lossy());
    let config = shoal_config::parse(&text, "<demo>").map_err(|errors| {
        anyhow::anyhow!("the built-in demo config is invalid (a bug):\n{errors}")
    })?;
    daemon::run(config, None, PathBuf::from("/"), Some(banner))
}

fn banner() {
    // Commands are named as shoal was started (`target/<host>/release/shoal` under `cargo
    // run`), so the hints work where shoal is not on PATH.
    let shoal = std::env::args()
        .next()
        .filter(|arg0| arg0.contains('/'))
        .unwrap_or_else(|| "shoal".into());
    let hint =
        |command: &str, what: &str| format!("  {:<48} # {what}", format!("{shoal} {command}"));
    // Not `println!`, which panics on a stdout that is gone (`shoal demo | head -3`): the
    // demo runs on without its banner.
    let _ = writeln!(
        std::io::stdout(),
        "shoal demo is up: 127.0.0.1:8080 → service `hello` (container replicas of `shoal demo-backend`, 0..8)

Try:
  curl http://127.0.0.1:8080/                      # a replica answers with its id
{}
{}
{}
  curl -s http://127.0.0.1:9900/metrics | grep shoal_
  wrk -c 50 -d 30s 'http://127.0.0.1:8080/sleep?ms=100'   # load to watch the replica count (apt-get install wrk)

Ctrl-C drains and stops everything.",
        hint("status", "services, replicas, load"),
        hint(
            "scale hello 3",
            "pin three replicas; `scale hello auto` to release"
        ),
        hint("ps", "the containers behind them"),
    );
}
