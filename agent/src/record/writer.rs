//! The one task that writes finished records: one structured log line each ("request",
//! formatted by `line.rs`), and, when the recording store is on, the record to the store's
//! thread (`audit`).
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::Record;
use crate::logging::Format;

/// Records taken from the queue at once.
const BATCH: usize = 256;
/// How long records gather between two batches while they keep coming. Waking this task
/// is a cross-thread wakeup (an eventfd write on the request's thread, and a context switch
/// on a CPU the client and server share); while it sleeps on its own clock, senders wake
/// nobody. A record is written at most this much later, and none is lost: senders hold a
/// reserved place in the queue.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);
/// How long the task keeps its own clock after the last record before it waits for the
/// next one instead (an idle agent does not wake). Requests that come at least this often
/// never wake it. Over a floor round (the bench's `--floor-only`, each path's requests some
/// milliseconds apart) this took the agent's context switches from 32,353 to 30,287 and its
/// `write` calls from 3,132 to 1,338, for the same requests.
const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

pub async fn run(mut rx: mpsc::Receiver<Record>, audit: Option<crate::audit::Handle>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut lines = Vec::with_capacity(64 * 1024);
    // Waits (registered with the queue, so the next sender wakes it) only when quiet.
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Time slept since a batch last held a record.
        let mut quiet = std::time::Duration::ZERO;
        loop {
            let full = batch.len() == BATCH;
            if !batch.is_empty() {
                write(&mut batch, &mut lines, &audit).await;
                quiet = std::time::Duration::ZERO;
            }
            if full {
                // More are waiting: take them now, but let the runtime's other tasks (the
                // admin socket, reloads, the drain) run between batches of a long backlog.
                tokio::task::yield_now().await;
            } else if quiet >= LINGER {
                break;
            } else {
                tokio::time::sleep(GATHER).await;
                quiet += GATHER;
            }
            if !take_ready(&mut rx, &mut batch) {
                return;
            }
        }
    }
}

/// Takes what the queue holds, up to `BATCH`, without waiting (and so without asking a
/// sender to wake this task). `false` once every sender is gone.
fn take_ready(rx: &mut mpsc::Receiver<Record>, batch: &mut Vec<Record>) -> bool {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            // What was taken is written before the task ends.
            Err(mpsc::error::TryRecvError::Disconnected) => return !batch.is_empty(),
        }
    }
    true
}

/// One batch: its log lines, its metrics, and its records to the store.
async fn write(batch: &mut Vec<Record>, lines: &mut Vec<u8>, audit: &Option<crate::audit::Handle>) {
    let format = enabled().then(crate::logging::format);
    let now = SystemTime::now();
    for r in batch.iter() {
        match format {
            Some(Format::Json) => super::line::json(lines, r, now),
            Some(Format::Text) => super::line::text(lines, r, now),
            None => {}
        }
        count(r);
    }
    crate::logging::write_lines(lines);
    lines.clear();
    match audit {
        // The store's thread takes the batch; a full store queue makes this task wait,
        // and so the record queue behind it (never a dropped record).
        Some(a) => {
            let mut b = std::mem::replace(batch, Vec::with_capacity(BATCH));
            b.retain(|r| !r.unaudited);
            a.finals(b).await;
        }
        None => batch.clear(),
    }
}

/// Whether the log level lets records through: they are `info` events of this module, and
/// `SLUICE_LOG` filters them as it filters any other event.
fn enabled() -> bool {
    tracing::enabled!(tracing::Level::INFO)
}

/// Counted here, off the request path, from the same record the log line shows.
fn count(r: &Record) {
    if let Some(m) = crate::metrics::get() {
        m.request(&crate::metrics::RequestSample {
            target: &r.target,
            server: r.server.name(),
            operation: r.operation.as_ref().map_or("none", |o| o.route),
            decision: r.action(),
            rule: r.deciding_rule(),
            bytes_up: r.request_bytes,
            bytes_down: r.response_bytes,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        adapter::Server,
        admin::Table,
        record::{Outcome, Recorder},
        workload::Workload,
    };

    /// Finished records, as the pipeline sends them.
    async fn records(n: usize) -> Vec<Record> {
        let (rec, mut rx) = Recorder::new(Arc::new(Table::default()), CancellationToken::new());
        let w = Arc::new(Workload::described(1000, 1000, "curl".into(), None));
        for _ in 0..n {
            let mut g = rec
                .start("t", Server::Ollama, &w, "POST", "/api/chat")
                .await;
            g.finish(Outcome::Complete);
        }
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r);
        }
        out
    }

    /// While records keep coming the writer takes them on its own clock, so a sender wakes
    /// nobody; once quiet for `LINGER` it waits for the next, which wakes it at once; with
    /// every sender gone it ends, having taken every record.
    #[tokio::test(start_paused = true)]
    async fn records_are_taken_on_the_writers_clock_while_they_come_and_it_ends_with_its_senders() {
        let mut recs = records(4).await;
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(run(rx, None));
        let settle = || async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        };
        // Waiting: the first record wakes it.
        tx.send(recs.remove(0)).await.expect("open");
        settle().await;
        assert_eq!(tx.capacity(), 16, "taken at once");
        // Lingering on its clock: the next record waits for the tick, nobody is woken.
        tokio::time::advance(std::time::Duration::from_millis(3)).await;
        tx.send(recs.remove(0)).await.expect("open");
        settle().await;
        assert_eq!(tx.capacity(), 15, "left for the next tick");
        tokio::time::advance(GATHER).await;
        settle().await;
        assert_eq!(tx.capacity(), 16, "taken at the tick");
        // A tick with nothing to take: still on its clock, so still nobody is woken.
        tokio::time::advance(GATHER).await;
        settle().await;
        tx.send(recs.remove(0)).await.expect("open");
        settle().await;
        assert_eq!(
            tx.capacity(),
            15,
            "left for the next tick after a quiet one"
        );
        tokio::time::advance(GATHER).await;
        settle().await;
        assert_eq!(tx.capacity(), 16, "taken at that tick");
        // Quiet past LINGER: waiting again, so a record is taken at once.
        for _ in 0..(LINGER.as_millis() / GATHER.as_millis() + 2) {
            tokio::time::advance(GATHER).await;
            settle().await;
        }
        tx.send(recs.remove(0)).await.expect("open");
        settle().await;
        assert_eq!(tx.capacity(), 16, "taken at once after the quiet");
        drop(tx);
        tokio::time::advance(GATHER).await;
        tokio::time::timeout(LINGER, task)
            .await
            .expect("ends with its senders")
            .expect("no panic");
    }

    /// A backlog is taken a batch at a time, with the runtime's other tasks run between
    /// batches (they share its thread: the admin socket, reloads, the drain).
    #[tokio::test(start_paused = true)]
    async fn a_backlog_leaves_room_for_the_runtimes_other_tasks() {
        let recs = records(4 * BATCH).await;
        let (tx, rx) = mpsc::channel(4 * BATCH);
        for r in recs {
            tx.send(r).await.expect("open");
        }
        let writer = tokio::spawn(run(rx, None));
        let seen = tokio::spawn({
            let tx = tx.clone();
            async move { tx.capacity() }
        });
        let free = seen.await.expect("ran");
        assert!(
            free < 4 * BATCH,
            "another task ran before the backlog was gone ({free} free)"
        );
        drop(tx);
        for _ in 0..4 {
            tokio::time::advance(GATHER).await;
        }
        tokio::time::timeout(LINGER, writer)
            .await
            .expect("ends with its senders")
            .expect("no panic");
    }
}
