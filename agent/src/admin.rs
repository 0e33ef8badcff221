//! The local admin interface: a root-only Unix socket answering `status` with a JSON snapshot
//! of live intercepted connections and counters. `sluice connections` is its client.
use std::{
    io,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tokio_util::sync::CancellationToken;

pub mod table;

pub use table::{ConnInfo, Table};

use crate::{
    intercept::{Maps, targets::MapStatus},
    relay::KernelRelay,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("another sluice agent is already running (its admin socket {0} answers)")]
    AlreadyRunning(PathBuf),
    #[error("admin socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("admin socket {path}: no agent answers ({source}); is `sluice run` running?")]
    NotRunning { path: PathBuf, source: io::Error },
    #[error("admin socket {path}: bad answer: {message}")]
    BadAnswer { path: PathBuf, message: String },
}

/// What `status` returns.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub fail_mode: String,
    pub connections: Vec<ConnInfo>,
    pub accepted_total: u64,
    /// Connections to the listener that did not come through redirection.
    pub refused_unattributed: u64,
    pub upstream_failures: u64,
    /// HTTP requests allowed by policy, denied by policy, refused before policy (4xx).
    #[serde(default)]
    pub http_allowed: u64,
    #[serde(default)]
    pub http_denied: u64,
    #[serde(default)]
    pub http_refused: u64,
    /// HTTP requests the client abandoned before Sluice answered.
    #[serde(default)]
    pub http_cancelled: u64,
    /// Request records lost because the writer's queue was full.
    #[serde(default)]
    pub records_dropped: u64,
    /// Connections refused because a connection cap (global or per cgroup) was reached.
    #[serde(default)]
    pub connections_over_limit: u64,
    /// Kernel counters: redirected, meta_store_failed, peer_store_failed, bypassed,
    /// no_v6_listener, mark_not_agent, unspecified, netns_refused, netns_passed
    /// (`agent_common::stat` order).
    pub kernel: Vec<u64>,
    /// The kernel's target map: size, capacity, `local` interface addresses, refused updates.
    #[serde(default)]
    pub target_map: MapStatus,
    /// The in-kernel L4 relay, when loaded (`l4_relay: kernel`).
    #[serde(default)]
    pub kernel_relay: Option<RelayStatus>,
    /// Other network namespaces served with listeners of their own.
    #[serde(default)]
    pub netns: crate::intercept::netns::Status,
}

/// Places in the kernel relay's maps, in connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayStatus {
    pub in_use: usize,
    pub capacity: usize,
    /// Connections spliced because they did not fit the maps or could not be paired.
    pub fallbacks: u64,
}

impl Status {
    /// The target map in one line for the text view; a refused update is shown with its
    /// reason, since interception is then narrower than configured.
    pub fn target_map_line(&self) -> String {
        let m = &self.target_map;
        let mut line = format!("target map: {} of {} entries", m.entries, m.capacity);
        if !m.local_addresses.is_empty() {
            let addrs: Vec<String> = m.local_addresses.iter().map(ToString::to_string).collect();
            line.push_str(&format!("; local targets also cover {}", addrs.join(", ")));
        }
        if m.refused_updates > 0 {
            line.push_str(&format!(
                "\nREFUSED {} target map update(s): {}",
                m.refused_updates,
                m.last_refused.as_deref().unwrap_or("?")
            ));
        }
        line
    }
}

/// Binds the admin socket, refusing if a live agent already owns it.
pub async fn bind(path: &Path) -> Result<UnixListener, Error> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(Error::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: UnixListener,
    approvals: Arc<crate::approval::Approvals>,
    table: Arc<Table>,
    maps: Arc<Maps>,
    relay: Option<Arc<KernelRelay>>,
    namespaces: Arc<crate::intercept::netns::Namespaces>,
    fail_mode: String,
    stop: CancellationToken,
) {
    loop {
        let conn = tokio::select! {
            () = stop.cancelled() => return,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else { continue };
        let (table, maps, fail_mode) = (table.clone(), maps.clone(), fail_mode.clone());
        let approvals = approvals.clone();
        let relay = relay.as_ref().map(|r| RelayStatus {
            in_use: r.in_use(),
            capacity: r.capacity(),
            fallbacks: r.fallbacks(),
        });
        let netns = namespaces.status();
        tokio::spawn(async move {
            // Who decides an approval: the kernel's word, not the client's.
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            // One short command per connection; anything longer is not a client of ours.
            let mut r =
                tokio::io::AsyncReadExt::take(BufReader::new(r), crate::approval::socket::MAX_LINE);
            if r.read_line(&mut line).await.is_err() {
                return;
            }
            let (http_allowed, http_denied, http_refused) = table.request_totals();
            let approval_cmd = line
                .trim()
                .strip_prefix(crate::approval::socket::PREFIX.trim_end());
            let body = match line.trim() {
                _ if approval_cmd.is_some() => {
                    let cmd = approval_cmd.unwrap_or_default().trim();
                    crate::approval::socket::answer(&approvals, cmd, uid).await
                }
                "status" => serde_json::to_string(&Status {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    fail_mode,
                    connections: table.snapshot(),
                    accepted_total: table.accepted_total(),
                    refused_unattributed: table.refused_total(),
                    upstream_failures: table.upstream_failures(),
                    http_allowed,
                    http_denied,
                    http_refused,
                    http_cancelled: table.cancelled(),
                    records_dropped: table.records_dropped(),
                    connections_over_limit: table.over_limit(),
                    kernel: maps.stats(),
                    target_map: maps.target_status(),
                    kernel_relay: relay,
                    netns,
                })
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
                other => format!(
                    "{{\"error\":\"unknown command {:?}\"}}",
                    other.chars().take(32).collect::<String>()
                ),
            };
            let _ = w.write_all(body.as_bytes()).await;
            let _ = w.shutdown().await;
        });
    }
}

/// Client side: asks a running agent for its status.
pub async fn query(path: &Path) -> Result<Status, Error> {
    let buf = ask(path, b"status\n", MAX_ANSWER)
        .await
        .map_err(|e| match e {
            Asked::Connect(source) => Error::NotRunning {
                path: path.to_path_buf(),
                source,
            },
            Asked::Io(source) => Error::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    serde_json::from_slice(&buf).map_err(|e| Error::BadAnswer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The longest answer a client reads from an agent socket.
const MAX_ANSWER: u64 = 256 << 20;

/// How a client's exchange with an agent socket failed.
pub(crate) enum Asked {
    /// Nobody answers at the path.
    Connect(std::io::Error),
    Io(std::io::Error),
}

/// Client side of the agent's sockets (admin, approvers'): sends one command line and
/// reads the answer to its end, at most `limit` bytes.
pub(crate) async fn ask(path: &Path, line: &[u8], limit: u64) -> Result<Vec<u8>, Asked> {
    let mut s = UnixStream::connect(path).await.map_err(Asked::Connect)?;
    s.write_all(line).await.map_err(Asked::Io)?;
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(
        &mut tokio::io::AsyncReadExt::take(&mut s, limit),
        &mut buf,
    )
    .await
    .map_err(Asked::Io)?;
    Ok(buf)
}
