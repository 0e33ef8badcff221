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
                if e.approved.iter().any(|p| p.uid == who.uid) {
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
