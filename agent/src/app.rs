//! Wiring: start interception, accept, serve, and stop cleanly on SIGTERM/SIGINT.
use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, bail};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

use crate::{
    admin::{self, Table},
    config::Config,
    connection, doctor,
    drain::Drain,
    intercept::{self, Interceptor},
    limits::{self, Connections},
    policy, record,
    upstream::{self, Upstreams},
};

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let checks = doctor::preflight(&cfg);
    let failed: Vec<String> = doctor::failures(&checks)
        .iter()
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if !failed.is_empty() {
        bail!(PreflightFailed(failed.join("\n  ")));
    }
    let cfg = Arc::new(cfg);
    // Policies load before anything is intercepted: a broken policy stops the start.
    let policy = Arc::new(policy::Store::load(cfg.policies.clone()).context("loading policies")?);
    let loaded = policy.current();
    tracing::info!(rules = loaded.rule_count(), packs = ?loaded.packs, "policies loaded");
    // The admin socket doubles as the single-instance lock: bind it before touching the kernel.
    let admin_listener = admin::bind(&cfg.admin_socket).await?;
    // Listeners come up before the hooks point at them.
    let mut listeners = vec![(cfg.listen, bind(cfg.listen)?)];
    if let Some(v6) = cfg.listen_v6 {
        listeners.push((v6, bind(v6)?));
    } else {
        tracing::warn!("listen_v6 is null: IPv6 targets are NOT intercepted");
    }
    let fd_limit = limits::raise_fd_limit();
    let max_connections = limits::connection_cap(cfg.max_connections, fd_limit);
    let (interceptor, maps) =
        Interceptor::start(&cfg, max_connections).context("starting interception")?;
    tracing::info!(
        cgroup = %cfg.cgroup.display(), listen = %cfg.listen,
        listen_v6 = ?cfg.listen_v6, targets = cfg.targets.len(), fail_mode = %cfg.fail_mode,
        "sluice is intercepting"
    );

    let drain = Drain::new();
    let table = Arc::new(Table::default());
    let connections = Connections::new(max_connections, cfg.max_connections_per_cgroup);
    tracing::info!(
        fd_limit,
        max_connections = connections.max_global(),
        max_connections_per_cgroup = connections.max_per_cgroup(),
        "connection caps"
    );
    let (recorder, records) = record::Recorder::new(table.clone(), drain.shutdown_signal());
    // The writer outlives the drain: records of requests cut by it still get written.
    let writer = tokio::spawn(record::writer(records));
    let ctx = Arc::new(connection::Ctx {
        maps: maps.clone(),
        upstreams: Upstreams::new(&cfg),
        table: table.clone(),
        targets: cfg.targets.iter().cloned().map(Arc::new).collect(),
        policy: policy.clone(),
        http: upstream::http::Client::new(
            cfg.bypass_mark,
            cfg.connect_timeout,
            cfg.upstream_max_idle,
        ),
        recorder,
        connections: connections.clone(),
        body_budget: limits::BodyBudget::new(
            cfg.max_buffered_body_bytes,
            cfg.max_buffered_body_bytes_per_cgroup,
            cfg.max_request_body_bytes,
        ),
        timeouts: crate::http::Timeouts {
            header: cfg.header_timeout,
            body: cfg.body_timeout,
            idle: cfg.idle_timeout,
        },
        max_request_body: cfg.max_request_body_bytes,
        max_header: cfg.max_header_bytes,
        max_h2_streams: cfg.max_h2_streams,
        shutdown: drain.shutdown_signal(),
        kernel_relay: interceptor.kernel_relay.clone(),
    });
    tokio::spawn(policy_reloader(policy.clone(), drain.shutdown_signal()));
    tokio::spawn(intercept::targets::refresh_hostnames(
        maps.clone(),
        cfg.clone(),
        drain.shutdown_signal(),
    ));
    tokio::spawn(intercept::local::watch(
        maps.clone(),
        cfg.clone(),
        interceptor.local_addresses.clone(),
        drain.shutdown_signal(),
    ));
    tokio::spawn(admin::serve(
        admin_listener,
        table.clone(),
        maps.clone(),
        interceptor.kernel_relay.clone(),
        cfg.fail_mode.to_string(),
        drain.shutdown_signal(),
    ));
    for (addr, listener) in listeners {
        tokio::spawn(accept_loop(addr, listener, ctx.clone(), drain.clone()));
    }
    drop(ctx);

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    let in_flight = drain.in_flight();
    let forced = drain.drain(cfg.drain_timeout).await;
    tracing::info!(in_flight, forced, "connections drained");
    // Every request's record has been queued by now (connection tasks are gone); once the
    // last sender is dropped the writer finishes the queue and ends.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    interceptor.shutdown(cfg.fail_mode).context("detaching")?;
    let _ = std::fs::remove_file(&cfg.admin_socket);
    Ok(())
}

/// A preflight failure; main maps it to its own exit code.
#[derive(Debug)]
pub struct PreflightFailed(pub String);

impl std::fmt::Display for PreflightFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this host cannot run sluice yet (see `sluice doctor`):\n  {}",
            self.0
        )
    }
}

impl std::error::Error for PreflightFailed {}

fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    intercept::listener::bind(addr).with_context(|| format!("binding listener {addr}"))
}

async fn accept_loop(
    addr: SocketAddr,
    listener: TcpListener,
    ctx: Arc<connection::Ctx>,
    drain: Drain,
) {
    let stop = drain.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let slot = match ctx.connections.try_global() {
                    Ok(slot) => slot,
                    Err(over) => {
                        // Dropping it unattributed leaves its metadata to the LRU map.
                        ctx.table.count_over_limit();
                        tracing::warn!(%peer, limit = %over, "connection refused: the agent is at its connection cap");
                        connection::reset(&stream);
                        continue;
                    }
                };
                let (ctx, force) = (ctx.clone(), drain.force_signal());
                drain.spawn(connection::serve(ctx, stream, peer, slot, force));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::error!(listen = %addr, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reloads the policy on SIGHUP and when a policy file changes (checked every second: mtime
/// polling works on every filesystem, including bind mounts and NFS, where inotify does not).
/// A broken file is reported and the running policy stays.
async fn policy_reloader(store: Arc<policy::Store>, stop: tokio_util::sync::CancellationToken) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler; policy reloads on file change only");
            None
        }
    };
    let paths = store.paths().to_vec();
    let stamp = move || {
        let paths = paths.clone();
        tokio::task::spawn_blocking(move || policy_stamp(&paths))
    };
    let mut seen = stamp().await.unwrap_or_default();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let why = tokio::select! {
            () = stop.cancelled() => return,
            _ = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = tick.tick() => {
                let Ok(now) = stamp().await else { continue };
                if now == seen { continue; }
                seen = now;
                "file change"
            }
        };
        // Reading and parsing YAML is blocking work: keep it off the runtime's workers, so
        // a reload never stalls proxying (even with worker_threads: 1).
        let s = store.clone();
        let reloaded = tokio::task::spawn_blocking(move || s.reload()).await;
        let Ok(reloaded) = reloaded else {
            tracing::error!(why, "policy reload task failed; keeping the running policy");
            continue;
        };
        match reloaded {
            Ok(rules) => tracing::info!(why, rules, "policy reloaded"),
            Err(e) => {
                tracing::error!(why, error = %e, "policy reload failed; keeping the running policy")
            }
        }
    }
}

/// Modification times and sizes of every file under the policy paths.
fn policy_stamp(
    paths: &[std::path::PathBuf],
) -> Vec<(std::path::PathBuf, Option<std::time::SystemTime>, u64)> {
    let mut out = Vec::new();
    let mut stack: Vec<std::path::PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => {
                if let Ok(rd) = std::fs::read_dir(&p) {
                    stack.extend(rd.flatten().map(|e| e.path()));
                }
            }
            Ok(m) => out.push((p, m.modified().ok(), m.len())),
            Err(_) => out.push((p, None, 0)),
        }
    }
    out.sort();
    out
}
