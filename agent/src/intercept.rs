//! Transparent interception: the eBPF hooks that redirect target connections, the listener
//! that accepts them, and the lookup that tells who made each one and where it was going.
//!
//! Guarantees and failure modes:
//! - A connect() from the attached cgroup subtree to a target is redirected to the listener,
//!   even if its metadata could not be stored (counted in `STATS`); the listener refuses
//!   connections it cannot attribute, so nothing reaches a model server unseen. (fail closed)
//! - Sockets carrying the agent's bypass mark *and* created by the agent's own process (its
//!   tgid, see `identity.rs`) are never redirected: that is how the agent's own upstream
//!   connections leave. The mark on anyone else's socket changes nothing.
//! - connect() to an unspecified address (0.0.0.0, ::, ::ffff:0.0.0.0) is looked up, and
//!   recorded, as the address the kernel turns it into (loopback or the bound source).
//! - The target map's capacity is checked against every change before it is written; a change
//!   that would not fit is refused whole and reported (`targets.rs`).
//! - While the agent is down, `fail_mode: closed` keeps the hooks pinned and pointing at a
//!   listener that is gone (targets are refused); `open` detaches them (targets go direct).
//! - A restart replaces pinned links; it never stacks a second copy of the programs.
//! - Connections from another network namespace are redirected to that namespace's loopback,
//!   where the agent binds a listener of its own once it has seen the namespace (`netns.rs`).
//!   Until then they are refused (`fail_mode: closed`, connect() gets EPERM) or go direct
//!   (`open`); past `max_namespaces` they stay so, counted and logged.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use agent_common::{ConnMeta, PeerKey, Settings, names};
use aya::maps::{HashMap, MapData, PerCpuArray, lpm_trie::LpmTrie};

pub mod cgroup;
pub mod identity;
pub mod listener;
mod loader;
pub mod local;
pub mod netns;
pub mod orig_dst;
pub mod targets;

pub use loader::{Loaded, detach_pinned, pinned_links, probe_load, remove_pin_dir};

use crate::config::{Config, FailMode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cgroup: {0}")]
    Cgroup(#[from] cgroup::Error),
    #[error(
        "this agent was built without its eBPF programs (AYA_BUILD_SKIP); rebuild it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the eBPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF program {name}: taking its link: {source}")]
    Link {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },
    #[error("eBPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("pinning under {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("target map: {0}")]
    Targets(#[from] targets::Error),
    #[error("reading the host's interface addresses for local targets: {0}")]
    LocalAddresses(std::io::Error),
    #[error("{0}")]
    Cgroups(#[from] crate::workload::cgroup::Error),
    #[error("telling the agent's own sockets apart: {0}")]
    Identity(#[from] identity::Error),
    #[error("starting the kernel relay's wake-up thread: {0}")]
    Thread(std::io::Error),
    #[error("network namespaces: {0}")]
    Netns(#[from] netns::Error),
}

/// The namespace maps, owned by the namespace manager's thread.
pub struct NetnsMaps {
    pub ready: HashMap<MapData, u64, u32>,
    pub seen: HashMap<MapData, u64, u32>,
    pub wake: aya::maps::RingBuf<MapData>,
}

/// Handles on the maps the agent reads and writes while running.
pub struct Maps {
    targets: Mutex<targets::TargetMap>,
    target_status: Mutex<targets::MapStatus>,
    pub(crate) by_peer: Mutex<HashMap<MapData, PeerKey, ConnMeta>>,
    stats: PerCpuArray<MapData, u64>,
    /// The kernel side only reads it; the agent rewrites it to revoke its bypass on stop.
    settings: Mutex<aya::maps::Array<MapData, Settings>>,
}

impl Maps {
    pub(crate) fn new(
        targets: LpmTrie<MapData, agent_common::TargetKey, agent_common::TargetValue>,
        by_peer: HashMap<MapData, PeerKey, ConnMeta>,
        stats: PerCpuArray<MapData, u64>,
        settings: aya::maps::Array<MapData, Settings>,
    ) -> Self {
        let targets = targets::TargetMap::new(targets);
        Maps {
            target_status: Mutex::new(targets.status()),
            targets: Mutex::new(targets),
            by_peer: Mutex::new(by_peer),
            stats,
            settings: Mutex::new(settings),
        }
    }

    /// Runs `f` on the target map, then publishes its status. Its writes are syscalls under
    /// the map's mutex: call this only off the runtime (`targets::update`) or before serving.
    pub(crate) fn with_targets<R>(&self, f: impl FnOnce(&mut targets::TargetMap) -> R) -> R {
        let mut map = self
            .targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = f(&mut map);
        *self
            .target_status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = map.status();
        r
    }

    /// Size and state of the target map, for `sluice connections`: a copy published after
    /// each change, so reading it never waits for map syscalls.
    pub fn target_status(&self) -> targets::MapStatus {
        self.target_status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Clears the agent's tgid from the settings: once the agent has stopped, no process
    /// (not even one that is later given the same pid) may bypass with the mark.
    fn revoke_bypass(&self) -> Result<(), Error> {
        let mut map = self
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut s = map.get(&0, 0).map_err(|source| Error::Map {
            name: names::SETTINGS,
            source,
        })?;
        s.agent_tgid = 0;
        map.set(0, s, 0).map_err(|source| Error::Map {
            name: names::SETTINGS,
            source,
        })
    }

    /// Kernel-side counters, summed over CPUs, in `agent_common::stat` order.
    pub fn stats(&self) -> Vec<u64> {
        (0..agent_common::stat::COUNT)
            .map(|i| {
                self.stats
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// The attached programs. Dropping it without `shutdown` leaves the pins in place.
pub struct Interceptor {
    loaded: Loaded,
    pin_dir: PathBuf,
    maps: Arc<Maps>,
    /// Interface addresses installed for `local` targets at start; the watcher takes over.
    pub local_addresses: std::collections::BTreeSet<std::net::IpAddr>,
    /// The in-kernel L4 relay, when configured and loaded.
    pub kernel_relay: Option<Arc<crate::relay::KernelRelay>>,
    /// The cgroup v2 mount, open for looking callers' cgroups up by id.
    pub cgroups: Arc<crate::workload::CgroupRoot>,
}

impl Interceptor {
    /// Loads the programs, writes settings and the targets known now (the config's networks
    /// and, for `local` targets, the host's addresses), attaches to the configured cgroup and
    /// replaces any links a previous agent pinned. `max_connections` sizes the kernel relay's
    /// maps. Blocking: run it before serving.
    pub fn start(cfg: &Config, max_connections: usize) -> Result<(Self, Arc<Maps>), Error> {
        let cgroups = Arc::new(crate::workload::CgroupRoot::open(&cgroup::cgroup2_mount()?)?);
        let cgroup_dir = cgroup::resolve(&cfg.cgroup)?;
        let settings = settings_for(cfg, identity::agent_tgid()?, netns::current_cookie()?);
        let wanted = crate::relay::wanted(cfg.l4_relay);
        let entries = if wanted {
            crate::relay::map_entries(max_connections)
        } else {
            2
        };
        let (mut loaded, maps) = loader::load(settings, entries)?;
        let kernel_relay = if wanted {
            let r =
                loader::load_relay(&mut loaded, max_connections, cfg.l4_kernel_max_queue_bytes)?;
            tracing::info!(
                max_connections,
                "kernel L4 relay loaded: protocol tcp connections are relayed in the kernel"
            );
            // Chosen explicitly, so said once, loudly: what this path does not guarantee.
            tracing::warn!(
                max_queue_bytes = cfg.l4_kernel_max_queue_bytes,
                "l4_relay: kernel gives no back-pressure (a slow reader's connection is reset past max_queue_bytes) and this kernel's redirect can duplicate bytes (detected connections are reset); use l4_relay: auto for traffic whose integrity matters"
            );
            Some(Arc::new(r))
        } else {
            None
        };
        let maps = Arc::new(maps);
        let local_addresses = maps.with_targets(|map| {
            targets::install_static(map, cfg)?;
            if local::wanted(cfg) {
                local::install_initial(map, cfg)
            } else {
                Ok(Default::default())
            }
        })?;
        let loaded = loader::attach(loaded, &cgroup_dir, &cfg.pin_dir)?;
        Ok((
            Interceptor {
                loaded,
                pin_dir: cfg.pin_dir.clone(),
                maps: maps.clone(),
                local_addresses,
                kernel_relay,
                cgroups,
            },
            maps,
        ))
    }

    /// The namespace maps, once, for `netns::start`.
    pub fn take_netns_maps(&mut self) -> Option<NetnsMaps> {
        self.loaded.netns.take()
    }

    pub fn shutdown(self, mode: FailMode) -> Result<(), Error> {
        match mode {
            FailMode::Closed => {
                tracing::info!(pin_dir = %self.pin_dir.display(), "fail_mode closed: programs stay attached; target connections are refused until the agent returns");
                self.maps.revoke_bypass()?;
                drop(self.loaded);
                Ok(())
            }
            FailMode::Open => {
                drop(self.loaded);
                detach_pinned(&self.pin_dir)?;
                remove_pin_dir(&self.pin_dir);
                tracing::info!("fail_mode open: programs detached; target connections go direct");
                Ok(())
            }
        }
    }
}

fn settings_for(cfg: &Config, agent_tgid: u32, agent_netns_cookie: u64) -> Settings {
    let mut s = Settings {
        bypass_mark: cfg.bypass_mark,
        flags: agent_common::SETTINGS_ENABLED,
        agent_tgid,
        agent_netns_cookie,
        ..Default::default()
    };
    if cfg.fail_mode == FailMode::Closed {
        s.flags |= agent_common::SETTINGS_NETNS_FAIL_CLOSED;
    }
    if let SocketAddr::V4(v4) = cfg.listen {
        s.listen_ip4 = u32::from_ne_bytes(v4.ip().octets());
        s.listen_port4 = u32::from(v4.port().to_be());
    }
    if let Some(SocketAddr::V6(v6)) = cfg.listen_v6 {
        let o = v6.ip().octets();
        for (i, w) in s.listen_ip6.iter_mut().enumerate() {
            *w = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
        }
        s.listen_port6 = u32::from(v6.port().to_be());
        s.flags |= agent_common::SETTINGS_HAVE_V6;
    }
    s
}
