//! `shoal up`: load the config, start the proxy and the admin API, and run until a signal.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus::{IntGaugeVec, Opts, Registry};
use tokio::signal::unix::{signal, SignalKind};

use shoal_config::Config;
use shoal_proxy::Proxy;

use crate::admin::{self, AdminState};
use crate::EXIT_USAGE;

pub fn up(path: &Path) -> anyhow::Result<i32> {
    let config = match shoal_config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(EXIT_USAGE);
        }
    };
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("shoal-worker")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<i32> {
    let registry = Registry::new();
    register_build_info(&registry)?;
    let token = match &config.admin.token_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read admin.token_file {}", file.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let proxy = Proxy::new(&config, &registry).context("cannot build the proxy")?;
    let state = Arc::new(AdminState {
        proxy: proxy.clone(),
        registry,
        ready: AtomicBool::new(false),
        token,
    });
    admin::serve(config.admin.listen, state.clone()).await?;
    proxy.bind().await.context("cannot bind the listeners")?;
    state.ready.store(true, Ordering::Release);
    tracing::info!(
        listeners = config.listeners.len(),
        services = config.services.len(),
        "shoal is up"
    );

    wait_for_shutdown().await?;

    state.ready.store(false, Ordering::Release);
    let drain = config
        .services
        .values()
        .map(|s| s.drain_timeout)
        .max()
        .unwrap_or(Duration::ZERO);
    tracing::info!(?drain, "shutting down: draining in-flight requests");
    proxy.shutdown(drain).await;
    tracing::info!("shoal stopped");
    Ok(0)
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    // SIGHUP's default action would kill the daemon; until live reload exists it is caught
    // and the operator is told the config was not applied.
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    loop {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = hangup.recv() => {
                tracing::warn!("SIGHUP received: live reload is not available in this build; restart shoal to apply config changes");
                continue;
            }
        }
        return Ok(());
    }
}

fn register_build_info(registry: &Registry) -> anyhow::Result<()> {
    let info = IntGaugeVec::new(
        Opts::new("shoal_build_info", "shoal's version; always 1"),
        &["version"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry.register(Box::new(info))?;
    Ok(())
}
