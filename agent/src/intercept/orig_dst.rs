//! Finding the original destination and caller of an accepted connection: the sock_ops hook
//! stored them under the client's (address, port), which is the accepted socket's peer.
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use agent_common::{ConnMeta, PeerKey, v4_mapped};

use super::Maps;
use crate::workload::{CgroupRoot, Workload};

/// Who made the connection accepted from `peer` by a listener in the namespace with cookie
/// `netns_cookie`, and where it was going, or `None` if it did
/// not come through redirection (it must be refused). Both steps block (a map syscall under a
/// mutex, a /proc read, the cgroup lookup), so they run on the blocking pool, never on a
/// runtime worker; the number waiting is bounded by the connections being served.
pub async fn attribute(
    maps: Arc<Maps>,
    cgroups: Arc<CgroupRoot>,
    netns_cookie: u64,
    peer: SocketAddr,
) -> Option<(ConnMeta, Workload)> {
    match tokio::task::spawn_blocking(move || {
        let meta = take(&maps, netns_cookie, peer)?;
        let workload = Workload::from_meta(&meta, &cgroups);
        Some((meta, workload))
    })
    .await
    {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(%peer, error = %e, "attributing a connection failed");
            None
        }
    }
}

/// Takes (reads and deletes) the metadata for a connection accepted from `peer`. `None` means
/// the connection did not come through redirection and must be refused. Blocking: see
/// [`attribute`].
fn take(maps: &Maps, netns_cookie: u64, peer: SocketAddr) -> Option<ConnMeta> {
    let key = PeerKey {
        netns_cookie,
        addr: match peer.ip() {
            IpAddr::V4(v4) => v4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        },
        port: peer.port(),
        _pad: 0,
        _pad2: 0,
    };
    let mut map = maps
        .by_peer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let meta = map.get(&key, 0).ok()?;
    // Deleting keeps the LRU map small; a failure only means LRU eviction will do it later.
    let _ = map.remove(&key);
    Some(meta)
}

/// The destination the client dialled, as the client saw it.
pub fn original_destination(meta: &ConnMeta) -> SocketAddr {
    let v6 = Ipv6Addr::from(meta.orig_addr);
    let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
    SocketAddr::new(ip, meta.orig_port)
}
