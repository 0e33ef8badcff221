//! Budgets that keep one workload from starving the others: connections (global and per
//! cgroup) and the memory held by buffered request bodies. Every budget answers at once
//! (`try_*`): over budget, the caller refuses politely (a reset connection, a 503 with
//! `Retry-After`); nothing waits in an unbounded queue.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError},
};
use tokio_util::sync::CancellationToken;

/// File descriptors kept back for everything that is not a proxied connection (maps,
/// listeners, the admin socket, policy files, DNS).
const FD_RESERVE: u64 = 256;
/// Ceiling for the automatic connection cap: past this the agent's memory, not its fd limit,
/// is what runs out first.
const AUTO_MAX_CONNECTIONS: u64 = 65_536;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit now in force.
/// Every proxied connection costs two descriptors (client and upstream).
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open-file limit; assuming 1024");
            1024
        }
    }
}

/// The next connection of a small control-plane server (`/metrics`, the approvals endpoint)
/// with its place among `slots`. The place is taken before accepting, so at most `slots`
/// connections are served and the rest wait in the kernel's listen backlog, costing the
/// agent nothing. `None` once `stop` fires.
pub async fn accept_bounded(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    stop: &CancellationToken,
    server: &'static str,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => return None,
            p = slots.clone().acquire_owned() => p.ok()?,
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => return None,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => return Some((stream, permit)),
            Err(e) => {
                // Out of descriptors, most likely: a pause lets connections close.
                tracing::warn!(server, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// The connection cap to use: the configured one, or what the fd limit allows.
pub fn connection_cap(configured: usize, fd_limit: u64) -> usize {
    let by_fds = fd_limit.saturating_sub(FD_RESERVE) / 2;
    let auto = by_fds.clamp(1, AUTO_MAX_CONNECTIONS) as usize;
    if configured == 0 {
        auto
    } else {
        configured.min(auto)
    }
}

/// Caps on live intercepted connections: one for the whole agent, one per cgroup (the unit
/// the eBPF hook attributes connections to), so a workload that opens thousands of idle
/// connections runs into its own cap while the others are still served.
pub struct Connections {
    global: Arc<Semaphore>,
    max_global: usize,
    per_cgroup: Mutex<HashMap<u64, usize>>,
    max_per_cgroup: usize,
}

/// A held connection slot; released on drop.
pub struct ConnectionSlot {
    _global: OwnedSemaphorePermit,
    cgroup: Option<(Arc<Connections>, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Over {
    #[error("the agent serves at most {0} connections at once")]
    Global(usize),
    #[error("one cgroup may hold at most {0} connections at once")]
    PerCgroup(usize),
}

impl Connections {
    /// `per_cgroup` 0 means a quarter of the global cap.
    pub fn new(max_global: usize, per_cgroup: usize) -> Arc<Self> {
        let max_global = max_global.max(1);
        let max_per_cgroup = if per_cgroup == 0 {
            (max_global / 4).max(1)
        } else {
            per_cgroup
        };
        Arc::new(Connections {
            global: Arc::new(Semaphore::new(max_global)),
            max_global,
            per_cgroup: Mutex::new(HashMap::new()),
            max_per_cgroup,
        })
    }

    pub fn max_global(&self) -> usize {
        self.max_global
    }

    pub fn max_per_cgroup(&self) -> usize {
        self.max_per_cgroup
    }

    /// A global slot, taken right at accept, before the connection is attributed.
    pub fn try_global(&self) -> Result<ConnectionSlot, Over> {
        match self.global.clone().try_acquire_owned() {
            Ok(p) => Ok(ConnectionSlot {
                _global: p,
                cgroup: None,
            }),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                Err(Over::Global(self.max_global))
            }
        }
    }

    /// Charges the slot to the caller's cgroup, once the hook has told us which it is.
    pub fn charge(self: &Arc<Self>, slot: &mut ConnectionSlot, cgroup: u64) -> Result<(), Over> {
        let mut counts = self
            .per_cgroup
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(cgroup).or_insert(0);
        if *n >= self.max_per_cgroup {
            return Err(Over::PerCgroup(self.max_per_cgroup));
        }
        *n += 1;
        slot.cgroup = Some((self.clone(), cgroup));
        Ok(())
    }

    /// Live connections charged to a cgroup.
    pub fn held_by(&self, cgroup: u64) -> usize {
        self.per_cgroup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&cgroup)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some((limits, cgroup)) = self.cgroup.take() {
            let mut counts = limits
                .per_cgroup
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = counts.get_mut(&cgroup) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&cgroup);
                }
            }
        }
    }
}

/// Memory for request bodies being buffered (Sluice reads a body whole to find the model in
/// it). Bytes are charged as they arrive, or up front when the length is declared, and given
/// back when the request's context lets go of the body. One cgroup may hold only its share,
/// so a workload that stalls large uploads cannot take the budget from the others.
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    per_cgroup: usize,
    /// By cgroup id, a number the kernel gives out: a fast hash cannot be flooded here.
    held: Mutex<HashMap<u64, usize, foldhash::fast::RandomState>>,
}

/// Bytes held against the budget; returned on drop.
#[derive(Default)]
pub struct BodyCharge {
    permit: Option<OwnedSemaphorePermit>,
    held: usize,
    cgroup: Option<(Arc<BodyBudget>, u64)>,
}

impl std::fmt::Debug for BodyCharge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyCharge")
            .field("held", &self.held)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error("request bodies already hold the {total} bytes Sluice buffers at once")]
    Global { total: usize },
    #[error("this workload's request bodies already hold its share of {share} bytes")]
    Cgroup { share: usize },
}

impl BodyBudget {
    /// `per_cgroup` 0 means a quarter of the total, but never less than one largest body
    /// (`max_body`).
    pub fn new(total: usize, per_cgroup: usize, max_body: usize) -> Arc<Self> {
        // The semaphore counts in units of one byte; its ceiling is far above any budget.
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        let per_cgroup = if per_cgroup == 0 {
            (total / 4).max(max_body)
        } else {
            per_cgroup
        }
        .min(total);
        Arc::new(BodyBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
            per_cgroup,
            held: Mutex::new(HashMap::default()),
        })
    }

    /// An empty charge for a request from `cgroup`, grown as bytes arrive.
    pub fn charge(self: &Arc<Self>, cgroup: u64) -> BodyCharge {
        BodyCharge {
            permit: None,
            held: 0,
            cgroup: Some((self.clone(), cgroup)),
        }
    }

    /// Grows `charge` so that it covers `len` bytes in all.
    pub fn grow(&self, charge: &mut BodyCharge, len: usize) -> Result<(), OverBudget> {
        if len <= charge.held {
            return Ok(());
        }
        let more = len - charge.held;
        let global = OverBudget::Global { total: self.total };
        let cgroup = charge.cgroup.as_ref().map(|(_, c)| *c);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cgroup
            && held.get(&c).copied().unwrap_or(0) + more > self.per_cgroup
        {
            return Err(OverBudget::Cgroup {
                share: self.per_cgroup,
            });
        }
        let n = u32::try_from(more).map_err(|_| global)?;
        let p = self
            .bytes
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| global)?;
        if let Some(c) = cgroup {
            *held.entry(c).or_insert(0) += more;
        }
        match charge.permit.as_mut() {
            Some(h) => h.merge(p),
            None => charge.permit = Some(p),
        }
        charge.held = len;
        Ok(())
    }

    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    pub fn per_cgroup(&self) -> usize {
        self.per_cgroup
    }
}

impl BodyCharge {
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for BodyCharge {
    fn drop(&mut self) {
        if let Some((budget, cgroup)) = self.cgroup.take() {
            let mut held = budget.held.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = held.get_mut(&cgroup) {
                *n = n.saturating_sub(self.held);
                if *n == 0 {
                    held.remove(&cgroup);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cgroup_cap_is_separate_from_the_global_one() {
        let limits = Connections::new(10, 2);
        let mut a1 = limits.try_global().expect("slot");
        let mut a2 = limits.try_global().expect("slot");
        let mut a3 = limits.try_global().expect("slot");
        limits.charge(&mut a1, 7).expect("first");
        limits.charge(&mut a2, 7).expect("second");
        assert_eq!(limits.charge(&mut a3, 7), Err(Over::PerCgroup(2)));
        // Another cgroup is still served.
        limits.charge(&mut a3, 8).expect("other cgroup");
        drop(a1);
        assert_eq!(limits.held_by(7), 1);
        let mut a4 = limits.try_global().expect("slot");
        limits.charge(&mut a4, 7).expect("freed slot reused");
        drop((a2, a3, a4));
        assert_eq!((limits.held_by(7), limits.held_by(8)), (0, 0));
    }

    #[test]
    fn global_cap_refuses_at_once() {
        let limits = Connections::new(2, 0);
        assert_eq!(limits.max_per_cgroup(), 1);
        let _a = limits.try_global().expect("slot");
        let _b = limits.try_global().expect("slot");
        assert!(matches!(limits.try_global(), Err(Over::Global(2))));
    }

    #[test]
    fn connection_cap_follows_the_fd_limit() {
        assert_eq!(connection_cap(0, 1024), (1024 - 256) / 2);
        assert_eq!(connection_cap(100, 1024), 100);
        assert_eq!(connection_cap(10_000, 1024), 384);
        assert_eq!(connection_cap(0, 10), 1);
        assert_eq!(connection_cap(0, u64::MAX), 65_536);
    }

    #[test]
    fn body_budget_is_charged_and_given_back() {
        let budget = BodyBudget::new(100, 100, 10);
        let mut a = budget.charge(1);
        budget.grow(&mut a, 60).expect("fits");
        budget.grow(&mut a, 50).expect("shrinking asks nothing");
        assert_eq!((a.held(), budget.available()), (60, 40));
        let mut b = budget.charge(2);
        assert_eq!(
            budget.grow(&mut b, 41),
            Err(OverBudget::Global { total: 100 })
        );
        budget.grow(&mut b, 40).expect("fits exactly");
        drop(a);
        assert_eq!(budget.available(), 60);
        drop(b);
        assert_eq!(budget.available(), 100);
    }

    #[test]
    fn one_cgroup_cannot_take_the_whole_body_budget() {
        let budget = BodyBudget::new(100, 0, 20);
        assert_eq!(budget.per_cgroup(), 25);
        let mut a1 = budget.charge(7);
        let mut a2 = budget.charge(7);
        budget.grow(&mut a1, 20).expect("fits the share");
        assert_eq!(
            budget.grow(&mut a2, 10),
            Err(OverBudget::Cgroup { share: 25 })
        );
        let mut b = budget.charge(8);
        budget
            .grow(&mut b, 25)
            .expect("another cgroup still has its share");
        drop(a1);
        budget.grow(&mut a2, 10).expect("the share came back");
        // The share is never smaller than one largest body.
        assert_eq!(BodyBudget::new(100, 0, 60).per_cgroup(), 60);
    }
}
