//! The one task that writes finished records. For now a record is one structured log line
//! ("request"); the recording store (tamper-evident, replayable) will take this task's place
//! without the request path noticing.
use tokio::sync::mpsc;

use super::Record;

/// Records taken from the queue at once.
const BATCH: usize = 256;
/// How long records gather between two batches. Waking this task is a cross-thread wakeup
/// for every request that finishes while it waits (a syscall and an interrupt on the
/// request's own thread); while it sleeps, senders wake nobody. A record is written at most
/// this much later, and no record is lost: senders hold a reserved place in the queue.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

pub async fn run(mut rx: mpsc::Receiver<Record>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = rx.recv_many(&mut batch, BATCH).await;
        if n == 0 {
            return;
        }
        crate::logging::batched(|| {
            for r in batch.drain(..) {
                record(&r);
            }
        });
        // A full batch means more are waiting: take them now.
        if n < BATCH {
            tokio::time::sleep(GATHER).await;
        }
    }
}

fn record(r: &Record) {
    write(r);
    // Counted here, off the request path, from the same record the log line shows.
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

fn write(r: &Record) {
    let op = r.operation.as_ref();
    let w = &r.workload;
    tracing::info!(
        request_id = r.id, unix_ms = r.unix_ms,
        target_name = %r.target, pid = w.pid, tgid = w.tgid, uid = w.uid, gid = w.gid,
        cgroup_id = w.cgroup_id, comm = %w.comm, exe = w.exe.as_deref().unwrap_or("?"),
        cgroup = w.cgroup.as_deref().unwrap_or("?"),
        container_id = w.container.as_ref().map_or("-", |c| c.id.as_str()),
        container_runtime = w.container.as_ref().and_then(|c| c.runtime).map_or("-", |r| r.name()),
        pod_uid = w.pod_uid.as_deref().unwrap_or("-"),
        method = %r.method, path = %r.path,
        operation = %op.map_or("-".to_string(), |o| o.class.to_string()),
        route = op.map_or("-", |o| o.route),
        model = op.and_then(|o| o.model.as_deref()).unwrap_or("-"),
        streaming = op.is_some_and(|o| o.streaming),
        decision = r.action(), rules = %r.rules(),
        status = r.status.map_or(0, |s| s.as_u16()),
        request_bytes = r.request_bytes, response_bytes = r.response_bytes, outcome = %r.outcome,
        headers_ms = r.headers_ms, duration_ms = r.duration_ms,
        "request"
    );
}
