//! Who is deciding: the socket peer's uid (SO_PEERCRED), named through the host's name
//! service, and whether the rule lets them decide this request.
use serde::{Deserialize, Serialize};

use crate::policy::approval::{Approval, Require};

/// Groups read for one approver; more are ignored (a directory can be huge).
const MAX_GROUPS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approver {
    pub uid: u32,
    /// `None`: the uid has no account, so it matches no `users` entry.
    pub user: Option<String>,
    pub groups: Vec<String>,
}

impl Approver {
    /// The uid's user and groups (`getpwuid_r`, `getgrouplist`, `getgrgid_r`). Blocking:
    /// call it on the blocking pool.
    pub fn lookup(uid: u32) -> Approver {
        use nix::unistd::{Group, User, getgrouplist};
        let Ok(Some(u)) = User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
            return Approver {
                uid,
                user: None,
                groups: Vec::new(),
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
        Approver {
            uid,
            user: Some(u.name),
            groups,
        }
    }

    /// How the approver is named in records and listings: `alice (uid 1000)`.
    pub fn name(&self) -> String {
        match &self.user {
            Some(u) => format!("{u} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }

    fn is_user(&self, name: &str) -> bool {
        self.user.as_deref() == Some(name)
    }

    fn in_group(&self, name: &str) -> bool {
        self.groups.iter().any(|g| g == name)
    }

    /// Whether the rule names this approver, as a user or through a group.
    pub fn eligible(&self, a: &Approval) -> bool {
        a.users.iter().any(|u| self.is_user(u)) || a.groups.iter().any(|g| self.in_group(g))
    }
}

/// The one who asked, as far as telling them from an approver goes.
#[derive(Debug, Clone)]
pub struct Requester {
    pub uid: u32,
    pub user: Option<String>,
    /// The verified token's subject, if the request carried one.
    pub subject: Option<String>,
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
/// (the same uid, or their user name is the token's subject), and named by the rule.
pub fn check(
    who: &Approver,
    requester: &Requester,
    rule: &str,
    a: &Approval,
) -> Result<(), NotAllowed> {
    let own = who.uid == requester.uid
        || requester.subject.as_deref().is_some_and(|s| who.is_user(s))
        || (who.user.is_some() && who.user == requester.user);
    if own {
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
            uid,
            user: Some(user.into()),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn bob() -> Requester {
        Requester {
            uid: 2000,
            user: Some("bob".into()),
            subject: None,
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
            uid: 4242,
            user: None,
            groups: Vec::new(),
        };
        assert!(!ghost.eligible(&a));
        // Root is looked up like anyone else: named root, in group root.
        let root = Approver::lookup(0);
        assert_eq!(root.user.as_deref(), Some("root"));
        assert!(root.groups.iter().any(|g| g == "root"), "{root:?}");
    }
}
