//! The host's own addresses for `local` targets: read with getifaddrs(3) and kept current.
//!
//! A server bound to all interfaces is also reached by dialling the host's own interface
//! addresses; a `local` target covers them, so they are installed in the target map at start
//! (before the hooks are attached) and replaced whenever they change. Changes are noticed
//! from rtnetlink's address notifications (RTMGRP_IPV4_IFADDR / RTMGRP_IPV6_IFADDR), used only
//! as a wake-up: each one triggers a fresh getifaddrs, so no netlink message is parsed here.
//! A periodic re-read covers a lost notification (socket buffer overrun) or a host where
//! the netlink socket cannot be opened.
use std::{
    collections::BTreeSet,
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    sync::Arc,
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
    },
};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use super::{Maps, targets};
use crate::config::{Config, HostSpec, LOOPBACK_NETS, endpoint_canonical};

/// Re-read period when address notifications arrive (a safety net) and when they cannot.
const RESCAN_WITH_NETLINK: Duration = Duration::from_secs(30);
const RESCAN_WITHOUT_NETLINK: Duration = Duration::from_secs(2);
/// Notifications come in bursts (an interface going up adds several addresses): wait this
/// long after the first before reading, so one burst costs one update.
const SETTLE: Duration = Duration::from_millis(50);

/// Whether any target is a `local` one.
pub fn wanted(cfg: &Config) -> bool {
    cfg.targets
        .iter()
        .any(|t| t.matches.host == HostSpec::Local)
}

/// The host's interface addresses that loopback does not already cover. Blocking (a netlink
/// round trip inside getifaddrs): call it off the runtime.
pub fn interface_addresses() -> io::Result<BTreeSet<IpAddr>> {
    let mut out = BTreeSet::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        out.insert(endpoint_canonical(ip));
    }
    Ok(keep_uncovered(out))
}

/// Drops loopback (covered statically) and unspecified addresses (the hooks look those up as
/// the address they become).
fn keep_uncovered(addrs: BTreeSet<IpAddr>) -> BTreeSet<IpAddr> {
    addrs
        .into_iter()
        .filter(|ip| !ip.is_unspecified() && !LOOPBACK_NETS.iter().any(|n| n.contains(ip)))
        .collect()
}

/// Installs the current interface addresses. Blocking; used at start, before the hooks are
/// attached, so that no moment exists where a host address is not covered.
pub(super) fn install_initial(
    map: &mut targets::TargetMap,
    cfg: &Config,
) -> Result<BTreeSet<IpAddr>, super::Error> {
    let addrs = interface_addresses().map_err(super::Error::LocalAddresses)?;
    targets::replace_local(map, &cfg.targets, &BTreeSet::new(), &addrs)?;
    tracing::info!(addresses = ?addrs, "local targets cover the host's interface addresses");
    Ok(addrs)
}

/// Keeps the `local` entries equal to the host's addresses until `stop` fires. `installed` is
/// what `install_initial` put in.
pub async fn watch(
    maps: Arc<Maps>,
    cfg: Arc<Config>,
    mut installed: BTreeSet<IpAddr>,
    stop: CancellationToken,
) {
    if !wanted(&cfg) {
        return;
    }
    let notify = match subscribe() {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!(error = %e, every_secs = RESCAN_WITHOUT_NETLINK.as_secs(), "no address notifications; re-reading the host's addresses periodically");
            None
        }
    };
    let period = if notify.is_some() {
        RESCAN_WITH_NETLINK
    } else {
        RESCAN_WITHOUT_NETLINK
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
            r = notified(notify.as_ref()) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "reading address notifications failed");
                    tokio::time::sleep(period).await;
                }
                tokio::time::sleep(SETTLE).await;
                // Drain what arrived while settling: this read covers it.
                let _ = drain(notify.as_ref());
            }
        }
        let now = match tokio::task::spawn_blocking(interface_addresses).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading the host's addresses failed; keeping the previous ones");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the host's addresses failed");
                continue;
            }
        };
        if now == installed {
            continue;
        }
        let (targets, old, new) = (cfg.targets.clone(), installed.clone(), now.clone());
        match targets::update(&maps, move |m| {
            targets::replace_local(m, &targets, &old, &new)
        })
        .await
        {
            Some(Ok(())) => {
                tracing::info!(addresses = ?now, "local targets follow the host's addresses");
                installed = now;
            }
            Some(Err(e)) => {
                tracing::error!(addresses = ?now, error = %e, "target map update refused")
            }
            None => {}
        }
    }
}

/// A non-blocking rtnetlink socket subscribed to address changes.
fn subscribe() -> io::Result<AsyncFd<OwnedFd>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    let groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
    // SAFETY: the AsyncFd owns the OwnedFd for its whole life, and an OwnedFd's raw fd never
    // changes.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// Waits until a notification has arrived (forever without a socket) and drains it.
async fn notified(notify: Option<&AsyncFd<OwnedFd>>) -> io::Result<()> {
    let Some(fd) = notify else {
        return std::future::pending().await;
    };
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| drain_fd(inner.get_ref())) {
            Ok(r) => return r.map(|_| ()),
            Err(_would_block) => continue,
        }
    }
}

fn drain(notify: Option<&AsyncFd<OwnedFd>>) -> io::Result<usize> {
    match notify {
        Some(fd) => match drain_fd(fd.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            r => r,
        },
        None => Ok(0),
    }
}

/// Reads every queued message; returns how many. WouldBlock when none was queued (so the
/// caller's readiness is cleared). An overrun (ENOBUFS) means some were lost: the caller
/// re-reads all addresses anyway, so it counts as a message.
fn drain_fd(fd: &OwnedFd) -> io::Result<usize> {
    let mut buf = [0u8; 8192];
    let mut n = 0;
    loop {
        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(_) | Err(Errno::ENOBUFS) => n += 1,
            Err(Errno::EAGAIN) if n > 0 => return Ok(n),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_unspecified_are_left_to_the_static_entries() {
        let all: BTreeSet<IpAddr> = [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "0.0.0.0",
            "::",
            "192.0.2.7",
            "fe80::1",
            "fd5c:51ce::1",
        ]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
        let kept: Vec<String> = keep_uncovered(all)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(kept, ["192.0.2.7", "fd5c:51ce::1", "fe80::1"]);
    }

    #[test]
    fn this_host_has_addresses_and_none_is_loopback() {
        // Every Linux host has at least loopback, which is filtered out; what remains must
        // never contain it.
        let addrs = interface_addresses().expect("getifaddrs");
        assert!(
            addrs
                .iter()
                .all(|a| !a.is_loopback() && !a.is_unspecified())
        );
    }
}
