//! Live intercepted connections. An entry exists exactly as long as its `Entry` guard, so a
//! connection task that ends any way at all (including cancellation) leaves the table.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::workload::Workload;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnInfo {
    pub id: u64,
    pub target: String,
    /// The client's own address (the accepted socket's peer).
    pub client: SocketAddr,
    /// What the client dialled.
    pub original_dst: SocketAddr,
    pub upstream: Option<SocketAddr>,
    pub workload: Workload,
    pub started_unix_ms: u64,
    /// How its bytes move: kernel, splice or http; unknown until the upstream is dialled.
    #[serde(default)]
    pub path: Option<crate::relay::Path>,
}

#[derive(Default)]
pub struct Table {
    next_id: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    upstream_failures: AtomicU64,
    /// HTTP requests allowed by policy, denied by policy, and refused before policy.
    http_allowed: AtomicU64,
    http_denied: AtomicU64,
    http_refused: AtomicU64,
    /// Requests the client abandoned before Sluice answered.
    http_cancelled: AtomicU64,
    /// Records the writer could not take in time (its queue was full).
    records_dropped: AtomicU64,
    /// Connections refused because a connection cap was reached.
    over_limit: AtomicU64,
    live: Mutex<HashMap<u64, ConnInfo>>,
}

pub struct Entry {
    table: Arc<Table>,
    id: u64,
}

impl Table {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn open(self: &Arc<Self>, mut info: ConnInfo) -> Entry {
        info.started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let id = info.id;
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, info);
        Entry {
            table: self.clone(),
            id,
        }
    }

    pub fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_upstream_failure(&self) {
        self.upstream_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one HTTP request's outcome: "allow", "deny", "cancelled" or anything else
    /// (refused before or without a policy decision).
    pub fn count_request(&self, decision: &str) {
        let c = match decision {
            "allow" => &self.http_allowed,
            "deny" => &self.http_denied,
            "cancelled" => &self.http_cancelled,
            _ => &self.http_refused,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// (allowed, denied, refused) HTTP requests so far.
    pub fn request_totals(&self) -> (u64, u64, u64) {
        (
            self.http_allowed.load(Ordering::Relaxed),
            self.http_denied.load(Ordering::Relaxed),
            self.http_refused.load(Ordering::Relaxed),
        )
    }

    pub fn cancelled(&self) -> u64 {
        self.http_cancelled.load(Ordering::Relaxed)
    }

    pub fn count_record_dropped(&self) {
        self.records_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn records_dropped(&self) -> u64 {
        self.records_dropped.load(Ordering::Relaxed)
    }

    pub fn count_over_limit(&self) {
        self.over_limit.fetch_add(1, Ordering::Relaxed);
    }

    pub fn over_limit(&self) -> u64 {
        self.over_limit.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Vec<ConnInfo> {
        let mut v: Vec<ConnInfo> = self.lock().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn accepted_total(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn upstream_failures(&self) -> u64 {
        self.upstream_failures.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ConnInfo>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Entry {
    pub fn set_path(&self, path: crate::relay::Path) {
        if let Some(c) = self.table.lock().get_mut(&self.id) {
            c.path = Some(path);
        }
    }

    pub fn set_upstream(&self, addr: SocketAddr) {
        if let Some(c) = self.table.lock().get_mut(&self.id) {
            c.upstream = Some(addr);
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}
