//! The checkpoint signing key: Ed25519, 32 raw secret bytes in a 0600 file, generated on the
//! first start when missing. Its public half is exported as one line,
//! `ed25519:<64 hex digits>`, for verifiers to keep somewhere the agent's host cannot edit.
//!
//! Rotation: `sluice audit rotate-key` writes a new key beside the current one
//! (`<key>.next`); the agent, at its next start or checkpoint, writes a checkpoint signed by
//! the new key that names the old key and carries the old key's signature over the new
//! public key (an endorsement), then makes the new key current. Either key then vouches
//! for the other, so a verifier holding any key of the chain accepts the whole chain.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

use super::{Error, frame};

/// What an endorsement signs: the new key, under the old one.
const ENDORSE: &[u8] = b"sluice-audit-key-endorsement-v1";

/// A key's id: the first 8 bytes of BLAKE3 of its public key, in hex.
pub fn id(public: &VerifyingKey) -> String {
    frame::hex(&blake3::hash(public.as_bytes()).as_bytes()[..8])
}

pub fn public_line(public: &VerifyingKey) -> String {
    format!("ed25519:{}", frame::hex(public.as_bytes()))
}

/// Reads a public key as `public_line` writes it (surrounding whitespace and a trailing
/// comment after a space are ignored).
pub fn parse_public(text: &str) -> Option<VerifyingKey> {
    let word = text.split_whitespace().next()?;
    let hex = word.strip_prefix("ed25519:").unwrap_or(word);
    let bytes: [u8; 32] = frame::unhex(hex)?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

pub fn parse_public_hex(hex: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = frame::unhex(hex)?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

pub fn next_path(current: &Path) -> PathBuf {
    let mut s = current.as_os_str().to_owned();
    s.push(".next");
    PathBuf::from(s)
}

fn key_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Key {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Reads the key at `path`, refusing one others may read.
pub fn read(path: &Path) -> Result<SigningKey, Error> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(key_error(
            path,
            format!(
                "mode {:o} lets others read the signing key; chmod 600 it",
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let bytes = zeroize::Zeroizing::new(fs::read(path).map_err(|e| Error::io(path, e))?);
    let secret: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| key_error(path, "not an Ed25519 key (32 raw bytes expected)"))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// A new key written to `path` (0600, created only if absent).
pub fn generate(path: &Path) -> Result<SigningKey, Error> {
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut *secret)
        .map_err(|e| key_error(path, format!("no randomness for a new key: {e}")))?;
    let key = SigningKey::from_bytes(&secret);
    if let Some(dir) = path.parent() {
        super::segment::make_dir(dir)?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(&*secret).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(key)
}

/// The key at `path`, generated when the file does not exist yet.
pub fn load_or_generate(path: &Path) -> Result<(SigningKey, bool), Error> {
    match fs::symlink_metadata(path) {
        Ok(_) => read(path).map(|k| (k, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate(path).map(|k| (k, true)),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// The old key's signature over the new public key.
pub fn endorse(old: &SigningKey, new: &VerifyingKey) -> String {
    let mut msg = ENDORSE.to_vec();
    msg.extend_from_slice(new.as_bytes());
    frame::hex(&old.sign(&msg).to_bytes())
}

pub fn endorsed(old: &VerifyingKey, new: &VerifyingKey, sig_hex: &str) -> bool {
    let Some(sig) = frame::unhex(sig_hex).and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
        return false;
    };
    let mut msg = ENDORSE.to_vec();
    msg.extend_from_slice(new.as_bytes());
    old.verify(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
        .is_ok()
}
