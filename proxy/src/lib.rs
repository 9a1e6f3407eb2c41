//! shoal-proxy: the HTTP proxy core of shoal — listeners, routing, balancing, upstream
//! connection pools, retries, timeouts and the proxy's metrics.
//!
//! The embedding program builds a [`Proxy`] from a validated config, binds it, hands
//! services new endpoint sets as replicas come and go, reads their load, and shuts it
//! down:
//!
//! ```no_run
//! # async fn run(config: shoal_config::Config) -> Result<(), shoal_proxy::ProxyError> {
//! let registry = prometheus::Registry::new();
//! let proxy = shoal_proxy::Proxy::new(&config, &registry)?;
//! proxy.bind().await?;
//! if let Some(web) = proxy.service("web") {
//!     web.set_endpoints(vec![shoal_proxy::Endpoint::new("127.0.0.1:9001".parse().unwrap())]);
//!     println!("{:?}", web.load());
//! }
//! proxy.shutdown(std::time::Duration::from_secs(30)).await;
//! # Ok(())
//! # }
//! ```
//!
//! A request goes: accept ([`listener`]) → first head checked ([`preread`]) → hyper →
//! route ([`route`]) → service handle → balancer ([`balance`]) over an endpoint-set
//! snapshot → pooled connection ([`pool`]) → response streamed back ([`forward`]).

mod activator;
mod balance;
mod body;
mod discovery;
mod endpoint;
mod errors;
mod forward;
mod headers;
pub mod health;
mod io;
mod listener;
mod load;
mod metrics;
mod outlier;
mod pool;
mod preread;
mod retry;
mod route;
mod service;
mod tcp;
mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_config::{Config, Protocol};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use body::ResponseBody;
pub use endpoint::Endpoint;
pub use errors::ProxyError;
pub use load::LoadSnapshot;
pub use service::{EndpointStatus, ServiceHandle, ServiceKind, ServiceStatus};
pub use tls::check_tls;

use listener::{Connections, ListenerState};
use metrics::Metrics;
use route::Routes;
use tcp::{L4Metrics, TcpState};
use tls::{Acceptor, Alpn};

/// The proxy: every listener of a config and every service behind them.
pub struct Proxy {
    listeners: Vec<Arc<ListenerState>>,
    tcp_listeners: Vec<Arc<TcpState>>,
    services: BTreeMap<String, Arc<ServiceHandle>>,
    connections: Arc<Connections>,
    shutdown: watch::Sender<bool>,
    /// Accept loops and the addresses they listen on; filled by [`Proxy::bind`]. Only
    /// touched by bind, shutdown and address queries, never by a request.
    bound: Mutex<Option<Bound>>,
    /// Services whose endpoints come from `upstreams.dns`; resolved from `bind` on.
    discovery: discovery::Discovery,
}

struct Bound {
    addresses: Vec<(String, SocketAddr)>,
    accept_loops: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Builds the proxy from a validated config and registers its metrics in `registry`.
    /// Static upstreams become endpoints at once; container services start with none.
    /// Relative TLS certificate paths start at the current directory; see
    /// [`Proxy::with_base`].
    pub fn new(config: &Config, registry: &prometheus::Registry) -> Result<Arc<Proxy>, ProxyError> {
        Proxy::with_base(config, registry, Path::new(""))
    }

    /// [`Proxy::new`] with relative TLS certificate paths starting at `base` (the config
    /// file's directory). Certificates that [`check_tls`] would report fail the listener.
    pub fn with_base(
        config: &Config,
        registry: &prometheus::Registry,
        base: &Path,
    ) -> Result<Arc<Proxy>, ProxyError> {
        let metrics = Metrics::register(registry)?;
        let l4 = Arc::new(L4Metrics::register(registry)?);
        let services: BTreeMap<String, Arc<ServiceHandle>> = config
            .services
            .iter()
            .map(|(name, service)| {
                (
                    name.clone(),
                    Arc::new(ServiceHandle::new(name, service, &metrics)),
                )
            })
            .collect();
        let discovery = discovery::Discovery::new(config, &services, registry)?;
        let mut listeners = Vec::new();
        let mut tcp_listeners = Vec::new();
        for listener in &config.listeners {
            let alpn = match listener.protocol {
                Protocol::Http => Alpn::Http,
                Protocol::Tcp => Alpn::None,
            };
            let tls = match &listener.tls {
                Some(tls) => Some(Arc::new(
                    Acceptor::new(tls, base, alpn).map_err(|errors| tls_error(listener, errors))?,
                )),
                None => None,
            };
            if listener.protocol == Protocol::Tcp {
                let service = listener
                    .service
                    .as_ref()
                    .ok_or_else(|| ProxyError::NoService {
                        listener: listener.name.clone(),
                    })?;
                let service =
                    services
                        .get(service)
                        .cloned()
                        .ok_or_else(|| ProxyError::UnknownService {
                            listener: listener.name.clone(),
                            service: service.clone(),
                        })?;
                tcp_listeners.push(Arc::new(TcpState::new(
                    listener.name.clone(),
                    listener.bind,
                    service,
                    tls,
                    l4.clone(),
                )));
                continue;
            }
            let mut resolved = BTreeMap::new();
            let routes = Routes::compile(listener, &mut |name| {
                let service = services.get(name)?.clone();
                let metrics = resolved
                    .entry(name.to_string())
                    .or_insert_with(|| Arc::new(metrics.requests(&listener.name, name)))
                    .clone();
                Some((service, metrics))
            })?;
            let unrouted = Arc::new(metrics.requests(&listener.name, ""));
            listeners.push(Arc::new(ListenerState::new(
                listener.name.clone(),
                listener.bind,
                routes,
                unrouted,
                tls,
                l4.clone(),
            )));
        }
        let (shutdown, _) = watch::channel(false);
        Ok(Arc::new(Proxy {
            listeners,
            tcp_listeners,
            services,
            connections: Arc::new(Connections::default()),
            shutdown,
            bound: Mutex::new(None),
            discovery,
        }))
    }

    /// Binds every HTTP listener, then starts accepting on the current tokio runtime. If
    /// any address cannot be bound, none is served and the error names the listener.
    pub async fn bind(self: &Arc<Self>) -> Result<(), ProxyError> {
        if self.bound_state().is_some() {
            return Err(ProxyError::AlreadyBound);
        }
        let mut sockets = Vec::with_capacity(self.listeners.len());
        for state in &self.listeners {
            let (socket, address) = bind_socket(&state.name, state.bind).await?;
            sockets.push((state.clone(), socket, address));
        }
        let mut tcp_sockets = Vec::with_capacity(self.tcp_listeners.len());
        for state in &self.tcp_listeners {
            let (socket, address) = bind_socket(&state.name, state.bind).await?;
            tcp_sockets.push((state.clone(), socket, address));
        }
        // Every address is bound: resolve DNS upstreams before accepting, so their services
        // start with endpoints. The tasks re-resolve until shutdown.
        self.discovery.start(self.shutdown.subscribe()).await;
        let mut bound = Bound {
            addresses: Vec::new(),
            accept_loops: Vec::new(),
        };
        for (state, socket, address) in tcp_sockets {
            let protocol = if state.tls.is_some() {
                "tcp+tls"
            } else {
                "tcp"
            };
            tracing::info!(listener = %state.name, %address, "listening ({protocol})");
            bound.addresses.push((state.name.clone(), address));
            bound.accept_loops.push(tokio::spawn(tcp::accept_loop(
                socket,
                state,
                self.connections.clone(),
                self.shutdown.subscribe(),
            )));
        }
        for (state, socket, address) in sockets {
            tracing::info!(listener = %state.name, %address, "listening ({})", state.scheme);
            bound.addresses.push((state.name.clone(), address));
            bound.accept_loops.push(tokio::spawn(listener::accept_loop(
                socket,
                state,
                self.connections.clone(),
                self.shutdown.subscribe(),
            )));
        }
        let mut slot = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            for task in &bound.accept_loops {
                task.abort();
            }
            return Err(ProxyError::AlreadyBound);
        }
        *slot = Some(bound);
        // Upstream services' health checks run while the proxy serves; shutdown stops them.
        for service in self.services.values() {
            health::spawn(service, self.shutdown.subscribe());
        }
        Ok(())
    }

    fn bound_state(&self) -> Option<Vec<(String, SocketAddr)>> {
        self.bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|b| b.addresses.clone())
    }

    /// The address a bound listener accepts on (useful with port 0 in the config).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.bound_state()?
            .into_iter()
            .find(|(name, _)| name == listener)
            .map(|(_, address)| address)
    }

    /// Re-reads every listener's TLS certificates (as on a config reload; `config` must
    /// have the listeners this proxy was built with). A listener whose new certificates
    /// have errors keeps its old ones; the errors are returned, each naming its file.
    pub fn reload_certificates(&self, config: &Config, base: &Path) -> Vec<String> {
        let acceptors = self
            .listeners
            .iter()
            .map(|l| (&l.name, &l.tls))
            .chain(self.tcp_listeners.iter().map(|l| (&l.name, &l.tls)));
        let mut errors = Vec::new();
        for (name, acceptor) in acceptors {
            let tls = config
                .listeners
                .iter()
                .find(|l| &l.name == name)
                .and_then(|l| l.tls.as_ref());
            if let (Some(acceptor), Some(tls)) = (acceptor, tls) {
                if let Err(found) = acceptor.reload(tls, base) {
                    errors.extend(found.into_iter().map(|e| format!("listener `{name}`: {e}")));
                }
            }
        }
        errors
    }

    /// A service's handle by name.
    pub fn service(&self, name: &str) -> Option<Arc<ServiceHandle>> {
        self.services.get(name).cloned()
    }

    /// Every service's status, in name order.
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.services.values().map(|s| s.status()).collect()
    }

    /// Stops accepting, lets open connections finish their in-flight requests for up to
    /// `drain` (idle keep-alive connections close at once, HTTP/2 clients get GOAWAY),
    /// then returns. Connections still open after `drain` are left to the runtime's end.
    pub async fn shutdown(&self, drain: Duration) {
        self.shutdown.send_replace(true);
        let accept_loops = self
            .bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .map(|b| std::mem::take(&mut b.accept_loops))
            .unwrap_or_default();
        for task in accept_loops {
            let _ = task.await;
        }
        if tokio::time::timeout(drain, self.connections.drained())
            .await
            .is_err()
        {
            tracing::warn!(?drain, "drain timeout reached with connections still open");
        }
    }
}

async fn bind_socket(
    name: &str,
    bind: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ProxyError> {
    let bind_error = |source| ProxyError::Bind {
        listener: name.to_string(),
        address: bind,
        source,
    };
    let socket = TcpListener::bind(bind).await.map_err(bind_error)?;
    let address = socket.local_addr().map_err(bind_error)?;
    Ok((socket, address))
}

/// Certificates that cannot be loaded fail the listener. `ProxyError` has no TLS variant
/// yet (errors.rs belongs to other work), so this is reported as the listener not binding,
/// with every problem in the message.
fn tls_error(listener: &shoal_config::Listener, errors: Vec<String>) -> ProxyError {
    ProxyError::Bind {
        listener: listener.name.clone(),
        address: listener.bind,
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("TLS: {}", errors.join("; ")),
        ),
    }
}
