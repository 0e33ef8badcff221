//! Who is deciding: the socket peer's uid (SO_PEERCRED) named through the host's name
//! service, or the subject of a verified token (the HTTP endpoint), and whether the rule
//! lets them decide this request.
use serde::{Deserialize, Serialize};

use crate::policy::approval::{Approval, Require};

/// Groups read for one approver; more are ignored (a directory can be huge).
const MAX_GROUPS: usize = 256;

/// Where an approver's name comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Account {
    /// A process on this host, as the kernel names the socket's peer.
    Uid {
        uid: u32,
        /// `None`: the uid has no account, so it matches no `users` entry.
        user: Option<String>,
    },
    /// A verified token's issuer and subject (the HTTP endpoint).
    Token { issuer: String, subject: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approver {
    pub account: Account,
    /// The host's groups of the uid, or the token's groups claim.
    pub groups: Vec<String>,
    /// The uid ranges `/etc/subuid` gives the user (rootless containers run as these).
    #[serde(default, skip)]
    pub subuids: Vec<(u32, u32)>,
}

impl Approver {
    /// The uid's user and groups (`getpwuid_r`, `getgrouplist`, `getgrgid_r`). Blocking:
    /// call it on the blocking pool.
    pub fn lookup(uid: u32) -> Approver {
        use nix::unistd::{Group, User, getgrouplist};
        let Ok(Some(u)) = User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
            return Approver {
                account: Account::Uid { uid, user: None },
                groups: Vec::new(),
                subuids: Vec::new(),
            };
        };
        let gids = std::ffi::CString::new(u.name.clone())
            .ok()
            .and_then(|name| getgrouplist(&name, u.gid).ok())
            .unwrap_or_else(|| vec![u.gid]);
        let groups = gids
            .into_iter()
            .take(MAX_GROUPS)
            .filter_map(|g| Group::from_gid(g).ok().flatten().map(|g| g.name))
            .collect();
        let subuids = std::fs::read_to_string("/etc/subuid")
            .map(|t| subuid_ranges(&t, &u.name, uid))
            .unwrap_or_default();
        Approver {
            account: Account::Uid {
                uid,
                user: Some(u.name),
            },
            groups,
            subuids,
        }
    }

    /// The approver a verified token names: its subject and groups (never the token).
    pub fn from_token(p: &crate::identity::Principal) -> Approver {
        Approver {
            account: Account::Token {
                issuer: p.issuer.to_string(),
                subject: p.subject.clone(),
            },
            groups: p.groups.clone(),
            subuids: Vec::new(),
        }
    }

    /// How the approver is named in records and listings: `alice (uid 1000)`, or
    /// `subject alice of https://issuer` for a token.
    pub fn name(&self) -> String {
        match &self.account {
            Account::Uid { uid, user: Some(u) } => format!("{u} (uid {uid})"),
            Account::Uid { uid, user: None } => format!("uid {uid}"),
            Account::Token { issuer, subject } => format!("subject {subject} of {issuer}"),
        }
    }

    /// The name a rule's `users` entry is compared with: the user name, or the token's
    /// subject.
    fn user(&self) -> Option<&str> {
        match &self.account {
            Account::Uid { user, .. } => user.as_deref(),
            Account::Token { subject, .. } => Some(subject),
        }
    }

    fn is_user(&self, name: &str) -> bool {
        self.user() == Some(name)
    }

    fn in_group(&self, name: &str) -> bool {
        self.groups.iter().any(|g| g == name)
    }

    /// Whether the rule names this approver, as a user or through a group.
    pub fn eligible(&self, a: &Approval) -> bool {
        a.users.iter().any(|u| self.is_user(u)) || a.groups.iter().any(|g| self.in_group(g))
    }

    /// Whether this approver is the one who asked: the same uid; or a name (user name or
    /// token subject) equal to the requester's user name or token subject. Names are
    /// compared across kinds on purpose: `alice` the host user and `alice` the token subject
    /// are taken to be one person, so neither approves the other's request.
    ///
    /// A host user is also the one who asked when the request came from their rootless
    /// containers: a uid of their `/etc/subuid` ranges, or a cgroup under their
    /// `user-<uid>.slice` (their systemd user session, where rootless podman puts them).
    fn is(&self, r: &Requester) -> bool {
        if let Account::Uid { uid, .. } = self.account {
            let own_slice = format!("/user-{uid}.slice/");
            if uid == r.uid
                || self.subuids.iter().any(|&(start, n)| {
                    r.uid >= start && u64::from(r.uid) < u64::from(start) + u64::from(n)
                })
                || r.cgroup.as_deref().is_some_and(|c| c.contains(&own_slice))
            {
                return true;
            }
        }
        self.user()
            .is_some_and(|me| r.user.as_deref() == Some(me) || r.subject.as_deref() == Some(me))
    }
}

/// The one who asked, as far as telling them from an approver goes.
#[derive(Debug, Clone)]
pub struct Requester {
    pub uid: u32,
    pub user: Option<String>,
    /// The verified token's subject, if the request carried one.
    pub subject: Option<String>,
    /// The workload's cgroup path.
    pub cgroup: Option<String>,
}

/// The ranges `/etc/subuid` (`name:start:count` lines; the name may be a uid) gives `user`.
fn subuid_ranges(text: &str, user: &str, uid: u32) -> Vec<(u32, u32)> {
    let uid = uid.to_string();
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (name, start, n) = (f.next()?, f.next()?, f.next()?);
            if name != user && name != uid {
                return None;
            }
            Some((start.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

/// Why an approver may not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    #[error("{who} asked for this request and cannot decide it: nobody approves their own request")]
    Own { who: String },
    #[error("{who} is not an approver of rule {rule} (it needs {needs})")]
    NotApprover {
        who: String,
        rule: String,
        needs: String,
    },
    #[error("{who} has already approved it; it still needs {missing}")]
    Again { who: String, missing: String },
}

/// Checks that `who` may decide a request of `requester` held by `rule`: not their own
/// (`Approver::is`), and named by the rule.
pub fn check(
    who: &Approver,
    requester: &Requester,
    rule: &str,
    a: &Approval,
) -> Result<(), NotAllowed> {
    if who.is(requester) {
        return Err(NotAllowed::Own { who: who.name() });
    }
    if !who.eligible(a) {
        return Err(NotAllowed::NotApprover {
            who: who.name(),
            rule: rule.to_string(),
            needs: a.approvers(),
        });
    }
    Ok(())
}

/// What is still missing once `approved` have approved: nothing with `any` and one approval;
/// with `all`, each named user in person and a member of each named group.
pub fn missing(a: &Approval, approved: &[Approver]) -> Vec<String> {
    match a.require {
        Require::Any if !approved.is_empty() => Vec::new(),
        Require::Any => vec![a.approvers()],
        Require::All => {
            let users = a
                .users
                .iter()
                .filter(|u| !approved.iter().any(|p| p.is_user(u)))
                .map(|u| format!("user {u}"));
            let groups = a
                .groups
                .iter()
                .filter(|g| !approved.iter().any(|p| p.in_group(g)))
                .map(|g| format!("group {g}"));
            users.chain(groups).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rule(users: &[&str], groups: &[&str], require: Require) -> Approval {
        Approval {
            reason: "r".into(),
            users: users.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            require,
            justification_header: None,
            justification_required: false,
            timeout: Duration::from_secs(60),
            grant: None,
        }
    }

    fn who(uid: u32, user: &str, groups: &[&str]) -> Approver {
        Approver {
            account: Account::Uid {
                uid,
                user: Some(user.into()),
            },
            groups: groups.iter().map(|s| s.to_string()).collect(),
            subuids: Vec::new(),
        }
    }

    fn token(subject: &str, groups: &[&str]) -> Approver {
        Approver {
            account: Account::Token {
                issuer: "https://idp.example".into(),
                subject: subject.into(),
            },
            groups: groups.iter().map(|s| s.to_string()).collect(),
            subuids: Vec::new(),
        }
    }

    fn bob() -> Requester {
        Requester {
            uid: 2000,
            user: Some("bob".into()),
            subject: None,
            cgroup: None,
        }
    }

    #[test]
    fn any_needs_one_named_user_or_group_member() {
        let a = rule(&["alice"], &["sre", "security"], Require::Any);
        assert_eq!(check(&who(1, "alice", &[]), &bob(), "r1", &a), Ok(()));
        assert_eq!(
            check(&who(2, "carol", &["security"]), &bob(), "r1", &a),
            Ok(())
        );
        let e = check(&who(3, "dave", &["dev"]), &bob(), "r1", &a).expect_err("outsider");
        assert!(
            e.to_string()
                .contains("not an approver of rule r1 (it needs any one of users [alice], groups [sre, security])"),
            "{e}"
        );
        assert!(missing(&a, &[]).len() == 1);
        assert!(missing(&a, &[who(2, "carol", &["security"])]).is_empty());
    }

    #[test]
    fn all_needs_every_user_and_a_member_of_every_group() {
        let a = rule(&["alice"], &["sre", "security"], Require::All);
        let carol = who(2, "carol", &["sre"]);
        assert_eq!(
            missing(&a, std::slice::from_ref(&carol)),
            ["user alice", "group security"]
        );
        let alice = who(1, "alice", &["security"]);
        assert!(missing(&a, &[carol, alice]).is_empty());
        // One person in both groups covers both; alice must still approve in person.
        let both = who(4, "erin", &["sre", "security"]);
        assert_eq!(missing(&a, &[both]), ["user alice"]);
    }

    #[test]
    fn nobody_approves_the_requests_of_their_own_rootless_containers() {
        let a = rule(&["alice"], &[], Require::Any);
        let subuid = "# comment\nbob:165536:65536\nalice:100000:65536\n1000:300000:10\nbad line\n";
        let mut alice = who(1000, "alice", &[]);
        alice.subuids = subuid_ranges(subuid, "alice", 1000);
        assert_eq!(alice.subuids, vec![(100_000, 65_536), (300_000, 10)]);
        let from = |uid: u32, cgroup: Option<&str>| Requester {
            uid,
            user: None,
            subject: None,
            cgroup: cgroup.map(str::to_string),
        };
        // A uid of her subordinate range: a process of her rootless container.
        assert!(matches!(
            check(&alice, &from(100_999, None), "r", &a),
            Err(NotAllowed::Own { .. })
        ));
        assert!(matches!(
            check(&alice, &from(300_009, None), "r", &a),
            Err(NotAllowed::Own { .. })
        ));
        // A cgroup of her user session, whatever its uid.
        let podman = "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-ab.scope";
        assert!(matches!(
            check(&alice, &from(5, Some(podman)), "r", &a),
            Err(NotAllowed::Own { .. })
        ));
        // Not hers: past her ranges, another user's slice.
        assert!(check(&alice, &from(300_010, None), "r", &a).is_ok());
        assert!(check(&alice, &from(165_536, None), "r", &a).is_ok());
        let other = "/user.slice/user-10000.slice/session-3.scope";
        assert!(check(&alice, &from(5, Some(other)), "r", &a).is_ok());
    }

    #[test]
    fn nobody_approves_their_own_request() {
        let a = rule(&["bob", "alice"], &["sre"], Require::Any);
        // Same uid, even under another name.
        let e = check(&who(2000, "alice", &["sre"]), &bob(), "r", &a).expect_err("same uid");
        assert!(matches!(e, NotAllowed::Own { .. }), "{e}");
        // Same user name on another uid.
        assert!(matches!(
            check(&who(7, "bob", &[]), &bob(), "r", &a),
            Err(NotAllowed::Own { .. })
        ));
        // The token's subject is the approver's user name.
        let token = Requester {
            uid: 3000,
            user: Some("svc".into()),
            subject: Some("alice".into()),
            cgroup: None,
        };
        assert!(matches!(
            check(&who(1, "alice", &[]), &token, "r", &a),
            Err(NotAllowed::Own { .. })
        ));
        assert_eq!(check(&who(1, "alice", &[]), &bob(), "r", &a), Ok(()));
    }

    #[test]
    fn a_uid_without_an_account_matches_no_user() {
        let a = rule(&["alice"], &[], Require::Any);
        let ghost = Approver {
            account: Account::Uid {
                uid: 4242,
                user: None,
            },
            groups: Vec::new(),
            subuids: Vec::new(),
        };
        assert!(!ghost.eligible(&a));
        // Root is looked up like anyone else: named root, in group root.
        let root = Approver::lookup(0);
        assert_eq!(root.user(), Some("root"));
        assert!(root.groups.iter().any(|g| g == "root"), "{root:?}");
    }

    #[test]
    fn a_token_approver_is_named_by_subject_and_groups_under_the_same_rules() {
        let any = rule(&["carol"], &["sre"], Require::Any);
        assert_eq!(check(&token("carol", &[]), &bob(), "r", &any), Ok(()));
        assert_eq!(check(&token("dana", &["sre"]), &bob(), "r", &any), Ok(()));
        let e = check(&token("erin", &["ops"]), &bob(), "r", &any).expect_err("outsider");
        assert!(
            e.to_string()
                .contains("subject erin of https://idp.example is not an approver of rule r"),
            "{e}"
        );
        let all = rule(&["carol"], &["sre"], Require::All);
        assert_eq!(missing(&all, &[token("dana", &["sre"])]), ["user carol"]);
        assert!(missing(&all, &[token("dana", &["sre"]), token("carol", &[])]).is_empty());
    }

    #[test]
    fn a_token_approver_never_approves_a_request_of_its_own_subject_or_user() {
        let a = rule(&[], &["sre"], Require::Any);
        // The request carried a token of the same subject.
        let svc = Requester {
            uid: 3000,
            user: Some("svc".into()),
            subject: Some("alice-svc".into()),
            cgroup: None,
        };
        assert!(matches!(
            check(&token("alice-svc", &["sre"]), &svc, "r", &a),
            Err(NotAllowed::Own { .. })
        ));
        // The requester's host user name is the token's subject.
        assert!(matches!(
            check(&token("bob", &["sre"]), &bob(), "r", &a),
            Err(NotAllowed::Own { .. })
        ));
        assert_eq!(check(&token("carol", &["sre"]), &svc, "r", &a), Ok(()));
        // Names match across kinds: the host user alice-svc is the token subject alice-svc.
        assert!(!token("alice", &[]).is(&svc));
        assert!(who(1, "alice-svc", &[]).is(&svc));
    }
}
