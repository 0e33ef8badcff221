//! Keeping the kernel's TARGETS trie equal to the configured targets. Three sources write it:
//! the config's own networks (once, at start), hostname answers (replaced as DNS changes) and
//! the host's interface addresses for `local` targets (replaced as interfaces change; see
//! `local.rs`). Every change is checked against the trie's capacity before anything is
//! written: one that would not fit is refused whole, logged as an error and shown by
//! `sluice connections`; the entries already installed stay.
//!
//! All writes are map syscalls under a mutex: callers on the runtime run them with
//! `spawn_blocking` (see [`update`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use agent_common::{
    MAX_TARGETS, TARGET_KEY_PORT_BITS, TargetKey, TargetValue, V4_MAPPED_PREFIX_BITS, v4_mapped,
};
use aya::maps::{MapData, MapError, lpm_trie::Key, lpm_trie::LpmTrie};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Maps;
use crate::config::{Config, HostSpec, Target};

/// One trie entry: prefix bits and key data (port, padding, address).
type EntryKey = (u32, [u8; 20]);
/// Trie entries a source wants, each with the index of the target that wants it.
pub(crate) type Entries = BTreeSet<(EntryKey, u32)>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{origin}: the target map would need {wanted} entries but holds {capacity}; update refused, the entries already installed stay"
    )]
    Full {
        origin: String,
        wanted: usize,
        capacity: usize,
    },
    #[error("{origin}: writing the target map: {source}")]
    Map { origin: String, source: MapError },
}

/// What `sluice connections` shows of the target map.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapStatus {
    /// Entries the trie can hold (`agent_common::MAX_TARGETS`).
    pub capacity: usize,
    /// Entries installed now (one per address or network and port).
    pub entries: usize,
    /// Interface addresses installed for `local` targets (loopback is always covered).
    pub local_addresses: Vec<IpAddr>,
    /// Updates refused because they would not fit.
    pub refused_updates: u64,
    /// The last refusal, in words.
    pub last_refused: Option<String>,
}

/// The kernel trie and, for each of its entries, the targets that want it. When two targets
/// cover the same address and port, the trie names the first in the config; the entry leaves
/// the trie only when no target wants it any more.
pub struct TargetMap {
    trie: LpmTrie<MapData, TargetKey, TargetValue>,
    owners: BTreeMap<EntryKey, BTreeSet<u32>>,
    capacity: usize,
    status: MapStatus,
}

impl TargetMap {
    pub(super) fn new(trie: LpmTrie<MapData, TargetKey, TargetValue>) -> Self {
        TargetMap {
            trie,
            owners: BTreeMap::new(),
            capacity: MAX_TARGETS as usize,
            status: MapStatus {
                capacity: MAX_TARGETS as usize,
                ..MapStatus::default()
            },
        }
    }

    pub fn status(&self) -> MapStatus {
        self.status.clone()
    }

    /// Replaces `remove` by `add` (both as wanted by one source, named `origin`), or refuses
    /// the whole change if the result would not fit.
    pub fn apply(&mut self, origin: &str, add: &Entries, remove: &Entries) -> Result<(), Error> {
        let next = plan(&self.owners, add, remove);
        if next.len() > self.capacity {
            let e = Error::Full {
                origin: origin.to_string(),
                wanted: next.len(),
                capacity: self.capacity,
            };
            self.status.refused_updates += 1;
            self.status.last_refused = Some(e.to_string());
            return Err(e);
        }
        let map_err = |source| Error::Map {
            origin: origin.to_string(),
            source,
        };
        // Removals first, so the trie never holds more than the larger of before and after.
        let gone: Vec<EntryKey> = self
            .owners
            .keys()
            .filter(|k| !next.contains_key(*k))
            .copied()
            .collect();
        for key in gone {
            match self.trie.remove(&to_key(&key)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(self.settle(map_err(e))),
            }
            self.owners.remove(&key);
        }
        for (key, ids) in next {
            let first = ids.first().copied();
            let installed = self.owners.get(&key).and_then(|o| o.first()).copied();
            if let Some(id) = first
                && installed != Some(id)
                && let Err(e) = self
                    .trie
                    .insert(&to_key(&key), TargetValue { target_id: id }, 0)
            {
                return Err(self.settle(map_err(e)));
            }
            self.owners.insert(key, ids);
        }
        self.settle(());
        Ok(())
    }

    /// Brings the status up to date after a change (complete or not) and passes `r` on.
    fn settle<R>(&mut self, r: R) -> R {
        self.status.entries = self.owners.len();
        r
    }

    fn set_local_status(&mut self, addrs: &BTreeSet<IpAddr>) {
        self.status.local_addresses = addrs.iter().copied().collect();
    }
}

/// The owner sets after removing `remove` and adding `add`.
fn plan(
    owners: &BTreeMap<EntryKey, BTreeSet<u32>>,
    add: &Entries,
    remove: &Entries,
) -> BTreeMap<EntryKey, BTreeSet<u32>> {
    let mut next = owners.clone();
    for (key, id) in remove {
        if let Some(ids) = next.get_mut(key) {
            ids.remove(id);
            if ids.is_empty() {
                next.remove(key);
            }
        }
    }
    for (key, id) in add {
        next.entry(*key).or_default().insert(*id);
    }
    next
}

fn key_bytes(k: &TargetKey) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..2].copy_from_slice(&k.port.to_ne_bytes());
    b[4..].copy_from_slice(&k.addr);
    b
}

fn to_key((bits, data): &EntryKey) -> Key<TargetKey> {
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&data[4..]);
    Key::new(
        *bits,
        TargetKey {
            port: u16::from_ne_bytes([data[0], data[1]]),
            _pad: 0,
            addr,
        },
    )
}

/// The trie entries for one network and port range.
fn entries_for(
    net: IpNet,
    ports: &std::ops::RangeInclusive<u16>,
    target_id: u32,
    out: &mut Entries,
) {
    let (addr, bits) = match net.trunc() {
        IpNet::V4(n) => (
            v4_mapped(n.addr().octets()),
            V4_MAPPED_PREFIX_BITS + u32::from(n.prefix_len()),
        ),
        // A v4-mapped network's octets already are the stored IPv4 form.
        IpNet::V6(n) => (n.addr().octets(), u32::from(n.prefix_len())),
    };
    for port in ports.clone() {
        let k = TargetKey {
            port: port.to_be(),
            _pad: 0,
            addr,
        };
        out.insert(((TARGET_KEY_PORT_BITS + bits, key_bytes(&k)), target_id));
    }
}

/// Entries of the config's own networks (CIDRs, addresses, loopback of `local` targets).
fn static_entries(targets: &[Target]) -> Entries {
    let mut out = Entries::new();
    for (id, t) in targets.iter().enumerate() {
        for net in t.matches.static_nets() {
            entries_for(net, &t.matches.ports, id as u32, &mut out);
        }
    }
    out
}

/// Entries of the host's interface addresses for every `local` target.
pub(super) fn local_entries(targets: &[Target], addrs: &BTreeSet<IpAddr>) -> Entries {
    let mut out = Entries::new();
    for (id, t) in targets.iter().enumerate() {
        if t.matches.host == HostSpec::Local {
            for ip in addrs {
                entries_for(IpNet::from(*ip), &t.matches.ports, id as u32, &mut out);
            }
        }
    }
    out
}

fn named_entries(target: &Target, id: u32, addrs: &BTreeSet<IpAddr>) -> Entries {
    let mut out = Entries::new();
    for ip in addrs {
        entries_for(IpNet::from(*ip), &target.matches.ports, id, &mut out);
    }
    out
}

pub(super) fn install_static(map: &mut TargetMap, cfg: &Config) -> Result<(), Error> {
    map.apply("config", &static_entries(&cfg.targets), &Entries::new())
}

/// Replaces the interface-address entries `old` by those of `new`; on success, records `new`
/// as the installed set.
pub(super) fn replace_local(
    map: &mut TargetMap,
    targets: &[Target],
    old: &BTreeSet<IpAddr>,
    new: &BTreeSet<IpAddr>,
) -> Result<(), Error> {
    map.apply(
        "local addresses",
        &local_entries(targets, new),
        &local_entries(targets, old),
    )?;
    map.set_local_status(new);
    Ok(())
}

/// Runs `f` on the target map off the runtime: map writes are syscalls under a mutex.
pub(super) async fn update<R: Send + 'static>(
    maps: &Arc<Maps>,
    f: impl FnOnce(&mut TargetMap) -> R + Send + 'static,
) -> Option<R> {
    let maps = maps.clone();
    match tokio::task::spawn_blocking(move || maps.with_targets(f)).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "target map update task failed");
            None
        }
    }
}

/// Resolves hostname targets and re-resolves each when its DNS answer expires (its TTL),
/// at least every second and at most every `cfg.dns_refresh`, until `stop` fires. A failed
/// lookup keeps the previous addresses: dropping them would let connections to a
/// still-valid address bypass the agent. So does an answer that would overflow the map.
pub async fn refresh_hostnames(maps: Arc<Maps>, cfg: Arc<Config>, stop: CancellationToken) {
    let named: Vec<(u32, &Target, &str)> = cfg
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| match &t.matches.host {
            HostSpec::Name(h) => Some((i as u32, t, h.as_str())),
            HostSpec::Net(_) | HostSpec::Local => None,
        })
        .collect();
    if named.is_empty() {
        return;
    }
    // hickory reports each answer's TTL; the system resolver (getaddrinfo) is the fallback
    // for names only it knows (nsswitch sources beyond /etc/hosts and DNS).
    let resolver = match hickory_resolver::TokioResolver::builder_tokio().and_then(|b| b.build()) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "DNS resolver unavailable; using the system resolver without TTLs");
            None
        }
    };
    let max_wait = cfg.dns_refresh.max(Duration::from_secs(1));
    let mut current: BTreeMap<u32, BTreeSet<IpAddr>> = BTreeMap::new();
    let mut due: BTreeMap<u32, tokio::time::Instant> = BTreeMap::new();
    loop {
        let now = tokio::time::Instant::now();
        for (id, target, host) in &named {
            if due.get(id).is_some_and(|t| *t > now) {
                continue;
            }
            let (resolved, valid_until) = match resolve(resolver.as_ref(), host).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(target_name = %target.name, host, error = %e, "resolving target failed; keeping previous addresses");
                    dns_metric(&target.name, "failed");
                    due.insert(*id, now + Duration::from_secs(1).max(max_wait / 4));
                    continue;
                }
            };
            let next = valid_until
                .map_or(now + max_wait, tokio::time::Instant::from_std)
                .clamp(now + Duration::from_secs(1), now + max_wait);
            due.insert(*id, next);
            let old = current.get(id).cloned().unwrap_or_default();
            if resolved == old {
                dns_metric(&target.name, "unchanged");
                continue;
            }
            let add = named_entries(target, *id, &resolved);
            let del = named_entries(target, *id, &old);
            let origin = format!("target {} ({host})", target.name);
            match update(&maps, move |m| m.apply(&origin, &add, &del)).await {
                Some(Ok(())) => {
                    tracing::info!(target_name = %target.name, host, addresses = ?resolved, "target addresses updated");
                    dns_metric(&target.name, "changed");
                    current.insert(*id, resolved);
                }
                Some(Err(e)) => {
                    tracing::error!(target_name = %target.name, host, addresses = ?resolved, error = %e, "target map update refused");
                    dns_metric(&target.name, "refused");
                }
                None => {}
            }
        }
        let wake = due.values().min().copied().unwrap_or(now + max_wait);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

fn dns_metric(target: &str, result: &'static str) {
    if let Some(m) = crate::metrics::get() {
        m.dns(target, result);
    }
}

/// The addresses of `host` and until when they are valid (None: unknown TTL).
async fn resolve(
    resolver: Option<&hickory_resolver::TokioResolver>,
    host: &str,
) -> std::io::Result<(BTreeSet<IpAddr>, Option<std::time::Instant>)> {
    if let Some(r) = resolver
        && let Ok(answer) = r.lookup_ip(host).await
    {
        let ips: BTreeSet<IpAddr> = answer
            .iter()
            .map(crate::config::endpoint_canonical)
            .collect();
        if !ips.is_empty() {
            return Ok((ips, Some(answer.valid_until())));
        }
    }
    let ips: BTreeSet<IpAddr> = tokio::net::lookup_host((host, 0))
        .await?
        .map(|a| crate::config::endpoint_canonical(a.ip()))
        .collect();
    Ok((ips, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg(targets: &str) -> Config {
        Config::parse(
            &format!("listen: 127.0.0.1:15001\ntargets:\n{targets}"),
            "t",
        )
        .expect("valid config")
    }

    #[test]
    fn ranges_and_cidrs_expand_to_one_entry_per_port() {
        let cfg = cfg(
            "  - name: a\n    match: 127.0.0.0/8:8000-8002\n  - name: b\n    match: \"[::1]:11434\"\n",
        );
        let e = static_entries(&cfg.targets);
        assert_eq!(e.len(), 4);
        let bits: BTreeSet<u32> = e.iter().map(|((b, _), _)| *b).collect();
        assert_eq!(bits, BTreeSet::from([32 + 96 + 8, 32 + 128]));
        let first = e
            .iter()
            .find(|((b, _), _)| *b == 32 + 104)
            .expect("v4 entry");
        // port 8000 in network order, then ::ffff:127.0.0.0
        assert_eq!(&first.0.1[..2], &8000u16.to_be_bytes());
        assert_eq!(&first.0.1[14..], &[0xff, 0xff, 127, 0, 0, 0]);
    }

    #[test]
    fn local_targets_cover_loopback_statically_and_interfaces_per_address() {
        let cfg = cfg(
            "  - name: o\n    match: local:11434\n  - name: v\n    match: local:8000-8001\n  - name: n\n    match: 10.0.0.0/8:80\n",
        );
        let e = static_entries(&cfg.targets);
        // 127.0.0.0/8 and ::1 for each of three ports, plus the CIDR.
        assert_eq!(e.len(), 2 * 3 + 1);
        assert!(e.iter().any(|((b, k), id)| *id == 0
            && *b == 32 + 104
            && k[..2] == 11434u16.to_be_bytes()
            && k[14..] == [0xff, 0xff, 127, 0, 0, 0]));
        assert!(e.iter().any(|((b, k), id)| *id == 0
            && *b == 32 + 128
            && k[4..] == std::net::Ipv6Addr::LOCALHOST.octets()));

        let addrs = BTreeSet::from([
            "192.0.2.7".parse::<IpAddr>().expect("ip"),
            "fd5c:51ce::1".parse().expect("ip"),
        ]);
        let l = local_entries(&cfg.targets, &addrs);
        // two addresses for each of three local ports; the CIDR target takes none
        assert_eq!(l.len(), 2 * 3);
        assert!(l.iter().all(|(_, id)| *id < 2));
        assert!(l.iter().any(|((b, k), id)| *id == 1
            && *b == 32 + 96 + 32
            && k[..2] == 8001u16.to_be_bytes()
            && k[14..] == [0xff, 0xff, 192, 0, 2, 7]));
        assert!(
            l.iter()
                .any(|((b, k), _)| *b == 32 + 128 && k[4..6] == [0xfd, 0x5c])
        );
    }

    #[test]
    fn shared_entries_stay_until_no_target_wants_them_and_the_first_target_wins() {
        let key = (32 + 128, [7u8; 20]);
        let owners = BTreeMap::new();
        let a = Entries::from([(key, 3)]);
        let b = Entries::from([(key, 1)]);
        let next = plan(&owners, &a, &Entries::new());
        let next = plan(&next, &b, &Entries::new());
        assert_eq!(next[&key].first(), Some(&1));
        let next = plan(&next, &Entries::new(), &b);
        assert_eq!(next[&key].first(), Some(&3));
        let next = plan(&next, &Entries::new(), &a);
        assert!(next.is_empty());
        // Replacing a set by itself changes nothing.
        let next = plan(&BTreeMap::from([(key, BTreeSet::from([3]))]), &a, &a);
        assert_eq!(next[&key], BTreeSet::from([3]));
    }
}
