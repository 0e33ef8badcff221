//! The store's writing side: the current segment, the chain's head, checkpoints, segment
//! rotation, retention and crash recovery. Synchronous: it runs on the store's own thread
//! (`thread.rs`), or in a command.
use std::{
    collections::VecDeque,
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use ed25519_dalek::SigningKey;

use super::{
    Error, Settings,
    checkpoint::{self, Checkpoint, Cut, PreviousKey, Reason},
    entry::{BodyEntry, Kind, RequestEntry, Start},
    frame::{self, Hash},
    index, json, key,
    segment::{self, Step},
};
use crate::record::Record;

/// The chain's head at a point where the file had `len` bytes.
#[derive(Debug, Clone, Copy)]
struct Head {
    seq: u64,
    last: Hash,
    len: u64,
    last_request_id: u64,
}

/// The segment being written.
struct Current {
    number: u64,
    path: PathBuf,
    /// Shared with the sync thread, which fdatasyncs it (`sync.rs`).
    file: Arc<fs::File>,
    idx: fs::File,
    /// The first record's sequence number and the hash it names as its predecessor.
    first_seq: u64,
    first_prev: Hash,
}

/// A closed segment, for retention.
struct Closed {
    number: u64,
    bytes: u64,
    /// When it was last written (its newest record).
    modified: SystemTime,
}

/// What opening the store found and did.
#[derive(Debug, Default)]
pub struct Recovered {
    pub segments: usize,
    pub last_seq: u64,
    /// Bytes of a torn last record removed from the last segment (kept beside it as
    /// `NNNNNNNN.torn`).
    pub torn_bytes: u64,
    /// The last segment was not closed (the agent stopped without closing it): it was
    /// closed now, with a checkpoint.
    pub closed_after_crash: bool,
    pub key_generated: bool,
    pub key_id: String,
    pub rotated_from: Option<String>,
}

/// What a sync started by another thread covers (`Store::sync_point`).
#[derive(Debug, Clone, Copy)]
pub struct SyncPoint {
    segment: u64,
    head: Head,
}

pub struct Store {
    settings: Settings,
    dir: PathBuf,
    _lock: nix::fcntl::Flock<fs::File>,
    signer: SigningKey,
    key_id: String,
    current: Current,
    closed: VecDeque<Closed>,
    /// Head including what is buffered.
    head: Head,
    /// Head of what the file holds.
    written: Head,
    /// Head of what was last synced.
    durable: Head,
    buf: Vec<u8>,
    /// The outcome's text while a record is formatted (kept: one allocation, not one per
    /// record).
    scratch: String,
    index: index::Writer,
    since_checkpoint: u64,
    last_checkpoint: Instant,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    /// Opens (creating) the store: takes its lock, loads or makes the signing key, recovers
    /// the last segment after a crash, and starts a new segment.
    pub fn open(settings: &Settings) -> Result<(Store, Recovered), Error> {
        let dir = settings.dir.clone();
        segment::make_dir(&dir)?;
        let lock_path = dir.join("lock");
        let lock_file = segment::open_append(&lock_path)?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| Error::Locked(dir.display().to_string()))?;
        let key_path = settings.key_path();
        let (signer, key_generated) = key::load_or_generate(&key_path)?;
        let mut rec = Recovered {
            key_generated,
            ..Recovered::default()
        };
        let mut segments = segment::list(&dir)?;
        let mut head = Head {
            seq: 0,
            last: [0; 32],
            len: 0,
            last_request_id: 0,
        };
        let mut next_number = 1;
        let mut to_close = None;
        let mut last_closed = None;
        // The last segment with a record in it: one the crash left empty (created, its first
        // record never written) is removed.
        while let Some((n, path)) = segments.last().cloned() {
            match recover(&dir, n, &path, &mut rec)? {
                None => {
                    fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                    let _ = fs::remove_file(dir.join(segment::idx_name(n)));
                    segments.pop();
                    next_number = n;
                }
                Some(found) => {
                    head = found.head;
                    next_number = n + 1;
                    if found.closed {
                        last_closed = Some((n, path));
                    } else {
                        to_close = Some((n, path, found.first_seq, found.first_prev));
                    }
                    segments.pop();
                    break;
                }
            }
        }
        rec.segments = segments.len() + usize::from(to_close.is_some() || last_closed.is_some());
        let mut closed = VecDeque::new();
        for (n, path) in segments.iter().chain(last_closed.as_ref()) {
            closed.push_back(closed_info(&dir, *n, path)?);
        }
        rec.key_id = key::id(&signer.verifying_key());
        let placeholder = open_current(&dir, next_number, head.seq + 1, head.last)?;
        let mut store = Store {
            settings: settings.clone(),
            dir: dir.clone(),
            _lock: lock,
            key_id: rec.key_id.clone(),
            signer,
            current: placeholder,
            closed,
            head,
            written: head,
            durable: head,
            buf: Vec::with_capacity(1 << 20),
            scratch: String::new(),
            index: index::Writer::default(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
        };
        if let Some((n, path, first_seq, first_prev)) = to_close {
            // The crashed segment gets its closing checkpoint and a fresh index; the new
            // segment (not written yet) waits.
            let new = std::mem::replace(
                &mut store.current,
                reopen_current(&dir, n, &path, first_seq, first_prev)?,
            );
            store.rebuild_index()?;
            store.checkpoint(Reason::Close, None, None);
            store.flush()?;
            store.sync()?;
            let len = fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
            store.closed.push_back(Closed {
                number: n,
                bytes: len + file_len(&dir.join(segment::idx_name(n))),
                modified: SystemTime::now(),
            });
            store.current = new;
            store.current.first_seq = store.head.seq + 1;
            store.current.first_prev = store.head.last;
            store.head.len = 0;
            store.written = store.head;
            store.durable = store.head;
            store.index = index::Writer::default();
            rec.closed_after_crash = true;
        }
        store.start_segment();
        store.flush()?;
        rec.rotated_from = store.rotate_key_if_asked(&key_path)?;
        store.sync()?;
        rec.last_seq = store.head.seq;
        Ok((store, rec))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The id the next request should get: ids keep growing across restarts, so a
    /// request id names one request in the store.
    pub fn next_request_id(&self) -> u64 {
        self.head.last_request_id + 1
    }

    pub fn last_seq(&self) -> u64 {
        self.head.seq
    }

    /// Bytes formatted and not yet written (`flush`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether records are written but not yet synced.
    pub fn unsynced(&self) -> bool {
        self.written.len != self.durable.len
    }

    fn push(&mut self, kind: Kind, body: &[u8]) -> (u64, usize) {
        let offset = self.head.len;
        let before = self.buf.len();
        self.head.seq += 1;
        self.head.last = frame::encode(&mut self.buf, kind, self.head.seq, &self.head.last, body);
        let size = self.buf.len() - before;
        self.head.len += size as u64;
        (offset, size)
    }

    fn start_segment(&mut self) {
        let body = serde_json::to_vec(&Start {
            segment: self.current.number,
            unix_ms: now_ms(),
        })
        .unwrap_or_default();
        self.push(Kind::Start, &body);
    }

    /// Buffers a request's opening (`Kind::Open`) or final (`Kind::Final`) record; `flush`
    /// writes it.
    pub fn append(&mut self, kind: Kind, r: &Record, headers: &[(String, String)]) {
        let offset = self.head.len;
        let before = self.buf.len();
        self.head.seq += 1;
        let scratch = &mut self.scratch;
        self.head.last =
            frame::encode_with(&mut self.buf, kind, self.head.seq, &self.head.last, |out| {
                json::request(out, scratch, r, kind, headers);
            });
        let size = self.buf.len() - before;
        self.head.len += size as u64;
        let at = index::At {
            seq: self.head.seq,
            offset,
            size,
        };
        self.index.add_record(at, kind, r);
        self.head.last_request_id = self.head.last_request_id.max(r.id);
        self.since_checkpoint += 1;
    }

    /// Buffers part of a request's body (`level: full`); not indexed.
    pub fn append_body(&mut self, p: &super::Piece) {
        let entry = BodyEntry::new(p.id, p.dir, p.n, p.at, p.t_us, &p.data);
        self.head.seq += 1;
        let before = self.buf.len();
        self.head.last = frame::encode_with(
            &mut self.buf,
            Kind::Body,
            self.head.seq,
            &self.head.last,
            |out| {
                let _ = serde_json::to_writer(&mut *out, &entry);
            },
        );
        self.head.len += (self.buf.len() - before) as u64;
        self.since_checkpoint += 1;
    }

    /// Buffers a signed checkpoint.
    fn checkpoint(&mut self, reason: Reason, cut: Option<Cut>, previous: Option<PreviousKey>) {
        let public = self.signer.verifying_key();
        let body = checkpoint::Body {
            unix_ms: now_ms(),
            reason,
            last_request_id: self.head.last_request_id,
            key_id: key::id(&public),
            public_key: frame::hex(public.as_bytes()),
            cut,
            previous_key: previous,
        };
        let c: Checkpoint =
            checkpoint::sign(&self.signer, self.head.seq + 1, &self.head.last, body);
        let body = serde_json::to_vec(&c).unwrap_or_default();
        self.push(Kind::Checkpoint, &body);
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
    }

    /// Writes what is buffered. On failure nothing of it stays in the file (it is cut back)
    /// and the chain's head is where it was: the caller may retry the same records.
    pub fn flush(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let wrote = (&*self.current.file).write_all(&self.buf);
        if let Err(e) = wrote {
            self.rollback(self.written);
            return Err(Error::io(&self.current.path, e));
        }
        self.buf.clear();
        self.written = self.head;
        // The index is derived: a failed write of it ends it (`list` reads the rest).
        if !self.index.buf.is_empty() {
            if self.current.idx.write_all(&self.index.buf).is_ok() {
                self.index.written();
            } else {
                self.index.lost();
            }
        }
        Ok(())
    }

    /// Makes what is written durable. On failure the file is cut back to what was durable
    /// before (the kernel may have dropped the unsynced pages): the caller retries.
    pub fn sync(&mut self) -> Result<(), Error> {
        if !self.unsynced() {
            return Ok(());
        }
        if let Err(e) = self.current.file.sync_data() {
            self.rollback(self.durable);
            return Err(Error::io(&self.current.path, e));
        }
        self.durable = self.written;
        Ok(())
    }

    /// What a sync started now on another thread makes durable: the file to fdatasync,
    /// and the point to hand back to `synced` once it succeeded. Only while nothing else
    /// syncs this store (`sync`, `maintain`): the store's thread waits for such a sync to
    /// finish before it does anything else that syncs.
    pub fn sync_point(&self) -> (Arc<fs::File>, SyncPoint) {
        (
            self.current.file.clone(),
            SyncPoint {
                segment: self.current.number,
                head: self.written,
            },
        )
    }

    /// A sync from `sync_point` succeeded: what was written before it is durable.
    pub fn synced(&mut self, p: SyncPoint) {
        if p.segment == self.current.number && p.head.len >= self.durable.len {
            self.durable = p.head;
        }
    }

    /// A sync from `sync_point` failed: the file is cut back to what was durable before it
    /// (the kernel may have dropped the unsynced pages), also dropping what was written
    /// since; the caller writes all of it again.
    pub fn sync_failed(&mut self, e: std::io::Error) -> Error {
        self.rollback(self.durable);
        Error::io(&self.current.path, e)
    }

    fn rollback(&mut self, to: Head) {
        let _ = self.current.file.set_len(to.len);
        self.head = to;
        self.written = to;
        if to.len < self.durable.len {
            self.durable = to;
        }
        self.buf.clear();
        self.index.rollback();
    }

    /// Periodic work after a batch: a checkpoint when one is due, a new segment when this
    /// one is full, retention, a key rotation asked for. Returns whether anything was
    /// written (and synced).
    pub fn maintain(&mut self, force_checkpoint: bool) -> Result<bool, Error> {
        if self.segment_full() {
            self.rotate_segment()?;
        } else if self.checkpoint_due() || force_checkpoint {
            self.checkpoint(Reason::Interval, None, None);
            self.flush()?;
            self.sync()?;
        } else {
            return Ok(false);
        }
        self.housekeeping()?;
        Ok(true)
    }

    pub fn checkpoint_due(&self) -> bool {
        self.since_checkpoint >= self.settings.checkpoint_records
            || (self.since_checkpoint > 0
                && self.last_checkpoint.elapsed() >= self.settings.checkpoint_every)
    }

    pub fn segment_full(&self) -> bool {
        self.head.len >= self.settings.segment_bytes
    }

    /// With group commit: an interval checkpoint written like a record, made durable by
    /// the next group sync with the records around it (no sync of its own). Returns
    /// whether `housekeeping` is now due (it syncs: the caller waits for its own sync
    /// first).
    pub fn checkpoint_written(&mut self) -> Result<bool, Error> {
        self.checkpoint(Reason::Interval, None, None);
        self.flush()?;
        Ok(self.retention_due() || key::next_path(&self.settings.key_path()).exists())
    }

    /// Retention and a key rotation asked for; each syncs what it writes. Checked as often
    /// as checkpoints are written: a stat and a sum, no more.
    pub fn housekeeping(&mut self) -> Result<(), Error> {
        self.retention()?;
        let key_path = self.settings.key_path();
        self.rotate_key_if_asked(&key_path)?;
        Ok(())
    }

    /// Closes the current segment with a checkpoint and opens the next.
    fn rotate_segment(&mut self) -> Result<(), Error> {
        self.checkpoint(Reason::Close, None, None);
        self.flush()?;
        self.sync()?;
        let next = self.current.number + 1;
        let new = open_current(&self.dir, next, self.head.seq + 1, self.head.last)?;
        let old = std::mem::replace(&mut self.current, new);
        self.closed.push_back(Closed {
            number: old.number,
            bytes: self.head.len + file_len(&self.dir.join(segment::idx_name(old.number))),
            modified: SystemTime::now(),
        });
        self.head.len = 0;
        self.written = self.head;
        self.durable = self.head;
        self.index = index::Writer::default();
        self.start_segment();
        self.flush()?;
        self.sync()
    }

    /// Deletes whole oldest segments over the size or age limit, after a signed checkpoint
    /// says where the store now starts.
    fn retention(&mut self) -> Result<bool, Error> {
        let drop = self.over_retention();
        if drop == 0 {
            return Ok(false);
        }
        let cut = match self.closed.get(drop) {
            Some(kept) => {
                let path = self.dir.join(segment::seg_name(kept.number));
                let (first_seq, prev) = first_frame(&path)?;
                Cut {
                    first_segment: kept.number,
                    first_seq,
                    prev: frame::hex(&prev),
                }
            }
            None => Cut {
                first_segment: self.current.number,
                first_seq: self.current.first_seq,
                prev: frame::hex(&self.current.first_prev),
            },
        };
        self.checkpoint(Reason::Retention, Some(cut), None);
        self.flush()?;
        self.sync()?;
        for c in self.closed.drain(..drop) {
            for name in [segment::seg_name(c.number), segment::idx_name(c.number)] {
                let p = self.dir.join(name);
                if let Err(e) = fs::remove_file(&p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %p.display(), error = %e, "audit retention: cannot delete");
                }
            }
            tracing::info!(
                segment = c.number,
                bytes = c.bytes,
                "audit retention deleted a segment"
            );
        }
        Ok(true)
    }

    /// How many of the oldest closed segments are over the size or age limit.
    fn over_retention(&self) -> usize {
        let total: u64 = self.closed.iter().map(|c| c.bytes).sum::<u64>() + self.head.len;
        let oldest_allowed = SystemTime::now()
            .checked_sub(self.settings.retention.max_age)
            .unwrap_or(UNIX_EPOCH);
        let mut drop = 0;
        let mut left = total;
        for c in &self.closed {
            if left > self.settings.retention.max_bytes || c.modified < oldest_allowed {
                drop += 1;
                left -= c.bytes;
            } else {
                break;
            }
        }
        drop
    }

    fn retention_due(&self) -> bool {
        self.over_retention() > 0
    }

    /// A new key waiting at `<key>.next` takes over: a checkpoint signed by it, endorsed by
    /// the current key, then the file replaces the current key.
    fn rotate_key_if_asked(&mut self, key_path: &Path) -> Result<Option<String>, Error> {
        let next_path = key::next_path(key_path);
        if !next_path.exists() {
            return Ok(None);
        }
        let next = key::read(&next_path)?;
        let old = self.signer.verifying_key();
        let previous = PreviousKey {
            key_id: key::id(&old),
            public_key: frame::hex(old.as_bytes()),
            endorsement: key::endorse(&self.signer, &next.verifying_key()),
        };
        self.signer = next;
        self.key_id = key::id(&self.signer.verifying_key());
        self.checkpoint(Reason::Rotation, None, Some(previous.clone()));
        self.flush()?;
        self.sync()?;
        fs::rename(&next_path, key_path).map_err(|e| Error::io(key_path, e))?;
        tracing::info!(from = %previous.key_id, to = %self.key_id, "audit signing key rotated");
        Ok(Some(previous.key_id))
    }

    /// Closes the current segment (a signed checkpoint) at the agent's stop.
    pub fn close(mut self) -> Result<(), Error> {
        self.checkpoint(Reason::Close, None, None);
        self.flush()?;
        self.sync()
    }

    /// Rewrites the current segment's index from its records (after a crash).
    fn rebuild_index(&mut self) -> Result<(), Error> {
        let path = self.current.path.clone();
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let mut ix = index::Writer::default();
        for step in segment::frames(&bytes, 0) {
            let Step::Frame { offset, frame } = step else {
                break;
            };
            if matches!(frame.kind, Kind::Open | Kind::Final)
                && let Ok(e) = serde_json::from_slice::<RequestEntry<'_>>(frame.body)
            {
                let at = index::At {
                    seq: frame.seq,
                    offset,
                    size: frame.size(),
                };
                ix.add_entry(at, frame.kind, &e);
            }
        }
        let idx_path = self.dir.join(segment::idx_name(self.current.number));
        let tmp = idx_path.with_extension("idx.tmp");
        let mut f = fs::OpenOptions::new();
        std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
        let mut f = f
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        f.write_all(&ix.buf).map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &idx_path).map_err(|e| Error::io(&idx_path, e))?;
        ix.written();
        self.current.idx = segment::open_append(&idx_path)?;
        self.index = ix;
        Ok(())
    }
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map_or(0, |m| m.len())
}

fn closed_info(dir: &Path, n: u64, path: &Path) -> Result<Closed, Error> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    Ok(Closed {
        number: n,
        bytes: meta.len() + file_len(&dir.join(segment::idx_name(n))),
        modified: meta.modified().unwrap_or(UNIX_EPOCH),
    })
}

fn open_current(dir: &Path, n: u64, first_seq: u64, first_prev: Hash) -> Result<Current, Error> {
    let path = dir.join(segment::seg_name(n));
    let file = Arc::new(segment::open_append(&path)?);
    // A new segment's directory entry must survive a crash with its first records.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(Current {
        number: n,
        idx: segment::open_append(&dir.join(segment::idx_name(n)))?,
        path,
        file,
        first_seq,
        first_prev,
    })
}

fn reopen_current(
    dir: &Path,
    n: u64,
    path: &Path,
    first_seq: u64,
    first_prev: Hash,
) -> Result<Current, Error> {
    Ok(Current {
        number: n,
        path: path.to_path_buf(),
        file: Arc::new(segment::open_append(path)?),
        idx: segment::open_append(&dir.join(segment::idx_name(n)))?,
        first_seq,
        first_prev,
    })
}

/// The sequence number and predecessor hash of a segment's first record (its header).
fn first_frame(path: &Path) -> Result<(u64, Hash), Error> {
    let mut head = [0u8; frame::HEAD];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| Error::io(path, e))?;
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&head[5..13]);
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&head[13..frame::HEAD]);
    Ok((u64::from_le_bytes(seq), prev))
}

struct Found {
    head: Head,
    closed: bool,
    first_seq: u64,
    first_prev: Hash,
}

/// Reads the last segment: the chain's head, and whether it was closed. A torn last record
/// (bytes that are not a whole frame, with no whole frame after them) is cut off and kept
/// beside the segment; damage followed by whole frames is not a crash, and stops the start.
fn recover(dir: &Path, n: u64, path: &Path, rec: &mut Recovered) -> Result<Option<Found>, Error> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut found = Found {
        head: Head {
            seq: 0,
            last: [0; 32],
            len: 0,
            last_request_id: 0,
        },
        closed: false,
        first_seq: 0,
        first_prev: [0; 32],
    };
    let mut first = true;
    #[derive(serde::Deserialize)]
    struct Id {
        id: u64,
    }
    #[derive(serde::Deserialize)]
    struct Last {
        last_request_id: u64,
        reason: Reason,
    }
    for step in segment::frames(&bytes, 0) {
        match step {
            Step::Frame { offset, frame } => {
                if first {
                    found.first_seq = frame.seq;
                    found.first_prev = frame.prev;
                    first = false;
                }
                found.head.seq = frame.seq;
                found.head.last = frame.hash;
                found.head.len = offset + frame.size() as u64;
                found.closed = false;
                match frame.kind {
                    Kind::Open | Kind::Final => {
                        if let Ok(i) = serde_json::from_slice::<Id>(frame.body) {
                            found.head.last_request_id = found.head.last_request_id.max(i.id);
                        }
                    }
                    Kind::Checkpoint => {
                        if let Ok(c) = serde_json::from_slice::<Last>(frame.body) {
                            found.head.last_request_id =
                                found.head.last_request_id.max(c.last_request_id);
                            found.closed = c.reason == Reason::Close;
                        }
                    }
                    Kind::Start | Kind::Body => {}
                }
            }
            Step::Bad { offset, why } => {
                let at = offset as usize;
                // A crash tears only the last record: whole records after a bad one mean an
                // edit (a middle record's length raised past the end reads as `Short` too),
                // and cutting there would delete them and sign over the cut.
                if let Some(next) = segment::frame_after(&bytes, at) {
                    return Err(Error::Damaged(format!(
                        "audit segment {} is damaged at offset {offset} ({why:?}) and whole records follow at offset {next}: not a crash's torn tail; run `sluice audit verify`, and move the segment out of {} to start a new chain",
                        path.display(),
                        dir.display()
                    )));
                }
                let torn = &bytes[at..];
                let keep = dir.join(format!("{n:08}.torn"));
                if let Ok(mut f) = segment::open_append(&keep) {
                    let _ = f.write_all(torn);
                }
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?;
                f.set_len(offset).map_err(|e| Error::io(path, e))?;
                f.sync_all().map_err(|e| Error::io(path, e))?;
                rec.torn_bytes = torn.len() as u64;
                break;
            }
        }
    }
    // None: an empty segment (the crash came before its first record was complete).
    Ok((!first).then_some(found))
}
