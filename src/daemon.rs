//! `shoal up` and `shoal demo`: load the config, start the proxy, the replicas of container
//! services and the admin API, and run until SIGINT/SIGTERM; then drain and clean up.
//! SIGHUP (and the admin API) reload the config file: validated first, then only the
//! difference applied, the old config serving on when the new one is invalid.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{Mutex, OnceCell};
use tokio::task::JoinHandle;

use shoal_autoscaler::{Drain, Reconciler, ReplicaMetrics};
use shoal_config::{Config, Service};
use shoal_proxy::Proxy;
use shoal_runtime::{Runtime, RuntimeConfig, RuntimeSettings};

use crate::admin;
use crate::replicas::{ContainerDriver, ProxyEndpoints, Template};
use crate::EXIT_USAGE;

pub fn up(path: &Path) -> anyhow::Result<i32> {
    let config = match crate::commands::validate::load(path) {
        Ok(config) => config,
        Err(errors) => {
            // Not `eprint!`, which panics on a stderr that is gone: the status still tells.
            let _ = write!(std::io::stderr(), "{errors}");
            return Ok(EXIT_USAGE);
        }
    };
    let base = config_dir(path)?;
    run(config, Some(path.to_path_buf()), base, None)
}

/// The directory relative paths in the config at `path` start at, made absolute: the
/// container runtime resolves them after changing directory (`./shoal.yaml`, the default
/// config, has the relative parent "").
pub fn config_dir(path: &Path) -> anyhow::Result<PathBuf> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::path::absolute(dir).with_context(|| {
        format!(
            "cannot make {} an absolute path (is the working directory gone?)",
            dir.display()
        )
    })
}

/// Runs the daemon on `config`, read from `source` (None for the built-in demo); relative
/// paths in it start at `base`. `on_ready` runs once every listener is bound.
pub fn run(
    config: Config,
    source: Option<PathBuf>,
    base: PathBuf,
    on_ready: Option<fn()>,
) -> anyhow::Result<i32> {
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    // One worker has nothing to steal work from: tokio's current-thread scheduler does the
    // same job without the multi-thread one's cross-thread bookkeeping, 3.6% (HTTP/1.1) and
    // 5.7% (HTTP/2) less CPU per request in `benches/proxy/duel.sh`.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        shoal_proxy::timeslice::enable();
        builder
    };
    let runtime = builder
        .thread_name("shoal-worker")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, source, base, on_ready))
}

/// One container service's replicas: its reconciler and the template new replicas start from.
pub struct ContainerService {
    pub reconciler: Reconciler,
    template: Arc<ArcSwap<Template>>,
}

/// The running daemon, shared with the admin API.
pub struct Daemon {
    pub proxy: Arc<Proxy>,
    pub registry: Registry,
    /// `/readyz`: true once every listener is bound, false again while draining.
    pub ready: AtomicBool,
    /// When set, admin POSTs must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
    source: Option<PathBuf>,
    base: PathBuf,
    /// The running config; its lock also keeps two reloads from overlapping.
    config: Mutex<Config>,
    services: ArcSwap<BTreeMap<String, Arc<ContainerService>>>,
    /// Services a reload removed, still draining and stopping their replicas: shutdown
    /// waits for them too, so none of their replicas outlives the daemon.
    retiring: std::sync::Mutex<Vec<JoinHandle<()>>>,
    runtime: OnceCell<Runtime>,
    replica_metrics: ReplicaMetrics,
    reloads: IntCounterVec,
}

async fn serve(
    config: Config,
    source: Option<PathBuf>,
    base: PathBuf,
    on_ready: Option<fn()>,
) -> anyhow::Result<i32> {
    let mut signals = Signals::install()?;
    let registry = Registry::new();
    register_build_info(&registry)?;
    let reloads = IntCounterVec::new(
        Opts::new("shoal_config_reloads_total", "Config reloads by result"),
        &["result"],
    )?;
    registry.register(Box::new(reloads.clone()))?;
    // Both series from the start, at 0: a counter that appears only once it moves cannot be
    // told apart from one that does not exist, and `rate()` misses its first step.
    for result in ["success", "failure"] {
        reloads.with_label_values(&[result]);
    }
    let token = match &config.admin.token_file {
        Some(file) => Some(
            std::fs::read_to_string(base.join(file))
                .with_context(|| format!("cannot read admin.token_file {}", file.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let proxy = Proxy::with_base(&config, &registry, &base).context("cannot build the proxy")?;
    let replica_metrics =
        ReplicaMetrics::new(&registry).context("cannot register replica metrics")?;
    let daemon = Arc::new(Daemon {
        proxy: proxy.clone(),
        registry,
        ready: AtomicBool::new(false),
        token,
        source,
        base,
        config: Mutex::new(config.clone()),
        services: ArcSwap::from_pointee(BTreeMap::new()),
        retiring: std::sync::Mutex::new(Vec::new()),
        runtime: OnceCell::new(),
        replica_metrics,
        reloads,
    });
    let admin = admin::bind(config.admin.listen).await?;
    // SPEC's cleanliness: a run that died leaves its containers and kept logs to the next
    // daemon on the state directory, also when that one has no container service to open
    // the runtime for.
    // Without root it cannot remove them, and a pure load balancer must not need root.
    if !config.services.values().any(|s| s.container.is_some())
        && Runtime::holds_containers_or_logs(&daemon.state_dir(&config))
    {
        if let Err(error) = daemon.runtime(&config).await {
            tracing::warn!(
                state_dir = %daemon.state_dir(&config).display(),
                "containers of a previous run are left in the state directory: {error:#}"
            );
        }
    }
    if let Err(error) = come_up(&daemon, &config, admin).await {
        // Replicas already started must not outlive a daemon that could not come up.
        stop_replicas(&daemon).await;
        return Err(error);
    }
    daemon.ready.store(true, Ordering::Release);
    tracing::info!(
        listeners = config.listeners.len(),
        services = config.services.len(),
        "shoal is up"
    );
    if let Some(on_ready) = on_ready {
        on_ready();
    }

    wait_for_shutdown(&daemon, &mut signals).await;

    daemon.ready.store(false, Ordering::Release);
    let drain = daemon
        .config
        .lock()
        .await
        .services
        .values()
        .map(|s| s.drain_timeout)
        .max()
        .unwrap_or(Duration::ZERO);
    tracing::info!(?drain, "shutting down: draining in-flight requests");
    proxy.shutdown(drain).await;
    stop_replicas(&daemon).await;
    tracing::info!("shoal stopped");
    Ok(0)
}

/// Starts the container services, then answers the admin API on `admin` and binds the
/// listeners. Each service is stored as soon as it runs, so that [`stop_replicas`] finds
/// every replica started before a failure.
async fn come_up(
    daemon: &Arc<Daemon>,
    config: &Config,
    admin: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let mut services = BTreeMap::new();
    for (name, service) in &config.services {
        if service.container.is_some() {
            services.insert(
                name.clone(),
                daemon.start_service(config, name, service).await?,
            );
            daemon.services.store(Arc::new(services.clone()));
        }
    }
    admin::serve(admin, daemon.clone());
    daemon
        .proxy
        .bind()
        .await
        .context("cannot bind the listeners")
}

/// Stops every replica: the running services', at once (the proxy has drained them already,
/// or never served), and those of services a reload removed, which go on draining. Then the
/// runtime's state directory keeps nothing of this run ([`Runtime::tidy`]).
async fn stop_replicas(daemon: &Daemon) {
    let services = daemon.services.load_full();
    let retiring = std::mem::take(&mut *daemon.retiring_services());
    futures_util::future::join(
        futures_util::future::join_all(
            services
                .values()
                .map(|s| s.reconciler.shutdown(Drain::Over)),
        ),
        futures_util::future::join_all(retiring),
    )
    .await;
    if let Some(runtime) = daemon.runtime.get() {
        runtime.tidy().await;
    }
}

impl Daemon {
    fn retiring_services(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.retiring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The replicas of container service `name`, if it is one.
    pub fn container_service(&self, name: &str) -> Option<Arc<ContainerService>> {
        self.services.load().get(name).cloned()
    }

    /// The runtime's state directory: the config's, relative to the config's directory, or
    /// the default.
    fn state_dir(&self, config: &Config) -> std::path::PathBuf {
        config.runtime.state_dir.as_ref().map_or_else(
            || RuntimeSettings::default().state_dir,
            |dir| self.base.join(dir),
        )
    }

    /// The runtime, created on first use so that a pure load balancer never needs root.
    async fn runtime(&self, config: &Config) -> anyhow::Result<&Runtime> {
        self.runtime
            .get_or_try_init(|| async {
                let runtime = Runtime::new(RuntimeConfig {
                    state_dir: self.state_dir(config),
                    subnet: config.runtime.subnet.clone(),
                    init_binary: None,
                    fork_init: false,
                })
                .context(
                    "cannot open the container runtime's state directory (runtime.state_dir)",
                )?;
                let stale = runtime.cleanup_stale().await;
                if !stale.is_empty() {
                    tracing::info!(containers = ?stale, "removed containers left by a previous run");
                }
                Ok::<_, anyhow::Error>(runtime)
            })
            .await
    }

    async fn start_service(
        &self,
        config: &Config,
        name: &str,
        service: &Service,
    ) -> anyhow::Result<Arc<ContainerService>> {
        let container = service
            .container
            .as_ref()
            .with_context(|| format!("service `{name}` has no container"))?;
        let runtime = self.runtime(config).await?.clone();
        let template = Arc::new(ArcSwap::from_pointee(Template::new(
            name,
            container,
            &service.health,
            &self.base,
        )?));
        let handle = self
            .proxy
            .service(name)
            .with_context(|| format!("the proxy has no service `{name}`"))?;
        let driver = ContainerDriver::new(runtime, name, template.clone());
        let reconciler = Reconciler::spawn(
            name,
            service,
            driver,
            ProxyEndpoints(handle),
            &self.replica_metrics,
        );
        Ok(Arc::new(ContainerService {
            reconciler,
            template,
        }))
    }

    /// Reloads the config file: on success returns what changed, otherwise every error
    /// (as `shoal validate` prints them) with the running config untouched.
    pub async fn reload(&self) -> Result<Vec<String>, Vec<String>> {
        let result = self.try_reload().await;
        let label = if result.is_ok() { "success" } else { "failure" };
        self.reloads.with_label_values(&[label]).inc();
        match &result {
            Ok(changed) => tracing::info!(?changed, "config reloaded"),
            Err(errors) => tracing::warn!(
                ?errors,
                "config reload rejected; the old config keeps serving"
            ),
        }
        result
    }

    async fn try_reload(&self) -> Result<Vec<String>, Vec<String>> {
        let Some(path) = &self.source else {
            return Err(vec![
                "this daemon runs a built-in config (shoal demo): there is no file to reload"
                    .to_string(),
            ]);
        };
        let mut running = self.config.lock().await;
        let mut config = crate::commands::validate::load(path)
            .map_err(|errors| errors.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        // Read once at start (the runtime's settings once it is open: the first container
        // service opens it): new values in the file wait for a restart, and every reload says
        // so until then, since the running config keeps the values in effect.
        let runtime_open = self.runtime.get().is_some();
        let mut changed = Vec::new();
        for (key, differs) in [
            ("workers", config.workers != running.workers),
            ("admin", config.admin != running.admin),
            ("runtime", runtime_open && config.runtime != running.runtime),
        ] {
            if differs {
                changed.push(format!("{key}: changes take effect after a restart"));
            }
        }
        config.workers = running.workers;
        config.admin = running.admin.clone();
        if runtime_open {
            config.runtime = running.runtime.clone();
        }
        let mut templates = BTreeMap::new();
        for (name, service) in &config.services {
            if let Some(container) = &service.container {
                let template = Template::new(name, container, &service.health, &self.base)
                    .map_err(|err| vec![format!("{}: {err:#}", path.display())])?;
                templates.insert(name.clone(), template);
            }
        }
        // Opening the container runtime is the one step of starting a new container service
        // that can fail; it comes before the proxy changes, so such a reload changes nothing.
        let adds_services = {
            let running_services = self.services.load();
            templates
                .keys()
                .any(|name| !running_services.contains_key(name))
        };
        if adds_services {
            self.runtime(&config)
                .await
                .map_err(|err| vec![format!("{err:#}")])?;
        }
        changed.extend(
            self.proxy
                .apply(&config, &self.base)
                .await
                .map_err(|err| vec![format!("{err:#}")])?,
        );

        let mut services = (**self.services.load()).clone();
        for (name, template) in templates {
            let service = &config.services[&name];
            match (services.get(&name), running.services.get(&name)) {
                (Some(existing), Some(before)) => {
                    let roll = before.container != service.container;
                    if roll {
                        existing.template.store(Arc::new(template));
                        changed.push(format!(
                            "service {name}: rolling replicas to the new container spec"
                        ));
                    } else if before.health != service.health {
                        existing.template.store(Arc::new(template));
                    }
                    if roll || before != service {
                        if let Err(err) = existing.reconciler.update(service) {
                            changed.push(format!("service {name}: {err}"));
                        } else if !roll {
                            changed.push(format!("service {name}: replica settings updated"));
                        }
                    }
                }
                _ => {
                    let started = self
                        .start_service(&config, &name, service)
                        .await
                        .map_err(|err| vec![format!("service {name}: {err:#}")])?;
                    services.insert(name.clone(), started);
                    changed.push(if service.scale.initial() == 0 {
                        format!(
                            "service {name}: added at 0 replicas (the first request starts one)"
                        )
                    } else {
                        format!("service {name}: replicas starting")
                    });
                }
            }
        }
        let removed: Vec<String> = services
            .keys()
            .filter(|name| {
                config
                    .services
                    .get(*name)
                    .is_none_or(|s| s.container.is_none())
            })
            .cloned()
            .collect();
        for name in removed {
            if let Some(service) = services.remove(&name) {
                changed.push(if service.reconciler.status().replicas.is_empty() {
                    format!("service {name}: removed (it had no replicas)")
                } else {
                    format!("service {name}: replicas draining and stopping")
                });
                let mut retiring = self.retiring_services();
                retiring.retain(|stopping| !stopping.is_finished());
                retiring.push(tokio::spawn(async move {
                    service.reconciler.shutdown(Drain::Wait).await
                }));
            }
        }
        self.services.store(Arc::new(services));
        *running = config;
        Ok(changed)
    }
}

/// SIGTERM, SIGINT and SIGHUP, handled from the first moment of [`serve`]: one that arrives
/// while the daemon is still starting (resolving DNS upstreams, starting the first replicas)
/// is acted on once it is up, instead of ending the process with its replicas left behind.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            hangup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }
}

/// Reloads on SIGHUP; returns on SIGTERM or SIGINT.
async fn wait_for_shutdown(daemon: &Daemon, signals: &mut Signals) {
    loop {
        tokio::select! {
            _ = signals.terminate.recv() => tracing::info!("SIGTERM received"),
            _ = signals.interrupt.recv() => tracing::info!("SIGINT received"),
            _ = signals.hangup.recv() => {
                tracing::info!("SIGHUP received: reloading the config");
                // The outcome is logged and counted by `reload` itself.
                let _ = daemon.reload().await;
                continue;
            }
        }
        return;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_dir_is_absolute_for_the_default_relative_config() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(config_dir(Path::new("shoal.yaml")).unwrap(), cwd);
        assert_eq!(
            config_dir(Path::new("./shoal.yaml")).unwrap(),
            cwd.join(".")
        );
        assert_eq!(
            config_dir(Path::new("conf/shoal.yaml")).unwrap(),
            cwd.join("conf")
        );
        assert_eq!(
            config_dir(Path::new("/etc/shoal/shoal.yaml")).unwrap(),
            Path::new("/etc/shoal")
        );
    }
}
