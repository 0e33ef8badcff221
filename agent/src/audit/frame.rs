//! One record on disk:
//!
//! ```text
//! len   u32 LE   length of body
//! kind  u8       Kind
//! seq   u64 LE   the store-wide sequence number (1, 2, ...)
//! prev  [32]     hash of the record before (zeros before the first)
//! body  [len]    JSON (entry.rs)
//! hash  [32]     BLAKE3(len | kind | seq | prev | body)
//! ```
//!
//! The hash is both the frame's checksum (a torn or flipped frame does not match it) and the
//! link the next record names in `prev`. A signed checkpoint names the hash of the record
//! before it, so a signature covers everything chained before it.
use super::entry::Kind;

pub const HEAD: usize = 4 + 1 + 8 + 32;
pub const TAIL: usize = 32;
/// Largest body a frame may carry; a larger `len` is damage, not a record.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

pub type Hash = [u8; 32];

/// A decoded frame, borrowing its body from the buffer it was read from.
#[derive(Debug)]
pub struct Frame<'a> {
    pub kind: Kind,
    pub seq: u64,
    pub prev: Hash,
    pub body: &'a [u8],
    pub hash: Hash,
}

impl Frame<'_> {
    /// Bytes the frame takes on disk.
    pub fn size(&self) -> usize {
        HEAD + self.body.len() + TAIL
    }
}

/// Why bytes at an offset are not a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// The buffer ends inside the frame (a torn write, or a cut).
    Short,
    /// The length or kind cannot be a record's.
    Garbage,
    /// Every byte is there but the hash does not match: edited or damaged.
    Checksum { seq: u64, size: usize },
}

fn digest(head: &[u8], body: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(head);
    h.update(body);
    *h.finalize().as_bytes()
}

/// Appends one frame to `out` and returns its hash.
pub fn encode(out: &mut Vec<u8>, kind: Kind, seq: u64, prev: &Hash, body: &[u8]) -> Hash {
    encode_with(out, kind, seq, prev, |o| o.extend_from_slice(body))
}

/// Appends one frame whose body `write` appends to `out` in place (no body buffer of its
/// own, no copy); returns its hash.
pub fn encode_with(
    out: &mut Vec<u8>,
    kind: Kind,
    seq: u64,
    prev: &Hash,
    write: impl FnOnce(&mut Vec<u8>),
) -> Hash {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(kind as u8);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(prev);
    write(out);
    let len = (out.len() - start - HEAD) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let hash = digest(&out[start..start + HEAD], &out[start + HEAD..]);
    out.extend_from_slice(&hash);
    hash
}

/// Decodes the frame at the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Frame<'_>, Bad> {
    if buf.len() < HEAD {
        return Err(Bad::Short);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let kind = Kind::from_u8(buf[4]).ok_or(Bad::Garbage)?;
    if len == 0 || len > MAX_BODY {
        return Err(Bad::Garbage);
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[5..13]);
    let seq = u64::from_le_bytes(seq);
    let size = HEAD + len + TAIL;
    if buf.len() < size {
        return Err(Bad::Short);
    }
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&buf[13..HEAD]);
    let body = &buf[HEAD..HEAD + len];
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&buf[HEAD + len..size]);
    if digest(&buf[..HEAD], body) != hash {
        return Err(Bad::Checksum { seq, size });
    }
    Ok(Frame {
        kind,
        seq,
        prev,
        body,
        hash,
    })
}

pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
