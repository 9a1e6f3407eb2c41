//! `shoal up` and `shoal demo`: load the config, start the proxy, the replicas of container
//! services and the admin API, and run until SIGINT/SIGTERM; then drain and clean up.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus::{IntGaugeVec, Opts, Registry};
use tokio::signal::unix::{signal, SignalKind};

use shoal_autoscaler::{Reconciler, ReplicaMetrics};
use shoal_config::Config;
use shoal_proxy::Proxy;
use shoal_runtime::{Runtime, RuntimeConfig, RuntimeSettings};

use crate::admin::{self, AdminState};
use crate::replicas::{ContainerDriver, ProxyEndpoints};
use crate::EXIT_USAGE;

pub fn up(path: &Path) -> anyhow::Result<i32> {
    let config = match crate::commands::validate::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(EXIT_USAGE);
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    run(config, base, None)
}

/// Runs the daemon on `config`; relative paths in it start at `base`. `on_ready` runs once
/// every listener is bound.
pub fn run(config: Config, base: &Path, on_ready: Option<fn()>) -> anyhow::Result<i32> {
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
    runtime.block_on(serve(config, base, on_ready))
}

async fn serve(config: Config, base: &Path, on_ready: Option<fn()>) -> anyhow::Result<i32> {
    let registry = Registry::new();
    register_build_info(&registry)?;
    let token = match &config.admin.token_file {
        Some(file) => Some(
            std::fs::read_to_string(base.join(file))
                .with_context(|| format!("cannot read admin.token_file {}", file.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let proxy = Proxy::with_base(&config, &registry, base).context("cannot build the proxy")?;
    let reconcilers = start_container_services(&config, base, &proxy, &registry).await?;
    let state = Arc::new(AdminState {
        proxy: proxy.clone(),
        registry,
        ready: AtomicBool::new(false),
        token,
        reconcilers,
    });
    admin::serve(config.admin.listen, state.clone()).await?;
    proxy.bind().await.context("cannot bind the listeners")?;
    state.ready.store(true, Ordering::Release);
    tracing::info!(
        listeners = config.listeners.len(),
        services = config.services.len(),
        "shoal is up"
    );
    if let Some(on_ready) = on_ready {
        on_ready();
    }

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
    let stops = state.reconcilers.values().map(Reconciler::shutdown);
    futures_util::future::join_all(stops).await;
    tracing::info!("shoal stopped");
    Ok(0)
}

/// Starts a reconciler for every service with a `container:` block. The runtime is created
/// only when one exists, so a pure load balancer never needs root.
async fn start_container_services(
    config: &Config,
    base: &Path,
    proxy: &Arc<Proxy>,
    registry: &Registry,
) -> anyhow::Result<BTreeMap<String, Reconciler>> {
    let mut reconcilers = BTreeMap::new();
    let containers: Vec<_> = config
        .services
        .iter()
        .filter_map(|(name, service)| Some((name, service, service.container.as_ref()?)))
        .collect();
    if containers.is_empty() {
        return Ok(reconcilers);
    }
    let defaults = RuntimeSettings::default();
    let runtime = Runtime::new(RuntimeConfig {
        state_dir: config
            .runtime
            .state_dir
            .clone()
            .unwrap_or(defaults.state_dir),
        subnet: config.runtime.subnet.clone(),
        init_binary: None,
    })
    .context("cannot open the container runtime's state directory (runtime.state_dir)")?;
    let stale = runtime.cleanup_stale().await;
    if !stale.is_empty() {
        tracing::info!(containers = ?stale, "removed containers left by a previous run");
    }
    let metrics = ReplicaMetrics::new(registry).context("cannot register replica metrics")?;
    for (name, service, container) in containers {
        let driver = ContainerDriver::new(runtime.clone(), name, container, &service.health, base)?;
        let handle = proxy
            .service(name)
            .with_context(|| format!("the proxy has no service `{name}`"))?;
        let reconciler = Reconciler::spawn(name, service, driver, ProxyEndpoints(handle), &metrics);
        reconcilers.insert(name.clone(), reconciler);
    }
    Ok(reconcilers)
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
