//! The loopback listeners that redirected connections land on.
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a listener, not yet registered with a runtime (the thread that serves it does that).
/// IPv6 listeners are v6-only: IPv4 (and v4-mapped) connections are sent to the IPv4
/// listener by the hooks.
pub fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    bind_std(addr, false)
}

/// `shards` listeners on one address, one per per-core runtime, joined with `SO_REUSEPORT`
/// so the kernel spreads connections across them. Registered with a runtime later, by the
/// thread that serves them (`TcpListener::from_std`).
pub fn bind_shards(addr: SocketAddr, shards: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    (0..shards.max(1)).map(|_| bind_std(addr, true)).collect()
}

fn bind_std(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}
