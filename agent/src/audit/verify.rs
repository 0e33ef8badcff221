//! `sluice audit verify`: walks every segment and says where the store was edited,
//! truncated, reordered, swapped or signed by a key nobody trusts.
//!
//! What it checks: each frame's hash (edited or damaged bytes); each record's sequence
//! number and predecessor hash against the record before it, across segments (deleted,
//! reordered, replaced records, swapped segments); each segment's first record naming its
//! own number (renamed or swapped files) and each closed segment ending with its closing
//! checkpoint (a truncated segment); each checkpoint's signature, and its key reaching the
//! trusted key through endorsed rotations; and that the store starts at its first record
//! or where a signed retention cut says it now starts.
//!
//! What it cannot see: the newest end of the store. Records cut off the newest segment
//! after its last checkpoint look like a crash's torn tail (reported, not failed); the
//! newest segments deleted whole, or the last one cut back at a record boundary to an
//! earlier checkpoint, leave a store that ends as a stopped agent's does. Compare the last
//! sequence number and checkpoint it reports with a copy shipped off the host (`sluice
//! audit export --follow` to a log shipper) to close that gap. The agent's own crash
//! recovery never cuts more than a torn last record: whole records after a bad one stop it.
use std::path::Path;

use ed25519_dalek::VerifyingKey;

use super::{
    Error,
    checkpoint::{self, Checkpoint, Cut, Reason},
    entry::{Kind, Start},
    frame::{self, Bad, Hash},
    key,
    segment::{self, Step},
};

#[derive(Debug, Default)]
pub struct Report {
    pub segments: usize,
    pub records: u64,
    pub checkpoints: usize,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Key ids that signed checkpoints.
    pub keys: Vec<String>,
    /// What is wrong, each with where.
    pub problems: Vec<String>,
    /// What is true and worth saying (a torn tail, unsigned last records).
    pub notes: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Signed {
    segment: u64,
    seq: u64,
    checkpoint: Checkpoint,
    public: VerifyingKey,
}

/// Verifies the store in `dir`. `anchor` is the trusted public key; without one, the key
/// of the first checkpoint is trusted (and the report says so).
pub fn verify(dir: &Path, anchor: Option<VerifyingKey>) -> Result<Report, Error> {
    let mut r = Report::default();
    let segments = segment::list(dir)?;
    r.segments = segments.len();
    if segments.is_empty() {
        r.problems.push(format!(
            "{}: no segments (no record was ever written here, or all were deleted)",
            dir.display()
        ));
        return Ok(r);
    }
    let mut signed: Vec<Signed> = Vec::new();
    let mut expected: Option<u64> = None;
    let mut last: Option<Hash> = None;
    let mut start: Option<(u64, u64, Hash)> = None;
    let mut previous_number: Option<u64> = None;
    let mut last_checkpoint_seq = 0;
    for (i, (n, path)) in segments.iter().enumerate() {
        let name = segment::seg_name(*n);
        if let Some(p) = previous_number
            && *n != p + 1
        {
            r.problems.push(format!(
                "segment files {} to {} are missing between {} and {name}",
                segment::seg_name(p + 1),
                segment::seg_name(n - 1),
                segment::seg_name(p)
            ));
        }
        previous_number = Some(*n);
        let is_last = i + 1 == segments.len();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut first = true;
        let mut closed = false;
        let mut last_seq_here = None;
        for step in segment::frames(&bytes, 0) {
            match step {
                Step::Frame { offset, frame } => {
                    let at = format!(
                        "segment {n} ({name}), record seq {} at offset {offset}",
                        frame.seq
                    );
                    if first {
                        first = false;
                        let named = (frame.kind == Kind::Start)
                            .then(|| serde_json::from_slice::<Start>(frame.body).ok())
                            .flatten()
                            .map(|s| s.segment);
                        match named {
                            Some(m) if m == *n => {}
                            Some(m) => r.problems.push(format!(
                                "{name} holds segment {m}'s records, not segment {n}'s: segment files were swapped or renamed"
                            )),
                            None => r.problems.push(format!(
                                "{at}: the segment does not begin with its start record: its beginning was cut or replaced"
                            )),
                        }
                        if start.is_none() {
                            start = Some((*n, frame.seq, frame.prev));
                            r.first_seq = frame.seq;
                        }
                    }
                    match expected {
                        Some(e) if frame.seq > e => r.problems.push(format!(
                            "{at}: record{} seq {e}{} missing: deleted (the record before is seq {})",
                            if frame.seq - e > 1 { "s" } else { "" },
                            if frame.seq - e > 1 { format!(" to {}", frame.seq - 1) } else { " is".into() },
                            e - 1
                        )),
                        Some(e) if frame.seq < e => r.problems.push(format!(
                            "{at}: out of order: seq {} follows seq {}: records were reordered or copied",
                            frame.seq,
                            e - 1
                        )),
                        Some(e) => {
                            if let Some(h) = last
                                && h != frame.prev
                            {
                                r.problems.push(format!(
                                    "{at}: does not chain to record seq {}: a record was replaced, or records were reordered",
                                    e - 1
                                ));
                            }
                        }
                        None => {}
                    }
                    expected = Some(frame.seq + 1);
                    last = Some(frame.hash);
                    last_seq_here = Some(frame.seq);
                    r.records += 1;
                    r.last_seq = frame.seq;
                    closed = false;
                    if frame.kind == Kind::Checkpoint {
                        match serde_json::from_slice::<Checkpoint>(frame.body) {
                            Ok(c) => match checkpoint::check(frame.seq, &frame.prev, &c) {
                                Ok(public) => {
                                    closed = c.body.reason == Reason::Close;
                                    last_checkpoint_seq = frame.seq;
                                    signed.push(Signed {
                                        segment: *n,
                                        seq: frame.seq,
                                        checkpoint: c,
                                        public,
                                    });
                                }
                                Err(why) => r
                                    .problems
                                    .push(format!("{at}: checkpoint does not verify ({why:?})")),
                            },
                            Err(e) => r.problems.push(format!("{at}: checkpoint unreadable: {e}")),
                        }
                    }
                }
                Step::Bad { offset, why } => {
                    let seq = expected.map_or("?".to_string(), |e| e.to_string());
                    let at = format!("segment {n} ({name}), record seq {seq} at offset {offset}");
                    match why {
                        Bad::Checksum { seq, .. } => {
                            r.problems.push(format!(
                                "segment {n} ({name}), record seq {seq} at offset {offset}: checksum mismatch: the record was edited or damaged"
                            ));
                            expected = Some(seq + 1);
                            last = None;
                        }
                        Bad::Short | Bad::Garbage
                            if is_last
                                && segment::frame_after(&bytes, offset as usize).is_none() =>
                        {
                            r.notes.push(format!(
                                "{at}: the last {} bytes are an incomplete record (a crash's torn tail, cut at the next start; or a cut): everything before it verifies",
                                bytes.len() as u64 - offset
                            ));
                        }
                        Bad::Short => r
                            .problems
                            .push(format!("{at}: the segment ends inside a record: truncated")),
                        Bad::Garbage => r.problems.push(format!(
                            "{at}: bytes that are not a record: damaged or overwritten"
                        )),
                    }
                }
            }
        }
        if first {
            r.problems
                .push(format!("segment {n} ({name}) holds no record: emptied"));
        }
        if !is_last && !closed {
            r.problems.push(format!(
                "segment {n} ({name}) does not end with its closing checkpoint (its last whole record is seq {}): truncated",
                last_seq_here.map_or("none".to_string(), |s| s.to_string())
            ));
        }
    }
    trust(&mut r, &signed, anchor);
    check_start(&mut r, &signed, start);
    r.checkpoints = signed.len();
    if r.last_seq > last_checkpoint_seq {
        r.notes.push(format!(
            "{} record(s) after the last checkpoint (seq {last_checkpoint_seq}) are chained but not yet signed (the agent is running, or stopped without closing)",
            r.last_seq - last_checkpoint_seq
        ));
    }
    Ok(r)
}

/// Which checkpoint keys are trusted, in chain order: one key is in force at a time, from
/// the first checkpoint (or the rotation that brought it in) to the rotation that retires
/// it. A rotation counts only when the key in force endorsed the new one; a checkpoint signed
/// by any other key — a retired one included, so a leaked old key cannot sign records made
/// after the rotation — is a problem. The anchor must be one of the keys in force; the
/// others are trusted through the endorsements that link them to it.
fn trust(r: &mut Report, signed: &[Signed], anchor: Option<VerifyingKey>) {
    let Some(anchor) = anchor.or_else(|| signed.first().map(|s| s.public)) else {
        r.problems
            .push("no checkpoint verifies: nothing in the store is signed".into());
        return;
    };
    let anchor_id = key::id(&anchor);
    // The keys in force, in order, each with the checkpoints it signed (segment, seq).
    let mut epochs: Vec<(String, Vec<(u64, u64)>)> = Vec::new();
    for s in signed {
        let c = &s.checkpoint.body;
        if !r.keys.contains(&c.key_id) {
            r.keys.push(c.key_id.clone());
        }
        let in_force = epochs.last().map(|(k, _)| k.clone());
        let rotation_from = match &c.previous_key {
            None => None,
            Some(p) => match key::parse_public_hex(&p.public_key) {
                Some(old)
                    if key::id(&old) == p.key_id
                        && key::endorsed(&old, &s.public, &p.endorsement) =>
                {
                    Some(p.key_id.clone())
                }
                _ => {
                    r.problems.push(format!(
                        "segment {}, checkpoint seq {}: names key {} as its predecessor without that key's valid endorsement",
                        s.segment, s.seq, p.key_id
                    ));
                    None
                }
            },
        };
        match (in_force, rotation_from) {
            // The first checkpoint, or a rotation endorsed by the key in force.
            (None, _) => epochs.push((c.key_id.clone(), vec![(s.segment, s.seq)])),
            (Some(cur), Some(old)) if old == cur && cur != c.key_id => {
                epochs.push((c.key_id.clone(), vec![(s.segment, s.seq)]));
            }
            (Some(cur), _) if cur == c.key_id => {
                if let Some((_, list)) = epochs.last_mut() {
                    list.push((s.segment, s.seq));
                }
            }
            (Some(cur), Some(old)) => r.problems.push(format!(
                "segment {}, checkpoint seq {}: a rotation to key {} endorsed by key {old}, which is not the key in force ({cur}): only the key in force can hand over",
                s.segment, s.seq, c.key_id
            )),
            (Some(cur), None) => {
                let retired = epochs.iter().any(|(k, _)| *k == c.key_id);
                r.problems.push(format!(
                    "segment {}, checkpoint seq {}: signed by key {}, {}; the key in force there is {cur}",
                    s.segment,
                    s.seq,
                    c.key_id,
                    if retired {
                        "which a rotation had retired (a retired key signs nothing after its rotation)"
                    } else {
                        "which no rotation brought in"
                    }
                ));
            }
        }
    }
    if !epochs.iter().any(|(k, _)| *k == anchor_id) {
        for (k, list) in &epochs {
            for (segment, seq) in list {
                r.problems.push(format!(
                    "segment {segment}, checkpoint seq {seq}: signed by key {k}, which is neither the trusted key {anchor_id} nor endorsed through a rotation from it"
                ));
            }
        }
    }
}

/// The store starts at the chain's first record, or where a trusted retention cut says.
fn check_start(r: &mut Report, signed: &[Signed], start: Option<(u64, u64, Hash)>) {
    let Some((segment, seq, prev)) = start else {
        return;
    };
    if seq == 1 && prev == [0; 32] {
        return;
    }
    let cut = Cut {
        first_segment: segment,
        first_seq: seq,
        prev: frame::hex(&prev),
    };
    match signed
        .iter()
        .find(|s| s.checkpoint.body.cut.as_ref() == Some(&cut))
    {
        Some(s) => r.notes.push(format!(
            "the store starts at segment {segment} (seq {seq}): earlier segments were deleted by retention (signed cut at seq {})",
            s.seq
        )),
        None => r.problems.push(format!(
            "the store starts at segment {segment}, record seq {seq}: the records before it are missing and no signed retention cut says retention deleted them"
        )),
    }
}
