//! The full check of a token seen for the first time. The order matters: everything the
//! header could use to steer verification (`alg: none`, header key URLs, embedded keys,
//! `crit`, an encrypted token) is refused before any key is looked up, the issuer is chosen
//! from the configuration by the token's `iss`, and the algorithm must be one that issuer
//! accepts, so an RSA public key can never be used as an HMAC secret.
use std::{sync::Arc, time::SystemTime};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde_json::Value;

use super::{Principal, Rejection, keys::Issuer};

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn b64_json(segment: &str) -> Result<Value, Rejection> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Rejection::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(Rejection::Malformed),
    }
}

/// Verifies `token` and returns its principal and the unix second it expires at.
pub async fn verify(
    token: &str,
    issuers: &[Arc<Issuer>],
    now: u64,
) -> Result<(Principal, u64), Rejection> {
    let segments: Vec<&str> = token.split('.').collect();
    match segments.len() {
        3 => {}
        5 => return Err(Rejection::Encrypted),
        _ => return Err(Rejection::Malformed),
    }
    let header = b64_json(segments[0])?;
    if header.get("enc").is_some() {
        return Err(Rejection::Encrypted);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(Rejection::Malformed)?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(Rejection::Algorithm);
    }
    if segments[2].is_empty() {
        return Err(Rejection::Unsigned);
    }
    if ["jku", "x5u", "jwk"]
        .iter()
        .any(|h| header.get(h).is_some())
    {
        return Err(Rejection::HeaderKey);
    }
    // RFC 7515 §4.1.11: a recipient that does not understand every listed extension must
    // refuse the token; this agent understands none.
    if header.get("crit").is_some() {
        return Err(Rejection::Critical);
    }
    let alg: Algorithm = alg.parse().map_err(|_| Rejection::Algorithm)?;
    let kid = header.get("kid").and_then(Value::as_str);
    let claims = b64_json(segments[1])?;
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(Rejection::MissingClaim)?;
    let issuer = issuers
        .iter()
        .find(|i| i.settings.issuer == iss)
        .ok_or(Rejection::Issuer)?;
    if !issuer.algorithms.contains(&alg) {
        return Err(Rejection::Algorithm);
    }
    let validation = validation(issuer, alg);
    let verified = issuer
        .with_key(kid, alg, |key| {
            jsonwebtoken::decode::<Value>(token, key, &validation)
        })
        .await?;
    let claims = verified.map_err(|e| rejection(e.kind()))?.claims;
    let leeway = issuer.settings.leeway.as_secs();
    if claims
        .get("iat")
        .and_then(Value::as_u64)
        .is_some_and(|iat| iat > now + leeway)
    {
        return Err(Rejection::IssuedInFuture);
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(Rejection::MissingClaim)?;
    let subject = issuer
        .subject
        .subject(&claims)
        .ok_or(Rejection::MissingClaim)?;
    let groups = issuer
        .groups
        .as_ref()
        .map(|g| g.groups(&claims))
        .unwrap_or_default();
    Ok((
        Principal {
            issuer: issuer.name.clone(),
            subject,
            groups,
            claims: Arc::new(claims),
        },
        exp,
    ))
}

fn validation(issuer: &Issuer, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = issuer.settings.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_audience(&issuer.settings.audiences);
    v.set_issuer(&[issuer.settings.issuer.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

fn rejection(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
        ErrorKind::InvalidAudience => Rejection::Audience,
        ErrorKind::InvalidIssuer => Rejection::Issuer,
        ErrorKind::InvalidSignature => Rejection::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Rejection::Algorithm,
        ErrorKind::MissingRequiredClaim(_) => Rejection::MissingClaim,
        _ => Rejection::Malformed,
    }
}
