//! Just-in-time approval of held requests (`action: require-approval`). The approve stage
//! (`hold`) enters a held request in a bounded table (`store`) and waits on its own oneshot
//! for a person's decision, the rule's timeout, or the agent stopping; approvers decide over
//! the admin socket or the approvers' socket (`socket`), named by the socket peer's uid;
//! a webhook (`webhook`) announces each held request. Approvers with an OpenID token rather
//! than an account here decide over the optional HTTP endpoint (`endpoint`, `api`). Nothing
//! here is ever a pass by default: whatever goes wrong refuses the request.
use std::sync::Arc;

use tokio::sync::mpsc;

pub mod api;
pub mod approver;
pub mod endpoint;
mod grants;
mod hold;
pub mod id;
pub mod settings;
pub mod socket;
pub mod store;
pub mod webhook;

use self::{
    approver::Approver,
    store::{Decide, DecideError, Decided},
};
pub use hold::hold;
pub use settings::Settings;
pub use store::{Info, Listing, State, Store};

/// Announcements waiting for the webhook task; more are marked failed at once.
const WEBHOOK_QUEUE: usize = 1024;

/// The approvals of one agent, shared by every runtime.
pub struct Approvals {
    pub store: Arc<Store>,
    webhook: Option<mpsc::Sender<Info>>,
}

impl Approvals {
    /// The table, and the receiving end of the webhook queue when a webhook is configured
    /// (`webhook::run` takes it).
    pub fn new(s: &Settings) -> (Arc<Approvals>, Option<mpsc::Receiver<Info>>) {
        let (tx, rx) = match &s.webhook {
            Some(_) => {
                let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        (
            Arc::new(Approvals {
                store: Store::new(s.max_pending, s.per_identity(), s.recent),
                webhook: tx,
            }),
            rx,
        )
    }

    /// An approver's decision on `id`, whichever way they came (a socket, the HTTP
    /// endpoint): checked and applied by the table, logged with who decided. `Ok` carries
    /// the approval as it now stands.
    pub fn decide(
        &self,
        id: &str,
        who: &Approver,
        d: Decide,
    ) -> Result<(Decided, Option<Info>), DecideError> {
        let id = id.trim();
        if !id::well_formed(id) {
            return Err(DecideError::Malformed(clean(id, 40)));
        }
        let verb = match &d {
            Decide::Approve { .. } => "approve",
            Decide::Deny { .. } => "deny",
        };
        match self.store.decide(id, who, d) {
            Ok(decided) => {
                tracing::info!(approval = %id, approver = %who.name(), decision = verb, "approval decision");
                Ok((decided, self.store.get(id)))
            }
            Err(e) => {
                tracing::warn!(approval = %id, approver = %who.name(), decision = verb, error = %e, "approval decision refused");
                Err(e)
            }
        }
    }

    /// Hands a new approval to the webhook task; a full queue is a failed delivery, never a
    /// wait.
    fn announce(&self, info: &Info) {
        let Some(tx) = &self.webhook else {
            return;
        };
        let state = match tx.try_send(info.clone()) {
            Ok(()) => store::Delivery {
                state: "sending".into(),
                attempts: 0,
                last_error: None,
            },
            Err(_) => {
                tracing::warn!(approval = %info.id, "approval webhook queue full: not announced");
                store::Delivery {
                    state: "failed".into(),
                    attempts: 0,
                    last_error: Some("webhook queue full".into()),
                }
            }
        };
        self.store.set_delivery(&info.id, state);
    }
}

/// `s` with control characters replaced and cut to `max` characters: text a requester or
/// approver wrote, shown to others.
pub fn clean(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}
