//! The benchmark's peers: HAProxy and nginx as real processes in front of the same test
//! server, on ephemeral loopback ports, with generated configs in a temp dir. Each is started
//! by pid and stopped by pid (with its workers) when dropped, on error paths too.
use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use sluice_tests::{TempDir, free_port};

pub struct Peer {
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
    log: &'static str,
}

impl Peer {
    /// HAProxy in HTTP mode: one process with `threads` threads, upstream connections reused
    /// across clients (`http-reuse always`), no Nagle delay, no logging.
    pub fn haproxy(upstream: SocketAddr, threads: usize) -> Result<Peer> {
        let dir = TempDir::new("haproxy");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = format!(
            "global\n    nbthread {threads}\n    maxconn 4096\n\n\
             defaults\n    mode http\n    option http-no-delay\n    http-reuse always\n    \
             timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n    \
             timeout http-keep-alive 120s\n\n\
             frontend bench\n    bind {addr}\n    default_backend server\n\n\
             backend server\n    server s1 {upstream}\n"
        );
        let cfg = dir.path().join("haproxy.cfg");
        fs::write(&cfg, config).context("writing haproxy.cfg")?;
        let mut cmd = Command::new("haproxy");
        // -db: stay in the foreground as one process, so the pid we hold is the proxy.
        cmd.arg("-db").arg("-f").arg(&cfg);
        Self::start(cmd, addr, dir, "haproxy.log")
    }

    /// nginx: a master and `workers` workers, upstream keep-alive (HTTP/1.1, `Connection`
    /// cleared), no buffering in either direction, no access log.
    pub fn nginx(upstream: SocketAddr, workers: usize) -> Result<Peer> {
        let dir = TempDir::new("nginx");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let d = dir.path().display();
        // keepalive_requests: the default (1000) would close a client connection in the
        // middle of a latency block.
        let config = format!(
            "daemon off;\nmaster_process on;\nworker_processes {workers};\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               keepalive_requests 100000000;\n  keepalive_timeout 300s;\n\
               upstream backend {{\n    server {upstream};\n    keepalive 64;\n    keepalive_requests 100000000;\n  }}\n\
               server {{\n    listen {addr};\n    location / {{\n\
                   proxy_pass http://backend;\n      proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n      proxy_buffering off;\n\
                   proxy_request_buffering off;\n    }}\n  }}\n}}\n"
        );
        let cfg = dir.path().join("nginx.conf");
        fs::write(&cfg, config).context("writing nginx.conf")?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&cfg);
        Self::start(cmd, addr, dir, "error.log")
    }

    fn start(mut cmd: Command, addr: SocketAddr, dir: TempDir, log: &'static str) -> Result<Peer> {
        let out = fs::File::create(dir.path().join("stderr.log")).context("peer log")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {cmd:?} (installed by `cargo xtask setup`)"))?;
        let mut peer = Peer {
            addr,
            child,
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = peer.child.try_wait() {
                bail!("{cmd:?} exited at start ({status}): {}", peer.logs());
            }
            if TcpStream::connect(addr).is_ok() {
                return Ok(peer);
            }
            if Instant::now() > deadline {
                bail!("{cmd:?} did not listen on {addr}: {}", peer.logs());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read(self.log))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Its workers first noted, so none outlives the master if it has to be killed.
        let workers = descendants(self.pid());
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in workers {
            if Path::new(&format!("/proc/{pid}")).exists() {
                // SAFETY: a worker of the process we started, by pid.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// All descendants of `pid` (children of every thread, recursively).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let children = fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// VmRSS of one process, KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Peak RSS (VmHWM) of one process, KiB.
pub fn hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// VmRSS of a process and all its descendants (nginx's master and workers), KiB.
pub fn tree_rss_kib(pid: u32) -> u64 {
    rss_kib(pid) + descendants(pid).into_iter().map(rss_kib).sum::<u64>()
}
