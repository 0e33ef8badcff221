//! The store's own thread. Requests and the record writer hand it records through a bounded
//! channel and never touch a file: a write or an fsync never runs on a runtime worker.
//!
//! Group commit: the thread writes everything queued with one `write`, then syncs once for
//! all of it: at once when a request waits on its opening record, else once
//! `group_commit_ms` has passed since the first unsynced write. The sync runs on the sync
//! thread (`sync.rs`), which acknowledges the records it covered once it returned, while
//! this thread formats and writes what arrived meanwhile; those go out with the next sync.
//! One sync at a time, and what waits for it is bounded (`max_backlog` records,
//! `max_backlog_bytes` of bodies): past that this thread waits for the sync too. Periodic
//! work that syncs on its own (a new segment, retention, a key rotation, a probe after a
//! failure) first waits for the running sync and syncs the rest here; an interval
//! checkpoint is written like a record and synced with the group. `Record` durability
//! syncs each record here before the next is written.
//!
//! A failed write or sync leaves the file as it was before it (`Store::flush`/`sync`,
//! `Store::sync_failed`: after a failed sync also without what was written while it ran),
//! keeps the records for a retry (bounded), marks the store failed (logged once per
//! change), and answers waiting requests at once: with `required`, they are refused.
use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

use super::{
    Durability, Error, Level, Recovered, Settings, Store,
    entry::{Direction, Kind},
    store::SyncPoint,
    sync::{self, Syncer},
};
use crate::record::Record;

/// Records handled per round.
const BATCH: usize = 4096;
/// Bytes formatted per `write` (see `write_all`).
const WRITE_BYTES: usize = 256 * 1024;
/// A failed store is retried this often.
const RETRY: Duration = Duration::from_secs(1);

type Ack = oneshot::Sender<Result<(), String>>;

/// Why a request's record cannot be written, as the refusal says it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Part of a body on its way to the store (`level: full`); `data` shares the buffer the
/// client or upstream got (no copy until it is written).
#[derive(Debug, Clone)]
pub struct Piece {
    pub id: u64,
    pub dir: Direction,
    pub n: u64,
    pub at: u64,
    pub t_us: u64,
    pub data: bytes::Bytes,
}

enum Msg {
    Open(Box<Record>, Vec<(String, String)>, Option<Ack>),
    Finals(Vec<Record>),
    Body(Piece),
    Flush(Ack),
}

// Final records are nearly every item: boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Item {
    Open(Box<Record>, Vec<(String, String)>, Option<Ack>),
    Final(Record),
    Body(Piece),
    Flush(Option<Ack>),
}

impl Item {
    /// Body bytes it holds, counted against `max_backlog_bytes` until written.
    fn body_bytes(&self) -> u64 {
        match self {
            Item::Body(p) => p.data.len() as u64,
            _ => 0,
        }
    }

    fn waits(&self) -> bool {
        matches!(self, Item::Open(_, _, Some(_)) | Item::Flush(Some(_)))
    }

    fn answer(&mut self, r: Result<(), String>) {
        let ack = match self {
            Item::Open(_, _, ack) | Item::Flush(ack) => ack.take(),
            Item::Final(_) | Item::Body(_) => None,
        };
        if let Some(a) = ack {
            let _ = a.send(r);
        }
    }
}

impl sync::Waiter for Item {
    fn durable(&mut self) {
        self.answer(Ok(()));
    }
}

#[derive(Default)]
struct Health {
    failed: AtomicBool,
    reason: Mutex<String>,
    /// Records sent and not yet handled by the thread.
    backlog: AtomicUsize,
    /// Body bytes sent and not yet written.
    body_bytes: AtomicU64,
}

impl Health {
    fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn fail(&self, e: &Error) {
        let why = e.to_string();
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %why, "audit store cannot write; records are kept and retried");
        }
        if let Ok(mut r) = self.reason.lock() {
            *r = why;
        }
    }

    fn ok(&self) {
        if self.failed.swap(false, Ordering::AcqRel) {
            tracing::warn!("audit store is writing again");
        }
    }
}

/// The request path's side of the store.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Msg>,
    health: Arc<Health>,
    required: bool,
    /// Whether a request waits for its opening record (any durability but `none`).
    wait: bool,
    max_backlog: usize,
    level: Level,
    max_body_bytes: u64,
    max_backlog_bytes: u64,
}

impl Handle {
    pub fn required(&self) -> bool {
        self.required
    }

    /// The store's level: `Full` records bodies.
    pub fn level(&self) -> Level {
        self.level
    }

    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes
    }

    /// Queues part of a body, without waiting (it is called from a response body's poll):
    /// refused when the store has failed, or its backlog of records or body bytes is over
    /// its bound. The caller decides what a refusal means (`Tap`).
    pub fn body(&self, p: Piece) -> Result<(), Unavailable> {
        if self.health.failed.load(Ordering::Acquire) {
            return Err(Unavailable(self.health.reason()));
        }
        if self.health.backlog.load(Ordering::Relaxed) >= self.max_backlog {
            return Err(Unavailable(format!(
                "the audit writer is {} records behind (max_backlog)",
                self.max_backlog
            )));
        }
        let len = p.data.len() as u64;
        let queued = self.health.body_bytes.fetch_add(len, Ordering::Relaxed);
        if queued + len > self.max_backlog_bytes {
            self.health.body_bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(Unavailable(format!(
                "the audit writer is {queued} body bytes behind (max_backlog_bytes)"
            )));
        }
        self.health.backlog.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(Msg::Body(p)) {
            self.health.body_bytes.fetch_sub(len, Ordering::Relaxed);
            self.health.backlog.fetch_sub(1, Ordering::Relaxed);
            return Err(Unavailable(match e {
                mpsc::error::TrySendError::Full(_) => "the audit writer's queue is full".into(),
                mpsc::error::TrySendError::Closed(_) => "the audit writer has stopped".into(),
            }));
        }
        Ok(())
    }

    /// With `required`: why a new request must be refused now (the store failed, or its
    /// backlog is over the bound), before any of it is read.
    pub fn refusal(&self) -> Option<Unavailable> {
        if !self.required {
            return None;
        }
        if self.health.failed.load(Ordering::Acquire) {
            return Some(Unavailable(self.health.reason()));
        }
        if self.health.backlog.load(Ordering::Relaxed) >= self.max_backlog {
            return Some(Unavailable(format!(
                "the audit writer is {} records behind (max_backlog)",
                self.max_backlog
            )));
        }
        None
    }

    /// Records a request's opening record and waits until it is durable at the configured
    /// level. An error means it was not (the caller refuses the request if recording is
    /// required); without `required` the record is still kept for a retry.
    pub async fn open(&self, r: Record, headers: Vec<(String, String)>) -> Result<(), Unavailable> {
        self.begin(r, headers).await?.durable().await
    }

    /// Hands a request's opening record to the store without waiting for it to be durable:
    /// the request goes upstream while the store writes and syncs, and [`Opened::durable`]
    /// is awaited before its response (or refusal) is released. An error here (the store
    /// has failed, its queue is full) comes before anything was sent.
    pub async fn begin(
        &self,
        r: Record,
        headers: Vec<(String, String)>,
    ) -> Result<Opened, Unavailable> {
        if let Some(why) = self.refusal() {
            return Err(why);
        }
        let (ack, done) = if self.wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.health.backlog.fetch_add(1, Ordering::Relaxed);
        let msg = Msg::Open(Box::new(r), headers, ack);
        let sent = if self.required {
            self.tx.try_send(msg).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    Unavailable("the audit writer's queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    Unavailable("the audit writer has stopped".into())
                }
            })
        } else {
            self.tx
                .send(msg)
                .await
                .map_err(|_| Unavailable("the audit writer has stopped".into()))
        };
        if let Err(e) = sent {
            self.health.backlog.fetch_sub(1, Ordering::Relaxed);
            return Err(e);
        }
        Ok(Opened(done))
    }

    /// Hands finished records to the store (waits for room: the record queue behind it
    /// then makes new requests wait, as it does for the log writer).
    pub async fn finals(&self, batch: Vec<Record>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        self.health.backlog.fetch_add(n, Ordering::Relaxed);
        if self.tx.send(Msg::Finals(batch)).await.is_err() {
            self.health.backlog.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Waits until everything sent before is written and synced (whatever the durability).
    pub async fn flush(&self) -> Result<(), Unavailable> {
        let (tx, rx) = oneshot::channel();
        // Counted like a record: the thread takes one off for every item it handles.
        self.health.backlog.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Msg::Flush(tx)).await.is_err() {
            self.health.backlog.fetch_sub(1, Ordering::Relaxed);
            return Err(Unavailable("the audit writer has stopped".into()));
        }
        rx.await
            .map_err(|_| Unavailable("the audit writer has stopped".into()))?
            .map_err(Unavailable)
    }
}

/// An opening record handed to the store; `durable` says when it is written and synced at
/// the configured durability.
#[derive(Debug)]
#[must_use = "a response must not be released before its opening record is durable"]
pub struct Opened(Option<oneshot::Receiver<Result<(), String>>>);

impl Opened {
    /// Waits until the record is durable (at once with `durability: none`).
    pub async fn durable(self) -> Result<(), Unavailable> {
        match self.0 {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err(Unavailable(why)),
                Err(_) => Err(Unavailable("the audit writer has stopped".into())),
            },
        }
    }
}

/// Starts the store's thread on an opened store. The thread closes the store (a signed
/// checkpoint) once every `Handle` is dropped; join it at the agent's stop.
pub fn spawn(
    store: Store,
    settings: &Settings,
) -> std::io::Result<(Handle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(settings.max_backlog);
    let health = Arc::new(Health::default());
    let handle = Handle {
        tx,
        health: health.clone(),
        required: settings.required,
        wait: settings.durability != Durability::None,
        max_backlog: settings.max_backlog,
        level: settings.level,
        max_body_bytes: settings.max_body_bytes,
        max_backlog_bytes: settings.max_backlog_bytes,
    };
    let settings = settings.clone();
    let thread = std::thread::Builder::new()
        .name("sluice-audit".into())
        .spawn(move || run(store, rx, health, settings))?;
    Ok((handle, thread))
}

/// Opens the store (blocking: call it off the runtime's workers) and starts its thread.
pub fn start(
    settings: &Settings,
) -> Result<(Handle, std::thread::JoinHandle<()>, Recovered, u64), Error> {
    let (store, rec) = Store::open(settings)?;
    let next_id = store.next_request_id();
    let (handle, thread) = spawn(store, settings).map_err(|e| Error::io(&settings.dir, e))?;
    Ok((handle, thread, rec, next_id))
}

struct Writer {
    store: Store,
    health: Arc<Health>,
    settings: Settings,
    /// Not yet written (new, or kept after a failure).
    pending: VecDeque<Item>,
    /// Written, not yet synced (nor handed to the sync thread).
    unsynced: Vec<Item>,
    unsynced_since: Option<Instant>,
    /// Body bytes `unsynced` holds (bounded by `max_backlog_bytes`).
    unsynced_bytes: u64,
    /// `durability: group`: the sync thread.
    syncer: Option<Syncer<Item, SyncPoint>>,
    /// A vector the sync thread emptied, for the next batch.
    spare: Vec<Item>,
}

fn run(store: Store, mut rx: mpsc::Receiver<Msg>, health: Arc<Health>, settings: Settings) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "audit thread: cannot build its timer");
            return;
        }
    };
    let syncer = if settings.durability == Durability::Group {
        match Syncer::spawn() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "audit thread: cannot start its sync thread");
                return;
            }
        }
    } else {
        None
    };
    let synced = syncer.as_ref().map(|s| s.wake.clone());
    let mut w = Writer {
        store,
        health,
        settings,
        pending: VecDeque::new(),
        unsynced: Vec::new(),
        unsynced_since: None,
        unsynced_bytes: 0,
        syncer,
        spare: Vec::new(),
    };
    rt.block_on(async move {
        loop {
            let wait = w.next_wake();
            let mut closing = false;
            let busy = w.syncer.as_ref().is_some_and(Syncer::busy);
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => w.take(m),
                    None => closing = true,
                },
                () = async {
                    match &synced {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                }, if busy => {}
                () = tokio::time::sleep(wait) => {}
            }
            while w.pending.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => w.take(m),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closing = true;
                        break;
                    }
                }
            }
            w.round(closing);
            if closing {
                w.close();
                return;
            }
        }
    });
}

impl Writer {
    fn take(&mut self, m: Msg) {
        match m {
            Msg::Open(r, h, ack) => self.pending.push_back(Item::Open(r, h, ack)),
            Msg::Finals(v) => self.pending.extend(v.into_iter().map(Item::Final)),
            Msg::Body(p) => self.pending.push_back(Item::Body(p)),
            Msg::Flush(ack) => self.pending.push_back(Item::Flush(Some(ack))),
        }
    }

    fn next_wake(&self) -> Duration {
        if self.health.failed.load(Ordering::Acquire) {
            return RETRY;
        }
        // While a sync runs, the next cannot start: its end wakes the thread (`Syncer::wake`).
        let busy = self.syncer.as_ref().is_some_and(Syncer::busy);
        if let Some(t) = self.unsynced_since
            && !busy
        {
            return self.settings.group_commit.saturating_sub(t.elapsed());
        }
        self.settings.checkpoint_every.min(RETRY)
    }

    /// Writes what is pending, syncs when due, and does the store's periodic work.
    fn round(&mut self, closing: bool) {
        if let Err(e) = self.collect() {
            self.failed(&e);
            return;
        }
        let handled = self.pending.len();
        let wrote = match self.settings.durability {
            Durability::Record => self.write_each(),
            Durability::Group | Durability::None => self.write_all(),
        };
        // Retried items stay counted until they are written.
        let left = self.pending.len();
        self.health
            .backlog
            .fetch_sub(handled.saturating_sub(left), Ordering::Relaxed);
        if let Err(e) = wrote {
            self.failed(&e);
            // What was written before the failure still goes out: while the disk stays
            // full every round fails here, and requests waiting on those records would
            // wait for room (retention, which could make it, runs only after a write).
            let rest = match self.settings.durability {
                Durability::None => self.settle_unsynced(),
                Durability::Record => Ok(()),
                Durability::Group => self.start_sync(),
            };
            if let Err(e) = rest {
                self.failed(&e);
            }
            return;
        }
        let done = match self.settings.durability {
            Durability::None => self.settle_unsynced().and_then(|()| self.maintain()),
            Durability::Record => self.maintain(),
            Durability::Group => self.group(closing),
        };
        if let Err(e) = done {
            self.failed(&e);
        }
    }

    /// `durability: group`: the sync when it is due (on the sync thread), then periodic work.
    fn group(&mut self, closing: bool) -> Result<(), Error> {
        if closing {
            return self.drain();
        }
        let due = self.unsynced.iter().any(Item::waits)
            || self
                .unsynced_since
                .is_some_and(|t| t.elapsed() >= self.settings.group_commit);
        // What waits for the running sync stays bounded: past the bound, wait for it.
        if self.unsynced.len() >= self.settings.max_backlog
            || self.unsynced_bytes >= self.settings.max_backlog_bytes
        {
            self.wait_sync()?;
            self.start_sync()?;
        } else if due {
            self.start_sync()?;
        }
        let probe = self.health.failed.load(Ordering::Acquire);
        if probe || self.store.segment_full() {
            self.drain()?;
            self.store.maintain(probe)?;
            self.health.ok();
        } else if self.store.checkpoint_due() {
            let housekeeping = self.store.checkpoint_written()?;
            self.unsynced_since.get_or_insert_with(Instant::now);
            if housekeeping {
                self.drain()?;
                self.store.housekeeping()?;
            }
        }
        Ok(())
    }

    /// Hands what is written to the sync thread, unless a sync runs (it starts once that
    /// one is done).
    fn start_sync(&mut self) -> Result<(), Error> {
        let Some(syncer) = &mut self.syncer else {
            return self.sync();
        };
        if syncer.busy() || (self.unsynced.is_empty() && !self.store.unsynced()) {
            return Ok(());
        }
        let (file, point) = self.store.sync_point();
        let items = std::mem::replace(&mut self.unsynced, std::mem::take(&mut self.spare));
        self.unsynced_since = None;
        self.unsynced_bytes = 0;
        if let Err(job) = syncer.start(sync::Job { file, point, items }) {
            // The sync thread is gone: sync here.
            self.unsynced = job.items;
            self.syncer = None;
            return self.sync();
        }
        Ok(())
    }

    /// Takes the running sync's result if it is done.
    fn collect(&mut self) -> Result<(), Error> {
        match self.syncer.as_mut().and_then(Syncer::try_done) {
            Some(d) => self.sync_done(d),
            None => Ok(()),
        }
    }

    /// Waits for the running sync.
    fn wait_sync(&mut self) -> Result<(), Error> {
        match self.syncer.as_mut().and_then(Syncer::wait) {
            Some(d) => self.sync_done(d),
            None => Ok(()),
        }
    }

    /// Everything written made durable: the running sync, then the rest here.
    fn drain(&mut self) -> Result<(), Error> {
        self.wait_sync()?;
        self.sync()
    }

    fn sync_done(&mut self, d: sync::Done<Item, SyncPoint>) -> Result<(), Error> {
        match d.result {
            Ok(()) => {
                self.store.synced(d.point);
                self.spare = d.items;
                Ok(())
            }
            Err(e) => {
                // The file is cut back to what was durable before that sync: its records,
                // then those written while it ran, are written again, in order.
                let e = self.store.sync_failed(e);
                let mut back = d.items;
                back.append(&mut self.unsynced);
                self.requeue(back);
                Err(e)
            }
        }
    }

    /// Written items whose bytes the file lost: pending again, first, and counted again
    /// (records in the backlog, bodies in the bytes behind) until written again.
    fn requeue(&mut self, back: Vec<Item>) {
        let bytes: u64 = back.iter().map(Item::body_bytes).sum();
        self.health.body_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.health.backlog.fetch_add(back.len(), Ordering::Relaxed);
        for i in back.into_iter().rev() {
            self.pending.push_front(i);
        }
        self.unsynced_since = None;
        self.unsynced_bytes = 0;
    }

    /// `none` and `record` durability: periodic work once nothing waits for a sync.
    fn maintain(&mut self) -> Result<(), Error> {
        if self.unsynced.is_empty() {
            let probe = self.health.failed.load(Ordering::Acquire);
            self.store.maintain(probe)?;
            self.health.ok();
        }
        Ok(())
    }

    /// Writes what is pending, a slice at a time: one `write` per `WRITE_BYTES` formatted,
    /// while they are still in the CPU's cache (a whole batch is not, and the kernel's copy
    /// then reads it back from memory).
    fn write_all(&mut self) -> Result<(), Error> {
        while !self.pending.is_empty() {
            let mut n = 0;
            let mut bytes = 0;
            for i in &self.pending {
                append(&mut self.store, i);
                n += 1;
                bytes += i.body_bytes();
                if self.store.buffered() >= WRITE_BYTES {
                    break;
                }
            }
            // On failure the file and the chain are as they were before this slice: it
            // stays pending, for a retry.
            self.store.flush()?;
            self.written_bytes(bytes);
            self.unsynced_bytes += bytes;
            self.health.ok();
            self.unsynced_since.get_or_insert_with(Instant::now);
            self.unsynced.extend(self.pending.drain(..n));
        }
        Ok(())
    }

    /// `Record` durability: every record synced on its own before the next is written.
    fn write_each(&mut self) -> Result<(), Error> {
        while let Some(item) = self.pending.pop_front() {
            append(&mut self.store, &item);
            let done = self.store.flush().and_then(|()| self.store.sync());
            if let Err(e) = done {
                self.pending.push_front(item);
                return Err(e);
            }
            self.written_bytes(item.body_bytes());
            self.unsynced.push(item);
            self.acknowledge();
        }
        self.health.ok();
        Ok(())
    }

    fn written_bytes(&self, n: u64) {
        if n > 0 {
            self.health.body_bytes.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Syncs here what is written (no sync may run on the sync thread).
    fn sync(&mut self) -> Result<(), Error> {
        if let Err(e) = self.store.sync() {
            // The store cut the file back to what was durable: write these again.
            let back = std::mem::take(&mut self.unsynced);
            self.requeue(back);
            return Err(e);
        }
        self.acknowledge();
        Ok(())
    }

    /// `durability: none`: what was written is answered at once, but a `flush` still means
    /// synced: one fdatasync when something waits on it (with `none` only a flush does; an
    /// opening record carries no acknowledgement).
    fn settle_unsynced(&mut self) -> Result<(), Error> {
        if self.unsynced.iter().any(Item::waits) {
            self.sync()
        } else {
            self.acknowledge();
            Ok(())
        }
    }

    fn acknowledge(&mut self) {
        for mut i in self.unsynced.drain(..) {
            i.answer(Ok(()));
        }
        self.unsynced_since = None;
        self.unsynced_bytes = 0;
    }

    /// After a failure: waiting requests are answered now, and what is kept for a retry is
    /// bounded (the oldest records beyond it are dropped, and counted in the log).
    fn failed(&mut self, e: &Error) {
        self.health.fail(e);
        let why = format!("the audit store cannot write: {e}");
        for i in &mut self.pending {
            i.answer(Err(why.clone()));
        }
        let bound = self.settings.max_backlog;
        if self.pending.len() > bound {
            let n = self.pending.len() - bound;
            let bytes: u64 = self.pending.drain(..n).map(|i| i.body_bytes()).sum();
            self.written_bytes(bytes);
            self.health.backlog.fetch_sub(n, Ordering::Relaxed);
            tracing::error!(
                dropped = n,
                "audit store: records dropped, the retry buffer is full"
            );
        }
    }

    fn close(mut self) {
        // The sync thread stops (joined) before the closing checkpoint is written.
        if let Err(e) = self.wait_sync() {
            self.failed(&e);
        }
        self.syncer = None;
        if !self.pending.is_empty() {
            tracing::error!(
                records = self.pending.len(),
                "audit store stopped with records it could not write"
            );
        }
        if let Err(e) = self.store.close() {
            tracing::error!(error = %e, "audit store: closing checkpoint not written");
        }
    }
}

fn append(store: &mut Store, item: &Item) {
    match item {
        Item::Open(r, h, _) => store.append(Kind::Open, r, h),
        Item::Final(r) => store.append(Kind::Final, r, &r.response_headers),
        Item::Body(p) => store.append_body(p),
        Item::Flush(_) => {}
    }
}

#[cfg(test)]
#[path = "thread_tests.rs"]
mod tests;
