//! The real OpenID provider the identity and approval tests run (npm's oidc-provider,
//! tests/oidc/provider.mjs, installed by `cargo xtask setup`), on 127.0.0.1 only.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::Value;

fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// The OpenID provider process; killed (by its pid) on drop.
pub struct Provider {
    child: Child,
    pub port: u16,
}

impl Provider {
    pub fn start(port: u16, state: &Path, rotate: bool) -> Provider {
        let dir = oidc_dir();
        assert!(
            dir.join("node_modules/oidc-provider/package.json").exists(),
            "the test OpenID provider is not installed: run `cargo xtask setup` (npm ci in {})",
            dir.display()
        );
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("provider.mjs"))
            .arg(port.to_string())
            .arg(state)
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if rotate {
            cmd.arg("rotate");
        }
        let mut child = cmd.spawn().expect("node runs the provider");
        let out = child.stdout.take().expect("provider stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("ready ") {
                    let _ = tx.send(line);
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(30));
        let mut p = Provider { child, port };
        if ready.is_err() {
            p.stop();
            panic!("the OpenID provider did not start on 127.0.0.1:{port}");
        }
        p
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An access token by the client credentials grant, as a workload's SDK would get one
    /// (audience `sluice`).
    pub fn token(&self, client: &str) -> String {
        self.grant(client, &["scope=models"])
    }

    /// A token for the approvals endpoint (audience `sluice-approvals`), as an approver's
    /// tooling would get one.
    pub fn approvals_token(&self, client: &str) -> String {
        self.grant(
            client,
            &["scope=approvals", "resource=urn:sluice:approvals"],
        )
    }

    fn grant(&self, client: &str, params: &[&str]) -> String {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-m",
            "10",
            "-u",
            &format!("{client}:{client}-secret"),
        ])
        .args(["-d", "grant_type=client_credentials"]);
        for p in params {
            cmd.args(["-d", p]);
        }
        let out = cmd
            .arg(format!("{}/token", self.issuer()))
            .output()
            .expect("curl the token endpoint");
        let v: Value = serde_json::from_slice(&out.stdout).expect("token response is JSON");
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {v}"))
            .to_string()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
    }
}
