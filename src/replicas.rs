//! Container services: the reconciler's driver built on the bundled runtime, and the mapping
//! from a service's `container:` block to a runtime spec.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use shoal_autoscaler::{Endpoints, Exit, Load, ReplicaDriver, Started, Stats};
use shoal_config::{Container as ContainerConfig, Health, Mount, Network};
use shoal_proxy::{Endpoint, ServiceHandle};
use shoal_runtime::{Container, ContainerSpec, RootFs, Runtime};

/// What each new replica of a service starts from; a reload swaps it whole.
pub struct Template {
    pub spec: ContainerSpec,
    pub health: Health,
}

impl Template {
    /// `base` is the config file's directory: relative image, rootfs and bind paths start there.
    pub fn new(
        service: &str,
        container: &ContainerConfig,
        health: &Health,
        base: &Path,
    ) -> anyhow::Result<Template> {
        Ok(Template {
            spec: spec(service, container, base)
                .with_context(|| format!("services.{service}.container"))?,
            health: health.clone(),
        })
    }
}

/// Starts the replicas of one service as containers.
pub struct ContainerDriver {
    runtime: Runtime,
    service: String,
    template: Arc<ArcSwap<Template>>,
}

impl ContainerDriver {
    pub fn new(runtime: Runtime, service: &str, template: Arc<ArcSwap<Template>>) -> Self {
        ContainerDriver {
            runtime,
            service: service.to_string(),
            template,
        }
    }
}

/// The runtime spec for a service's replicas (each replica then gets its own name).
pub fn spec(
    service: &str,
    container: &ContainerConfig,
    base: &Path,
) -> anyhow::Result<ContainerSpec> {
    let rootfs = match (&container.image, &container.rootfs, container.host) {
        (Some(image), _, _) => RootFs::Image(base.join(image)),
        (None, Some(dir), _) => RootFs::Dir(base.join(dir)),
        _ => RootFs::Host,
    };
    let mut spec = ContainerSpec::new(rootfs, container.command.clone());
    spec.service = Some(service.to_string());
    spec.env = container.env.clone();
    // `/` is the config default; leaving it unset lets an image's WorkingDir apply.
    spec.workdir = (container.workdir != "/").then(|| container.workdir.clone());
    spec.user = container.user.clone();
    spec.port = Some(container.port);
    spec.network = match container.network {
        Network::Isolated => shoal_runtime::Network::Isolated,
        Network::Host => shoal_runtime::Network::Host,
    };
    spec.resources = shoal_runtime::Resources {
        cpus: container.resources.cpus,
        memory: container.resources.memory,
        pids: container.resources.pids,
    };
    spec.mounts = container
        .mounts
        .iter()
        .map(|mount| match mount {
            Mount::Bind {
                source,
                target,
                readonly,
            } => shoal_runtime::Mount::Bind {
                source: base.join(source),
                target: target.clone(),
                readonly: *readonly,
            },
            Mount::Tmpfs { target, size } => shoal_runtime::Mount::tmpfs(target.clone(), *size),
        })
        .collect();
    spec.read_only = container.read_only;
    spec.stop_signal = shoal_runtime::parse_signal(&container.stop_signal)?;
    spec.stop_timeout = container.stop_timeout;
    Ok(spec)
}

impl ReplicaDriver for ContainerDriver {
    type Handle = Container;

    async fn start(&self, id: &str) -> anyhow::Result<Started<Container>> {
        let mut spec = self.template.load().spec.clone();
        spec.name = Some(id.to_string());
        let container = self
            .runtime
            .create(spec)
            .await
            .with_context(|| format!("creating container {id}"))?;
        if let Err(err) = container.start().await {
            let _ = container.delete().await;
            return Err(err).with_context(|| format!("starting container {id}"));
        }
        let Some(address) = container.address() else {
            let _ = container.delete().await;
            anyhow::bail!("container {id} has no network address to serve on");
        };
        tracing::debug!(service = %self.service, replica = %id, %address, "container started");
        Ok(Started {
            handle: container,
            address,
        })
    }

    async fn wait(&self, container: &Container) -> Exit {
        let status = container.wait().await;
        if status.oom_killed() {
            Exit::Oom
        } else if let Some(signal) = status.signal {
            Exit::Signal(signal)
        } else {
            if let Some(error) = &status.error {
                tracing::warn!(service = %self.service, replica = %container.id(), "{error}");
            }
            Exit::Code(status.code())
        }
    }

    async fn stop(&self, container: &Container) {
        let spec = container.spec();
        if let Err(err) = container.stop(spec.stop_signal, spec.stop_timeout).await {
            tracing::warn!(replica = %container.id(), "stopping failed: {err}");
        }
    }

    async fn remove(&self, container: &Container) {
        // File work (a rename, or a copy of up to a MiB) off the proxy's threads.
        let (runtime, run) = (self.runtime.clone(), container.clone());
        match tokio::task::spawn_blocking(move || runtime.keep_output(&run)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(replica = %container.id(), "{err}"),
            Err(err) => tracing::warn!(replica = %container.id(), "keeping its output: {err}"),
        }
        if let Err(err) = container.delete().await {
            tracing::warn!(replica = %container.id(), "removing failed: {err}");
        }
    }

    fn forget(&self, id: &str) {
        self.runtime.forget_output(id);
    }

    async fn probe(&self, address: SocketAddr) -> bool {
        let template = self.template.load_full();
        shoal_proxy::health::probe(address, template.health.http.as_ref()).await
    }

    fn stats(&self, container: &Container) -> Option<Stats> {
        // Polled each second, which is also how an exit later tells the main process's OOM
        // kill from an earlier one of another process (Container::new_oom_kills).
        let kills = container.new_oom_kills();
        if kills > 0 {
            let limit = container.spec().resources.memory.unwrap_or(0);
            tracing::warn!(
                service = %self.service,
                replica = %container.id(),
                "the OOM killer killed {kills} process(es) of the replica at its memory limit \
                 ({limit} bytes); raise container.resources.memory if it needs more"
            );
        }
        let stats = container.stats();
        Some(Stats {
            cpu_seconds: stats.cpu_seconds,
            memory_bytes: stats.memory_bytes,
        })
    }
}

/// What the autoscaler reads of the proxy's load.
fn autoscaler_load(load: shoal_proxy::LoadSnapshot) -> Load {
    Load {
        in_flight: load.in_flight,
        rps: load.rps_last_second,
        queued: load.queued,
        busy: load.busy,
    }
}

/// Publishes a service's ready replicas to the proxy's balancer.
pub struct ProxyEndpoints(pub Arc<ServiceHandle>);

impl Endpoints for ProxyEndpoints {
    fn publish(&self, ready: Vec<(String, SocketAddr)>) {
        self.0.set_replica_endpoints(
            ready
                .into_iter()
                .map(|(id, address)| Endpoint { id, address })
                .collect(),
        );
    }

    fn in_flight(&self, id: &str) -> usize {
        self.0.in_flight(id)
    }

    fn health_checked(&self, passed: bool) {
        self.0.record_health_check(passed);
    }

    fn startable(&self, startable: bool) {
        self.0.set_startable(startable);
    }

    fn demand(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.demand()
    }

    fn load(&self) -> Load {
        autoscaler_load(self.0.load())
    }

    fn tick_load(&self) -> Load {
        autoscaler_load(self.0.tick_load())
    }
}
