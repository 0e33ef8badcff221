//! Grant windows: after an approval `--for` a while, requests the same rule holds for the
//! same subject or workload pass without asking again until the window ends. Bounded: when
//! full, expired windows go first, then those ending soonest.
use std::collections::HashMap;

use tokio::time::{Duration, Instant};

pub struct Grants {
    /// (rule id, scope key) → end of the window.
    windows: HashMap<(String, String), Instant>,
    max: usize,
}

impl Grants {
    pub fn new(max: usize) -> Self {
        Grants {
            windows: HashMap::new(),
            max: max.max(1),
        }
    }

    /// Whether a window for `rule` and `scope` is open at `now`.
    pub fn covers(&self, rule: &str, scope: &str, now: Instant) -> bool {
        self.windows
            .get(&(rule.to_string(), scope.to_string()))
            .is_some_and(|until| now < *until)
    }

    /// Opens (or extends) a window for `rule` and `scope` of `len` from `now`.
    pub fn open(&mut self, rule: &str, scope: &str, len: Duration, now: Instant) -> Instant {
        let until = now + len;
        if self.windows.len() >= self.max {
            self.windows.retain(|_, end| *end > now);
        }
        while self.windows.len() >= self.max {
            let Some(soonest) = self
                .windows
                .iter()
                .min_by_key(|(_, end)| **end)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.windows.remove(&soonest);
        }
        let end = self
            .windows
            .entry((rule.to_string(), scope.to_string()))
            .or_insert(until);
        *end = (*end).max(until);
        *end
    }

    /// Open windows, for the listing: (rule, scope, time left).
    pub fn open_windows(&self, now: Instant) -> Vec<(String, String, Duration)> {
        let mut v: Vec<_> = self
            .windows
            .iter()
            .filter(|(_, end)| **end > now)
            .map(|((r, s), end)| (r.clone(), s.clone(), *end - now))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_window_covers_its_rule_and_scope_until_it_ends() {
        let mut g = Grants::new(8);
        let now = Instant::now();
        g.open("pull", "uid:1000", Duration::from_secs(60), now);
        assert!(g.covers("pull", "uid:1000", Instant::now()));
        assert!(!g.covers("pull", "uid:1001", Instant::now()));
        assert!(!g.covers("export", "uid:1000", Instant::now()));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(g.covers("pull", "uid:1000", Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!g.covers("pull", "uid:1000", Instant::now()));
        assert!(g.open_windows(Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_drops_expired_then_soonest_ending_windows() {
        let mut g = Grants::new(2);
        let now = Instant::now();
        g.open("r", "a", Duration::from_secs(10), now);
        g.open("r", "b", Duration::from_secs(100), now);
        g.open("r", "c", Duration::from_secs(50), now);
        assert!(!g.covers("r", "a", now));
        assert!(g.covers("r", "b", now) && g.covers("r", "c", now));
        // A shorter second approval never shortens a window.
        g.open("r", "b", Duration::from_secs(1), now);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(g.covers("r", "b", Instant::now()));
        assert!(!g.covers("r", "c", Instant::now()));
    }
}
