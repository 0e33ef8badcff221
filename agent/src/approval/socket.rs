//! Approvers' commands over a Unix socket: `approvals {"op": ...}` on one line, one JSON
//! answer. The approver is the socket peer's uid as the kernel gives it (SO_PEERCRED),
//! named through NSS on the blocking pool; nothing the client sends says who it is.
//!
//! Two sockets answer these: the root-only admin socket, and, when `approvals.socket` is
//! set, the approvers' socket (mode 0660, group `approvals.socket_group`), which answers
//! nothing else.
use std::{
    io,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
};
use tokio_util::sync::CancellationToken;

use super::{
    Approvals,
    approver::Approver,
    store::{Decide, DecideError, Decided, Info, Listing},
};

/// The line prefix of approval commands on either socket.
pub const PREFIX: &str = "approvals ";
/// Longest command line read (a deny reason is at most a few hundred characters).
pub const MAX_LINE: u64 = 4096;
/// Longest answer a client reads (a listing of every pending and recent approval).
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("approvers' socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("approvers' socket: no group {0:?} on this host (approvals.socket_group)")]
    NoGroup(String),
    #[error(
        "socket {path}: no agent answers ({source}); is `sluice run` running, and may you use the socket?"
    )]
    NotRunning { path: PathBuf, source: io::Error },
    #[error("socket {path}: bad answer: {message}")]
    BadAnswer { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Command {
    List,
    Approve {
        id: String,
        #[serde(default)]
        for_secs: Option<u64>,
    },
    Deny {
        id: String,
        reason: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub listing: Option<Listing>,
    #[serde(default)]
    pub decided: Option<Decided>,
    #[serde(default)]
    pub approval: Option<Info>,
    /// Who the agent took the caller to be.
    #[serde(default)]
    pub approver: Option<String>,
}

fn failed(message: impl Into<String>) -> Answer {
    Answer {
        error: Some(message.into()),
        ..Answer::default()
    }
}

/// Answers one command line (without the prefix) from the peer `uid`.
pub async fn answer(approvals: &Arc<Approvals>, line: &str, uid: Option<u32>) -> String {
    let a = match serde_json::from_str::<Command>(line) {
        Err(e) => failed(format!("bad approvals command: {e}")),
        Ok(Command::List) => Answer {
            listing: Some(approvals.store.list()),
            ..Answer::default()
        },
        Ok(Command::Approve { id, for_secs }) => {
            decide(approvals, &id, uid, Decide::Approve { for_secs }).await
        }
        Ok(Command::Deny { id, reason }) => {
            decide(approvals, &id, uid, Decide::Deny { reason }).await
        }
    };
    serde_json::to_string(&a).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

async fn decide(approvals: &Arc<Approvals>, id: &str, uid: Option<u32>, d: Decide) -> Answer {
    if !super::id::well_formed(id.trim()) {
        // Said before anyone is looked up.
        return failed(DecideError::Malformed(super::clean(id.trim(), 40)).to_string());
    }
    let Some(uid) = uid else {
        return failed("the socket gave no peer credentials: cannot tell who decides");
    };
    let who = match tokio::task::spawn_blocking(move || Approver::lookup(uid)).await {
        Ok(w) => w,
        Err(e) => return failed(format!("looking up uid {uid}: {e}")),
    };
    match approvals.decide(id, &who, d) {
        Ok((decided, approval)) => Answer {
            decided: Some(decided),
            approval,
            approver: Some(who.name()),
            ..Answer::default()
        },
        Err(e) => Answer {
            approver: Some(who.name()),
            ..failed(e.to_string())
        },
    }
}

/// Binds the approvers' socket: mode 0660, owned by root and `group`.
pub fn bind(path: &Path, group: &str) -> Result<UnixListener, Error> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let gid = nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .ok_or_else(|| Error::NoGroup(group.to_string()))?
        .gid;
    // The admin socket, bound first, is the single-instance lock: a socket left here is a
    // dead agent's.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io_err)?;
        // The mode and group below are set by path: in a directory others can write, the
        // socket could be swapped for a link to another file between `bind` and `chmod`.
        let meta = std::fs::metadata(dir).map_err(io_err)?;
        // Writable by its group only when that group is root's (a umask of 002 gives that).
        let others_write =
            meta.mode() & 0o002 != 0 || (meta.mode() & 0o020 != 0 && meta.gid() != 0);
        if others_write || meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "its directory {} must be owned by the agent's user and writable by nobody else but root (mode {:o})",
                    dir.display(),
                    meta.mode() & 0o7777
                ),
            )));
        }
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    // Closed to everyone while its group is set, then opened to the group.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    nix::unistd::chown(path, None, Some(gid)).map_err(|e| io_err(io::Error::from(e)))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io_err)?;
    Ok(listener)
}

/// Serves the approvers' socket until `stop`.
pub async fn serve(listener: UnixListener, approvals: Arc<Approvals>, stop: CancellationToken) {
    loop {
        let conn = tokio::select! {
            () = stop.cancelled() => return,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else { continue };
        let approvals = approvals.clone();
        tokio::spawn(async move {
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = BufReader::new(r).take(MAX_LINE);
            if r.read_line(&mut line).await.is_err() {
                return;
            }
            let body = match line.trim().strip_prefix(PREFIX.trim_end()) {
                Some(cmd) => answer(&approvals, cmd.trim(), uid).await,
                None => {
                    serde_json::to_string(&failed("this socket answers approvals commands only"))
                        .unwrap_or_default()
                }
            };
            let _ = w.write_all(body.as_bytes()).await;
            let _ = w.shutdown().await;
        });
    }
}

/// Client side: sends one command and reads the answer.
pub async fn request(path: &Path, cmd: &Command) -> Result<Answer, Error> {
    let bad = |message: String| Error::BadAnswer {
        path: path.to_path_buf(),
        message,
    };
    let line = serde_json::to_string(cmd).map_err(|e| bad(e.to_string()))?;
    let buf = crate::admin::ask(path, format!("{PREFIX}{line}\n").as_bytes(), MAX_ANSWER)
        .await
        .map_err(|e| match e {
            crate::admin::Asked::Connect(source) => Error::NotRunning {
                path: path.to_path_buf(),
                source,
            },
            crate::admin::Asked::Io(source) => Error::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    serde_json::from_slice(&buf).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of this test's own under the temp directory, removed on drop.
    struct Dir(std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn the_socket_is_never_bound_where_others_can_swap_it() {
        let d = Dir(std::env::temp_dir().join(format!("sluice-approvers-{}", std::process::id())));
        std::fs::create_dir_all(&d.0).expect("dir");
        let root_group = nix::unistd::Group::from_gid(nix::unistd::getegid())
            .ok()
            .flatten()
            .map(|g| g.name)
            .expect("the test's group has a name");
        std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = bind(&d.0.join("a.sock"), &root_group).expect_err("world-writable directory");
        assert!(err.to_string().contains("writable by nobody else"), "{err}");
        assert!(!d.0.join("a.sock").exists());
        std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let _l = bind(&d.0.join("a.sock"), &root_group).expect("a directory only its owner writes");
        let mode = std::fs::metadata(d.0.join("a.sock"))
            .expect("socket")
            .mode()
            & 0o777;
        assert_eq!(mode, 0o660);
    }
}
