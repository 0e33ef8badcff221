//! Wiring: start interception, accept, serve, and stop cleanly on SIGTERM/SIGINT.
use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, bail};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

use crate::{
    admin::{self, Table},
    config::{Config, Runtime},
    connection, doctor,
    drain::Drain,
    intercept::{self, Interceptor, netns::NsListener},
    limits::{self, Connections},
    metrics, policy, record,
    upstream::{self, Upstreams},
};

/// The recording store's handle, its thread and the first request id, when `audit` is on.
/// A store that cannot open stops the start when recording is required; otherwise the
/// agent runs unrecorded and says so.
async fn open_audit(
    cfg: &Config,
) -> anyhow::Result<Option<(crate::audit::Handle, std::thread::JoinHandle<()>, u64)>> {
    if !cfg.audit.enabled() {
        return Ok(None);
    }
    let settings = cfg.audit.clone();
    let opened = tokio::task::spawn_blocking(move || crate::audit::start(&settings))
        .await
        .context("opening the audit store")?;
    match opened {
        Ok((handle, thread, rec, first_id)) => {
            tracing::info!(
                dir = %cfg.audit.dir.display(), segments = rec.segments, last_seq = rec.last_seq,
                torn_bytes = rec.torn_bytes, closed_after_crash = rec.closed_after_crash,
                key_id = %rec.key_id, key_generated = rec.key_generated,
                required = cfg.audit.required, "audit store open"
            );
            Ok(Some((handle, thread, first_id)))
        }
        Err(e) if cfg.audit.required => {
            Err(anyhow::Error::new(e).context("opening the audit store (audit.required is true)"))
        }
        Err(e) => {
            tracing::error!(error = %e, "audit store cannot open: requests are NOT recorded (audit.required is false)");
            Ok(None)
        }
    }
}

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
    // The recording store opens before anything is intercepted: with `required`, a store
    // that cannot open stops the start.
    let audit = open_audit(&cfg).await?;
    // Bound before interception too: a socket that cannot be set up stops the start.
    let approvers_listener = match (&cfg.approvals.socket, &cfg.approvals.socket_group) {
        (Some(path), Some(group)) => {
            let l = crate::approval::socket::bind(path, group)?;
            tracing::info!(socket = %path.display(), group, "approvers' socket");
            Some(l)
        }
        _ => None,
    };
    let approvals_http = match &cfg.approvals.http {
        Some(h) => {
            let e = crate::approval::endpoint::open(
                h,
                &cfg.identity,
                cfg.bypass_mark,
                cfg.connect_timeout,
            )
            .await?;
            tracing::info!(listen = %h.listen, tls = h.tls.is_some(), "approvals endpoint");
            Some(e)
        }
        None => None,
    };
    // Metrics are bound before interception too: a taken port stops the start, loudly.
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some((
            metrics::server::bind(addr)
                .await
                .with_context(|| format!("binding metrics_listen {addr}"))?,
            metrics::install(),
        )),
        None => None,
    };
    // Listeners come up before the hooks point at them.
    let shards = shard_count(&cfg);
    let mut listeners: Vec<Vec<(SocketAddr, std::net::TcpListener)>> =
        (0..shards.max(1)).map(|_| Vec::new()).collect();
    for addr in std::iter::once(cfg.listen).chain(cfg.listen_v6) {
        let bound = if shards == 0 {
            vec![
                intercept::listener::bind_one(addr)
                    .with_context(|| format!("binding listener {addr}"))?,
            ]
        } else {
            intercept::listener::bind_shards(addr, shards)
                .with_context(|| format!("binding listener {addr}"))?
        };
        for (shard, l) in listeners.iter_mut().zip(bound) {
            shard.push((addr, l));
        }
    }
    if cfg.listen_v6.is_none() {
        tracing::warn!("listen_v6 is null: IPv6 targets are NOT intercepted");
    }
    // Built here so a failure stops the start before anything is intercepted.
    let mut runtimes = (0..shards)
        .map(|_| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Attribution and name lookups run here; bounded per thread, so N threads
                // never add up to N x tokio's default of 512.
                .max_blocking_threads(BLOCKING_THREADS_PER_CORE)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Runtimes)
        .context("building the per-core runtimes")?;
    let fd_limit = limits::raise_fd_limit();
    let max_connections = limits::connection_cap(cfg.max_connections, fd_limit);
    let (mut interceptor, maps) =
        Interceptor::start(&cfg, max_connections).context("starting interception")?;
    tracing::info!(
        cgroup = %cfg.cgroup.display(), listen = %cfg.listen,
        listen_v6 = ?cfg.listen_v6, targets = cfg.targets.len(), fail_mode = %cfg.fail_mode,
        "sluice is intercepting"
    );

    let drain = Drain::new();
    // Namespaces' listeners go to the runtimes through these, one per runtime.
    let (ns_senders, mut ns_receivers): (Vec<_>, Vec<_>) = (0..shards.max(1))
        .map(|_| tokio::sync::mpsc::channel(intercept::netns::HANDOFF_QUEUE))
        .unzip();
    let netns_maps = interceptor
        .take_netns_maps()
        .context("network namespace maps already taken")?;
    let namespaces = intercept::netns::start(intercept::netns::Setup {
        ready: netns_maps.ready,
        seen: netns_maps.seen,
        wake: netns_maps.wake,
        maps: maps.clone(),
        addrs: std::iter::once(cfg.listen).chain(cfg.listen_v6).collect(),
        max: cfg.max_namespaces,
        runtimes: ns_senders,
        stop: drain.shutdown_signal(),
    })
    .context("starting the network namespace manager")?;
    tracing::info!(
        max_namespaces = namespaces.max(),
        agent_netns_cookie = namespaces.agent_cookie,
        "serving other network namespaces with listeners of their own"
    );
    let table = Arc::new(Table::default());
    let connections = Connections::new(max_connections, cfg.max_connections_per_cgroup);
    tracing::info!(
        fd_limit,
        max_connections = connections.max_global(),
        max_connections_per_cgroup = connections.max_per_cgroup(),
        "connection caps"
    );
    let (mut recorder, records) = record::Recorder::new(table.clone(), drain.shutdown_signal());
    let (audit_handle, audit_thread) = match audit {
        Some((handle, thread, first_id)) => {
            recorder = recorder.with_audit(handle.clone(), first_id);
            (Some(handle), Some(thread))
        }
        None => (None, None),
    };
    // The writer outlives the drain: records of requests cut by it still get written.
    let writer = tokio::spawn(record::writer(records, audit_handle));
    // TLS files (and the system's roots) are read from disk: off the runtime's workers.
    let (upstreams, identity) = {
        let c = cfg.clone();
        tokio::task::spawn_blocking(move || {
            let upstreams = Upstreams::new(&c).context("loading upstream TLS settings")?;
            let identity =
                crate::identity::Identity::new(&c.identity, c.bypass_mark, c.connect_timeout)
                    .context("loading identity settings")?;
            anyhow::Ok((Arc::new(upstreams), identity))
        })
        .await
        .context("loading upstream and identity settings")??
    };
    if let Some(id) = &identity {
        id.prefetch();
    }
    let (approvals, webhook_queue) = crate::approval::Approvals::new(&cfg.approvals);
    if let (Some(rx), Some(hook)) = (webhook_queue, cfg.approvals.webhook.clone()) {
        tokio::spawn(crate::approval::webhook::run(
            rx,
            hook,
            approvals.store.clone(),
            cfg.bypass_mark,
            drain.shutdown_signal(),
        ));
    }
    if let Some(l) = approvers_listener {
        tokio::spawn(crate::approval::socket::serve(
            l,
            approvals.clone(),
            drain.shutdown_signal(),
        ));
    }
    if let Some(e) = approvals_http {
        tokio::spawn(e.serve(approvals.clone(), drain.shutdown_signal()));
    }
    let targets: Vec<_> = cfg.targets.iter().cloned().map(Arc::new).collect();
    // Key files and commands block: read them off the runtime's workers.
    let custody = {
        let t = cfg.targets.clone();
        tokio::task::spawn_blocking(move || crate::custody::Vault::load(&t))
            .await
            .context("loading credentials")??
    };
    let custody = Arc::new(custody);
    let body_budget = limits::BodyBudget::new(
        cfg.max_buffered_body_bytes,
        cfg.max_buffered_body_bytes_per_cgroup,
        cfg.max_request_body_bytes,
    );
    let mask_sessions =
        Arc::new(crate::mask::Sessions::new().context("making the pseudonym key (/dev/urandom)")?);
    // One per runtime: each has its own upstream pools (a pooled connection is driven by the
    // runtime that opened it), everything else is shared.
    let make_ctx = || connection::Ctx {
        maps: maps.clone(),
        cgroups: interceptor.cgroups.clone(),
        upstreams: upstreams.clone(),
        table: table.clone(),
        targets: targets.clone(),
        policy: policy.clone(),
        identity: identity.clone(),
        custody: custody.clone(),
        mask_sessions: mask_sessions.clone(),
        http: upstream::http::Client::new(
            cfg.bypass_mark,
            upstream::Timeouts::of(&cfg),
            cfg.upstream_max_idle,
            cfg.max_header_bytes,
        ),
        recorder: recorder.clone(),
        connections: connections.clone(),
        body_budget: body_budget.clone(),
        timeouts: crate::http::Timeouts {
            header: cfg.header_timeout,
            body: cfg.body_timeout,
            idle: cfg.idle_timeout,
        },
        max_request_body: cfg.max_request_body_bytes,
        max_header: cfg.max_header_bytes,
        max_h2_streams: cfg.max_h2_streams,
        overhead_header: cfg.overhead_header,
        shutdown: drain.shutdown_signal(),
        kernel_relay: interceptor.kernel_relay.clone(),
        agent_netns: namespaces.agent_cookie,
        approvals: approvals.clone(),
    };
    if let Some((listener, m)) = metrics_listener {
        tracing::info!(listen = ?cfg.metrics_listen, "serving /metrics");
        tokio::spawn(metrics::server::serve(listener, m, drain.shutdown_signal()));
    }
    tokio::spawn(policy_reloader(policy.clone(), drain.shutdown_signal()));
    tokio::spawn(crate::custody::watch(
        custody.clone(),
        drain.shutdown_signal(),
    ));
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
        approvals.clone(),
        table.clone(),
        maps.clone(),
        interceptor.kernel_relay.clone(),
        namespaces.clone(),
        cfg.fail_mode.to_string(),
        drain.shutdown_signal(),
    ));
    // Per-core threads run until the drain is over (their runtimes drive the connections).
    let cores_done = tokio_util::sync::CancellationToken::new();
    // Fires when a per-core thread ends before it was told to: the agent then drains and
    // stops rather than serve on fewer threads with one listener gone.
    let core_lost = tokio_util::sync::CancellationToken::new();
    let mut cores = Vec::new();
    let started: anyhow::Result<()> = (|| {
        if runtimes.is_empty() {
            let ctx = Arc::new(make_ctx());
            tokio::spawn(heartbeat(drain.shutdown_signal(), Arc::downgrade(&ctx)));
            for (addr, l) in listeners.into_iter().flatten() {
                let l = TcpListener::from_std(l).with_context(|| format!("listener {addr}"))?;
                tokio::spawn(accept_loop(addr, l, None, ctx.clone(), drain.clone()));
            }
            if let Some(rx) = ns_receivers.pop() {
                tokio::spawn(adopt(rx, ctx, drain.clone()));
            }
            return Ok(());
        }
        tracing::info!(threads = shards, "per-core runtimes");
        // Start-up is over: its code need not stay resident (see `memory`).
        crate::memory::trim_code();
        let shards_and_ns = listeners.into_iter().zip(ns_receivers.drain(..));
        for (i, (rt, (shard, ns_rx))) in runtimes.take().into_iter().zip(shards_and_ns).enumerate()
        {
            let (ctx, drain, done) = (Arc::new(make_ctx()), drain.clone(), cores_done.clone());
            let lost = core_lost.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sluice-core-{i}"))
                .spawn(move || {
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        rt.block_on(core(shard, ns_rx, ctx, drain, done.clone()))
                    }));
                    if ran.is_err() || !done.is_cancelled() {
                        tracing::error!(thread = i, "a per-core thread stopped early; draining");
                        lost.cancel();
                    }
                    // Blocking jobs (a slow name lookup) must not hold the exit forever.
                    rt.shutdown_timeout(std::time::Duration::from_millis(500));
                })
                .context("starting a per-core thread")?;
            cores.push(thread);
        }
        Ok(())
    })();
    if let Err(e) = started {
        // Nothing serves the listeners: do not leave the hooks pointing at them.
        let _ = interceptor.shutdown(cfg.fail_mode);
        return Err(e);
    }
    drop(recorder);

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
        () = core_lost.cancelled() => tracing::error!("a per-core thread stopped: draining"),
    }
    let in_flight = drain.in_flight();
    let forced = drain.drain(cfg.drain_timeout).await;
    tracing::info!(in_flight, forced, "connections drained");
    cores_done.cancel();
    let joined = tokio::task::spawn_blocking(move || {
        for c in cores {
            let _ = c.join();
        }
    });
    // Each thread gives its runtime at most 500 ms to stop; this bounds the wait anyway.
    if tokio::time::timeout(std::time::Duration::from_secs(5), joined)
        .await
        .is_err()
    {
        tracing::warn!("per-core threads did not stop within 5 s; detaching anyway");
    }
    // Every request's record has been queued by now (connection tasks are gone); once the
    // last sender is dropped the writer finishes the queue and ends.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    // The writer's end dropped the last handle: the store's thread closes the segment with
    // a signed checkpoint and ends.
    if let Some(t) = audit_thread {
        let joined = tokio::task::spawn_blocking(move || t.join());
        if tokio::time::timeout(std::time::Duration::from_secs(5), joined)
            .await
            .is_err()
        {
            tracing::warn!("the audit store did not close within 5 s");
        }
    }
    interceptor.shutdown(cfg.fail_mode).context("detaching")?;
    let _ = std::fs::remove_file(&cfg.admin_socket);
    if let Some(path) = &cfg.approvals.socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// The per-core runtimes until their threads take them. A start that fails before then
/// drops them here, on the main runtime, where a plain drop would panic (it blocks on the
/// runtimes' blocking pools) and hide the error that stopped the start.
struct Runtimes(Vec<tokio::runtime::Runtime>);

impl Runtimes {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self) -> Vec<tokio::runtime::Runtime> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Runtimes {
    fn drop(&mut self) {
        for rt in self.0.drain(..) {
            rt.shutdown_background();
        }
    }
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

/// Blocking-pool threads each per-core runtime may start.
const BLOCKING_THREADS_PER_CORE: usize = 64;

/// Threads with a runtime of their own (`runtime: per-core`), or 0 for one shared runtime.
fn shard_count(cfg: &Config) -> usize {
    match cfg.runtime {
        Runtime::Shared => 0,
        Runtime::PerCore if cfg.worker_threads > 0 => cfg.worker_threads,
        Runtime::PerCore => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// One per-core runtime's life: accept on its own listeners until shutdown, then keep
/// driving its connections until the drain is over.
async fn core(
    listeners: Vec<(SocketAddr, std::net::TcpListener)>,
    ns_listeners: tokio::sync::mpsc::Receiver<NsListener>,
    ctx: Arc<connection::Ctx>,
    drain: Drain,
    done: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(adopt(ns_listeners, ctx.clone(), drain.clone()));
    for (addr, l) in listeners {
        match TcpListener::from_std(l) {
            Ok(l) => {
                tokio::spawn(accept_loop(addr, l, None, ctx.clone(), drain.clone()));
            }
            // Registering an already-bound socket with epoll does not fail in practice; if
            // it did, this thread's share of connections would queue unanswered: say so.
            Err(e) => {
                tracing::error!(listen = %addr, error = %e, "listener not served by this thread")
            }
        }
    }
    tokio::spawn(heartbeat(done.clone(), Arc::downgrade(&ctx)));
    drop(ctx);
    done.cancelled().await;
}

/// tokio's time driver wakes itself (an eventfd write and one more epoll_wait) whenever a
/// new timer is due before its planned wakeup. Every keep-alive request arms hyper's header
/// timer (30 s) while the planned wakeup is usually the idle timer's (120 s): one extra
/// syscall per request, measured with strace. A timer due every second keeps the planned
/// wakeup near, so request timers never need the self-wake; it costs one wakeup a second.
/// Every few beats it also sweeps the runtime's upstream pool (`Client::sweep`); `ctx` is
/// weak so that the heartbeat does not keep a finished runtime's context alive.
async fn heartbeat(
    stop: tokio_util::sync::CancellationToken,
    ctx: std::sync::Weak<connection::Ctx>,
) {
    const SWEEP_EVERY: u32 = 5;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut beats = 0u32;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        beats = beats.wrapping_add(1);
        if beats.is_multiple_of(SWEEP_EVERY)
            && let Some(ctx) = ctx.upgrade()
        {
            ctx.http.sweep();
        }
    }
}

/// Serves the listeners the namespace manager binds in other network namespaces, on this
/// runtime, until shutdown.
async fn adopt(
    mut rx: tokio::sync::mpsc::Receiver<NsListener>,
    ctx: Arc<connection::Ctx>,
    drain: Drain,
) {
    let stop = drain.shutdown_signal();
    loop {
        let got = tokio::select! {
            () = stop.cancelled() => return,
            l = rx.recv() => l,
        };
        let Some(NsListener {
            addr,
            listener,
            served,
        }) = got
        else {
            return;
        };
        match TcpListener::from_std(listener) {
            Ok(l) => {
                tokio::spawn(accept_loop(
                    addr,
                    l,
                    Some(served),
                    ctx.clone(),
                    drain.clone(),
                ));
            }
            Err(e) => tracing::error!(listen = %addr, netns_cookie = served.cookie, error = %e,
                "a namespace's listener is not served by this thread"),
        }
    }
}

/// Accepts on one listener: the agent's own (`netns` None) or one in another network
/// namespace, which stops when that namespace is released.
async fn accept_loop(
    addr: SocketAddr,
    listener: TcpListener,
    netns: Option<Arc<intercept::netns::Served>>,
    ctx: Arc<connection::Ctx>,
    drain: Drain,
) {
    let stop = drain.shutdown_signal();
    let released = netns.as_ref().map(|n| n.stop.clone()).unwrap_or_default();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            () = released.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let slot = match ctx.connections.try_global() {
                    Ok(slot) => slot,
                    Err(over) => {
                        // Dropping it unattributed leaves its metadata to the LRU map.
                        ctx.table.count_over_limit();
                        metrics::refused("sluice_connection_cap");
                        tracing::warn!(%peer, limit = %over, "connection refused: the agent is at its connection cap");
                        connection::reset(&stream);
                        continue;
                    }
                };
                let (ctx, force) = (ctx.clone(), drain.force_signal());
                let netns = netns.clone();
                drain.spawn(connection::serve(ctx, stream, peer, netns, slot, force));
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
        // a reload never stalls proxying (even on a single-threaded runtime).
        let s = store.clone();
        let reloaded = tokio::task::spawn_blocking(move || s.reload()).await;
        if let Some(m) = metrics::get() {
            m.reload(matches!(reloaded, Ok(Ok(_))));
        }
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
