//! Claim paths: where in a token's payload the subject and the groups are. Identity
//! providers nest them differently (`groups`, `realm_access.roles`, `cognito:groups`,
//! `kubernetes.io` → `serviceaccount` → `name`), so the path is configured per issuer.
use serde_json::Value;

/// Most groups taken from one token; the rest are ignored (a policy sees the first ones).
pub const MAX_GROUPS: usize = 256;
/// Longer group names are ignored.
pub const MAX_GROUP_LEN: usize = 256;

/// A parsed claim path: a dotted path (`realm_access.roles`) or, starting with `/`, a JSON
/// pointer for claim names that hold a dot themselves (`/kubernetes.io/serviceaccount/name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(Vec<String>);

impl Path {
    pub fn parse(p: &str) -> Result<Path, String> {
        if p.is_empty() {
            return Err("must not be empty".into());
        }
        let parts: Vec<String> = match p.strip_prefix('/') {
            Some(ptr) => ptr
                .split('/')
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect(),
            None => p.split('.').map(String::from).collect(),
        };
        if parts.iter().any(String::is_empty) {
            return Err(format!("{p:?} has an empty segment"));
        }
        Ok(Path(parts))
    }

    /// A path of one claim name, taken as written.
    pub fn named(name: &str) -> Path {
        Path(vec![name.to_string()])
    }

    pub fn get<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(claims, |v, k| v.get(k))
    }

    /// The value as a subject: a string, or a number written as one.
    pub fn subject(&self, claims: &Value) -> Option<String> {
        match self.get(claims)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The value as groups: a list (its strings), or one string as one group. Anything else
    /// is no groups.
    pub fn groups(&self, claims: &Value) -> Vec<String> {
        let ok = |s: &str| !s.is_empty() && s.len() <= MAX_GROUP_LEN;
        match self.get(claims) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| ok(s))
                .take(MAX_GROUPS)
                .map(String::from)
                .collect(),
            Some(Value::String(s)) if ok(s) => vec![s.clone()],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_reach_the_shapes_providers_use() {
        let claims = json!({
            "sub": "alice",
            "groups": ["ml-eng", 7, "", "ops"],
            "realm_access": { "roles": ["admin"] },
            "cognito:groups": "batch",
            "kubernetes.io": { "serviceaccount": { "name": "runner" } },
            "uid": 1000,
        });
        let p = |s: &str| Path::parse(s).expect("valid path");
        assert_eq!(p("sub").subject(&claims).as_deref(), Some("alice"));
        assert_eq!(p("uid").subject(&claims).as_deref(), Some("1000"));
        assert_eq!(p("groups").groups(&claims), ["ml-eng", "ops"]);
        assert_eq!(p("realm_access.roles").groups(&claims), ["admin"]);
        assert_eq!(p("cognito:groups").groups(&claims), ["batch"]);
        assert_eq!(
            p("/kubernetes.io/serviceaccount/name")
                .subject(&claims)
                .as_deref(),
            Some("runner")
        );
        // A dotted path reads `kubernetes.io` as two names: nothing there.
        assert_eq!(
            p("kubernetes.io.serviceaccount.name").subject(&claims),
            None
        );
        assert!(p("missing.deep").groups(&claims).is_empty());
        assert!(p("realm_access").groups(&claims).is_empty());
        assert_eq!(p("realm_access").subject(&claims), None);
    }

    #[test]
    fn bad_paths_are_refused_and_groups_are_bounded() {
        assert!(Path::parse("").is_err());
        assert!(Path::parse("a..b").is_err());
        assert!(Path::parse("/a//b").is_err());
        assert_eq!(
            Path::parse("/a~1b/c~0d").expect("pointer"),
            Path(vec!["a/b".into(), "c~d".into()])
        );
        let many: Vec<String> = (0..1000).map(|i| format!("g{i}")).collect();
        let claims = json!({ "groups": many, "long": ["x".repeat(MAX_GROUP_LEN + 1)] });
        let p = Path::parse("groups").expect("valid");
        assert_eq!(p.groups(&claims).len(), MAX_GROUPS);
        assert!(
            Path::parse("long")
                .expect("valid")
                .groups(&claims)
                .is_empty()
        );
    }
}
