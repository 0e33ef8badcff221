//! A segment's index: one short JSON line per request record, written beside the segment
//! (no fsync: it is derived, and rebuilt from the segment after a crash). Strings are
//! numbered once per segment (`{"d":[n,"text"]}` lines), so an entry is a line of integers:
//!
//! `[seq, offset, size, kind, request id, unix_ms, target, subject, user, unit, comm, exe,
//!   container, model, decision, [groups], [rules]]`
//!
//! `list` reads these lines instead of the records, skips a segment outright when a filter's
//! value never occurs in it, and parses only the records it prints. `verify` never reads
//! the index: a forged index can hide records from `list`, not from `verify`.
use std::collections::HashMap;

use serde::Deserialize;

use super::entry::{Kind, RequestEntry};

/// String fields of an entry, in line order.
pub const TARGET: usize = 0;
pub const SUBJECT: usize = 1;
pub const USER: usize = 2;
pub const UNIT: usize = 3;
pub const COMM: usize = 4;
pub const EXE: usize = 5;
pub const CONTAINER: usize = 6;
pub const MODEL: usize = 7;
pub const DECISION: usize = 8;
const FIELDS: usize = 9;

/// Builds a segment's index lines.
#[derive(Default)]
pub struct Writer {
    ids: HashMap<String, u32>,
    /// Each field's last value and its id: consecutive records mostly share target, user,
    /// process and decision, and a compare is cheaper than a hash lookup.
    last: [Option<(String, u32)>; FIELDS],
    names: Vec<String>,
    /// Names the index file already defines (the rest go with the next write).
    written: usize,
    pub buf: Vec<u8>,
}

impl Writer {
    fn intern(&mut self, s: Option<&str>) -> u32 {
        let Some(s) = s else { return 0 };
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        self.names.push(s.to_string());
        let id = self.names.len() as u32;
        self.ids.insert(s.to_string(), id);
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, &serde_json::json!({ "d": [id, s] }));
        self.buf.push(b'\n');
        id
    }

    fn field(&mut self, at: usize, s: Option<&str>) -> u32 {
        let Some(s) = s else { return 0 };
        if let Some((v, id)) = &self.last[at]
            && v == s
        {
            return *id;
        }
        let id = self.intern(Some(s));
        self.last[at] = Some((s.to_string(), id));
        id
    }

    pub fn add(&mut self, seq: u64, offset: u64, size: usize, kind: Kind, e: &RequestEntry<'_>) {
        let p = e.principal.as_ref();
        let w = &e.workload;
        let fields = [
            self.field(TARGET, Some(&e.target)),
            self.field(SUBJECT, p.map(|p| &*p.subject)),
            self.field(USER, w.user.as_deref()),
            self.field(UNIT, w.unit.as_deref()),
            self.field(COMM, Some(&w.comm)),
            self.field(EXE, w.exe.as_deref()),
            self.field(CONTAINER, w.container.as_deref()),
            self.field(MODEL, e.model.as_deref()),
            self.field(DECISION, Some(&e.decision)),
        ];
        let groups: Vec<u32> = p
            .map(|p| p.groups.iter().map(|g| self.intern(Some(g))).collect())
            .unwrap_or_default();
        let rules: Vec<u32> = e.rules.iter().map(|r| self.intern(Some(r))).collect();
        let line = (
            seq, offset, size, kind as u8, e.id, e.unix_ms, fields, groups, rules,
        );
        let _ = serde_json::to_writer(&mut self.buf, &line);
        self.buf.push(b'\n');
    }

    /// The buffered lines reached the file.
    pub fn written(&mut self) {
        self.buf.clear();
        self.written = self.names.len();
    }

    /// The buffered lines were not written: forget the names only they defined.
    pub fn rollback(&mut self) {
        self.buf.clear();
        for name in self.names.drain(self.written..) {
            self.ids.remove(&name);
        }
        let known = self.names.len() as u32;
        for l in &mut self.last {
            if l.as_ref().is_some_and(|(_, id)| *id > known) {
                *l = None;
            }
        }
    }
}

/// One request record as the index lists it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub offset: u64,
    pub size: usize,
    pub id: u64,
    pub unix_ms: u64,
    pub fields: [u32; FIELDS],
    pub groups: Vec<u32>,
    pub rules: Vec<u32>,
}

/// A segment's index as read back.
#[derive(Debug, Default)]
pub struct Index {
    /// Name of id n is `names[n - 1]`.
    pub names: Vec<String>,
    pub entries: Vec<Entry>,
}

#[derive(Deserialize)]
struct Name {
    d: (u32, String),
}

type Line = (
    u64,
    u64,
    usize,
    u8,
    u64,
    u64,
    [u32; FIELDS],
    Vec<u32>,
    Vec<u32>,
);

impl Index {
    /// Parses index lines; stops at the first line that is not one (a torn last line).
    pub fn parse(text: &[u8]) -> Index {
        let mut ix = Index::default();
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            // The first byte tells the two kinds of line apart (cheaper than an untagged enum).
            if line[0] == b'{' {
                match serde_json::from_slice::<Name>(line) {
                    Ok(Name { d: (id, name) }) if id as usize == ix.names.len() + 1 => {
                        ix.names.push(name);
                        continue;
                    }
                    _ => break,
                }
            }
            match serde_json::from_slice::<Line>(line) {
                Ok((seq, offset, size, kind, id, unix_ms, fields, groups, rules)) => {
                    if !matches!(Kind::from_u8(kind), Some(Kind::Open | Kind::Final)) {
                        break;
                    }
                    ix.entries.push(Entry {
                        seq,
                        offset,
                        size,
                        id,
                        unix_ms,
                        fields,
                        groups,
                        rules,
                    });
                }
                Err(_) => break,
            }
        }
        ix
    }

    /// The id of `name` in this segment, or None when it never occurs here.
    pub fn id_of(&self, name: &str) -> Option<u32> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| i as u32 + 1)
    }

    /// Where the frames the index does not cover begin.
    pub fn end(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.offset + e.size as u64)
    }
}
