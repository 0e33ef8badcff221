//! The table of held requests. Each pending entry owns the sending half of a oneshot its
//! request awaits, so a decision wakes exactly that request and nothing polls. Every lock
//! is held for a few map operations and never across an await; the table is bounded
//! overall and per caller, and decided entries are kept (bounded) for the listing.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use serde::{Deserialize, Serialize};
use tokio::{
    sync::oneshot,
    time::{Duration, Instant},
};

use super::{
    approver::{self, Approver, NotAllowed, Requester},
    grants::Grants,
};
use crate::policy::approval::Approval;

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    /// Nobody decided within the rule's timeout.
    Timeout,
    /// The client went away while it waited.
    Cancelled,
    /// The agent stopped while it waited: refused.
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Timeout => "timeout",
            State::Cancelled => "cancelled",
            State::Stopped => "stopped",
        }
    }
}

/// The webhook's delivery of one approval's announcement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// off (no webhook), sending, delivered, failed.
    pub state: String,
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The caller as an approval shows it (never a credential).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub user: Option<String>,
    pub comm: String,
    pub exe: Option<String>,
    pub unit: Option<String>,
    pub cgroup: Option<String>,
    pub container: Option<String>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// One approval, as `sluice approvals list`, the webhook and the records show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub id: String,
    pub created_unix_ms: u64,
    pub rule: String,
    pub reason: String,
    /// Who may decide, e.g. "any one of users [alice], groups [sre]".
    pub approvers: String,
    pub target: String,
    pub method: String,
    pub path: String,
    pub operation: String,
    pub model: Option<String>,
    pub requester: Caller,
    pub justification: Option<String>,
    /// The start of the request body, masked (secrets and personal data redacted), capped.
    pub excerpt: String,
    pub timeout_secs: u64,
    pub state: State,
    /// Approvers who approved so far (or who denied).
    #[serde(default)]
    pub decided_by: Vec<String>,
    #[serde(default)]
    pub decided_unix_ms: Option<u64>,
    #[serde(default)]
    pub deny_reason: Option<String>,
    /// The grant window an approval opened, in seconds.
    #[serde(default)]
    pub grant_secs: Option<u64>,
    #[serde(default)]
    pub waited_ms: Option<u64>,
    #[serde(default)]
    pub webhook: Delivery,
}

/// What a held request is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approved { by: String },
    Denied { by: String, reason: String },
}

/// What registering a held request needs.
pub struct NewHold {
    pub info: Info,
    pub approval: Arc<Approval>,
    pub requester: Requester,
    /// Whose pending count it is charged to.
    pub identity: String,
    /// The grant window key, when the rule allows grants.
    pub grant_key: Option<String>,
}

/// Over a bound: refused at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("{0} requests are already waiting for approval on this node (approvals.max_pending)")]
    Overall(usize),
    #[error(
        "{0} requests of this caller are already waiting for approval (approvals.max_pending_per_identity)"
    )]
    Caller(usize),
}

/// What an approver asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "decision")]
pub enum Decide {
    Approve {
        #[serde(default)]
        for_secs: Option<u64>,
    },
    Deny {
        reason: String,
    },
}

/// What a decision did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "result")]
pub enum Decided {
    Approved {
        grant_secs: Option<u64>,
    },
    /// Recorded; the rule (`require: all`) still needs these.
    Partial {
        missing: Vec<String>,
    },
    Denied,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("{0:?} is not an approval id (26 characters a-z, 2-7; see `sluice approvals list`)")]
    Malformed(String),
    #[error("no approval {0}: unknown id (check `sluice approvals list`)")]
    Unknown(String),
    #[error("approval {id} is already finished ({state})", state = .state.as_str())]
    Finished { id: String, state: State },
    #[error("{0}")]
    NotAllowed(#[from] NotAllowed),
    #[error("rule {rule} opens no grant window: approve without --for")]
    NoGrant { rule: String },
    #[error("rule {rule} allows a grant window of at most {max}s, not {asked}s")]
    GrantTooLong { rule: String, max: u64, asked: u64 },
    #[error("a deny needs a reason")]
    NoReason,
}

struct Entry {
    info: Info,
    approval: Arc<Approval>,
    requester: Requester,
    identity: String,
    grant_key: Option<String>,
    approved: Vec<Approver>,
    tx: Option<oneshot::Sender<Verdict>>,
}

struct Inner {
    pending: HashMap<String, Entry>,
    per_identity: HashMap<String, usize>,
    recent: VecDeque<Info>,
    grants: Grants,
}

pub struct Store {
    inner: Mutex<Inner>,
    max_pending: usize,
    per_identity: usize,
    recent: usize,
}

/// Everything `sluice approvals list` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Listing {
    pub pending: Vec<Info>,
    pub recent: Vec<Info>,
    pub grants: Vec<GrantInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantInfo {
    pub rule: String,
    pub scope: String,
    pub secs_left: u64,
}

/// A held request's place in the table: dropped without `settle` (the client went away, the
/// request was cut), it takes the entry out as cancelled.
pub struct Ticket {
    store: Arc<Store>,
    id: String,
    settled: bool,
}

impl Ticket {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The request has its answer; nothing to undo on drop.
    pub fn settle(&mut self) {
        self.settled = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled {
            self.store.end(&self.id, State::Cancelled, None);
        }
    }
}

/// Grant windows remembered at once.
const MAX_GRANTS: usize = 4096;

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    pub fn new(max_pending: usize, per_identity: usize, recent: usize) -> Arc<Store> {
        Arc::new(Store {
            inner: Mutex::new(Inner {
                pending: HashMap::new(),
                per_identity: HashMap::new(),
                recent: VecDeque::new(),
                grants: Grants::new(MAX_GRANTS),
            }),
            max_pending,
            per_identity,
            recent,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters a held request, or refuses it when a bound is reached.
    pub fn register(
        self: &Arc<Self>,
        h: NewHold,
    ) -> Result<(Ticket, oneshot::Receiver<Verdict>), Full> {
        let (tx, rx) = oneshot::channel();
        let id = h.info.id.clone();
        let mut inner = self.lock();
        if inner.pending.len() >= self.max_pending {
            return Err(Full::Overall(self.max_pending));
        }
        let mine = inner.per_identity.get(&h.identity).copied().unwrap_or(0);
        if mine >= self.per_identity {
            return Err(Full::Caller(self.per_identity));
        }
        *inner.per_identity.entry(h.identity.clone()).or_default() += 1;
        inner.pending.insert(
            id.clone(),
            Entry {
                info: h.info,
                approval: h.approval,
                requester: h.requester,
                identity: h.identity,
                grant_key: h.grant_key,
                approved: Vec::new(),
                tx: Some(tx),
            },
        );
        drop(inner);
        Ok((
            Ticket {
                store: self.clone(),
                id,
                settled: false,
            },
            rx,
        ))
    }

    /// Whether a grant window lets `rule` pass for `key` now.
    pub fn covers(&self, rule: &str, key: &str) -> bool {
        self.lock().grants.covers(rule, key, Instant::now())
    }

    /// Takes a pending entry out with `state` (timeout, cancelled, stopped). False when it
    /// was not pending any more (a decision came first).
    pub fn end(&self, id: &str, state: State, waited: Option<Duration>) -> bool {
        let mut inner = self.lock();
        let Some(mut e) = take(&mut inner, id) else {
            return false;
        };
        e.info.state = state;
        e.info.decided_unix_ms = Some(unix_ms());
        e.info.waited_ms = waited.map(|w| w.as_millis() as u64);
        self.remember(&mut inner, e.info);
        true
    }

    /// Every pending id: what the agent refuses when it stops.
    pub fn pending_ids(&self) -> Vec<String> {
        self.lock().pending.keys().cloned().collect()
    }

    fn remember(&self, inner: &mut Inner, info: Info) {
        if self.recent == 0 {
            return;
        }
        while inner.recent.len() >= self.recent {
            inner.recent.pop_front();
        }
        inner.recent.push_back(info);
    }

    /// An approver's decision on `id`.
    pub fn decide(&self, id: &str, who: &Approver, d: Decide) -> Result<Decided, DecideError> {
        let mut inner = self.lock();
        let Some(e) = inner.pending.get_mut(id) else {
            return Err(match inner.recent.iter().rev().find(|i| i.id == id) {
                Some(i) => DecideError::Finished {
                    id: id.to_string(),
                    state: i.state,
                },
                None => DecideError::Unknown(id.to_string()),
            });
        };
        approver::check(who, &e.requester, &e.info.rule, &e.approval)?;
        match d {
            Decide::Deny { reason } => {
                let reason = reason.trim();
                if reason.is_empty() {
                    return Err(DecideError::NoReason);
                }
                let reason: String = super::clean(reason, 500);
                let Some(mut e) = take(&mut inner, id) else {
                    return Err(DecideError::Unknown(id.to_string()));
                };
                let by = who.name();
                if let Some(tx) = e.tx.take() {
                    let _ = tx.send(Verdict::Denied {
                        by: by.clone(),
                        reason: reason.clone(),
                    });
                }
                e.info.state = State::Denied;
                e.info.decided_by.push(by);
                e.info.deny_reason = Some(reason);
                e.info.decided_unix_ms = Some(unix_ms());
                self.remember(&mut inner, e.info);
                Ok(Decided::Denied)
            }
            Decide::Approve { for_secs } => {
                if let Some(asked) = for_secs {
                    match e.approval.grant {
                        None => {
                            return Err(DecideError::NoGrant {
                                rule: e.info.rule.clone(),
                            });
                        }
                        Some((max, _)) if asked > max.as_secs() || asked == 0 => {
                            return Err(DecideError::GrantTooLong {
                                rule: e.info.rule.clone(),
                                max: max.as_secs(),
                                asked,
                            });
                        }
                        Some(_) => {}
                    }
                }
                if e.approved.iter().any(|p| p.account == who.account) {
                    return Err(NotAllowed::Again {
                        who: who.name(),
                        missing: approver::missing(&e.approval, &e.approved).join(", "),
                    }
                    .into());
                }
                e.approved.push(who.clone());
                e.info.decided_by.push(who.name());
                let missing = approver::missing(&e.approval, &e.approved);
                if !missing.is_empty() {
                    return Ok(Decided::Partial { missing });
                }
                let Some(mut e) = take(&mut inner, id) else {
                    return Err(DecideError::Unknown(id.to_string()));
                };
                let grant = match (for_secs, &e.grant_key) {
                    (Some(secs), Some(key)) => {
                        inner.grants.open(
                            &e.info.rule,
                            key,
                            Duration::from_secs(secs),
                            Instant::now(),
                        );
                        Some(secs)
                    }
                    _ => None,
                };
                if let Some(tx) = e.tx.take() {
                    let _ = tx.send(Verdict::Approved {
                        by: e.info.decided_by.join(", "),
                    });
                }
                e.info.state = State::Approved;
                e.info.grant_secs = grant;
                e.info.decided_unix_ms = Some(unix_ms());
                self.remember(&mut inner, e.info);
                Ok(Decided::Approved { grant_secs: grant })
            }
        }
    }

    /// Pending and recent approvals, and open grant windows.
    pub fn list(&self) -> Listing {
        let inner = self.lock();
        let mut pending: Vec<Info> = inner.pending.values().map(|e| e.info.clone()).collect();
        pending.sort_by_key(|i| i.created_unix_ms);
        let now = Instant::now();
        Listing {
            pending,
            recent: inner.recent.iter().rev().cloned().collect(),
            grants: inner
                .grants
                .open_windows(now)
                .into_iter()
                .map(|(rule, scope, left)| GrantInfo {
                    rule,
                    scope,
                    secs_left: left.as_secs(),
                })
                .collect(),
        }
    }

    /// The pending approvals `who` may decide (named by the rule, not their own), oldest
    /// first: what an approver who is not root sees.
    pub fn pending_for(&self, who: &Approver) -> Vec<Info> {
        let inner = self.lock();
        let mut pending: Vec<Info> = inner
            .pending
            .values()
            .filter(|e| approver::check(who, &e.requester, &e.info.rule, &e.approval).is_ok())
            .map(|e| e.info.clone())
            .collect();
        pending.sort_by_key(|i| i.created_unix_ms);
        pending
    }

    /// One approval, pending or recent.
    pub fn get(&self, id: &str) -> Option<Info> {
        let inner = self.lock();
        inner
            .pending
            .get(id)
            .map(|e| e.info.clone())
            .or_else(|| inner.recent.iter().rev().find(|i| i.id == id).cloned())
    }

    /// The webhook's progress on `id`, wherever the approval now is.
    pub fn set_delivery(&self, id: &str, d: Delivery) {
        let mut inner = self.lock();
        if let Some(e) = inner.pending.get_mut(id) {
            e.info.webhook = d;
        } else if let Some(i) = inner.recent.iter_mut().rev().find(|i| i.id == id) {
            i.webhook = d;
        }
    }
}

/// Takes `id` out of the pending table, giving its caller's place back.
fn take(inner: &mut Inner, id: &str) -> Option<Entry> {
    let e = inner.pending.remove(id)?;
    if let Some(n) = inner.per_identity.get_mut(&e.identity) {
        *n -= 1;
        if *n == 0 {
            inner.per_identity.remove(&e.identity);
        }
    }
    Some(e)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::approval::{GrantScope, Require};

    /// A rule approved by user alice or a member of group sre (the api tests use it too).
    pub(crate) fn approval(require: Require, grant: Option<u64>) -> Arc<Approval> {
        Arc::new(Approval {
            reason: "pulls change what runs here".into(),
            users: vec!["alice".into()],
            groups: vec!["sre".into()],
            require,
            justification_header: None,
            justification_required: false,
            timeout: Duration::from_secs(60),
            grant: grant.map(|s| (Duration::from_secs(s), GrantScope::Subject)),
        })
    }

    /// A request of bob (uid 2000, no token) held by rule `pull`.
    pub(crate) fn held(id: &str, caller: &str, a: &Arc<Approval>) -> NewHold {
        NewHold {
            info: Info {
                id: id.into(),
                created_unix_ms: 0,
                rule: "pull".into(),
                reason: a.reason.clone(),
                approvers: a.approvers(),
                target: "ollama".into(),
                method: "POST".into(),
                path: "/api/pull".into(),
                operation: "ollama.pull".into(),
                model: Some("llama3".into()),
                requester: Caller::default(),
                justification: None,
                excerpt: String::new(),
                timeout_secs: 60,
                state: State::Pending,
                decided_by: Vec::new(),
                decided_unix_ms: None,
                deny_reason: None,
                grant_secs: None,
                waited_ms: None,
                webhook: Delivery::default(),
            },
            approval: a.clone(),
            requester: Requester {
                uid: 2000,
                user: Some("bob".into()),
                subject: None,
                cgroup: None,
            },
            identity: caller.into(),
            grant_key: a.grant.map(|_| caller.to_string()),
        }
    }

    fn who(uid: u32, user: &str, groups: &[&str]) -> Approver {
        Approver {
            account: approver::Account::Uid {
                uid,
                user: Some(user.into()),
            },
            groups: groups.iter().map(|g| g.to_string()).collect(),
            subuids: Vec::new(),
        }
    }

    #[test]
    fn the_table_is_bounded_overall_and_per_caller_and_places_come_back() {
        let s = Store::new(3, 2, 10);
        let a = approval(Require::Any, None);
        let t1 = s.register(held("a1", "uid 1", &a)).expect("first");
        let _t2 = s.register(held("a2", "uid 1", &a)).expect("second");
        let e = s
            .register(held("a3", "uid 1", &a))
            .err()
            .expect("per caller");
        assert_eq!(e, Full::Caller(2));
        let _t3 = s.register(held("b1", "uid 2", &a)).expect("another caller");
        let e = s.register(held("c1", "uid 3", &a)).err().expect("overall");
        assert_eq!(e, Full::Overall(3));
        // A client that leaves gives its place back, and the entry is kept as cancelled.
        drop(t1);
        let _t4 = s.register(held("a4", "uid 1", &a)).expect("place back");
        assert_eq!(s.get("a1").map(|i| i.state), Some(State::Cancelled));
    }

    #[tokio::test]
    async fn a_decision_wakes_its_request_once_and_a_second_one_is_told_it_is_finished() {
        let s = Store::new(8, 8, 10);
        let a = approval(Require::Any, None);
        let (mut t, rx) = s.register(held("a1", "uid 1", &a)).expect("held");
        let alice = who(1000, "alice", &[]);
        assert_eq!(
            s.decide("a1", &alice, Decide::Approve { for_secs: None }),
            Ok(Decided::Approved { grant_secs: None })
        );
        assert_eq!(
            rx.await.ok(),
            Some(Verdict::Approved {
                by: "alice (uid 1000)".into()
            })
        );
        t.settle();
        let again = s.decide("a1", &alice, Decide::Deny { reason: "x".into() });
        assert_eq!(
            again.map_err(|e| e.to_string()),
            Err("approval a1 is already finished (approved)".into())
        );
        let unknown = s.decide("zz", &alice, Decide::Approve { for_secs: None });
        assert!(matches!(unknown, Err(DecideError::Unknown(_))));
    }

    #[tokio::test]
    async fn a_deny_needs_a_reason_and_an_eligible_approver_who_is_not_the_requester() {
        let s = Store::new(8, 8, 10);
        let a = approval(Require::Any, None);
        let (_t, rx) = s.register(held("a1", "uid 1", &a)).expect("held");
        let bob = who(2000, "bob", &["sre"]);
        assert!(matches!(
            s.decide("a1", &bob, Decide::Approve { for_secs: None }),
            Err(DecideError::NotAllowed(NotAllowed::Own { .. }))
        ));
        let dave = who(3000, "dave", &["dev"]);
        assert!(matches!(
            s.decide(
                "a1",
                &dave,
                Decide::Deny {
                    reason: "no".into()
                }
            ),
            Err(DecideError::NotAllowed(NotAllowed::NotApprover { .. }))
        ));
        let carol = who(4000, "carol", &["sre"]);
        assert_eq!(
            s.decide("a1", &carol, Decide::Deny { reason: " ".into() }),
            Err(DecideError::NoReason)
        );
        assert_eq!(
            s.decide(
                "a1",
                &carol,
                Decide::Deny {
                    reason: "not today".into()
                }
            ),
            Ok(Decided::Denied)
        );
        assert_eq!(
            rx.await.ok(),
            Some(Verdict::Denied {
                by: "carol (uid 4000)".into(),
                reason: "not today".into()
            })
        );
    }

    #[tokio::test]
    async fn all_waits_for_every_named_approver() {
        let s = Store::new(8, 8, 10);
        let a = approval(Require::All, None);
        let (_t, mut rx) = s.register(held("a1", "uid 1", &a)).expect("held");
        let carol = who(4000, "carol", &["sre"]);
        assert_eq!(
            s.decide("a1", &carol, Decide::Approve { for_secs: None }),
            Ok(Decided::Partial {
                missing: vec!["user alice".into()]
            })
        );
        assert!(rx.try_recv().is_err(), "not decided yet");
        assert!(matches!(
            s.decide("a1", &carol, Decide::Approve { for_secs: None }),
            Err(DecideError::NotAllowed(NotAllowed::Again { .. }))
        ));
        let alice = who(1000, "alice", &[]);
        assert_eq!(
            s.decide("a1", &alice, Decide::Approve { for_secs: None }),
            Ok(Decided::Approved { grant_secs: None })
        );
        assert!(matches!(rx.await, Ok(Verdict::Approved { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn an_approval_for_a_while_opens_a_window_within_the_rules_bound_that_expires() {
        let s = Store::new(8, 8, 10);
        let alice = who(1000, "alice", &[]);
        let once = approval(Require::Any, None);
        let (_t, _rx) = s.register(held("a1", "uid 1", &once)).expect("held");
        assert_eq!(
            s.decide("a1", &alice, Decide::Approve { for_secs: Some(60) }),
            Err(DecideError::NoGrant {
                rule: "pull".into()
            })
        );
        let windowed = approval(Require::Any, Some(600));
        let (_t, _rx) = s.register(held("a2", "uid 7", &windowed)).expect("held");
        assert!(matches!(
            s.decide(
                "a2",
                &alice,
                Decide::Approve {
                    for_secs: Some(601)
                }
            ),
            Err(DecideError::GrantTooLong { max: 600, .. })
        ));
        assert_eq!(
            s.decide("a2", &alice, Decide::Approve { for_secs: Some(30) }),
            Ok(Decided::Approved {
                grant_secs: Some(30)
            })
        );
        assert!(s.covers("pull", "uid 7"));
        assert!(!s.covers("pull", "uid 8"));
        assert_eq!(s.list().grants.len(), 1);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(s.covers("pull", "uid 7"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!s.covers("pull", "uid 7"));
        assert!(s.list().grants.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_ends_the_entry_and_a_late_decision_is_refused() {
        let s = Store::new(8, 8, 10);
        let a = approval(Require::Any, None);
        let (mut t, mut rx) = s.register(held("a1", "uid 1", &a)).expect("held");
        let waited = tokio::time::timeout(a.timeout, &mut rx).await;
        assert!(waited.is_err(), "nobody decided");
        assert!(s.end("a1", State::Timeout, Some(a.timeout)));
        t.settle();
        let late = s.decide(
            "a1",
            &who(1000, "alice", &[]),
            Decide::Approve { for_secs: None },
        );
        assert!(matches!(
            late,
            Err(DecideError::Finished {
                state: State::Timeout,
                ..
            })
        ));
        assert_eq!(s.list().pending.len(), 0);
        assert_eq!(s.get("a1").and_then(|i| i.waited_ms), Some(60_000));
    }
}
