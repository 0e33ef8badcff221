//! The one task that writes finished records. For now a record is one structured log line
//! ("request"); the recording store (tamper-evident, replayable) will take this task's place
//! without the request path noticing.
use tokio::sync::mpsc;

use super::Record;

pub async fn run(mut rx: mpsc::Receiver<Record>) {
    while let Some(r) = rx.recv().await {
        write(&r);
        // Counted here, off the request path, from the same record the log line shows.
        if let Some(m) = crate::metrics::get() {
            m.request(&crate::metrics::RequestSample {
                target: &r.target,
                server: r.server.name(),
                operation: r.operation.as_ref().map_or("none", |o| o.route),
                decision: r.action(),
                rule: r.rules(),
                bytes_up: r.request_bytes,
                bytes_down: r.response_bytes,
            });
        }
    }
}

fn write(r: &Record) {
    let op = r.operation.as_ref();
    let w = &r.workload;
    tracing::info!(
        request_id = r.id, unix_ms = r.unix_ms,
        target_name = %r.target, pid = w.pid, tgid = w.tgid, uid = w.uid, gid = w.gid,
        cgroup_id = w.cgroup_id, comm = %w.comm, exe = w.exe.as_deref().unwrap_or("?"),
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
