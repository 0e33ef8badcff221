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

use super::{
    entry::{Kind, RequestEntry, decision_of},
    json,
};
use crate::record::Record;

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
    /// Seeded per process: names come from tokens and workloads, and must not be able to
    /// pick colliding hashes.
    ids: HashMap<Box<str>, u32, foldhash::fast::RandomState>,
    /// Each field's last id (0: none): consecutive records mostly share target, user,
    /// process and decision, and a compare is cheaper than a hash lookup.
    last: [u32; FIELDS],
    names: Vec<Box<str>>,
    /// Names the index file already defines (the rest go with the next write).
    written: usize,
    pub buf: Vec<u8>,
    /// A record's group and rule ids, kept to spare an allocation per record.
    lists: Vec<u32>,
    /// A write of the lines failed (`lost`): nothing more is added.
    broken: bool,
}

impl Writer {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        self.names.push(s.into());
        let id = self.names.len() as u32;
        self.ids.insert(s.into(), id);
        // `{"d":[id,"name"]}`, as serde_json writes it.
        self.buf.extend_from_slice(b"{\"d\":[");
        json::num(&mut self.buf, id);
        self.buf.push(b',');
        json::string(&mut self.buf, s);
        self.buf.extend_from_slice(b"]}\n");
        id
    }

    fn field(&mut self, at: usize, s: Option<&str>) -> u32 {
        let Some(s) = s else { return 0 };
        let last = self.last[at];
        if last != 0 && *self.names[last as usize - 1] == *s {
            return last;
        }
        let id = self.intern(s);
        self.last[at] = id;
        id
    }

    /// A request record as its entry was read back (rebuilding an index).
    pub fn add_entry(&mut self, at: At, kind: Kind, e: &RequestEntry<'_>) {
        let p = e.principal.as_ref();
        let w = &e.workload;
        let fields = [
            Some(&*e.target),
            p.map(|p| &*p.subject),
            w.user.as_deref(),
            w.unit.as_deref(),
            Some(&*w.comm),
            w.exe.as_deref(),
            w.container.as_deref(),
            e.model.as_deref(),
            Some(&*e.decision),
        ];
        let groups = p.into_iter().flat_map(|p| p.groups.iter().map(|g| &**g));
        self.add(
            at,
            kind,
            (e.id, e.unix_ms),
            fields,
            groups,
            e.rules.iter().map(|r| &**r),
        );
    }

    /// A request record as the store writes it: the same line as `add_entry` of its entry.
    pub fn add_record(&mut self, at: At, kind: Kind, r: &Record) {
        let p = r.principal.as_deref();
        let w = &r.workload;
        let fields = [
            Some(r.target.as_str()),
            p.map(|p| p.subject.as_str()),
            w.user.as_deref(),
            w.unit.as_deref(),
            Some(w.comm.as_str()),
            w.exe.as_deref(),
            w.container.as_ref().map(|c| c.id.as_str()),
            r.operation.as_ref().and_then(|o| o.model.as_deref()),
            Some(decision_of(r, kind)),
        ];
        let groups = p
            .into_iter()
            .flat_map(|p| p.groups.iter().map(String::as_str));
        let rules = r.decision.iter().flat_map(|d| d.rules());
        self.add(at, kind, (r.id, r.unix_ms), fields, groups, rules);
    }

    /// `[seq, offset, size, kind, id, unix_ms, [fields], [groups], [rules]]`, as serde_json
    /// writes the tuple.
    fn add<'s>(
        &mut self,
        at: At,
        kind: Kind,
        (id, unix_ms): (u64, u64),
        fields: [Option<&str>; FIELDS],
        groups: impl Iterator<Item = &'s str>,
        rules: impl Iterator<Item = &'s str>,
    ) {
        if self.broken {
            return;
        }
        let mut ids = [0u32; FIELDS];
        for (i, f) in fields.into_iter().enumerate() {
            ids[i] = self.field(i, f);
        }
        // Interned before the line starts: a new name's line goes first.
        let mut lists = std::mem::take(&mut self.lists);
        lists.clear();
        for g in groups {
            lists.push(self.intern(g));
        }
        let split = lists.len();
        for r in rules {
            lists.push(self.intern(r));
        }
        let b = &mut self.buf;
        b.push(b'[');
        for n in [
            at.seq,
            at.offset,
            at.size as u64,
            kind as u8 as u64,
            id,
            unix_ms,
        ] {
            json::num(b, n);
            b.push(b',');
        }
        ids_list(b, &ids);
        b.push(b',');
        ids_list(b, &lists[..split]);
        b.push(b',');
        ids_list(b, &lists[split..]);
        b.extend_from_slice(b"]\n");
        self.lists = lists;
    }

    /// The buffered lines reached the file.
    pub fn written(&mut self) {
        self.buf.clear();
        self.written = self.names.len();
    }

    /// Writing the buffered lines failed (a full disk), maybe part way: the index of this
    /// segment ends there. A later line would make it claim the records whose lines were
    /// lost (`Index::end`) and hide them from `list`, which reads past its end record by
    /// record instead.
    pub fn lost(&mut self) {
        self.buf.clear();
        self.broken = true;
    }

    /// The buffered lines were not written: forget the names only they defined.
    pub fn rollback(&mut self) {
        self.buf.clear();
        for name in self.names.drain(self.written..) {
            self.ids.remove(&name);
        }
        let known = self.names.len() as u32;
        for l in &mut self.last {
            if *l > known {
                *l = 0;
            }
        }
    }
}

/// Where a record is: its sequence number, offset and size in its segment.
#[derive(Debug, Clone, Copy)]
pub struct At {
    pub seq: u64,
    pub offset: u64,
    pub size: usize,
}

fn ids_list(b: &mut Vec<u8>, ids: &[u32]) {
    b.push(b'[');
    for (i, &n) in ids.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        json::num(b, n);
    }
    b.push(b']');
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
