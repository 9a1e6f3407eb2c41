//! Hot reload ([`Proxy::apply`]): a running proxy moves to a new config without dropping
//! connections. The new config is diffed against the running one and only the difference
//! is applied:
//!
//! - Everything that can fail is done first — compiling routes, reading certificates,
//!   binding new addresses, first DNS rounds of added services — while the old config keeps
//!   serving untouched. Only when all of it succeeded is anything swapped, and swapping
//!   cannot fail. A failed apply drops what it prepared (new sockets close) and returns
//!   the error.
//! - Services are identified by name: one that stays keeps its [`ServiceHandle`] (the
//!   container reconciler holds it), and its settings are swapped inside it for new
//!   requests. Its health checker restarts when `health` changed, its DNS task when
//!   `upstreams.dns` did. An added service gets a handle and its tasks; a removed one
//!   leaves the routes (new requests no longer reach it) while requests in flight finish
//!   on it, and its tasks stop.
//! - Listeners are identified by name too. One whose bind, protocol, TLS-or-not (and, for
//!   tcp, service) stay keeps its socket and its connections; its routes are swapped for
//!   the requests after the reload, and its certificates are re-read. One whose bind
//!   changed is bound anew, then the old socket stops accepting and its connections finish
//!   their in-flight requests and close. One whose protocol, TLS or tcp service changed is
//!   rebuilt on the same socket (the port never closes). Added ones are bound and served;
//!   removed ones stop accepting and their connections finish.
//! - An address that one listener gives up (removed, or bound elsewhere) and another takes
//!   in the same reload (a listener renamed, say) moves with its socket: binding it anew
//!   would find it still in use. The port never closes.
//! - A changed `limits.max_connections` applies to a kept listener's next connection (the
//!   accept loop reads it from the routes or service settings swapped here).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use shoal_config::{Config, Listener, Protocol};

use crate::errors::ProxyError;
use crate::metrics::running_series;
use crate::route::Routes;
use crate::service::ServiceHandle;
use crate::{bind_socket, duplicate, tls_error, Bound, ListenerKind, Proxy, Served};

/// The sockets of the addresses old listeners give up in a reload, by their `bind`: the
/// address bound and a duplicate of the socket.
type Released = BTreeMap<SocketAddr, (SocketAddr, std::io::Result<std::net::TcpListener>)>;

/// A new socket for listener `name` on `bind`: the one an old listener gives up there, else a
/// new one.
async fn bind_or_take(
    name: &str,
    bind: SocketAddr,
    released: &mut Released,
) -> Result<Bound, ProxyError> {
    let Some((address, socket)) = released.remove(&bind) else {
        return bind_socket(name, bind).await;
    };
    let socket = socket.map_err(|cause| ProxyError::Bind {
        listener: name.to_string(),
        address,
        cause,
    })?;
    duplicate(name, address, socket)
}

/// What apply does to one listener of the new config.
enum Plan {
    /// Same socket, same connections: new routes (HTTP) and certificates re-read.
    Keep {
        config: Listener,
        routes: Option<Routes>,
        line: Option<String>,
    },
    /// A new accept loop with a new state, on a new socket or (same bind) a duplicate of
    /// the old one; the old accept loop, if any, stops.
    Start {
        config: Listener,
        state: ListenerKind,
        bound: Option<Bound>,
        line: String,
    },
}

impl Proxy {
    /// Moves the running proxy to `config` (validated; relative certificate paths start
    /// at `base`) without dropping connections, and returns one line per change, such as
    /// `listener web: routes changed` or `service api: balance round_robin → p2c_ewma`.
    /// On error nothing has changed and the old config keeps serving. See the module
    /// docs of `reload` for what is applied how.
    pub async fn apply(
        self: &Arc<Self>,
        config: &Config,
        base: &Path,
    ) -> Result<Vec<String>, ProxyError> {
        let _changing = self.changing.lock().await;
        let applied = self.apply_locked(config, base).await;
        // Whether it succeeded or not: a failed apply may have made series for what it
        // prepared, and a successful one has removed listeners and services.
        let running = self.running();
        // A listener's request series are its protocol's: one that changed protocol keeps
        // none of the other's.
        let serving = |listener: &str, tcp: bool| {
            running
                .listeners
                .get(listener)
                .is_some_and(|served| (served.config.protocol == Protocol::Tcp) == tcp)
        };
        let service = |service: &str| running.services.contains_key(service);
        let any = running_series(|listener| running.listeners.contains_key(listener), service);
        let http = running_series(|listener| serving(listener, false), service);
        let tcp = running_series(|listener| serving(listener, true), service);
        self.metrics.retain(&http);
        self.l4.retain(&tcp, &any);
        self.discovery.retain(&any);
        applied
    }

    async fn apply_locked(
        self: &Arc<Self>,
        config: &Config,
        base: &Path,
    ) -> Result<Vec<String>, ProxyError> {
        let (old_services, mut old_listeners, mut released, bound) = {
            let running = self.running();
            if running.stopped {
                return Err(ProxyError::ShutDown);
            }
            // Addresses whose listener goes (removed, or bound elsewhere now): a listener of
            // the new config that binds one takes the socket over, since binding it anew
            // would find it in use while the old listener still holds it.
            let released: Released = running
                .listeners
                .iter()
                .filter(|(name, served)| {
                    served.config.bind.port() != 0
                        && !config
                            .listeners
                            .iter()
                            .any(|new| &new.name == *name && new.bind == served.config.bind)
                })
                .filter_map(|(_, served)| {
                    let socket = served.socket.as_ref()?;
                    Some((
                        served.config.bind,
                        (socket.address, socket.socket.try_clone()),
                    ))
                })
                .collect();
            let listeners: BTreeMap<String, (Listener, Option<(SocketAddr, _)>)> = running
                .listeners
                .iter()
                .map(|(name, served)| {
                    let socket = served
                        .socket
                        .as_ref()
                        .map(|s| (s.address, s.socket.try_clone()));
                    (name.clone(), (served.config.clone(), socket))
                })
                .collect();
            (running.services.clone(), listeners, released, running.bound)
        };

        // Services: a kept one is its handle (reconfigured below, once nothing can fail).
        let mut services = BTreeMap::new();
        let mut added = BTreeMap::new();
        for (name, service) in &config.services {
            let handle = match old_services.get(name) {
                Some(handle) => handle.clone(),
                None => {
                    let handle = Arc::new(ServiceHandle::new(name, service, &self.metrics));
                    added.insert(name.clone(), handle.clone());
                    handle
                }
            };
            services.insert(name.clone(), handle);
        }

        let mut plans = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let name = &listener.name;
            let Some((old, socket)) = old_listeners.remove(name) else {
                let state = self.listener_state(listener, &services, base)?;
                let bound = match bound {
                    true => Some(bind_or_take(name, listener.bind, &mut released).await?),
                    false => None,
                };
                let on = bound.as_ref().map_or(listener.bind, |b| b.address);
                plans.push(Plan::Start {
                    config: listener.clone(),
                    state,
                    bound,
                    line: format!("listener {name}: added on {on}"),
                });
                continue;
            };
            let same_shape = old.protocol == listener.protocol
                && old.tls.is_some() == listener.tls.is_some()
                && (listener.protocol == Protocol::Http || old.service == listener.service);
            if same_shape && old.bind == listener.bind {
                if let Some(tls) = &listener.tls {
                    // Read now so that bad certificates fail the reload; the kept acceptor
                    // re-reads them (and logs what has lapsed) once everything else has
                    // succeeded too.
                    let errors = crate::tls::check_tls(tls, base);
                    if !errors.is_empty() {
                        return Err(tls_error(listener, errors));
                    }
                }
                let routes = match listener.protocol {
                    Protocol::Http => Some(self.routes(listener, &services)?),
                    Protocol::Tcp => None,
                };
                let changed = old.routes != listener.routes || old.service != listener.service;
                plans.push(Plan::Keep {
                    config: listener.clone(),
                    routes,
                    line: changed.then(|| format!("listener {name}: routes changed")),
                });
                continue;
            }
            let state = self.listener_state(listener, &services, base)?;
            let (bound, line) = match socket {
                None => (None, format!("listener {name}: rebuilt")),
                Some((address, socket)) if old.bind == listener.bind => {
                    let copy = socket.map_err(|cause| ProxyError::Bind {
                        listener: name.clone(),
                        address,
                        cause,
                    })?;
                    let why = if old.protocol != listener.protocol {
                        "protocol changed"
                    } else if old.tls.is_some() != listener.tls.is_some() {
                        "TLS turned on or off"
                    } else {
                        "service changed"
                    };
                    (
                        Some(duplicate(name, address, copy)?),
                        format!(
                            "listener {name}: {why}; rebuilt on {address}, its open \
                             connections finish"
                        ),
                    )
                }
                Some((address, _)) => {
                    let new = bind_or_take(name, listener.bind, &mut released).await?;
                    let line = format!("listener {name}: rebound {address} → {}", new.address);
                    (Some(new), line)
                }
            };
            plans.push(Plan::Start {
                config: listener.clone(),
                state,
                bound,
                line,
            });
        }

        // Added DNS services resolve before any route sends to them, as at start-up. Their
        // tasks stop again if this apply goes no further (a dropped task is aborted).
        let mut added_tasks = match bound {
            true => self.start_services(&added).await,
            false => BTreeMap::new(),
        };

        // Nothing below can fail: swap.
        let mut running = self.running();
        if running.stopped {
            return Err(ProxyError::ShutDown);
        }
        let mut lines = Vec::new();
        let mut service_lines = Vec::new();
        for (name, handle) in &services {
            let Some(service) = config.services.get(name) else {
                continue;
            };
            if added.contains_key(name) {
                service_lines.push(format!("service {name}: added"));
                if let Some(tasks) = added_tasks.remove(name) {
                    running.tasks.insert(name.clone(), tasks);
                }
                continue;
            }
            let change = handle.reconfigure(service);
            service_lines.extend(change.lines);
            if running.bound {
                let tasks = running.tasks.entry(name.clone()).or_default();
                if change.health {
                    tasks.health = None;
                    tasks.health = crate::health::spawn(handle, self.shutdown.subscribe());
                }
                if change.dns {
                    tasks.discovery = None;
                    tasks.discovery =
                        self.discovery
                            .spawn(handle, service, self.shutdown.subscribe());
                }
            }
        }
        for (name, removed) in &old_services {
            if !services.contains_key(name) {
                running.tasks.remove(name);
                // No replica of it will come: its held requests get their 503 now, not
                // at `cold_start_timeout` (nor a closed connection at shutdown). Requests
                // in flight finish as they would.
                removed.activator.close();
                service_lines.push(format!("service {name}: removed"));
            }
        }
        running.services = services;

        let mut old = std::mem::take(&mut running.listeners);
        let mut tls_lines = Vec::new();
        for plan in plans {
            match plan {
                Plan::Keep {
                    config: listener,
                    routes,
                    line,
                } => {
                    let Some(mut served) = old.remove(&listener.name) else {
                        continue;
                    };
                    lines.extend(line);
                    if let (Some(mut routes), ListenerKind::Http(state)) = (routes, &served.state) {
                        routes.refresh_connection_settings();
                        state.routes.store(Arc::new(routes));
                    }
                    if let (Some(tls), Some(acceptor)) = (&listener.tls, served.state.tls()) {
                        match acceptor.reload(tls, base) {
                            Ok(()) => tls_lines
                                .push(format!("tls {}: certificates re-read", listener.name)),
                            // The files changed again since they were checked above.
                            Err(errors) => tls_lines.push(format!(
                                "tls {}: old certificates kept: {}",
                                listener.name,
                                errors.join("; ")
                            )),
                        }
                    }
                    served.config = listener;
                    running.listeners.insert(served.config.name.clone(), served);
                }
                Plan::Start {
                    config: listener,
                    state,
                    bound,
                    line,
                } => {
                    lines.push(line);
                    if let ListenerKind::Http(state) = &state {
                        state.refresh_connection_settings();
                    }
                    let socket = bound.map(|bound| self.serve(&state, bound));
                    if let Some(previous) = old.remove(&listener.name) {
                        // Stops once the new loop accepts: no connection finds the port closed.
                        drop(previous.socket.map(crate::Socket::stop));
                    }
                    running.listeners.insert(
                        listener.name.clone(),
                        Served {
                            config: listener,
                            state,
                            socket,
                        },
                    );
                }
            }
        }
        for (name, removed) in old {
            drop(removed.socket.map(crate::Socket::stop));
            lines.push(format!("listener {name}: removed"));
        }
        lines.extend(service_lines);
        lines.extend(tls_lines);
        for line in &lines {
            tracing::info!("reload: {line}");
        }
        Ok(lines)
    }
}
