//! Isolated networking: a veth pair per container, one end moved into the container's
//! network namespace, configured from the host side with rtnetlink.
//!
//! Each container gets its own /30 from `runtime.subnet`: `.1` on the host end, `.2` in the
//! container (default route via `.1`). Point-to-point /30s need no shared bridge whose
//! lifetime would outlast containers, and the connected route makes the container reachable
//! from the host at its address. Leases are files `state_dir/net/<index>` created with
//! `O_EXCL`, so concurrent containers (even from different processes) never collide.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

use crate::error::Error;

mod abort;

pub(crate) use abort::abort_connections_to;

/// The container end of the veth, inside the container.
const CONTAINER_IF: &str = "eth0";

/// Parse `a.b.c.d/n` into (network address, prefix length).
pub(crate) fn parse_subnet(s: &str) -> Result<(Ipv4Addr, u8), Error> {
    let bad = || {
        Error::InvalidSpec(format!(
            "invalid runtime.subnet {s:?}: use an IPv4 CIDR with room for /30s, e.g. 10.213.0.0/16"
        ))
    };
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 30 {
        return Err(bad());
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
}

/// The /30 with this index: (host end, container end).
pub(crate) fn block(net: Ipv4Addr, index: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(net) + index * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// An allocated /30 and the name of the veth's host end that goes with it (the container
/// end is `eth0` in the container's namespace).
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub path: PathBuf,
    pub host_ip: Ipv4Addr,
    pub container_ip: Ipv4Addr,
    pub host_if: String,
}

/// Interface names must be unique on the host even across state directories (tests run
/// several runtimes at once), so they hash the lease path.
fn host_if_name(lease_path: &Path) -> String {
    let digest = Sha256::digest(lease_path.as_os_str().as_encoded_bytes());
    let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("sh{tag}h")
}

/// Take the first free /30 of the subnet.
pub(crate) fn allocate(state_dir: &Path, subnet: &str, id: &str) -> Result<Lease, Error> {
    let (net, len) = parse_subnet(subnet)?;
    let dir = state_dir.join("net");
    fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let blocks = 1u64 << (32 - u32::from(len)) >> 2;
    let routes = fs::read_to_string("/proc/net/route").unwrap_or_default();
    for index in 0..blocks as u32 {
        let path = dir.join(index.to_string());
        // Another state directory (a second daemon, a test) may use the same subnet; a /30
        // that already has a host route belongs to someone else.
        if route_exists(&routes, block(net, index).0) {
            continue;
        }
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                let _ = f.write_all(id.as_bytes());
                let (host_ip, container_ip) = block(net, index);
                return Ok(Lease {
                    host_if: host_if_name(&path),
                    path,
                    host_ip,
                    container_ip,
                });
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(format!("creating {}", path.display()), e)),
        }
    }
    Err(Error::Network(format!(
        "runtime.subnet {subnet} is exhausted ({blocks} containers); use a larger subnet"
    )))
}

/// Whether `/proc/net/route` has a /30 route to the block containing `host_ip`.
pub(crate) fn route_exists(proc_net_route: &str, host_ip: Ipv4Addr) -> bool {
    let network = Ipv4Addr::from(u32::from(host_ip) & !3);
    // Addresses are printed as the hex of a native-endian u32 holding network-order bytes.
    let addr = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    proc_net_route.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 7
            && addr(f[1]) == Some(network)
            && addr(f[7]) == Some(Ipv4Addr::new(255, 255, 255, 252))
    })
}

fn nl_err(what: &str) -> impl Fn(rtnetlink::Error) -> Error + '_ {
    move |e| Error::Network(format!("{what}: {e}"))
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        // The kernel answers ENODEV for an unknown name.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(Error::Network(format!("looking up {name}: {e}"))),
    }
}

fn connect() -> Result<Handle, Error> {
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|e| Error::Network(format!("opening a netlink socket: {e}")))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Create the veth pair with its container end in the namespace of `pid` and configure both
/// ends.
pub(crate) async fn setup(lease: &Lease, pid: i32) -> Result<(), Error> {
    let handle = connect()?;
    // The container end is created in the container's namespace, already named eth0:
    // moving a device between namespaces afterwards waits for RCU grace periods, 20-30 ms
    // of a ~45 ms isolated start on this project's test machine.
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(CONTAINER_IF.to_string())
        .setns_by_pid(pid as u32)
        .build();
    handle
        .link()
        .add(
            LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                .name(lease.host_if.clone())
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build(),
        )
        .execute()
        .await
        .map_err(nl_err("creating the veth pair"))?;
    let mut inside = Inside::configure(pid, lease)?;
    inside.configured().await?;

    // The host end comes up last: until then the host has no route to the container, so an
    // early client fails fast instead of leaving a failed ARP entry that stalls it for 1s.
    let host = link_index(&handle, &lease.host_if)
        .await?
        .ok_or_else(|| Error::Network(format!("{} vanished after creation", lease.host_if)))?;
    handle
        .address()
        .add(host, lease.host_ip.into(), 30)
        .execute()
        .await
        .map_err(nl_err("adding the host address"))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(host).up().build())
        .execute()
        .await
        .map_err(nl_err("bringing the host end up"))?;
    // Bringing the host end up turns the carrier on at both ends, but the kernel attaches
    // the container end's transmit queue later, from its link-watch work: until then that
    // end drops what it sends. A first ARP answer lost that way stalls the first client by
    // the 1 s ARP retry (a third of isolated cold starts did on this project's test
    // machine), so the container is not reported started before its end is up.
    inside.wait_until_up().await
}

/// The container end is configured by a netlink socket opened inside the container's
/// namespace. setns(CLONE_NEWNET) affects only the calling thread, so a short-lived thread of
/// our own does it; worker threads never change namespace. It configures eth0 at once, then,
/// told that the host end is up, waits for eth0 to be operational.
struct Inside {
    configured: tokio::sync::oneshot::Receiver<Result<(), Error>>,
    host_up: std::sync::mpsc::Sender<()>,
    active: tokio::sync::oneshot::Receiver<Result<(), Error>>,
}

impl Inside {
    fn configure(pid: i32, lease: &Lease) -> Result<Inside, Error> {
        let ns = fs::File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| Error::io(format!("opening the network namespace of pid {pid}"), e))?;
        let lease = lease.clone();
        let (configured_tx, configured) = tokio::sync::oneshot::channel();
        let (host_up, host_up_rx) = std::sync::mpsc::channel::<()>();
        let (active_tx, active) = tokio::sync::oneshot::channel();
        let run = move || {
            let rt = nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::Network(format!("entering the container namespace: {e}")))
                .and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| Error::io("starting a netlink runtime", e))
                });
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = configured_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async {
                let configured = match connect() {
                    Ok(handle) => configure_inside(&handle, &lease)
                        .await
                        .map(|eth| (handle, eth)),
                    Err(e) => Err(e),
                };
                let (handle, eth) = match configured {
                    Ok(done) => {
                        let _ = configured_tx.send(Ok(()));
                        done
                    }
                    Err(e) => {
                        let _ = configured_tx.send(Err(e));
                        return;
                    }
                };
                // Blocking is fine: this thread and its runtime exist for this alone.
                if host_up_rx.recv().is_ok() {
                    let _ = active_tx.send(wait_until_up(&handle, eth).await);
                }
            });
        };
        std::thread::Builder::new()
            .name("shoal-netns".into())
            .spawn(run)
            .map_err(|e| Error::io("spawning the netns thread", e))?;
        Ok(Inside {
            configured,
            host_up,
            active,
        })
    }

    async fn configured(&mut self) -> Result<(), Error> {
        (&mut self.configured)
            .await
            .map_err(|_| Error::Network("the netns thread panicked".into()))?
    }

    async fn wait_until_up(self) -> Result<(), Error> {
        let _ = self.host_up.send(());
        self.active
            .await
            .map_err(|_| Error::Network("the netns thread panicked".into()))?
    }
}

/// How long the container end may take to become operational after the host end is up.
const UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Poll `eth0` (index `eth`) until the kernel reports it operationally up (link-watch has
/// attached its queues); run inside the container's namespace.
async fn wait_until_up(handle: &Handle, eth: u32) -> Result<(), Error> {
    use rtnetlink::packet_route::link::{LinkAttribute, State};
    let deadline = tokio::time::Instant::now() + UP_TIMEOUT;
    loop {
        let mut links = handle.link().get().match_index(eth).execute();
        let msg = links
            .try_next()
            .await
            .map_err(nl_err(&format!("reading the state of {CONTAINER_IF}")))?
            .ok_or_else(|| Error::Network(format!("{CONTAINER_IF} vanished from the container")))?;
        if msg
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::OperState(State::Up)))
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Network(format!(
                "{CONTAINER_IF} in the container was not up {}s after the host end",
                UP_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_micros(200)).await;
    }
}

/// Bring up `lo`, address the container end (`eth0`), bring it up and route through the
/// host end; returns eth0's index.
async fn configure_inside(handle: &Handle, lease: &Lease) -> Result<u32, Error> {
    let lo = link_index(handle, "lo")
        .await?
        .ok_or_else(|| Error::Network("no lo in the container".into()))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(nl_err("bringing lo up"))?;
    let eth = link_index(handle, CONTAINER_IF)
        .await?
        .ok_or_else(|| Error::Network(format!("no {CONTAINER_IF} in the container")))?;
    handle
        .address()
        .add(eth, lease.container_ip.into(), 30)
        .execute()
        .await
        .map_err(nl_err("adding the container address"))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(eth).up().build())
        .execute()
        .await
        .map_err(nl_err(&format!("bringing {CONTAINER_IF} up")))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(lease.host_ip)
        .output_interface(eth)
        .build();
    handle
        .route()
        .add(route)
        .execute()
        .await
        .map_err(nl_err("adding the default route"))?;
    Ok(eth)
}

/// Delete the host end (which takes the peer with it) if it still exists; the pair also
/// disappears on its own when the container's namespace dies.
pub(crate) async fn teardown(host_if: &str) -> Result<(), Error> {
    let handle = connect()?;
    if let Some(index) = link_index(&handle, host_if).await? {
        match handle.link().del(index).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
            Err(e) => return Err(Error::Network(format!("deleting {host_if}: {e}"))),
        }
    }
    Ok(())
}

/// Release a lease file.
pub(crate) fn release(lease: &Path) {
    let _ = fs::remove_file(lease);
}

/// Whether a host interface exists (tests and cleanup checks).
pub fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_blocks() {
        let (net, len) = parse_subnet("10.213.0.0/16").unwrap();
        assert_eq!((net, len), (Ipv4Addr::new(10, 213, 0, 0), 16));
        assert_eq!(
            block(net, 0),
            (Ipv4Addr::new(10, 213, 0, 1), Ipv4Addr::new(10, 213, 0, 2))
        );
        assert_eq!(
            block(net, 65),
            (Ipv4Addr::new(10, 213, 1, 5), Ipv4Addr::new(10, 213, 1, 6))
        );
        assert_eq!(
            parse_subnet("10.1.2.3/24").unwrap().0,
            Ipv4Addr::new(10, 1, 2, 0)
        );
        assert!(parse_subnet("10.0.0.0/31").is_err());
        assert!(parse_subnet("nope").is_err());
    }

    #[test]
    fn routes_of_other_owners() {
        let routes =
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                      eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                      shx\t0400D50A\t00000000\t0001\t0\t0\t0\tFCFFFFFF\t0\t0\t0\n";
        assert!(route_exists(routes, Ipv4Addr::new(10, 213, 0, 5)));
        assert!(!route_exists(routes, Ipv4Addr::new(10, 213, 0, 1)));
    }

    #[test]
    fn leases_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let a = allocate(dir.path(), "10.9.0.0/29", "a").unwrap();
        let b = allocate(dir.path(), "10.9.0.0/29", "b").unwrap();
        assert_ne!(a.container_ip, b.container_ip);
        assert_ne!(a.host_if, b.host_if);
        assert!(a.host_if.len() <= 15);
        assert!(allocate(dir.path(), "10.9.0.0/29", "c").is_err());
        release(&a.path);
        assert_eq!(
            allocate(dir.path(), "10.9.0.0/29", "d")
                .unwrap()
                .container_ip,
            a.container_ip
        );
    }
}
