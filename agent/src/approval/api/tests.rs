//! The endpoint's answers with real tokens (HS256, signed here; the verifier is the agent's
//! own, with the endpoint's audience) against a real table of held requests.
use std::{path::PathBuf, time::Duration};

use http_body_util::BodyExt as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::{
    approval::{
        Settings,
        settings::Http,
        store::{
            Verdict,
            tests::{approval, held},
        },
    },
    policy::approval::Require,
};

const SECRET: &[u8] = b"a test secret of the approvals endpoint, 32+ bytes";
const ISSUER: &str = "https://idp.test";

/// The secret file an HMAC issuer needs; removed on drop.
pub(crate) struct SecretFile(PathBuf);

impl SecretFile {
    pub(crate) fn new() -> SecretFile {
        let path = std::env::temp_dir().join(format!(
            "sluice-api-test-{}-{}",
            std::process::id(),
            crate::approval::id::new().expect("random")
        ));
        std::fs::write(&path, SECRET).expect("write secret");
        SecretFile(path)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Fixture {
    api: Api,
    _secret: SecretFile,
}

/// `identity.issuers`: one HS256 issuer, `ISSUER`, for requests' audience `sluice`.
pub(crate) fn identity_settings(secret: &SecretFile) -> crate::identity::Settings {
    serde_norway::from_str(&format!(
        "issuers:\n  - issuer: {ISSUER}\n    audiences: [sluice]\n    algorithms: [HS256]\n    hmac_secret_file: {}\n    groups_claim: groups\n",
        secret.0.display()
    ))
    .expect("identity settings")
}

fn fixture() -> Fixture {
    let secret = SecretFile::new();
    let ids = identity_settings(&secret);
    let http: Http =
        serde_norway::from_str("listen: 127.0.0.1:0\naudience: sluice-approvals\n").expect("http");
    let identity = Identity::new(&http.identity(&ids), 0, Duration::from_secs(1))
        .expect("identity")
        .expect("an issuer");
    let (approvals, _) = Approvals::new(&Settings::default());
    Fixture {
        api: Api {
            approvals,
            identity,
        },
        _secret: secret,
    }
}

fn token(sub: &str, groups: &[&str], aud: &str) -> String {
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "iss": ISSUER, "aud": aud, "sub": sub, "groups": groups, "iat": iat, "exp": iat + 600 }),
        &EncodingKey::from_secret(SECRET),
    )
    .expect("sign")
}

/// A token of `ISSUER` for the approvals endpoint.
pub(crate) fn approver(sub: &str, groups: &[&str]) -> String {
    token(sub, groups, "sluice-approvals")
}

async fn call(
    f: &Fixture,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> (StatusCode, Value, Response<Full<Bytes>>) {
    let mut b = http::Request::builder().method(method).uri(path);
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let (parts, ()) = b.body(()).expect("request").into_parts();
    let r = answer(&f.api, &parts, body.as_bytes()).await;
    let status = r.status();
    let (head, b) = r.into_parts();
    let bytes = b.collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&bytes).expect("JSON answer");
    (
        status,
        v,
        Response::from_parts(head, Full::new(Bytes::new())),
    )
}

const ID: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaa";
const ID2: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbb";

#[tokio::test]
async fn no_token_or_a_bad_one_is_401_and_the_token_is_never_repeated() {
    let f = fixture();
    let (s, v, r) = call(&f, "GET", PREFIX, None, "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "missing_token");
    assert_eq!(
        r.headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|h| h.as_bytes()),
        Some(&b"Bearer"[..])
    );
    // A token for the model servers (the issuer's request audience) decides nothing here.
    let workload = token("carol", &["sre"], "sluice");
    let (s, v, r) = call(&f, "GET", PREFIX, Some(&workload), "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "invalid_token");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("audience")),
        "{v}"
    );
    assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    // A tampered signature.
    // One signature character changed, inside the signature where each carries six bits
    // (the last one was set to 'A' before, which left one token in 64 unchanged).
    let token = approver("carol", &["sre"]);
    let at = token.len() - 10;
    let was = token.as_bytes()[at];
    let forged = format!(
        "{}{}{}",
        &token[..at],
        if was == b'A' { 'B' } else { 'A' },
        &token[at + 1..]
    );
    let (s, v, _) = call(
        &f,
        "POST",
        &format!("{PREFIX}/{ID}/approve"),
        Some(&forged),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(!v.to_string().contains(&forged[..40]), "{v}");
    // Not a JWT at all: no token.
    let (s, v, _) = call(&f, "GET", PREFIX, Some("opaque-value"), "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "missing_token");
}

#[tokio::test]
async fn an_approver_group_member_lists_and_approves_and_an_outsider_is_403() {
    let f = fixture();
    let store = &f.api.approvals.store;
    let a = approval(Require::Any, None);
    let (_t, rx) = store.register(held(ID, "uid 2000", &a)).expect("held");
    let outsider = approver("erin", &["ops"]);
    let (s, v, _) = call(&f, "GET", PREFIX, Some(&outsider), "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["pending"],
        json!([]),
        "an outsider sees nothing to decide"
    );
    let (s, v, _) = call(
        &f,
        "POST",
        &format!("{PREFIX}/{ID}/approve"),
        Some(&outsider),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(v["error"]["code"], "not_an_approver");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("subject erin of https://idp.test is not an approver")),
        "{v}"
    );

    let carol = approver("carol", &["sre"]);
    let (s, v, _) = call(&f, "GET", PREFIX, Some(&carol), "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["approver"], "subject carol of https://idp.test");
    assert_eq!(v["pending"][0]["id"], ID, "{v}");
    let (s, v, _) = call(
        &f,
        "POST",
        &format!("{PREFIX}/{ID}/approve"),
        Some(&carol),
        "{}",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["decided"]["result"], "approved");
    assert_eq!(v["approval"]["state"], "approved");
    assert_eq!(
        v["approval"]["decided_by"],
        json!(["subject carol of https://idp.test"])
    );
    assert_eq!(
        rx.await.ok(),
        Some(Verdict::Approved {
            by: "subject carol of https://idp.test".into()
        })
    );
    // Decided already; an id nobody held; something that is no id.
    let (s, v, _) = call(
        &f,
        "POST",
        &format!("{PREFIX}/{ID}/approve"),
        Some(&carol),
        "",
    )
    .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::CONFLICT, &json!("already_decided"))
    );
    let (s, v, _) = call(
        &f,
        "POST",
        &format!("{PREFIX}/{ID2}/approve"),
        Some(&carol),
        "",
    )
    .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("unknown_approval"))
    );
    let (s, _, _) = call(&f, "POST", &format!("{PREFIX}/x/approve"), Some(&carol), "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn self_approval_is_403_and_deny_needs_a_reason_and_wakes_the_request() {
    let f = fixture();
    let store = &f.api.approvals.store;
    let a = approval(Require::Any, None);
    let (_t, rx) = store.register(held(ID, "uid 2000", &a)).expect("held");
    // The requester is host user bob: a token with subject bob is the same person.
    let bob = approver("bob", &["sre"]);
    let (s, v, _) = call(&f, "GET", PREFIX, Some(&bob), "").await;
    assert_eq!(v["pending"], json!([]), "nobody is shown their own request");
    let (s2, v2, _) = call(
        &f,
        "POST",
        &format!("{PREFIX}/{ID}/approve"),
        Some(&bob),
        "",
    )
    .await;
    assert_eq!((s, s2), (StatusCode::OK, StatusCode::FORBIDDEN));
    assert_eq!(v2["error"]["code"], "own_request", "{v2}");

    let carol = approver("carol", &["sre"]);
    let deny = format!("{PREFIX}/{ID}/deny");
    let (s, v, _) = call(&f, "POST", &deny, Some(&carol), "").await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("reason_required"))
    );
    let (s, v, _) = call(&f, "POST", &deny, Some(&carol), "{\"because\": 1}").await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("bad_request"))
    );
    let (s, v, _) = call(
        &f,
        "POST",
        &deny,
        Some(&carol),
        r#"{"reason":"not in the freeze"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["decided"]["result"], "denied");
    assert_eq!(
        rx.await.ok(),
        Some(Verdict::Denied {
            by: "subject carol of https://idp.test".into(),
            reason: "not in the freeze".into()
        })
    );
}

#[tokio::test]
async fn grant_windows_routes_and_methods() {
    let f = fixture();
    let store = &f.api.approvals.store;
    let once = approval(Require::Any, None);
    let windowed = approval(Require::Any, Some(600));
    let (_t1, _rx1) = store.register(held(ID, "uid 2000", &once)).expect("held");
    let (_t2, _rx2) = store
        .register(held(ID2, "uid 2001", &windowed))
        .expect("held");
    let carol = approver("carol", &["sre"]);
    let (s, v, _) = call(
        &f,
        "POST",
        &format!("{PREFIX}/{ID}/approve"),
        Some(&carol),
        r#"{"for":"10m"}"#,
    )
    .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("bad_grant"))
    );
    let (s, v, _) = call(
        &f,
        "POST",
        &format!("{PREFIX}/{ID2}/approve"),
        Some(&carol),
        r#"{"for":"forever"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v, _) = call(
        &f,
        "POST",
        &format!("{PREFIX}/{ID2}/approve"),
        Some(&carol),
        r#"{"for":"10m"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["decided"],
        json!({"result": "approved", "grant_secs": 600})
    );
    assert!(store.covers("pull", "uid 2001"));
    // Routes and methods are answered only to a valid token.
    for (m, p, want) in [
        ("POST", PREFIX, StatusCode::METHOD_NOT_ALLOWED),
        (
            "GET",
            &format!("{PREFIX}/{ID}/approve") as &str,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "POST",
            &format!("{PREFIX}/{ID}/maybe"),
            StatusCode::NOT_FOUND,
        ),
        ("GET", "/metrics", StatusCode::NOT_FOUND),
    ] {
        let (s, _, _) = call(&f, m, p, Some(&carol), "").await;
        assert_eq!(s, want, "{m} {p}");
        let (s, _, _) = call(&f, m, p, None, "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {p} without a token");
    }
}

#[test]
fn the_endpoint_is_refused_beyond_loopback_without_tls_and_with_a_request_audience() {
    let ids: crate::identity::Settings =
        serde_norway::from_str("issuers:\n  - issuer: https://idp.test\n    audiences: [sluice]\n")
            .expect("identity");
    let check = |yaml: &str| {
        let s: Settings = serde_norway::from_str(yaml).expect("settings");
        s.validate(&ids)
    };
    assert!(check("http: {listen: 127.0.0.1:9444, audience: sluice-approvals}").is_ok());
    let e =
        check("http: {listen: 0.0.0.0:9444, audience: sluice-approvals}").expect_err("clear text");
    assert!(e.contains("needs approvals.http.tls"), "{e}");
    assert!(
        check("http: {listen: 0.0.0.0:9444, audience: a, tls: {cert_file: c, key_file: k}}")
            .is_ok()
    );
    let e = check("http: {listen: 127.0.0.1:9444, audience: sluice}").expect_err("same audience");
    assert!(
        e.contains("also an audience of issuer https://idp.test"),
        "{e}"
    );
    let e = check("http: {listen: 127.0.0.1:9444, audience: a, issuers: [https://other]}")
        .expect_err("unknown issuer");
    assert!(e.contains("not in identity.issuers"), "{e}");
    let none = crate::identity::Settings::default();
    let s: Settings =
        serde_norway::from_str("http: {listen: 127.0.0.1:9444, audience: a}").expect("settings");
    assert!(s.validate(&none).is_err(), "no issuer, no token to check");
}
