//! `sluice audit export --format jsonl`: every request record (opening, final) and body
//! entry, in store order, one JSON object per line, for a log shipper. `--follow` keeps
//! reading as the agent writes (`reader.rs`), across segment rotation and retention.
use std::{collections::BTreeSet, io::Write, path::Path};

use serde_json::Value;

use super::{
    Error, Filter,
    entry::{BodyEntry, Kind, RequestEntry},
    reader::{Read, Reader},
};

/// Request ids whose opening record matched, for their body entries; bounded (the oldest
/// are forgotten first: a request still streaming after this many newer ones began loses
/// its later body lines from a filtered export, never its records).
const MATCHED: usize = 65_536;

pub struct Exporter {
    reader: Reader,
    filter: Filter,
    /// Whether the filter keeps everything (every body entry is exported then).
    all: bool,
    bodies: bool,
    matched: BTreeSet<u64>,
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] Error),
    /// The output is gone (a shipper that stopped reading): not an error of the store.
    #[error("output closed: {0}")]
    Output(std::io::Error),
}

impl Exporter {
    /// Records after `after_seq` (0: from the store's first), matching `filter`; body entries
    /// only with `bodies`.
    pub fn new(dir: &Path, filter: Filter, bodies: bool, after_seq: u64) -> Exporter {
        let all = filter_is_empty(&filter);
        Exporter {
            reader: Reader::new(dir, after_seq),
            filter,
            all,
            bodies,
            matched: BTreeSet::new(),
        }
    }

    /// The last record's sequence number read: `--after-seq` resumes after it.
    pub fn last_seq(&self) -> u64 {
        self.reader.last_seq()
    }

    /// Writes every record written since the last call; returns how many lines.
    pub fn step(&mut self, out: &mut impl Write) -> Result<usize, ExportError> {
        let mut lines = 0;
        let mut failed = None;
        let (filter, all, bodies, matched) =
            (&self.filter, self.all, self.bodies, &mut self.matched);
        self.reader.poll(|r| {
            let Some(v) = line(r, filter, all, bodies, matched) else {
                return true;
            };
            let mut text = v.to_string();
            text.push('\n');
            match out.write_all(text.as_bytes()) {
                Ok(()) => {
                    lines += 1;
                    true
                }
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(ExportError::Output(e));
        }
        out.flush().map_err(ExportError::Output)?;
        Ok(lines)
    }
}

fn filter_is_empty(f: &Filter) -> bool {
    let Filter {
        since_ms,
        until_ms,
        id,
        subject,
        group,
        workload,
        unit,
        user,
        target,
        model,
        decision,
        rule,
    } = f;
    since_ms.is_none()
        && until_ms.is_none()
        && id.is_none()
        && [
            subject, group, workload, unit, user, target, model, decision, rule,
        ]
        .iter()
        .all(|o| o.is_none())
}

/// A record as its export line, or `None` when it is not exported.
fn line(
    r: &Read,
    f: &Filter,
    all: bool,
    bodies: bool,
    matched: &mut BTreeSet<u64>,
) -> Option<Value> {
    let mut v = match r.kind {
        Kind::Open | Kind::Final => {
            let e: RequestEntry<'_> = serde_json::from_slice(&r.body).ok()?;
            let keep = f.matches(&e);
            if !all && bodies {
                // Body entries follow the opening record; the final one ends them.
                if keep && r.kind == Kind::Open {
                    matched.insert(e.id);
                    if matched.len() > MATCHED {
                        matched.pop_first();
                    }
                } else if r.kind == Kind::Final {
                    matched.remove(&e.id);
                }
            }
            if !keep {
                return None;
            }
            serde_json::to_value(&e).ok()?
        }
        Kind::Body if bodies => {
            let b: BodyEntry<'_> = serde_json::from_slice(&r.body).ok()?;
            if !all && !matched.contains(&b.id) {
                return None;
            }
            serde_json::to_value(&b).ok()?
        }
        Kind::Body | Kind::Start | Kind::Checkpoint => return None,
    };
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "record".into(),
            serde_json::json!({"kind": r.kind, "seq": r.seq, "segment": r.segment}),
        );
    }
    Some(v)
}
