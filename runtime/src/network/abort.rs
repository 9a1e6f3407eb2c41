//! Ending the host's TCP connections to a container's address before its link goes.
//!
//! A workload that dies with data still in a socket's send buffer does not reset the
//! connection: the kernel closes it gracefully, sending the rest and then a FIN from an
//! orphaned socket, at the pace the peer reads. Once the runtime removes the veth, none of
//! that reaches the host, so the proxy's end of the connection hears nothing more until its
//! own idle timeout (a minute by default), where a host-network workload's client would see
//! the cut at once. The kernel's `SOCK_DESTROY` (as `ss -K` uses) ends the host's sockets
//! to the address now, with `ECONNABORTED` to their owners. A kernel built without
//! `CONFIG_INET_DIAG_DESTROY` refuses it, and then those connections end by their timeouts
//! as before.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// `linux/sock_diag.h`: a dump of sockets of one family, and the destruction of one.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// `struct nlmsghdr`.
const HEADER: usize = 16;
/// `struct inet_diag_sockid`: ports, source and destination addresses, interface, cookie.
const SOCKID: usize = 48;
/// Where `idiag_dst` begins in a `struct inet_diag_sockid`.
const DST: usize = 20;
/// The TCP states (`1 << state`) of connections that can still carry data: established and
/// the closing ones. Not TIME_WAIT, CLOSE, LISTEN or a request socket, which the kernel
/// refuses to destroy (and which carry nothing).
const LIVE_STATES: u32 = 1 << 1 // ESTABLISHED
    | 1 << 2 // SYN_SENT
    | 1 << 3 // SYN_RECV
    | 1 << 4 // FIN_WAIT1
    | 1 << 5 // FIN_WAIT2
    | 1 << 8 // CLOSE_WAIT
    | 1 << 9 // LAST_ACK
    | 1 << 11; // CLOSING
/// `struct inet_diag_msg` begins with family, state, timer and retransmits, then the id.
const MSG_ID: usize = 4;

/// Ends every IPv4 TCP connection of this network namespace whose remote address is `ip`
/// (the proxy's connections to a container are IPv4); returns how many, or the first error
/// when any could not be ended (`Errno::EOPNOTSUPP`: the kernel cannot destroy sockets).
pub(crate) fn abort_connections_to(ip: Ipv4Addr) -> Result<usize, Errno> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    let ids = connections_to(&fd, ip)?;
    let (mut aborted, mut failed) = (0, None);
    for id in &ids {
        match destroy(&fd, id) {
            Ok(()) => aborted += 1,
            // Closed on its own between the dump and now.
            Err(Errno::ENOENT) => {}
            // The others are still worth ending.
            Err(errno) => {
                failed.get_or_insert(errno);
            }
        }
    }
    failed.map_or(Ok(aborted), Err)
}

fn destroy(fd: &OwnedFd, id: &[u8; SOCKID]) -> Result<(), Errno> {
    send(fd, &request(SOCK_DESTROY, libc::NLM_F_ACK, id))?;
    let mut buf = [0u8; 256];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    acknowledged(&buf[..n])
}

/// The ids of the TCP sockets whose remote address is `ip`, from a dump of them all.
fn connections_to(fd: &OwnedFd, ip: Ipv4Addr) -> Result<Vec<[u8; SOCKID]>, Errno> {
    send(
        fd,
        &request(SOCK_DIAG_BY_FAMILY, libc::NLM_F_DUMP, &[0; SOCKID]),
    )?;
    let mut ids = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut messages = &buf[..n];
        while let Some((kind, payload, rest)) = message(messages) {
            match kind {
                SOCK_DIAG_BY_FAMILY => {
                    let id = payload
                        .get(MSG_ID..MSG_ID + SOCKID)
                        .and_then(|id| <[u8; SOCKID]>::try_from(id).ok());
                    if let Some(id) = id.filter(|id| id[DST..DST + 4] == ip.octets()) {
                        ids.push(id);
                    }
                }
                // Its payload is the dump's own result: a negative errno when it failed.
                kind if kind == libc::NLMSG_DONE as u16 => {
                    return failure(payload).map_or(Ok(ids), Err);
                }
                kind if kind == libc::NLMSG_ERROR as u16 => {
                    if let Some(errno) = failure(payload) {
                        return Err(errno);
                    }
                }
                _ => {}
            }
            messages = rest;
        }
        if n == 0 {
            return Ok(ids);
        }
    }
}

fn send(fd: &OwnedFd, message: &[u8]) -> Result<(), Errno> {
    sendto(
        fd.as_raw_fd(),
        message,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map(drop)
}

/// An `inet_diag_req_v2` for IPv4 TCP sockets in [`LIVE_STATES`], about socket `id`.
fn request(kind: u16, flags: libc::c_int, id: &[u8; SOCKID]) -> Vec<u8> {
    let len = HEADER + 8 + SOCKID;
    let flags = u16::try_from(libc::NLM_F_REQUEST | flags).unwrap_or(u16::MAX);
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&[0; 8]); // sequence number, port id
    message.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    message.extend_from_slice(&LIVE_STATES.to_ne_bytes());
    message.extend_from_slice(id);
    message
}

/// The first message of `buf`: its type, its payload and what follows it.
fn message(buf: &[u8]) -> Option<(u16, &[u8], &[u8])> {
    let len = u32::from_ne_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let kind = u16::from_ne_bytes(buf.get(4..6)?.try_into().ok()?);
    let payload = buf.get(HEADER..len)?;
    let next = len.next_multiple_of(4).min(buf.len());
    Some((kind, payload, &buf[next..]))
}

/// The `int` a payload begins with: an `NLMSG_ERROR`'s or an `NLMSG_DONE`'s result.
fn code(payload: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?))
}

/// The error an `NLMSG_ERROR`'s or `NLMSG_DONE`'s result reports, if any.
fn failure(payload: &[u8]) -> Option<Errno> {
    code(payload)
        .filter(|code| *code < 0)
        .map(|code| Errno::from_raw(-code))
}

/// What an `NLMSG_ERROR` message (an acknowledgement when its error is 0) says.
fn acknowledged(buf: &[u8]) -> Result<(), Errno> {
    let Some((kind, payload, _)) = message(buf) else {
        return Err(Errno::EBADMSG);
    };
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(Errno::EBADMSG);
    }
    code(payload).ok_or(Errno::EBADMSG)?;
    failure(payload).map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{Ipv4Addr, TcpListener, TcpStream};

    use super::*;

    /// A loopback address of its own, so that no other connection of the machine is
    /// touched.
    const ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);

    #[test]
    fn connections_to_an_address_are_aborted_and_others_kept() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "this test needs root (CAP_NET_ADMIN) in CI"
            );
            eprintln!("skipped: destroying sockets needs root (CAP_NET_ADMIN)");
            return;
        }
        let listener = TcpListener::bind((ADDRESS, 0)).expect("bind");
        let to = listener.local_addr().expect("address");
        // One connection closed by this side first, which leaves it in TIME_WAIT: the
        // kernel would refuse to destroy that one, and it must not stop the others.
        let closed = TcpStream::connect(to).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        drop(closed);
        let mut byte = [0u8; 1];
        assert_eq!(server.read(&mut byte).expect("end of stream"), 0);
        drop(server);
        let mut client = TcpStream::connect(to).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let other = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let mut kept = TcpStream::connect(other.local_addr().expect("address")).expect("connect");
        let (_kept_server, _) = other.accept().expect("accept");

        let aborted = match abort_connections_to(ADDRESS) {
            Err(Errno::EOPNOTSUPP) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipped: this kernel has no CONFIG_INET_DIAG_DESTROY");
                return;
            }
            result => result.expect("SOCK_DESTROY"),
        };
        assert!(aborted >= 1, "aborted {aborted}");
        let err = client
            .read(&mut byte)
            .expect_err("the connection is aborted");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
        kept.set_nonblocking(true).expect("nonblocking");
        let still = kept
            .read(&mut byte)
            .expect_err("nothing to read, and not aborted");
        assert_eq!(still.kind(), std::io::ErrorKind::WouldBlock, "{still}");
    }

    #[test]
    fn a_message_is_split_off_at_its_aligned_length() {
        let mut buf = request(SOCK_DESTROY, 0, &[7; SOCKID]);
        buf.extend_from_slice(&[1, 2, 3]);
        let (kind, payload, rest) = message(&buf).expect("a message");
        assert_eq!(kind, SOCK_DESTROY);
        assert_eq!(payload.len(), 8 + SOCKID);
        assert_eq!(rest, [1, 2, 3]);
        assert_eq!(acknowledged(&buf), Err(Errno::EBADMSG));
    }
}
