//! The store's sync thread (`durability: group`): the fdatasync of what the store's thread
//! wrote runs here while that thread formats and writes the next batch, so the disk's
//! latency no longer stops the formatting.
//!
//! A job is one fdatasync of the segment being written, and the items whose bytes were
//! written before it started. Only once it returned are they acknowledged (a waiter hears
//! of its record only after the bytes of that record were synced), here, and dropped here
//! (freeing the records costs about as much as formatting them did). A failed sync hands
//! its items back: the store's thread cuts the file back to what was durable and writes
//! them again (`thread.rs`). One job at a time: the channels each hold one.
use std::{
    fs::File,
    sync::{Arc, mpsc},
    thread::JoinHandle,
};

use tokio::sync::Notify;

/// What the sync thread does with the items of a job whose sync succeeded.
pub trait Waiter: Send + 'static {
    /// The item's bytes are durable: answer whoever waits on it.
    fn durable(&mut self);
}

pub struct Job<T, P> {
    pub file: Arc<File>,
    /// What the store makes of the sync once it is known (`Store::synced`).
    pub point: P,
    pub items: Vec<T>,
}

pub struct Done<T, P> {
    pub point: P,
    pub result: std::io::Result<()>,
    /// Empty after a success (its capacity is reused for a later batch); the job's items
    /// after a failure.
    pub items: Vec<T>,
}

pub struct Syncer<T, P> {
    jobs: Option<mpsc::SyncSender<Job<T, P>>>,
    done: mpsc::Receiver<Done<T, P>>,
    /// Notified when a job is done: the store's thread waits on it beside its queue.
    pub wake: Arc<Notify>,
    busy: bool,
    thread: Option<JoinHandle<()>>,
}

impl<T: Waiter, P: Send + 'static> Syncer<T, P> {
    pub fn spawn() -> std::io::Result<Self> {
        let (jobs, job_rx) = mpsc::sync_channel::<Job<T, P>>(1);
        let (done_tx, done) = mpsc::sync_channel(1);
        let wake = Arc::new(Notify::new());
        let notify = wake.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-audsync".into())
            .spawn(move || {
                while let Ok(mut job) = job_rx.recv() {
                    let result = job.file.sync_data();
                    if result.is_ok() {
                        for mut i in job.items.drain(..) {
                            i.durable();
                        }
                    }
                    let d = Done {
                        point: job.point,
                        result,
                        items: job.items,
                    };
                    if done_tx.send(d).is_err() {
                        return;
                    }
                    notify.notify_one();
                }
            })?;
        Ok(Syncer {
            jobs: Some(jobs),
            done,
            wake,
            busy: false,
            thread: Some(thread),
        })
    }

    /// Whether a job runs now.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Starts a job; only when none runs (`busy`), so the send never waits. `Err` gives the
    /// job back when the thread is gone.
    pub fn start(&mut self, job: Job<T, P>) -> Result<(), Job<T, P>> {
        debug_assert!(!self.busy, "one sync at a time");
        let Some(jobs) = &self.jobs else {
            return Err(job);
        };
        match jobs.try_send(job) {
            Ok(()) => {
                self.busy = true;
                Ok(())
            }
            Err(mpsc::TrySendError::Full(j) | mpsc::TrySendError::Disconnected(j)) => Err(j),
        }
    }

    /// The running job's result, if it is done.
    pub fn try_done(&mut self) -> Option<Done<T, P>> {
        if !self.busy {
            return None;
        }
        let d = self.done.try_recv().ok()?;
        self.busy = false;
        Some(d)
    }

    /// Waits for the running job (blocking: this is the store's own thread, never a
    /// runtime worker); `None` when none runs, or the thread is gone.
    pub fn wait(&mut self) -> Option<Done<T, P>> {
        if !self.busy {
            return None;
        }
        self.busy = false;
        self.done.recv().ok()
    }
}

impl<T, P> Drop for Syncer<T, P> {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
