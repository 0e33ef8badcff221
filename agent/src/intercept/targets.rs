//! Keeping the kernel's TARGETS trie equal to the configured targets. Static addresses and
//! CIDRs are written once at start; hostnames are resolved by the agent (the hook sees only
//! addresses) and their entries replaced whenever the answers change.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use agent_common::{
    TARGET_KEY_PORT_BITS, TargetKey, TargetValue, V4_MAPPED_PREFIX_BITS, v4_mapped,
};
use aya::maps::{MapError, lpm_trie::Key};
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

use super::Maps;
use crate::config::{Config, HostSpec, Target};

/// One trie entry: (prefix bits, key data) → target index.
type Entries = BTreeMap<(u32, [u8; 20]), u32>;

fn key_bytes(k: &TargetKey) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..2].copy_from_slice(&k.port.to_ne_bytes());
    b[4..].copy_from_slice(&k.addr);
    b
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
        IpNet::V6(n) => (n.addr().octets(), u32::from(n.prefix_len())),
    };
    for port in ports.clone() {
        let k = TargetKey {
            port: port.to_be(),
            _pad: 0,
            addr,
        };
        out.insert((TARGET_KEY_PORT_BITS + bits, key_bytes(&k)), target_id);
    }
}

fn static_entries(targets: &[Target]) -> Entries {
    let mut out = Entries::new();
    for (id, t) in targets.iter().enumerate() {
        if let HostSpec::Net(net) = &t.matches.host {
            entries_for(*net, &t.matches.ports, id as u32, &mut out);
        }
    }
    out
}

fn to_key(bits: u32, data: &[u8; 20]) -> Key<TargetKey> {
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&data[4..]);
    Key::new(
        bits,
        TargetKey {
            port: u16::from_ne_bytes([data[0], data[1]]),
            _pad: 0,
            addr,
        },
    )
}

fn apply(maps: &Maps, add: &Entries, remove: &Entries) -> Result<(), MapError> {
    let mut trie = maps
        .targets
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for ((bits, data), id) in add {
        trie.insert(&to_key(*bits, data), TargetValue { target_id: *id }, 0)?;
    }
    for (bits, data) in remove.keys() {
        match trie.remove(&to_key(*bits, data)) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) fn install_static(maps: &Maps, cfg: &Config) -> Result<(), MapError> {
    apply(maps, &static_entries(&cfg.targets), &Entries::new())
}

/// Resolves hostname targets and re-resolves each when its DNS answer expires (its TTL),
/// at least every second and at most every `cfg.dns_refresh`, until `stop` fires. A failed
/// lookup keeps the previous addresses: dropping them would let connections to a
/// still-valid address bypass the agent.
pub async fn refresh_hostnames(maps: Arc<Maps>, cfg: Arc<Config>, stop: CancellationToken) {
    let named: Vec<(u32, &Target, &str)> = cfg
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| match &t.matches.host {
            HostSpec::Name(h) => Some((i as u32, t, h.as_str())),
            HostSpec::Net(_) => None,
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
                continue;
            }
            let mut add = Entries::new();
            let mut del = Entries::new();
            for ip in resolved.difference(&old) {
                entries_for(IpNet::from(*ip), &target.matches.ports, *id, &mut add);
            }
            for ip in old.difference(&resolved) {
                entries_for(IpNet::from(*ip), &target.matches.ports, *id, &mut del);
            }
            match apply(&maps, &add, &del) {
                Ok(()) => {
                    tracing::info!(target_name = %target.name, host, addresses = ?resolved, "target addresses updated");
                    current.insert(*id, resolved);
                }
                Err(e) => {
                    tracing::error!(target_name = %target.name, error = %e, "updating target map failed")
                }
            }
        }
        let wake = due.values().min().copied().unwrap_or(now + max_wait);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(wake) => {}
        }
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

    #[test]
    fn ranges_and_cidrs_expand_to_one_entry_per_port() {
        let cfg = Config::parse(
            "listen: 127.0.0.1:15001\ntargets:\n  - name: a\n    match: 127.0.0.0/8:8000-8002\n  - name: b\n    match: \"[::1]:11434\"\n",
            "t",
        )
        .expect("valid config");
        let e = static_entries(&cfg.targets);
        assert_eq!(e.len(), 4);
        let bits: BTreeSet<u32> = e.keys().map(|(b, _)| *b).collect();
        assert_eq!(bits, BTreeSet::from([32 + 96 + 8, 32 + 128]));
        let first = e.keys().find(|(b, _)| *b == 32 + 104).expect("v4 entry");
        // port 8000 in network order, then ::ffff:127.0.0.0
        assert_eq!(&first.1[..2], &8000u16.to_be_bytes());
        assert_eq!(&first.1[14..], &[0xff, 0xff, 127, 0, 0, 0]);
    }
}
