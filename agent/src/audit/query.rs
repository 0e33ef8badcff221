//! `list` and `show`: requests found through the segments' indexes, then read from their
//! records. The part of a segment its index does not cover yet (the segment being written,
//! or one a crash left unindexed) is read record by record.
use std::{collections::HashMap, fs, os::unix::fs::FileExt as _, path::Path};

use super::{
    Error,
    entry::{BodyEntry, Direction, Kind, RequestEntry},
    frame, index,
    segment::{self, Step},
};

/// What `list` keeps; every given field must match (exact values).
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub id: Option<u64>,
    pub subject: Option<String>,
    pub group: Option<String>,
    /// The process name, executable path or container id.
    pub workload: Option<String>,
    pub unit: Option<String>,
    pub user: Option<String>,
    pub target: Option<String>,
    pub model: Option<String>,
    pub decision: Option<String>,
    pub rule: Option<String>,
}

/// One request as listed: its final record, or its opening record when the store has no
/// final one (the agent stopped before the request ended).
#[derive(Debug, Clone)]
pub struct Listed {
    pub segment: u64,
    /// Where its frame starts in the segment.
    pub offset: u64,
    pub seq: u64,
    pub kind: Kind,
    pub entry: RequestEntry<'static>,
}

/// Where a request record is.
#[derive(Clone, Copy)]
struct Place {
    segment: u64,
    seq: u64,
    offset: u64,
    size: usize,
    unix_ms: u64,
}

impl Filter {
    fn time(&self, ms: u64) -> bool {
        self.since_ms.is_none_or(|s| ms >= s) && self.until_ms.is_none_or(|u| ms <= u)
    }

    /// Against a whole record (the part of a segment the index does not cover).
    pub(super) fn matches(&self, e: &RequestEntry<'_>) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        let p = e.principal.as_ref();
        let w = &e.workload;
        self.time(e.unix_ms)
            && self.id.is_none_or(|i| i == e.id)
            && eq(&self.subject, p.map(|p| &*p.subject))
            && self
                .group
                .as_deref()
                .is_none_or(|g| p.is_some_and(|p| p.groups.iter().any(|x| x == g)))
            && self.workload.as_deref().is_none_or(|x| {
                [Some(&*w.comm), w.exe.as_deref(), w.container.as_deref()].contains(&Some(x))
            })
            && eq(&self.unit, w.unit.as_deref())
            && eq(&self.user, w.user.as_deref())
            && eq(&self.target, Some(&e.target))
            && eq(&self.model, e.model.as_deref())
            && eq(&self.decision, Some(&e.decision))
            && self
                .rule
                .as_deref()
                .is_none_or(|x| e.rules.iter().any(|r| r == x))
    }
}

/// The filter with its strings turned into one segment's index ids; None when one of them
/// never occurs in that segment (nothing there can match).
struct Ids {
    fields: Vec<(usize, u32)>,
    workload: Option<[Option<u32>; 3]>,
    group: Option<u32>,
    rule: Option<u32>,
}

fn resolve(f: &Filter, ix: &index::Index) -> Option<Ids> {
    let mut fields = Vec::new();
    for (want, at) in [
        (&f.subject, index::SUBJECT),
        (&f.unit, index::UNIT),
        (&f.user, index::USER),
        (&f.target, index::TARGET),
        (&f.model, index::MODEL),
        (&f.decision, index::DECISION),
    ] {
        if let Some(w) = want {
            fields.push((at, ix.id_of(w)?));
        }
    }
    let workload = match &f.workload {
        Some(w) => {
            let id = ix.id_of(w)?;
            Some([Some(id); 3])
        }
        None => None,
    };
    let group = match &f.group {
        Some(g) => Some(ix.id_of(g)?),
        None => None,
    };
    let rule = match &f.rule {
        Some(x) => Some(ix.id_of(x)?),
        None => None,
    };
    Some(Ids {
        fields,
        workload,
        group,
        rule,
    })
}

fn matches_ids(f: &Filter, ids: &Ids, e: &index::Entry) -> bool {
    f.time(e.unix_ms)
        && f.id.is_none_or(|i| i == e.id)
        && ids.fields.iter().all(|&(at, id)| e.fields[at] == id)
        && ids.workload.is_none_or(|w| {
            [index::COMM, index::EXE, index::CONTAINER]
                .iter()
                .any(|&at| w.contains(&Some(e.fields[at])))
        })
        && ids.group.is_none_or(|g| e.groups.contains(&g))
        && ids.rule.is_none_or(|r| e.rules.contains(&r))
}

/// Where every matching request record is: through the index, and past its end by reading
/// the segment.
fn places(dir: &Path, f: &Filter) -> Result<Vec<Place>, Error> {
    places_with(dir, f, true)
}

/// `places`; without `use_index`, every segment is read whole (the index is not signed,
/// so `show` falls back to this when the index names no record of the id).
fn places_with(dir: &Path, f: &Filter, use_index: bool) -> Result<Vec<Place>, Error> {
    let mut found: Vec<Place> = Vec::new();
    for (n, path) in segment::list(dir)? {
        let ix = if use_index {
            fs::read(dir.join(segment::idx_name(n)))
                .map(|b| index::Index::parse(&b))
                .unwrap_or_default()
        } else {
            index::Index::default()
        };
        if let Some(ids) = resolve(f, &ix) {
            for e in &ix.entries {
                if matches_ids(f, &ids, e) {
                    found.push(Place {
                        segment: n,
                        seq: e.seq,
                        offset: e.offset,
                        size: e.size,
                        unix_ms: e.unix_ms,
                    });
                }
            }
        }
        // The rest of the segment, past what the index covers.
        let end = ix.end();
        let len = fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
        if len > end {
            let file = fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            let mut tail = vec![0u8; (len - end) as usize];
            file.read_exact_at(&mut tail, end)
                .map_err(|e| Error::io(&path, e))?;
            for step in segment::frames(&tail, 0) {
                let Step::Frame { offset, frame } = step else {
                    continue;
                };
                if !matches!(frame.kind, Kind::Open | Kind::Final) {
                    continue;
                }
                if let Ok(e) = serde_json::from_slice::<RequestEntry<'_>>(frame.body)
                    && f.matches(&e)
                {
                    found.push(Place {
                        segment: n,
                        seq: frame.seq,
                        offset: end + offset,
                        size: frame.size(),
                        unix_ms: e.unix_ms,
                    });
                }
            }
        }
    }
    Ok(found)
}

fn read(dir: &Path, p: &Place) -> Result<Option<Listed>, Error> {
    let path = dir.join(segment::seg_name(p.segment));
    let file = fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut buf = vec![0u8; p.size];
    file.read_exact_at(&mut buf, p.offset)
        .map_err(|e| Error::io(&path, e))?;
    // A record that no longer decodes is `verify`'s to report; `list` skips it.
    let Ok(fr) = frame::decode(&buf) else {
        return Ok(None);
    };
    // An index line left by a write the store cut back (a failed fsync) points at another
    // record now: the sequence number tells.
    if fr.seq != p.seq {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<RequestEntry<'static>>(fr.body)
        .ok()
        .map(|entry| Listed {
            segment: p.segment,
            offset: p.offset,
            seq: fr.seq,
            kind: fr.kind,
            entry,
        }))
}

/// The requests that match `f`, oldest first, one per request id (at most `limit`, the
/// newest ones, when given).
pub fn list(dir: &Path, f: &Filter, limit: Option<usize>) -> Result<Vec<Listed>, Error> {
    let mut out_places = places(dir, f)?;
    let mut listed = Vec::with_capacity(out_places.len());
    let mut order: Vec<u64> = Vec::new();
    let mut kept: HashMap<u64, Listed> = HashMap::new();
    out_places.sort_by_key(|p| (p.unix_ms, p.seq));
    for p in out_places {
        let Some(l) = read(dir, &p)? else { continue };
        // The index is a hint, not signed: the record itself must match.
        if !f.matches(&l.entry) {
            continue;
        }
        let id = l.entry.id;
        match kept.get(&id) {
            Some(k) if k.kind == Kind::Final => {}
            Some(_) => {
                if l.kind == Kind::Final {
                    kept.insert(id, l);
                }
            }
            None => {
                order.push(id);
                kept.insert(id, l);
            }
        }
    }
    for id in order {
        if let Some(l) = kept.remove(&id) {
            listed.push(l);
        }
    }
    if let Some(n) = limit
        && listed.len() > n
    {
        listed.drain(..listed.len() - n);
    }
    Ok(listed)
}

/// Every record of request `id`: its opening record and its final one.
pub fn show(dir: &Path, id: u64) -> Result<Vec<Listed>, Error> {
    let f = Filter {
        id: Some(id),
        ..Filter::default()
    };
    let mut out = Vec::new();
    let mut found = places(dir, &f)?;
    if found.is_empty() {
        found = places_with(dir, &f, false)?;
    }
    for p in found {
        if let Some(l) = read(dir, &p)?
            && l.entry.id == id
        {
            out.push(l);
        }
    }
    out.sort_by_key(|l| (l.segment, l.seq));
    // Records written again after a failed sync sit where they were first: the index
    // names them twice.
    out.dedup_by_key(|l| (l.segment, l.seq));
    Ok(out)
}

/// One request as `replay` shows it: its records and its body entries, in store order.
#[derive(Debug)]
pub struct Exchange {
    pub open: Option<RequestEntry<'static>>,
    pub last: Option<RequestEntry<'static>>,
    pub request: Vec<BodyEntry<'static>>,
    pub response: Vec<BodyEntry<'static>>,
}

impl Exchange {
    /// The final record when there is one, else the opening one.
    pub fn entry(&self) -> Option<&RequestEntry<'static>> {
        self.last.as_ref().or(self.open.as_ref())
    }

    pub fn request_body(&self) -> Vec<u8> {
        self.request.iter().flat_map(|b| b.data()).collect()
    }
}

/// Request `id` with its bodies: found through the index, then read from its opening record
/// on until its final record (a request's records may cross into the next segment).
pub fn exchange(dir: &Path, id: u64) -> Result<Option<Exchange>, Error> {
    let found = show(dir, id)?;
    let Some(first) = found.first() else {
        return Ok(None);
    };
    let mut x = Exchange {
        open: None,
        last: None,
        request: Vec::new(),
        response: Vec::new(),
    };
    let mut reader = super::reader::Reader::at(dir, first.segment, first.offset);
    let mut bad = None;
    reader.poll(|r| {
        match r.kind {
            Kind::Open | Kind::Final => {
                match serde_json::from_slice::<RequestEntry<'static>>(&r.body) {
                    Ok(e) if e.id == id => {
                        let done = r.kind == Kind::Final;
                        if done {
                            x.last = Some(e);
                        } else {
                            x.open = Some(e);
                        }
                        return !done;
                    }
                    Ok(_) => {}
                    Err(e) => bad = Some(format!("record seq {}: {e}", r.seq)),
                }
            }
            Kind::Body => match serde_json::from_slice::<BodyEntry<'static>>(&r.body) {
                Ok(b) if b.id == id => match b.dir {
                    Direction::Request => x.request.push(b),
                    Direction::Response => x.response.push(b),
                },
                Ok(_) => {}
                Err(e) => bad = Some(format!("record seq {}: {e}", r.seq)),
            },
            Kind::Start | Kind::Checkpoint => {}
        }
        true
    })?;
    if let Some(why) = bad
        && x.entry().is_none()
    {
        return Err(Error::Damaged(why));
    }
    // Without a final record in the store after it (the agent stopped): the index's.
    if x.last.is_none() {
        x.last = found
            .into_iter()
            .rev()
            .find(|l| l.kind == Kind::Final)
            .map(|l| l.entry);
    }
    Ok(Some(x))
}
