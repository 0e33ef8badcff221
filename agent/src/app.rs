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
    doctor,
    drain::Drain,
    intercept::{self, Interceptor},
    l4,
    upstream::Upstreams,
};

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let failed: Vec<String> = doctor::preflight(&cfg)
        .iter()
        .filter(|c| c.level == doctor::Level::Fail)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if !failed.is_empty() {
        bail!(PreflightFailed(failed.join("\n  ")));
    }
    let cfg = Arc::new(cfg);
    // The admin socket doubles as the single-instance lock: bind it before touching the kernel.
    let admin_listener = admin::bind(&cfg.admin_socket).await?;
    // Listeners come up before the hooks point at them.
    let mut listeners = vec![(cfg.listen, bind(cfg.listen)?)];
    if let Some(v6) = cfg.listen_v6 {
        listeners.push((v6, bind(v6)?));
    } else {
        tracing::warn!("listen_v6 is null: IPv6 targets are NOT intercepted");
    }
    let (interceptor, maps) = Interceptor::start(&cfg).context("starting interception")?;
    tracing::info!(
        cgroup = %cfg.cgroup.display(), listen = %cfg.listen,
        listen_v6 = ?cfg.listen_v6, targets = cfg.targets.len(), fail_mode = %cfg.fail_mode,
        "sluice is intercepting"
    );

    let drain = Drain::new();
    let table = Arc::new(Table::default());
    let ctx = Arc::new(l4::Ctx {
        maps: maps.clone(),
        upstreams: Upstreams::new(&cfg),
        table: table.clone(),
    });
    tokio::spawn(intercept::targets::refresh_hostnames(
        maps.clone(),
        cfg.clone(),
        drain.shutdown_signal(),
    ));
    tokio::spawn(admin::serve(
        admin_listener,
        table.clone(),
        maps.clone(),
        cfg.fail_mode.to_string(),
        drain.shutdown_signal(),
    ));
    for (addr, listener) in listeners {
        tokio::spawn(accept_loop(addr, listener, ctx.clone(), drain.clone()));
    }

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    let in_flight = drain.in_flight();
    let forced = drain.drain(cfg.drain_timeout).await;
    tracing::info!(in_flight, forced, "connections drained");
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

async fn accept_loop(addr: SocketAddr, listener: TcpListener, ctx: Arc<l4::Ctx>, drain: Drain) {
    let stop = drain.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (ctx, force) = (ctx.clone(), drain.force_signal());
                drain.spawn(l4::serve(ctx, stream, peer, force));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::error!(listen = %addr, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
