//! The one task that writes finished records: one structured log line each ("request",
//! formatted by `line.rs`), and, when the recording store is on, the record to the store's
//! thread (`audit`).
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::Record;
use crate::logging::Format;

/// Records taken from the queue at once.
const BATCH: usize = 256;
/// How long records gather between two batches. Waking this task is a cross-thread wakeup
/// for every request that finishes while it waits (a syscall and an interrupt on the
/// request's own thread); while it sleeps, senders wake nobody. A record is written at most
/// this much later, and no record is lost: senders hold a reserved place in the queue.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

pub async fn run(mut rx: mpsc::Receiver<Record>, audit: Option<crate::audit::Handle>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut lines = Vec::with_capacity(64 * 1024);
    loop {
        let n = rx.recv_many(&mut batch, BATCH).await;
        if n == 0 {
            return;
        }
        let format = enabled().then(crate::logging::format);
        let now = SystemTime::now();
        for r in &batch {
            match format {
                Some(Format::Json) => super::line::json(&mut lines, r, now),
                Some(Format::Text) => super::line::text(&mut lines, r, now),
                None => {}
            }
            count(r);
        }
        crate::logging::write_lines(&lines);
        lines.clear();
        match &audit {
            // The store's thread takes the batch; a full store queue makes this task wait,
            // and so the record queue behind it (never a dropped record).
            Some(a) => {
                let mut b = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                b.retain(|r| !r.unaudited);
                a.finals(b).await;
            }
            None => batch.clear(),
        }
        // A full batch means more are waiting: take them now.
        if n < BATCH {
            tokio::time::sleep(GATHER).await;
        }
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
