//! Names for what the kernel gave as numbers: the user a uid belongs to, and the systemd unit
//! a cgroup path is in. Policies select callers that carry no token by these (`users`,
//! `units`), which say more than a uid or a path and stay stable across restarts.
use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// How long a uid's name is trusted before it is looked up again (accounts are renamed or
/// added rarely; a directory lookup can be slow).
const TTL: Duration = Duration::from_secs(60);
/// Uids remembered at once; the oldest half is forgotten when full.
const CAPACITY: usize = 4096;

type Cache = HashMap<u32, (Option<String>, Instant)>;
static USERS: Mutex<Option<Cache>> = Mutex::new(None);

/// The user name of `uid` as the host's name service gives it (`getpwuid_r` through NSS:
/// `/etc/passwd`, sssd, LDAP), `None` for a uid with no account. Blocking: call it on the
/// blocking pool (`Workload::from_meta` is).
pub fn user(uid: u32) -> Option<String> {
    let now = Instant::now();
    if let Some((name, at)) = USERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|c| c.get(&uid))
        && now.duration_since(*at) < TTL
    {
        return name.clone();
    }
    // Looked up outside the lock: one slow lookup must not hold up every other uid's.
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let mut guard = USERS.lock().unwrap_or_else(PoisonError::into_inner);
    let cache = guard.get_or_insert_with(HashMap::new);
    if cache.len() >= CAPACITY {
        let mut ages: Vec<Instant> = cache.values().map(|(_, at)| *at).collect();
        ages.sort_unstable();
        let cutoff = ages[ages.len() / 2];
        cache.retain(|_, (_, at)| *at > cutoff);
    }
    cache.insert(uid, (name.clone(), now));
    name
}

/// The systemd unit a cgroup path is in, as the system's manager knows it: its outermost
/// `.service` or `.scope` component (`/system.slice/ollama.service/workers` →
/// `ollama.service`; a container's `docker-<id>.scope`, whatever runs inside it). Not the
/// innermost: a subtree delegated to someone (a user's own manager, a container running
/// systemd) holds units they name themselves, so `jobs.service` under it would pass for the
/// system's. A user's manager's units are named under it: `user@1000.service/chat.service`.
/// A path outside any unit has none.
pub fn unit(cgroup: &str) -> Option<String> {
    let is_unit = |c: &&str| {
        [".service", ".scope"]
            .iter()
            .any(|suffix| c.strip_suffix(suffix).is_some_and(|name| !name.is_empty()))
    };
    let mut units = cgroup.split('/').filter(is_unit);
    let outer = units.next()?;
    let inner = units.next_back();
    match inner {
        Some(inner) if outer.starts_with("user@") && outer.ends_with(".service") => {
            Some(format!("{outer}/{inner}"))
        }
        _ => Some(outer.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_innermost_service_or_scope_is_the_unit() {
        for (path, want) in [
            ("/system.slice/ollama.service", Some("ollama.service")),
            (
                "/system.slice/ollama.service/workers",
                Some("ollama.service"),
            ),
            // A user's own units are named under their manager, never alone.
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/chat.service",
                Some("user@1000.service/chat.service"),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service",
                Some("user@1000.service"),
            ),
            // A container's own systemd cannot name a system unit.
            (
                "/system.slice/docker-0123456789ab.scope/system.slice/jobs.service",
                Some("docker-0123456789ab.scope"),
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope",
                Some("session-3.scope"),
            ),
            (
                "/system.slice/docker-0123456789ab.scope",
                Some("docker-0123456789ab.scope"),
            ),
            ("/kubepods.slice/kubepods-besteffort.slice", None),
            ("/", None),
            ("/.service", None),
            ("/sluice-test-1", None),
        ] {
            assert_eq!(unit(path).as_deref(), want, "{path}");
        }
    }

    #[test]
    fn root_has_a_name_and_an_unused_uid_has_none() {
        // uid 0 is root on every Linux host; u32::MAX - 1 is never allocated (and is not
        // the "no uid" value -1, which some name services special-case).
        assert_eq!(user(0).as_deref(), Some("root"));
        assert_eq!(user(u32::MAX - 1), None);
        // Cached: the same answer again.
        assert_eq!(user(0).as_deref(), Some("root"));
    }
}
