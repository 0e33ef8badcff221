//! Signed checkpoints. A checkpoint is a record in the chain like any other; its signature
//! covers its own sequence number, the hash of the record before it (and so, through the
//! chain, every record before that) and its body.
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{frame, key};

const DOMAIN: &[u8] = b"sluice-audit-checkpoint-v1";

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Every `checkpoint_records` records or `checkpoint_secs`.
    Interval,
    /// The segment's last record: the next record is in the next segment.
    Close,
    /// Older segments are about to be deleted by retention (`cut` says from where the
    /// store legitimately starts).
    Retention,
    /// A new signing key takes over (`previous_key` names the old one).
    Rotation,
}

/// Where the store starts after a retention cut: the first segment kept, and the hash its
/// first record names as its predecessor (the last record deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    pub first_segment: u64,
    pub first_seq: u64,
    pub prev: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousKey {
    pub key_id: String,
    pub public_key: String,
    /// The previous key's signature over this checkpoint's public key.
    pub endorsement: String,
}

/// The signed part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    pub unix_ms: u64,
    pub reason: Reason,
    /// The highest request id recorded so far: ids keep growing across restarts.
    pub last_request_id: u64,
    pub key_id: String,
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<Cut>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key: Option<PreviousKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(flatten)]
    pub body: Body,
    pub signature: String,
}

fn message(seq: u64, prev: &frame::Hash, body: &Body) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(prev);
    // Serialising a plain struct cannot fail; an empty body would never verify.
    m.extend_from_slice(&serde_json::to_vec(body).unwrap_or_default());
    m
}

pub fn sign(signer: &SigningKey, seq: u64, prev: &frame::Hash, body: Body) -> Checkpoint {
    let sig = signer.sign(&message(seq, prev, &body));
    Checkpoint {
        body,
        signature: frame::hex(&sig.to_bytes()),
    }
}

/// Why a checkpoint's signature does not hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    PublicKey,
    KeyId,
    Signature,
}

/// Checks the signature with the public key the checkpoint carries (whether that key is
/// trusted is the verifier's question) and returns that key.
pub fn check(seq: u64, prev: &frame::Hash, c: &Checkpoint) -> Result<VerifyingKey, Invalid> {
    let public = key::parse_public_hex(&c.body.public_key).ok_or(Invalid::PublicKey)?;
    if key::id(&public) != c.body.key_id {
        return Err(Invalid::KeyId);
    }
    let sig = frame::unhex(&c.signature)
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or(Invalid::Signature)?;
    public
        .verify(
            &message(seq, prev, &c.body),
            &ed25519_dalek::Signature::from_bytes(&sig),
        )
        .map_err(|_| Invalid::Signature)?;
    Ok(public)
}
