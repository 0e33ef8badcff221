//! The agent's runtime shape (agent/src/app.rs) for the floor proxies: one current-thread
//! tokio runtime per CPU, each on its own OS thread with its own `SO_REUSEPORT` listener on
//! one shared loopback port, a 1-second heartbeat timer per runtime (so a request's timer never
//! makes tokio's time driver wake itself, see `app::heartbeat`). The threads report their ids
//! so the bench can read their CPU time, and stop (with every connection task) when dropped.
use std::{
    future::Future,
    net::{SocketAddr, TcpListener as StdListener},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{net::TcpStream, sync::watch};

pub struct Shards {
    pub addr: SocketAddr,
    /// Kernel thread ids of the runtimes' threads (`/proc/self/task/TID`).
    pub tids: Vec<i32>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Shards {
    /// `threads` runtimes serving one port; `serve` runs once per accepted connection, as
    /// its own task on the runtime that accepted it.
    pub fn start<F, Fut>(name: &str, threads: usize, serve: F) -> Result<Shards>
    where
        F: Fn(TcpStream) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let first = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..threads.max(1) {
            listeners.push(bind(addr)?);
        }
        let (stop, stopped) = watch::channel(false);
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let mut handles = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a floor runtime")?;
            let (serve, mut stopped, tid_tx) = (serve.clone(), stopped.clone(), tid_tx.clone());
            let h = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    let _ = tid_tx.send(unsafe { libc::gettid() });
                    rt.block_on(async move {
                        let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                            return;
                        };
                        tokio::spawn(heartbeat());
                        loop {
                            tokio::select! {
                                _ = stopped.changed() => return,
                                a = l.accept() => {
                                    if let Ok((s, _)) = a {
                                        tokio::spawn(serve(s));
                                    }
                                }
                            }
                        }
                    });
                    // Dropping the runtime here drops every connection task with it.
                })
                .context("spawning a floor thread")?;
            handles.push(h);
        }
        drop(tid_tx);
        let tids = tid_rx.iter().take(handles.len()).collect();
        Ok(Shards {
            addr,
            tids,
            stop,
            threads: handles,
        })
    }

    /// CPU time the runtimes' threads have used, ns.
    pub fn cpu_ns(&self) -> u64 {
        self.tids
            .iter()
            .map(|t| schedstat_ns(&format!("/proc/self/task/{t}/schedstat")))
            .sum()
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

async fn heartbeat() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
    }
}

fn bind(addr: SocketAddr) -> Result<StdListener> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Time on CPU of one task, ns: the first field of its `schedstat` (0 if it is gone).
pub fn schedstat_ns(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// CPU time of every thread of a process, ns.
pub fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| schedstat_ns(&t.path().join("schedstat").to_string_lossy()))
        .sum()
}
