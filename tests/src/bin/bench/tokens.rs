//! Token identity cost in process (no root, no agent): a repeated token (a blake3 hash and a
//! cache lookup, with the header scan of a real request) against a request without a token,
//! and the first verification of a token per algorithm (signature and claims checked). The
//! keys are the agent's test keys, served as a JWKS from 127.0.0.1.
use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::json;

const RSA: &str = include_str!("../../../../agent/src/identity/testdata/rsa-a.pem");
const EC: &str = include_str!("../../../../agent/src/identity/testdata/ec.pem");
const ED: &str = include_str!("../../../../agent/src/identity/testdata/ed.pem");

fn key(alg: Algorithm) -> Result<EncodingKey> {
    Ok(match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC.as_bytes())?,
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED.as_bytes())?,
        _ => EncodingKey::from_rsa_pem(RSA.as_bytes())?,
    })
}

const ALGS: [(Algorithm, &str); 3] = [
    (Algorithm::RS256, "RS256"),
    (Algorithm::ES256, "ES256"),
    (Algorithm::EdDSA, "EdDSA"),
];

/// Serves the three keys' JWKS until the process ends; returns the issuer URL.
pub fn key_server() -> Result<String> {
    let mut keys = Vec::new();
    for (alg, name) in ALGS {
        let mut v = serde_json::to_value(Jwk::from_encoding_key(&key(alg)?, alg)?)?;
        v["kid"] = json!(name);
        keys.push(v);
    }
    let body = json!({ "keys": keys }).to_string();
    let l = TcpListener::bind("127.0.0.1:0")?;
    let issuer = format!("http://{}", l.local_addr()?);
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(issuer)
}

pub fn token_cost(n: usize) -> Result<()> {
    let issuer = key_server()?;
    let settings: sluice::identity::Settings = settings_for(&issuer)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let id = rt.block_on(async {
        sluice::identity::Identity::new(&settings, 0, Duration::from_secs(2))
            .map(|i| i.context("issuers configured"))
    })??;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = |alg: Algorithm, name: &str, jti: usize| -> Result<String> {
        let mut h = Header::new(alg);
        h.kid = Some(name.into());
        let claims = json!({
            "iss": issuer, "aud": "sluice", "sub": "alice", "groups": ["ml-eng"],
            "exp": now + 3600, "iat": now, "jti": jti,
        });
        Ok(jsonwebtoken::encode(&h, &claims, &key(alg)?)?)
    };
    let request = |t: Option<&str>| {
        let mut b = http::Request::post("/v1/chat/completions");
        if let Some(t) = t {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.header("content-type", "application/json")
            .body(())
            .map(|r| r.into_parts().0)
    };
    println!("\n### Token identity (in process)\n");
    let cached = token(Algorithm::RS256, "RS256", 0)?;
    let with = request(Some(&cached))?;
    let without = request(None)?;
    rt.block_on(async {
        // The first call fetches the keys and verifies; the rest are cache hits.
        id.authenticate(&with).await.context("warm-up")?;
        let t0 = Instant::now();
        for _ in 0..n {
            std::hint::black_box(id.authenticate(std::hint::black_box(&with)).await)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let hit = t0.elapsed().as_secs_f64() * 1e9 / n as f64;
        let t0 = Instant::now();
        for _ in 0..n {
            std::hint::black_box(id.authenticate(std::hint::black_box(&without)).await)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let none = t0.elapsed().as_secs_f64() * 1e9 / n as f64;
        println!(
            "identify with a cached token (header scan, blake3, cache lookup): {hit:.0} ns per request; with issuers configured and no token: {none:.0} ns; with no issuer configured the stage reads nothing"
        );
        anyhow::Ok(())
    })?;
    println!("\n| algorithm | first verification of a token |\n|---|---|");
    let m = (n / 40).max(50);
    for (alg, name) in ALGS {
        let tokens: Vec<String> = (1..=m)
            .map(|i| token(alg, name, i))
            .collect::<Result<_>>()?;
        let us = rt.block_on(async {
            let t0 = Instant::now();
            for t in &tokens {
                id.verify_token(t)
                    .await
                    .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            }
            anyhow::Ok(t0.elapsed().as_secs_f64() * 1e6 / m as f64)
        })?;
        println!("| {name} | {us:.1} µs ({m} distinct tokens) |");
    }
    println!();
    Ok(())
}

/// The settings as the agent's YAML would give them (through serde_json: same fields).
/// The agent's `identity:` setting for the bench's issuer, as YAML.
pub fn identity_yaml(issuer: &str) -> Result<String> {
    // JSON is YAML (a flow mapping).
    Ok(format!("identity: {}\n", settings_json(issuer)))
}

/// An RS256 token of the bench's issuer, valid for two hours.
pub fn bench_token(issuer: &str) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("RS256".into());
    let claims = json!({
        "iss": issuer, "aud": "sluice", "sub": "alice", "groups": ["ml-eng"],
        "exp": now + 7200, "iat": now,
    });
    Ok(jsonwebtoken::encode(&h, &claims, &key(Algorithm::RS256)?)?)
}

fn settings_json(issuer: &str) -> serde_json::Value {
    json!({
        "issuers": [{
            "issuer": issuer, "audiences": ["sluice"], "groups_claim": "groups",
            "jwks_uri": format!("{issuer}/jwks"),
            "algorithms": ["RS256", "ES256", "EdDSA"],
        }],
    })
}

fn settings_for(issuer: &str) -> Result<sluice::identity::Settings> {
    Ok(serde_json::from_value(settings_json(issuer))?)
}
