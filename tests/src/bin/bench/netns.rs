//! Added latency from inside a container's network namespace vs from the host's: the same
//! client and the same server code, run once in the test cgroup in the host's namespace and
//! once in a fresh network namespace (`unshare --net`), where the server runs on that
//! namespace's own loopback and the agent dials it from there. Each side is compared with its
//! own direct path (the server's address, not a target), so the rows differ only in where
//! the client is.
use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use sluice_tests::{TestCgroup, servers};

use crate::{client, report::pct};

/// What the child measures, passed as JSON on its command line.
#[derive(Serialize, Deserialize)]
pub struct Plan {
    /// `protocol: tcp` and `protocol: http` targets whose upstream is 127.0.0.1:`port`.
    pub l4: SocketAddr,
    pub http: SocketAddr,
    pub port: u16,
    /// Bring `lo` up first (a fresh namespace's is down; the server needs it).
    pub own_netns: bool,
    pub setups: usize,
    pub requests: usize,
}

/// The agent targets this comparison needs: upstream 127.0.0.1:`port` wherever the client is.
pub fn targets(vip: &str, port: u16) -> String {
    format!(
        "  - name: bench-netns\n    match: \"{vip}:8003\"\n    upstream: \"127.0.0.1:{port}\"\n    protocol: tcp\n  - name: bench-netns-http\n    match: \"{vip}:8004\"\n    upstream: \"127.0.0.1:{port}\"\n    protocol: http\n    server: openai\n"
    )
}

/// The child: server, then the namespace's first connection (refused while the agent
/// prepares the namespace, under fail_mode closed; direct under open), then the latency
/// paths of `client::run`.
pub fn child(plan: &Plan) -> Result<client::Results> {
    if plan.own_netns {
        let ok = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()?;
        if !ok.success() {
            bail!("ip link set lo up failed");
        }
    }
    let server = servers::http_unrecorded(&format!("127.0.0.1:{}", plan.port));
    // Until the namespace is served, connects are refused (closed) or go direct (open):
    // wait until one goes through the agent (`refused_unattributed` is not involved).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(plan.l4).is_err() {
        if std::time::Instant::now() > deadline {
            bail!("{} never accepted a connection", plan.l4);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    let r = client::run(&client::Plan {
        l4: plan.l4,
        direct: server.addr,
        http_paths: vec![("sluice".into(), plan.http), ("direct".into(), server.addr)],
        filtered: plan.http,
        tokened: None,
        tls: None,
        setups: plan.setups,
        requests: plan.requests,
        bulk_mb: 16,
    })?;
    drop(server);
    Ok(r)
}

/// Runs the child in the host's namespace and in a fresh one; prints the table.
pub fn compare(
    cg: &TestCgroup,
    vip: &str,
    port: u16,
    setups: usize,
    requests: usize,
) -> Result<()> {
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("exe path")?;
    let run = |own_netns: bool| -> Result<client::Results> {
        let plan = serde_json::to_string(&Plan {
            l4: format!("{vip}:8003").parse()?,
            http: format!("{vip}:8004").parse()?,
            port,
            own_netns,
            setups,
            requests,
        })?;
        let mut cmd = if own_netns {
            let mut c = cg.command("unshare");
            c.args(["--net", exe]);
            c
        } else {
            cg.command(exe)
        };
        let out = cmd.args(["netns-client", &plan]).output()?;
        if !out.status.success() {
            bail!(
                "netns bench client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let sides = [
        ("host network namespace", run(false)?),
        ("own network namespace (container)", run(true)?),
    ];
    println!("\n## From a container's network namespace\n");
    println!(
        "Concurrency 1, per side {setups} fresh connections, {requests} keep-alive requests and chat completions; the client runs in the host's namespace, then in a fresh one (`unshare --net`) whose own loopback holds the server (the agent listens and dials there). Added = Sluice − that side's direct path, medians (p99 in brackets).\n"
    );
    println!(
        "| client in | L4 connect + first response | L4 keep-alive request | HTTP-aware chat completion |"
    );
    println!("|---|---|---|---|");
    let cell = |v: &[f64], d: &[f64]| {
        format!(
            "{:+.0} µs ({:+.0} µs)",
            pct(v, 0.5) - pct(d, 0.5),
            pct(v, 0.99) - pct(d, 0.99)
        )
    };
    for (name, r) in &sides {
        println!(
            "| {name} | {} | {} | {} |",
            cell(&r.l4.first_response_us, &r.direct.first_response_us),
            cell(&r.l4.request_us, &r.direct.request_us),
            cell(&r.http[0].chat_us, &r.http[1].chat_us),
        );
    }
    Ok(())
}
