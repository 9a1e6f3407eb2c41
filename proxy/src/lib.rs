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
//! A request goes: accept ([`listener`]) → first head checked ([`preread`]) → shoal's
//! HTTP/1 or HTTP/2 server ([`http1`], [`http2`]) →
//! route ([`route`]) → service handle → balancer ([`balance`]) over an endpoint-set
//! snapshot → pooled connection ([`pool`]) → response streamed back ([`forward`]).

mod accept;
mod activator;
mod balance;
// Only for the criterion benchmarks in proxy/benches, which can reach only public items.
#[doc(hidden)]
pub mod bench;
mod body;
mod client;
mod date;
mod decode;
mod discovery;
mod endpoint;
mod errors;
mod forward;
mod headers;
pub mod health;
mod http1;
mod http2;
mod io;
mod listener;
mod load;
mod metrics;
mod outlier;
mod periodic;
mod pool;
mod preread;
mod reload;
mod retry;
mod route;
mod service;
mod tcp;
pub mod timeslice;
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
pub use errors::{bind_hint, ProxyError};
pub use load::LoadSnapshot;
pub use service::{EndpointStatus, ServiceHandle, ServiceKind, ServiceStatus};
pub use tls::{check_tls, tls_validity_warnings};

use accept::Connections;
use listener::ListenerState;
use metrics::Metrics;
use route::Routes;
use tcp::{L4Metrics, TcpState};
use tls::{Acceptor, Alpn};

/// The proxy: every listener of a config and every service behind them.
pub struct Proxy {
    metrics: Metrics,
    l4: Arc<L4Metrics>,
    /// Starts the tasks of services whose endpoints come from `upstreams.dns`.
    discovery: discovery::Discovery,
    connections: Arc<Connections>,
    /// Turns true on shutdown; ends service tasks. Listeners have their own stop signals
    /// ([`Socket`]), so a reload can stop one alone.
    shutdown: watch::Sender<bool>,
    /// What runs now. Only bind, apply, shutdown and lookups by name take the lock, never
    /// a request, and never across an await.
    running: Mutex<Running>,
    /// Serialises bind, apply and shutdown, which await while changing `running`.
    changing: tokio::sync::Mutex<()>,
}

/// The config being served, and everything built from it.
struct Running {
    services: BTreeMap<String, Arc<ServiceHandle>>,
    /// Per service: its health checker, DNS task and sweeper of idle upstream connections,
    /// once bound. Dropping them stops them.
    tasks: BTreeMap<String, ServiceTasks>,
    listeners: BTreeMap<String, Served>,
    bound: bool,
    stopped: bool,
}

#[derive(Default)]
struct ServiceTasks {
    health: Option<periodic::Periodic>,
    discovery: Option<discovery::Task>,
    /// Held only to be dropped with the service.
    _sweeper: Option<periodic::Periodic>,
}

/// One listener: its state and, once bound, its socket.
struct Served {
    config: shoal_config::Listener,
    state: ListenerKind,
    socket: Option<Socket>,
}

#[derive(Clone)]
enum ListenerKind {
    Http(Arc<ListenerState>),
    Tcp(Arc<TcpState>),
}

impl ListenerKind {
    fn tls(&self) -> Option<&Arc<Acceptor>> {
        match self {
            ListenerKind::Http(state) => state.tls.as_ref(),
            ListenerKind::Tcp(state) => state.tls.as_ref(),
        }
    }
}

/// A bound listening socket and the loop accepting on it.
struct Socket {
    address: SocketAddr,
    /// A duplicate of the accepting socket, so a reload that rebuilds the listener (new
    /// protocol, TLS turned on or off) hands the same socket to a new accept loop and
    /// never closes the port.
    socket: std::net::TcpListener,
    /// Stops the accept loop and asks its connections to finish gracefully.
    stop: watch::Sender<bool>,
    accept_loop: JoinHandle<()>,
}

impl Socket {
    /// Stops accepting; open connections finish their in-flight requests and close.
    fn stop(self) -> JoinHandle<()> {
        self.stop.send_replace(true);
        self.accept_loop
    }
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
        let discovery = discovery::Discovery::new(registry)?;
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
        let (shutdown, _) = watch::channel(false);
        let proxy = Proxy {
            metrics,
            l4,
            discovery,
            connections: Arc::new(Connections::default()),
            shutdown,
            running: Mutex::new(Running {
                services: BTreeMap::new(),
                tasks: BTreeMap::new(),
                listeners: BTreeMap::new(),
                bound: false,
                stopped: false,
            }),
            changing: tokio::sync::Mutex::new(()),
        };
        let mut listeners = BTreeMap::new();
        for listener in &config.listeners {
            let state = proxy.listener_state(listener, &services, base)?;
            listeners.insert(
                listener.name.clone(),
                Served {
                    config: listener.clone(),
                    state,
                    socket: None,
                },
            );
        }
        {
            let mut running = proxy.running();
            running.services = services;
            running.listeners = listeners;
        }
        Ok(Arc::new(proxy))
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds a listener's state over `services`: its TLS acceptor (certificates read
    /// now) and, for HTTP, its compiled routes.
    fn listener_state(
        &self,
        listener: &shoal_config::Listener,
        services: &BTreeMap<String, Arc<ServiceHandle>>,
        base: &Path,
    ) -> Result<ListenerKind, ProxyError> {
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
            return Ok(ListenerKind::Tcp(Arc::new(TcpState::new(
                listener.name.clone(),
                service,
                tls,
                self.l4.clone(),
            ))));
        }
        let routes = self.routes(listener, services)?;
        let unrouted = self.metrics.requests(&listener.name, "");
        Ok(ListenerKind::Http(Arc::new(ListenerState::new(
            listener.name.clone(),
            routes,
            unrouted,
            tls,
            self.l4.clone(),
            listener.bind,
        ))))
    }

    /// Compiles an HTTP listener's routes over `services`.
    fn routes(
        &self,
        listener: &shoal_config::Listener,
        services: &BTreeMap<String, Arc<ServiceHandle>>,
    ) -> Result<Routes, ProxyError> {
        let mut resolved = BTreeMap::new();
        Routes::compile(listener, &mut |name| {
            let service = services.get(name)?.clone();
            let metrics = resolved
                .entry(name.to_string())
                .or_insert_with(|| self.metrics.requests(&listener.name, name))
                .clone();
            Some((service, metrics))
        })
    }

    /// Binds every listener, then starts accepting on the current tokio runtime. If any
    /// address cannot be bound, none is served and the error names the listener.
    pub async fn bind(self: &Arc<Self>) -> Result<(), ProxyError> {
        let _changing = self.changing.lock().await;
        let (to_bind, services) = {
            let running = self.running();
            if running.bound {
                return Err(ProxyError::AlreadyBound);
            }
            let to_bind: Vec<(String, SocketAddr)> = running
                .listeners
                .values()
                .map(|l| (l.config.name.clone(), l.config.bind))
                .collect();
            (to_bind, running.services.clone())
        };
        let mut sockets = Vec::with_capacity(to_bind.len());
        for (name, bind) in to_bind {
            sockets.push((name.clone(), bind_socket(&name, bind).await?));
        }
        // Every address is bound: resolve DNS upstreams before accepting, so their services
        // start with endpoints. The tasks re-resolve until shutdown.
        let mut tasks = self.start_services(&services).await;
        let mut running = self.running();
        if running.bound {
            return Err(ProxyError::AlreadyBound);
        }
        running.bound = true;
        running.tasks.append(&mut tasks);
        for (name, bound) in sockets {
            if let Some(served) = running.listeners.get_mut(&name) {
                served.socket = Some(self.serve(&served.state, bound));
            }
        }
        Ok(())
    }

    /// Starts the health checkers and DNS tasks of `services`; returns once every DNS
    /// task has finished its first round, or after [`FIRST_DNS_ROUND_WAIT`].
    async fn start_services(
        &self,
        services: &BTreeMap<String, Arc<ServiceHandle>>,
    ) -> BTreeMap<String, ServiceTasks> {
        let mut tasks = BTreeMap::new();
        for (name, service) in services {
            tasks.insert(name.clone(), self.service_tasks(service));
        }
        // The tasks resolve concurrently; this only watches them finish, under one deadline.
        let first_rounds = async {
            for task in tasks.values_mut() {
                if let Some(discovery) = &mut task.discovery {
                    discovery.first_round().await;
                }
            }
        };
        if tokio::time::timeout(FIRST_DNS_ROUND_WAIT, first_rounds)
            .await
            .is_err()
        {
            tracing::warn!(
                wait = ?FIRST_DNS_ROUND_WAIT,
                "DNS upstreams not resolved yet; their services answer no_endpoints until they are"
            );
        }
        tasks
    }

    fn service_tasks(&self, service: &Arc<ServiceHandle>) -> ServiceTasks {
        let config = service.config();
        ServiceTasks {
            // Upstream services' health checks run while the proxy serves.
            health: health::spawn(service, self.shutdown.subscribe()),
            discovery: self
                .discovery
                .spawn(service, &config, self.shutdown.subscribe()),
            _sweeper: Some(pool::sweeper(service, self.shutdown.subscribe())),
        }
    }

    /// Starts accepting on a bound socket.
    fn serve(&self, state: &ListenerKind, bound: Bound) -> Socket {
        let (stop, stopped) = watch::channel(false);
        let (name, scheme) = match state {
            ListenerKind::Http(state) => (&state.name, state.scheme),
            ListenerKind::Tcp(state) if state.tls.is_some() => (&state.name, "tcp+tls"),
            ListenerKind::Tcp(state) => (&state.name, "tcp"),
        };
        tracing::info!(listener = %name, address = %bound.address, "listening ({scheme})");
        let connections = self.connections.clone();
        let accept_loop = match state {
            ListenerKind::Http(state) => tokio::spawn(accept::run(
                bound.accepting,
                state.clone(),
                connections,
                stopped,
            )),
            ListenerKind::Tcp(state) => tokio::spawn(accept::run(
                bound.accepting,
                state.clone(),
                connections,
                stopped,
            )),
        };
        Socket {
            address: bound.address,
            socket: bound.socket,
            stop,
            accept_loop,
        }
    }

    /// The address a bound listener accepts on (useful with port 0 in the config).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.running()
            .listeners
            .get(listener)?
            .socket
            .as_ref()
            .map(|s| s.address)
    }

    /// Re-reads every listener's TLS certificates (`config` names the files; listeners it
    /// does not have are left alone). A listener whose new certificates have errors keeps
    /// its old ones; the errors are returned, each naming its file. [`Proxy::apply`] does
    /// this for every listener it keeps.
    pub fn reload_certificates(&self, config: &Config, base: &Path) -> Vec<String> {
        let acceptors: Vec<(String, Arc<Acceptor>)> = self
            .running()
            .listeners
            .iter()
            .filter_map(|(name, l)| Some((name.clone(), l.state.tls()?.clone())))
            .collect();
        let mut errors = Vec::new();
        for (name, acceptor) in acceptors {
            let tls = config
                .listeners
                .iter()
                .find(|l| l.name == name)
                .and_then(|l| l.tls.as_ref());
            if let Some(tls) = tls {
                if let Err(found) = acceptor.reload(tls, base) {
                    errors.extend(found.into_iter().map(|e| format!("listener `{name}`: {e}")));
                }
            }
        }
        errors
    }

    /// A service's handle by name. A reload that keeps the service keeps its handle.
    pub fn service(&self, name: &str) -> Option<Arc<ServiceHandle>> {
        self.running().services.get(name).cloned()
    }

    /// Every service's status, in name order.
    pub fn status(&self) -> Vec<ServiceStatus> {
        let services: Vec<_> = self.running().services.values().cloned().collect();
        services.iter().map(|s| s.status()).collect()
    }

    /// Stops accepting, lets open connections finish their in-flight requests for up to
    /// `drain` (idle keep-alive connections close at once, HTTP/2 clients get GOAWAY),
    /// then returns. Connections still open after `drain` are left to the runtime's end.
    pub async fn shutdown(&self, drain: Duration) {
        let _changing = self.changing.lock().await;
        self.shutdown.send_replace(true);
        let accept_loops: Vec<JoinHandle<()>> = {
            let mut running = self.running();
            running.stopped = true;
            running.tasks.clear();
            running
                .listeners
                .values_mut()
                .filter_map(|l| l.socket.take())
                .map(Socket::stop)
                .collect()
        };
        for task in accept_loops {
            let _ = task.await;
        }
        if tokio::time::timeout(drain, self.connections.drained())
            .await
            .is_ok()
        {
            return;
        }
        // Requests still held for a replica get their 503 (with retry-after) rather than a
        // connection closed without an answer; a moment for those answers to be written.
        let services: Vec<Arc<ServiceHandle>> = self.running().services.values().cloned().collect();
        for service in &services {
            service.activator.close();
        }
        if tokio::time::timeout(HELD_ANSWER_TIME, self.connections.drained())
            .await
            .is_err()
        {
            tracing::warn!(?drain, "drain timeout reached with connections still open");
        }
    }
}

/// How long shutdown waits, after the drain timeout, for the 503s of requests that were
/// still held for a replica to be written.
const HELD_ANSWER_TIME: Duration = Duration::from_millis(250);

/// How long binding (or a reload) waits for new DNS upstreams' first answers. A nameserver
/// that does not answer would otherwise hold the listeners back for the resolver's own
/// timeouts (about 10 s per service); the resolution goes on in the background.
const FIRST_DNS_ROUND_WAIT: Duration = Duration::from_secs(2);

/// Connections the kernel may hold completed for a listener before it accepts them: the
/// standard library's and tokio's 128 overflowed under a burst of new connections (a
/// load's start, clients reconnecting after a `connection: close`), and SYNs beyond it are
/// dropped, to be sent again a second later. HAProxy and nginx ask for more too; the kernel
/// caps it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listening socket on `address` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as
/// tokio's `TcpListener::bind` sets it).
pub fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A freshly bound socket (or a duplicate of a kept one), ready for an accept loop.
struct Bound {
    address: SocketAddr,
    accepting: TcpListener,
    socket: std::net::TcpListener,
}

async fn bind_socket(name: &str, bind: SocketAddr) -> Result<Bound, ProxyError> {
    let bind_error = |cause| ProxyError::Bind {
        listener: name.to_string(),
        address: bind,
        cause,
    };
    let accepting = listen(bind).map_err(bind_error)?;
    let address = accepting.local_addr().map_err(bind_error)?;
    let socket = accepting.into_std().map_err(bind_error)?;
    duplicate(name, address, socket)
}

/// An accept loop's socket for `socket`, which stays with the caller.
fn duplicate(
    name: &str,
    address: SocketAddr,
    socket: std::net::TcpListener,
) -> Result<Bound, ProxyError> {
    let bind_error = |cause| ProxyError::Bind {
        listener: name.to_string(),
        address,
        cause,
    };
    let accepting =
        TcpListener::from_std(socket.try_clone().map_err(bind_error)?).map_err(bind_error)?;
    Ok(Bound {
        address,
        accepting,
        socket,
    })
}

/// Certificates that cannot be loaded fail the listener. `ProxyError` has no TLS variant
/// yet (errors.rs belongs to other work), so this is reported as the listener not binding,
/// with every problem in the message.
fn tls_error(listener: &shoal_config::Listener, errors: Vec<String>) -> ProxyError {
    ProxyError::Bind {
        listener: listener.name.clone(),
        address: listener.bind,
        cause: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("TLS: {}", errors.join("; ")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backlog asked for is the one the kernel keeps, up to its cap: `ss` shows a
    /// listening socket's backlog as its Send-Q.
    #[tokio::test]
    async fn listeners_ask_for_a_deep_backlog() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let Ok(out) = std::process::Command::new("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
        else {
            assert!(std::env::var("CI").is_err(), "ss (iproute2) is missing");
            eprintln!("skipped: ss (iproute2) is missing");
            return;
        };
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let backlog: u32 = line
            .split_whitespace()
            .nth(2)
            .and_then(|q| q.parse().ok())
            .unwrap_or_else(|| panic!("no backlog in {line:?}"));
        let cap: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(LISTEN_BACKLOG);
        assert_eq!(backlog, LISTEN_BACKLOG.min(cap), "{line}");
    }
}
