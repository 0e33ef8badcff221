//! How the bytes of an L4 (`protocol: tcp`) connection move between the client and the
//! upstream: in the kernel (a sockmap redirect, `kernel.rs`) or with splice(2)
//! (`forward.rs`). The kernel path is taken with `l4_relay: kernel` when the connection fits
//! its maps and its sockets could be paired; anything else is spliced.
use std::{os::fd::AsFd as _, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::{
    config::L4Relay,
    forward::{self, Moved},
};

pub mod kernel;
#[allow(unsafe_code)]
mod sock;
pub mod table;
#[allow(unsafe_code)]
pub mod wake;

pub use table::{KernelRelay, Pairing};

/// The path a connection's bytes take, as `sluice connections` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// sockmap redirect: payload never reaches userspace.
    Kernel,
    /// splice(2) through a pipe per direction.
    Splice,
    /// The HTTP pipeline (`protocol: http`).
    Http,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Kernel => "kernel",
            Path::Splice => "splice",
            Path::Http => "http",
        })
    }
}

/// Whether the agent loads the kernel relay. `auto` does not: the kernel's redirect queue has
/// no back-pressure (a client that stops reading would let the upstream fill kernel memory
/// until the kernel relay's limit resets the connection), so splice is what keeps today's
/// behaviour. `kernel` loads it and refuses to start without it.
pub fn wanted(mode: L4Relay) -> bool {
    match mode {
        L4Relay::Kernel => true,
        L4Relay::Auto | L4Relay::Splice => false,
    }
}

/// Socket entries the kernel relay's maps need for `max_connections` connections: two
/// sockets each.
pub fn map_entries(max_connections: usize) -> u32 {
    u32::try_from(max_connections.saturating_mul(2))
        .unwrap_or(u32::MAX)
        .max(2)
}

/// Redirected bytes of one socket between two wake-ups of its connection's task: an eighth
/// of the queue limit, so the limit is checked at least eight times while a queue fills, and
/// no less than 64 KiB, so a fast transfer wakes its task at most every 64 KiB.
pub fn wake_every(max_queue: u64) -> u64 {
    (max_queue / 8).max(64 * 1024)
}

/// Relays both ways until both sides are done, on the kernel path when `kernel` is loaded and
/// the pair fits, else with splice. `on_path` learns the path before any byte moves. A
/// kernel-path error resets both sockets: the redirect queue may hold bytes that will never
/// be delivered, and a reset says so where a FIN would look like a clean end.
pub async fn relay(
    kernel: Option<&Arc<KernelRelay>>,
    client: &TcpStream,
    upstream: &TcpStream,
    on_path: impl FnOnce(Path),
    moved: &Moved,
) -> Result<(), String> {
    let pairing = match kernel {
        None => None,
        Some(k) => {
            let start = kernel::Start::take(client, upstream).map_err(|e| e.to_string())?;
            match pair(k, client, upstream).await {
                Ok(p) => p.map(|p| (p, start, k.max_queue)),
                Err(e) => {
                    reset(client);
                    reset(upstream);
                    return Err(e.to_string());
                }
            }
        }
    };
    let Some((pairing, start, limit)) = pairing else {
        on_path(Path::Splice);
        return forward::relay(client, upstream, moved)
            .await
            .map_err(|e| e.to_string());
    };
    on_path(Path::Kernel);
    let r = kernel::run(client, upstream, start, limit, &pairing.wake(), moved).await;
    if r.is_err() {
        reset(client);
        reset(upstream);
    }
    pairing.release().await;
    r.map_err(|e| e.to_string())
}

/// Pairs the connection's sockets in the kernel relay's maps. `Ok(None)`: splice it (the maps
/// are full or the pairing was rolled back, both counted and logged); `Err`: half paired,
/// the connection must end.
async fn pair(
    k: &Arc<KernelRelay>,
    client: &TcpStream,
    upstream: &TcpStream,
) -> Result<Option<Pairing>, table::Error> {
    let Some(slot) = k.try_slot() else {
        k.count_fallback();
        tracing::warn!(
            capacity = k.capacity(),
            "kernel L4 relay maps are full (max_connections); this connection is spliced"
        );
        return Ok(None);
    };
    let socket = |s: &TcpStream| -> std::io::Result<(u64, std::os::fd::OwnedFd)> {
        Ok((sock::cookie(s.as_fd())?, s.as_fd().try_clone_to_owned()?))
    };
    let (a, b) = match (socket(client), socket(upstream)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            k.count_fallback();
            tracing::warn!(error = %e, "kernel L4 relay: reading the sockets failed; this connection is spliced");
            return Ok(None);
        }
    };
    match k.pair(slot, a, b).await {
        Ok(p) => Ok(Some(p)),
        Err(table::Error::Fallback(e)) => {
            k.count_fallback();
            // The kernel only takes established sockets: a client that half-closed before
            // the agent got to pairing is spliced, an ordinary case not worth a warning.
            if e.not_established() {
                let client_state = sock::state(client.as_fd());
                let upstream_state = sock::state(upstream.as_fd());
                tracing::info!(error = %e, ?client_state, ?upstream_state, "kernel L4 relay: socket no longer established; this connection is spliced");
            } else {
                tracing::warn!(error = %e, "kernel L4 relay: pairing failed; this connection is spliced");
            }
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Closes with a reset when the socket is dropped.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kernel_mode_loads_the_kernel_relay() {
        assert!(!wanted(L4Relay::Splice));
        assert!(!wanted(L4Relay::Auto));
        assert!(wanted(L4Relay::Kernel));
    }

    #[test]
    fn the_queue_limit_is_looked_at_eight_times_while_it_fills() {
        assert_eq!(wake_every(64 << 20), 8 << 20);
        assert_eq!(wake_every(1), 64 * 1024);
    }

    #[test]
    fn maps_hold_two_sockets_per_connection() {
        assert_eq!(map_entries(0), 2);
        assert_eq!(map_entries(1000), 2000);
        assert_eq!(map_entries(65536), 131072);
    }
}
