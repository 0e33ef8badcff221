//! Serving one intercepted connection: attribute it (who, where to), then either relay bytes
//! at layer 4 (`protocol: tcp`) or hand it to the HTTP pipeline (`protocol: http`).
use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{ConnInfo, Table},
    config::{Protocol, Target},
    filter, http,
    intercept::{Maps, netns::Served, orig_dst},
    limits::{BodyBudget, ConnectionSlot, Connections},
    policy, record, relay, upstream,
    upstream::Upstreams,
    workload::Workload,
};

/// Shared state every connection task needs.
pub struct Ctx {
    pub maps: Arc<Maps>,
    /// The cgroup2 mount, where each caller's cgroup is looked up by id (`workload`).
    pub cgroups: Arc<crate::workload::CgroupRoot>,
    pub upstreams: Arc<Upstreams>,
    pub table: Arc<Table>,
    pub targets: Vec<Arc<Target>>,
    pub policy: Arc<policy::Store>,
    /// Token verification; `None` when no issuer is configured (requests then skip it).
    pub identity: Option<Arc<crate::identity::Identity>>,
    /// Upstream keys of the targets that have one (`credential:`), by target id.
    pub custody: Arc<crate::custody::Vault>,
    /// Pseudonym keys and vaults per caller (`mask::vault`).
    pub mask_sessions: Arc<crate::mask::Sessions>,
    pub http: upstream::http::Client,
    pub recorder: record::Recorder,
    pub connections: Arc<Connections>,
    pub body_budget: Arc<BodyBudget>,
    pub timeouts: http::Timeouts,
    pub max_request_body: usize,
    pub max_header: usize,
    pub max_h2_streams: u32,
    /// Add `x-sluice-overhead-us` to every HTTP response.
    pub overhead_header: bool,
    pub shutdown: CancellationToken,
    /// The in-kernel L4 relay (`l4_relay: kernel`); `None`: splice.
    pub kernel_relay: Option<Arc<relay::KernelRelay>>,
    /// Cookie of the agent's own network namespace (where the main listeners are).
    pub agent_netns: u64,
    /// Requests held for approval, shared by every runtime.
    pub approvals: Arc<crate::approval::Approvals>,
}

/// What is known about an accepted connection; shared by all its requests.
pub struct Conn {
    pub target_id: u32,
    /// Resolved once, at accept.
    pub target: Arc<Target>,
    /// Shared with every request's record: one reference count per request, no copies.
    pub workload: Arc<Workload>,
    pub orig: SocketAddr,
    /// `orig` as the HTTP pool's key, for targets that forward to the dialled address.
    pub orig_authority: Arc<str>,
    /// The client's network namespace when it is not the agent's: upstreams are dialled
    /// from there.
    pub netns: Option<Arc<Served>>,
}

impl Conn {
    pub fn filters(&self) -> filter::Settings {
        filter::Settings {
            max_response_bytes: self.target.max_response_bytes,
        }
    }
}

/// Handles one accepted connection. Never returns an error: every outcome is logged here.
/// `slot` is the connection's place under the global cap, taken at accept. `netns` is the
/// namespace whose listener accepted it (`None`: the agent's own).
pub async fn serve(
    ctx: Arc<Ctx>,
    client: TcpStream,
    peer: SocketAddr,
    netns: Option<Arc<Served>>,
    mut slot: ConnectionSlot,
    force: CancellationToken,
) {
    let cookie = netns.as_ref().map_or(ctx.agent_netns, |n| n.cookie);
    let Some((meta, workload)) =
        orig_dst::attribute(ctx.maps.clone(), ctx.cgroups.clone(), cookie, peer).await
    else {
        // Not redirected by our hooks (a direct dial of the listener, or metadata lost).
        ctx.table.count_refused();
        crate::metrics::refused("sluice_not_redirected");
        tracing::warn!(%peer, "refused connection to the listener that was not redirected by Sluice");
        reset(&client);
        return;
    };
    let orig = orig_dst::original_destination(&meta);
    let Some(target_cfg) = ctx.targets.get(meta.target_id as usize).cloned() else {
        ctx.table.count_refused();
        crate::metrics::refused("sluice_unknown_target");
        tracing::error!(%peer, target_id = meta.target_id, "redirected connection names no configured target; refused");
        reset(&client);
        return;
    };
    if let Err(over) = ctx.connections.charge(&mut slot, workload.cgroup_id) {
        ctx.table.count_over_limit();
        crate::metrics::refused("sluice_cgroup_connection_cap");
        tracing::warn!(
            target_name = %target_cfg.name, tgid = workload.tgid, uid = workload.uid,
            cgroup_id = workload.cgroup_id, comm = %workload.comm, limit = %over,
            "connection refused: over its cgroup's connection cap"
        );
        reset(&client);
        return;
    }
    let (target, protocol) = (target_cfg.name.clone(), target_cfg.protocol);
    let entry = ctx.table.open(ConnInfo {
        id: ctx.table.next_id(),
        target: target.clone(),
        client: peer,
        original_dst: orig,
        upstream: None,
        workload: workload.clone(),
        started_unix_ms: 0,
        path: (protocol == Protocol::Http).then_some(relay::Path::Http),
    });
    let _ = client.set_nodelay(true);
    if protocol == Protocol::Http {
        let _gauge = crate::metrics::connection(&target, relay::Path::Http);
        let conn = Arc::new(Conn {
            target_id: meta.target_id,
            target: target_cfg,
            workload: Arc::new(workload),
            orig,
            orig_authority: orig.to_string().into(),
            netns,
        });
        http::serve(ctx, conn, client, force).await;
        drop((entry, slot));
        return;
    }
    let started = Instant::now();
    let (upstream, upstream_addr) = match ctx
        .upstreams
        .connect(meta.target_id, orig, netns.as_deref())
        .await
    {
        Ok(u) => u,
        Err(e) => {
            ctx.table.count_upstream_failure();
            crate::metrics::refused("sluice_upstream_unavailable");
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
        exe = workload.exe.as_deref().unwrap_or("?"), cgroup = workload.cgroup.as_deref().unwrap_or("?"),
        container_id = workload.container.as_ref().map_or("-", |c| c.id.as_str()),
        pod_uid = workload.pod_uid.as_deref().unwrap_or("-"),
        client = %peer, netns_cookie = cookie, original_dst = %orig, upstream = %upstream_addr, "connection intercepted"
    );
    let chosen = std::sync::OnceLock::new();
    // Counted in the metrics on the path the relay chose, until the connection closes.
    let gauge = std::sync::OnceLock::new();
    let on_path = |p| {
        entry.set_path(p);
        let _ = chosen.set(p);
        if let Some(g) = crate::metrics::connection(&target, p) {
            let _ = gauge.set(g);
        }
    };
    let moved = crate::forward::Moved::default();
    let outcome = tokio::select! {
        r = relay::relay(ctx.kernel_relay.as_ref(), &client, &upstream, on_path, &moved) => r,
        () = force.cancelled() => Err("agent shutting down".to_string()),
    };
    let ms = started.elapsed().as_millis() as u64;
    let path = chosen.get().map_or("-".to_string(), ToString::to_string);
    // Counted however the connection ended: a reset or a drain still carried these bytes.
    let t = moved.get();
    if let Some(m) = crate::metrics::get() {
        m.add_bytes(&target, t.up, t.down);
    }
    match outcome {
        Ok(()) => tracing::info!(
            target_name = %target, tgid = workload.tgid, uid = workload.uid, comm = %workload.comm,
            original_dst = %orig, upstream = %upstream_addr, bytes_up = t.up, bytes_down = t.down,
            duration_ms = ms, path, "connection closed"
        ),
        Err(e) => tracing::info!(
            target_name = %target, tgid = workload.tgid, uid = workload.uid, comm = %workload.comm,
            original_dst = %orig, upstream = %upstream_addr, bytes_up = t.up, bytes_down = t.down,
            duration_ms = ms, error = %e, path, "connection ended with error"
        ),
    }
    drop((entry, slot));
}

/// Closes with a reset, so the client sees a hard failure rather than an empty reply.
pub fn reset(client: &TcpStream) {
    let _ = socket2::SockRef::from(client).set_linger(Some(std::time::Duration::ZERO));
}
