//! The verifier against a real key server on 127.0.0.1 (discovery document and JWKS over
//! HTTP), with tokens signed by test keys (`testdata/`).
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::*;

const RSA_A: &str = include_str!("testdata/rsa-a.pem");
const RSA_A_PUB: &str = include_str!("testdata/rsa-a.pub.pem");
const RSA_B: &str = include_str!("testdata/rsa-b.pem");
const EC: &str = include_str!("testdata/ec.pem");

/// A key server: discovery at `/.well-known/openid-configuration`, keys at `/jwks`, counting
/// the key fetches.
struct KeyServer {
    issuer: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

fn jwk(pem: &str, alg: Algorithm, kid: &str) -> Value {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .expect("test key");
    let mut v =
        serde_json::to_value(Jwk::from_encoding_key(&key, alg).expect("jwk")).expect("json");
    v["kid"] = json!(kid);
    v
}

impl KeyServer {
    async fn start(keys: Vec<Value>) -> KeyServer {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let issuer = format!("http://{}", l.local_addr().expect("addr"));
        let jwks = Arc::new(Mutex::new(json!({ "keys": keys })));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (j, f, iss) = (jwks.clone(), fetches.clone(), issuer.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (j, f, iss) = (j.clone(), f.clone(), iss.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut n = 0;
                    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => n += k,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let body = if head.starts_with("GET /.well-known/openid-configuration ") {
                        json!({ "issuer": iss, "jwks_uri": format!("{iss}/jwks") }).to_string()
                    } else if head.starts_with("GET /jwks ") {
                        f.fetch_add(1, Ordering::SeqCst);
                        j.lock().expect("lock").to_string()
                    } else {
                        String::new()
                    };
                    let status = if body.is_empty() {
                        "404 Not Found"
                    } else {
                        "200 OK"
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        KeyServer {
            issuer,
            jwks,
            fetches,
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn settings(issuer: &str, min_refresh: u64) -> Settings {
    let yaml = format!(
        "issuers:\n  - issuer: {issuer}\n    audiences: [sluice]\n    algorithms: [RS256, ES256]\n    groups_claim: realm_access.roles\n    jwks_min_refresh_secs: {min_refresh}\n"
    );
    let s: Settings = serde_norway::from_str(&yaml).expect("settings parse");
    s.validate().expect("settings valid");
    s
}

fn identity(s: &Settings) -> Arc<Identity> {
    Identity::new(s, 0, Duration::from_secs(2))
        .expect("identity")
        .expect("issuers configured")
}

fn claims(iss: &str) -> Value {
    let now = verify::now();
    json!({
        "iss": iss, "aud": "sluice", "sub": "alice", "exp": now + 600, "iat": now,
        "realm_access": { "roles": ["ml-eng", "ops"] },
    })
}

fn sign(header: Header, claims: &Value, pem: &str) -> String {
    let key = match header.alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::HS256 => Ok(EncodingKey::from_secret(pem.as_bytes())),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .expect("key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn rs256(kid: &str) -> Header {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    h
}

fn b64(v: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn a_valid_token_names_its_subject_and_groups_and_is_then_served_from_the_cache() {
    let ks = KeyServer::start(vec![
        jwk(RSA_A, Algorithm::RS256, "a"),
        jwk(EC, Algorithm::ES256, "e"),
    ])
    .await;
    let id = identity(&settings(&ks.issuer, 3600));
    for (header, pem) in [
        (rs256("a"), RSA_A),
        (
            Header {
                kid: Some("e".into()),
                ..Header::new(Algorithm::ES256)
            },
            EC,
        ),
    ] {
        let token = sign(header, &claims(&ks.issuer), pem);
        let p = id.verify_token(&token).await.expect("valid token");
        assert_eq!(
            (&*p.issuer, p.subject.as_str(), p.groups.clone()),
            (
                ks.issuer.as_str(),
                "alice",
                vec!["ml-eng".to_string(), "ops".to_string()]
            )
        );
        assert!(id.cache.get(&cache::key(&token), verify::now()).is_some());
        // Served from the cache: the same principal, no key fetch.
        let again = id.verify_token(&token).await.expect("cached");
        assert!(Arc::ptr_eq(&p, &again));
    }
    assert_eq!(ks.fetches(), 1, "one fetch for both tokens");
}

/// Every hostile token is refused with its own reason, and unknown key ids cost the issuer
/// exactly one fetch however many arrive.
#[tokio::test]
async fn hostile_tokens_are_refused_with_the_right_reason() {
    let ks = KeyServer::start(vec![jwk(RSA_A, Algorithm::RS256, "a")]).await;
    let id = identity(&settings(&ks.issuer, 1));
    let iss = ks.issuer.clone();
    let good = sign(rs256("a"), &claims(&iss), RSA_A);
    id.verify_token(&good).await.expect("the good token passes");
    assert_eq!(ks.fetches(), 1);
    let now = verify::now();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(&iss);
        f(&mut c);
        sign(rs256("a"), &c, RSA_A)
    };
    let parts: Vec<&str> = good.split('.').collect();
    let mut jku = rs256("a");
    jku.jku = Some("http://127.0.0.1:1/evil-jwks".into());
    let mut x5u = rs256("a");
    x5u.x5u = Some("http://127.0.0.1:1/cert".into());
    let mut crit = rs256("a");
    crit.crit = Some(vec!["exp-v2".into()]);
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(&iss))
    );
    let none_signed = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "none"})),
        b64(&claims(&iss)),
        parts[2]
    );
    let mut tampered = claims(&iss);
    tampered["sub"] = json!("admin");
    let table: Vec<(&str, String, Rejection)> = vec![
        ("alg none, no signature", none, Rejection::Algorithm),
        (
            "alg none with a signature",
            none_signed,
            Rejection::Algorithm,
        ),
        (
            "HS256 signed with the RSA public key",
            sign(
                Header {
                    kid: Some("a".into()),
                    ..Header::new(Algorithm::HS256)
                },
                &claims(&iss),
                RSA_A_PUB,
            ),
            Rejection::Algorithm,
        ),
        (
            "expired",
            with(&|c| c["exp"] = json!(now - 3600)),
            Rejection::Expired,
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now + 3600)),
            Rejection::NotYetValid,
        ),
        (
            "issued in the future",
            with(&|c| c["iat"] = json!(now + 3600)),
            Rejection::IssuedInFuture,
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("http://127.0.0.1:9")),
            Rejection::Issuer,
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("other")),
            Rejection::Audience,
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().map(|o| o.remove("exp"));
            }),
            Rejection::MissingClaim,
        ),
        (
            "no subject",
            with(&|c| {
                c.as_object_mut().map(|o| o.remove("sub"));
            }),
            Rejection::MissingClaim,
        ),
        (
            "tampered payload",
            format!("{}.{}.{}", parts[0], b64(&tampered), parts[2]),
            Rejection::Signature,
        ),
        (
            "stripped signature",
            format!("{}.{}.", parts[0], parts[1]),
            Rejection::Unsigned,
        ),
        (
            "signed by another key under a known kid",
            sign(rs256("a"), &claims(&iss), RSA_B),
            Rejection::Signature,
        ),
        (
            "oversized",
            format!("{good}{}", "A".repeat(10_000)),
            Rejection::Oversized,
        ),
        (
            "jku header",
            sign(jku, &claims(&iss), RSA_A),
            Rejection::HeaderKey,
        ),
        (
            "x5u header",
            sign(x5u, &claims(&iss), RSA_A),
            Rejection::HeaderKey,
        ),
        (
            "unknown crit",
            sign(crit, &claims(&iss), RSA_A),
            Rejection::Critical,
        ),
        (
            "JWE",
            format!(
                "{}.a.b.c.d",
                b64(&json!({"alg": "RSA-OAEP", "enc": "A256GCM"}))
            ),
            Rejection::Encrypted,
        ),
        (
            "not a JWT",
            "eyJub3QiOiJqd3QifQ.x".into(),
            Rejection::Malformed,
        ),
        (
            "garbage header",
            "eyJ!!!.e30.c2ln".into(),
            Rejection::Malformed,
        ),
    ];
    for (what, token, want) in &table {
        let got = id.verify_token(token).await.map(|p| p.subject.clone());
        assert_eq!(got, Err(*want), "{what}");
        // The reason never repeats the token or any part of it.
        let text = want.to_string();
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!text.contains(part), "{what}: {text}");
        }
    }
    assert_eq!(
        ks.fetches(),
        1,
        "no hostile token made the agent fetch keys"
    );
    // An unknown kid, once the minimum interval (1 s here) has passed since the last fetch:
    // one refresh, then refused; a flood of other unknown kids: no more fetches. Made
    // before the wait, so the flood arrives well within the interval.
    let unknown = sign(rs256("rotated-away"), &claims(&iss), RSA_B);
    let body = unknown.split_once('.').map_or("", |(_, rest)| rest);
    // Same payload and signature, another kid each: signing 50 times is slow in a debug build.
    let flood: Vec<String> = (0..50)
        .map(|i| {
            format!(
                "{}.{body}",
                b64(&json!({"alg": "RS256", "kid": format!("k{i}")}))
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        id.verify_token(&unknown).await.err(),
        Some(Rejection::UnknownKey)
    );
    assert_eq!(ks.fetches(), 2, "exactly one refresh for the unknown kid");
    for t in &flood {
        assert_eq!(id.verify_token(t).await.err(), Some(Rejection::UnknownKey));
    }
    assert_eq!(
        ks.fetches(),
        2,
        "the rate limit held the flood off the issuer"
    );
}

#[tokio::test]
async fn a_new_key_is_found_by_one_refresh_and_a_failed_fetch_keeps_the_old_keys() {
    let ks = KeyServer::start(vec![jwk(RSA_A, Algorithm::RS256, "a")]).await;
    let id = identity(&settings(&ks.issuer, 1));
    let old = sign(rs256("a"), &claims(&ks.issuer), RSA_A);
    id.verify_token(&old).await.expect("old key");
    *ks.jwks.lock().expect("lock") = json!({ "keys": [
        jwk(RSA_A, Algorithm::RS256, "a"), jwk(RSA_B, Algorithm::RS256, "b"),
    ]});
    let new = sign(rs256("b"), &claims(&ks.issuer), RSA_B);
    // Within the minimum interval the new kid is refused without a fetch ...
    assert_eq!(
        id.verify_token(&new).await.err(),
        Some(Rejection::UnknownKey)
    );
    assert_eq!(ks.fetches(), 1);
    // ... and found by the first refresh after it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let p = id.verify_token(&new).await.expect("rotated key");
    assert_eq!(p.subject, "alice");
    assert_eq!(ks.fetches(), 2);
    // The server now serves garbage: the keys in hand still verify.
    *ks.jwks.lock().expect("lock") = json!("not a key set");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t = sign(rs256("c"), &claims(&ks.issuer), RSA_B);
    assert_eq!(id.verify_token(&t).await.err(), Some(Rejection::UnknownKey));
    let fresh = sign(
        rs256("b"),
        &json!({"n": 1}).as_object().map_or(claims(&ks.issuer), |_| {
            let mut c = claims(&ks.issuer);
            c["sub"] = json!("bob");
            c
        }),
        RSA_B,
    );
    assert_eq!(
        id.verify_token(&fresh).await.map(|p| p.subject.clone()),
        Ok("bob".into())
    );
}

#[test]
fn algorithm_policy_is_checked_when_the_configuration_loads() {
    let bad = |yaml: &str| {
        let s: Settings = serde_norway::from_str(yaml).expect("parses");
        s.validate().expect_err("invalid")
    };
    let base = "issuers:\n  - issuer: http://127.0.0.1:9\n    audiences: [a]\n";
    assert!(bad(&format!("{base}    algorithms: [none]\n")).contains("never accepted"));
    assert!(bad(&format!("{base}    algorithms: [HS256]\n")).contains("hmac_secret_file"));
    assert!(bad(&format!("{base}    algorithms: [RS1]\n")).contains("unknown algorithm"));
    assert!(bad(&format!("{base}    algorithms: []\n")).contains("at least one"));
    assert!(
        bad("issuers:\n  - issuer: http://127.0.0.1:9\n    audiences: []\n").contains("audience")
    );
    // https is verified wherever the issuer is; cleartext only on loopback.
    let https: Settings =
        serde_norway::from_str("issuers:\n  - issuer: https://idp.example.com\n    audiences: [a]\n    ca_file: /etc/ca.pem\n")
            .expect("parses");
    https
        .validate()
        .expect("https issuers are fetched over TLS");
    assert!(
        bad("issuers:\n  - issuer: ftp://idp.example.com\n    audiences: [a]\n")
            .contains("must start with https://")
    );
    assert!(
        bad("issuers:\n  - issuer: http://idp.example.com\n    audiences: [a]\n")
            .contains("loopback")
    );
    assert!(bad(&format!("{base}    jwks_min_refresh_secs: 0\n")).contains("flood"));
    assert!(bad(&format!("{base}    groups_claim: \"a..b\"\n")).contains("groups_claim"));
    let ok: Settings = serde_norway::from_str(&format!(
        "{base}    algorithms: [HS256, RS256]\n    hmac_secret_file: /dev/null\n"
    ))
    .expect("parses");
    ok.validate().expect("HMAC with a secret file is allowed");
}

#[tokio::test]
async fn hmac_needs_the_configured_secret_and_the_request_path_reads_the_sdk_headers() {
    let dir = std::env::temp_dir().join(format!("sluice-hmac-{}", std::process::id()));
    std::fs::write(&dir, "test-secret\n").expect("write secret");
    let iss = "http://127.0.0.1:9";
    let s: Settings = serde_norway::from_str(&format!(
        "issuers:\n  - issuer: {iss}\n    audiences: [sluice]\n    algorithms: [HS256]\n    hmac_secret_file: {}\n",
        dir.display()
    ))
    .expect("parses");
    s.validate().expect("valid");
    let id = identity(&s);
    let _ = std::fs::remove_file(&dir);
    let good = sign(Header::new(Algorithm::HS256), &claims(iss), "test-secret");
    let wrong = sign(Header::new(Algorithm::HS256), &claims(iss), "other");
    let req = |h: &str, v: &str| {
        http::Request::get("/v1/models")
            .header(h, v)
            .body(())
            .expect("request")
            .into_parts()
            .0
    };
    let p = id
        .authenticate(&req("x-api-key", &good))
        .await
        .expect("valid")
        .expect("a token")
        .0;
    assert_eq!(p.subject, "alice");
    assert_eq!(
        id.authenticate(&req("authorization", &format!("Bearer {wrong}")))
            .await
            .map(|p| p.map(|p| p.0)),
        Err(Rejection::Signature)
    );
    assert_eq!(
        id.authenticate(&req("authorization", "Bearer sk-provider-key"))
            .await
            .map(|p| p.map(|p| p.0)),
        Ok(None)
    );
}

/// Many requests with unknown kids at once: one fetch; the others wait for it, then find
/// the set just fetched.
#[tokio::test]
async fn concurrent_unknown_kids_share_one_fetch() {
    let ks = KeyServer::start(vec![jwk(RSA_A, Algorithm::RS256, "a")]).await;
    let id = identity(&settings(&ks.issuer, 1));
    let t = sign(rs256("x"), &claims(&ks.issuer), RSA_A);
    let body = t.split_once('.').map_or("", |(_, rest)| rest).to_string();
    let tokens: Vec<String> = (0..32)
        .map(|i| {
            format!(
                "{}.{body}",
                b64(&json!({"alg": "RS256", "kid": format!("k{i}")}))
            )
        })
        .collect();
    let results = futures_util::future::join_all(tokens.iter().map(|t| id.verify_token(t))).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().err() == Some(&Rejection::UnknownKey))
    );
    assert_eq!(ks.fetches(), 1, "one fetch for 32 concurrent unknown kids");
}

#[test]
fn an_unauthenticated_refusal_is_a_401_in_the_servers_shape_with_a_challenge() {
    use crate::{adapter::Server, respond};
    let r = respond::Refusal::unauthenticated(Rejection::Expired);
    let resp = respond::render(Server::Anthropic, false, &r);
    assert_eq!(resp.status(), http::StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok()),
        Some("Bearer error=\"invalid_token\"")
    );
    let grpc = respond::render(Server::Triton, true, &r);
    assert_eq!(
        grpc.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()),
        Some("16")
    );
}
