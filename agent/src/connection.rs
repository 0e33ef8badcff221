//! Serving one intercepted connection: attribute it (who, where to), then either relay bytes
//! at layer 4 (`protocol: tcp`) or hand it to the HTTP pipeline (`protocol: http`).
use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{ConnInfo, Table},
    config::{Protocol, Target},
    forward, http,
    intercept::{Maps, orig_dst},
    policy, upstream,
    upstream::Upstreams,
    workload::Workload,
};

/// Shared state every connection task needs.
pub struct Ctx {
    pub maps: Arc<Maps>,
    pub upstreams: Upstreams,
    pub table: Arc<Table>,
    pub targets: Vec<Target>,
    pub policy: Arc<policy::Store>,
    pub http: upstream::http::Client,
    pub max_request_body: usize,
    pub max_header: usize,
    pub shutdown: CancellationToken,
}

/// What is known about an accepted connection; shared by all its requests.
pub struct Conn {
    pub target_id: u32,
    pub target: String,
    pub workload: Workload,
    pub orig: SocketAddr,
}

/// Handles one accepted connection. Never returns an error: every outcome is logged here.
pub async fn serve(ctx: Arc<Ctx>, client: TcpStream, peer: SocketAddr, force: CancellationToken) {
    let Some((meta, workload)) = orig_dst::attribute(ctx.maps.clone(), peer).await else {
        // Not redirected by our hooks (a direct dial of the listener, or metadata lost).
        ctx.table.count_refused();
        tracing::warn!(%peer, "refused connection to the listener that was not redirected by Sluice");
        reset(&client);
        return;
    };
    let orig = orig_dst::original_destination(&meta);
    let (target, protocol) = ctx
        .targets
        .get(meta.target_id as usize)
        .map_or(("<unknown>".to_string(), Protocol::Tcp), |t| {
            (t.name.clone(), t.protocol)
        });
    let entry = ctx.table.open(ConnInfo {
        id: ctx.table.next_id(),
        target: target.clone(),
        client: peer,
        original_dst: orig,
        upstream: None,
        workload: workload.clone(),
        started_unix_ms: 0,
    });
    let _ = client.set_nodelay(true);
    if protocol == Protocol::Http {
        let conn = Arc::new(Conn {
            target_id: meta.target_id,
            target,
            workload,
            orig,
        });
        http::serve(ctx, conn, client, force).await;
        drop(entry);
        return;
    }
    let started = Instant::now();
    let (upstream, upstream_addr) = match ctx.upstreams.connect(meta.target_id, orig).await {
        Ok(u) => u,
        Err(e) => {
            ctx.table.count_upstream_failure();
            tracing::warn!(
                target_name = %target, pid = workload.tgid, uid = workload.uid, comm = %workload.comm,
                original_dst = %orig, error = %e, "upstream unavailable; closing client connection"
            );
            reset(&client);
            return;
        }
    };
    entry.set_upstream(upstream_addr);
    tracing::info!(
        target_name = %target, pid = workload.pid, tgid = workload.tgid, uid = workload.uid,
        gid = workload.gid, cgroup_id = workload.cgroup_id, comm = %workload.comm,
        exe = workload.exe.as_deref().unwrap_or("?"), client = %peer, original_dst = %orig,
        upstream = %upstream_addr, "connection intercepted"
    );
    let outcome = tokio::select! {
        r = forward::relay(&client, &upstream) => r.map_err(|e| e.to_string()),
        () = force.cancelled() => Err("agent shutting down".to_string()),
    };
    let ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(t) => tracing::info!(
            target_name = %target, tgid = workload.tgid, uid = workload.uid, comm = %workload.comm,
            original_dst = %orig, upstream = %upstream_addr, bytes_up = t.up, bytes_down = t.down,
            duration_ms = ms, "connection closed"
        ),
        Err(e) => tracing::info!(
            target_name = %target, tgid = workload.tgid, uid = workload.uid, comm = %workload.comm,
            original_dst = %orig, upstream = %upstream_addr, duration_ms = ms, error = %e,
            "connection ended with error"
        ),
    }
    drop(entry);
}

/// Closes with a reset, so the client sees a hard failure rather than an empty reply.
fn reset(client: &TcpStream) {
    let _ = socket2::SockRef::from(client).set_linger(Some(std::time::Duration::ZERO));
}
