//! Reading a key from its source. Everything here blocks (file reads, a child process): it
//! runs at start-up or on a blocking thread, never on a runtime worker. Errors name the
//! source, never its contents.
use std::{
    io::{self, Read as _},
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::{Secret, settings::Source};

/// Provider keys are tens to a few hundred bytes; a larger "key" is a wrong file.
pub const MAX_KEY_BYTES: usize = 16 * 1024;
/// Echoes of the key are masked in responses: a very short key would mask ordinary text.
pub const MIN_KEY_BYTES: usize = 8;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the {what}: {error}")]
    Read { what: String, error: io::Error },
    #[error("the {0} holds no key")]
    Empty(String),
    #[error("the {0} holds more than {MAX_KEY_BYTES} bytes; that is not one key")]
    TooLong(String),
    #[error(
        "the key in the {what} is {len} bytes; keys shorter than {MIN_KEY_BYTES} bytes are refused (their echoes could not be told from ordinary text)"
    )]
    TooShort { what: String, len: usize },
    #[error(
        "the key in the {0} has bytes a header cannot carry (spaces, control or non-ASCII characters)"
    )]
    NotHeader(String),
    #[error(
        "the {what} is {problem}: a key file must be readable by its owner (root or the agent's user) only; fix with `chmod 600` and `chown` (on a Kubernetes secret volume: defaultMode: 0400)"
    )]
    Exposed { what: String, problem: String },
    #[error("the {0} is not set")]
    Unset(String),
    #[error("the {what} did not finish within {limit:?}; it was killed")]
    Timeout { what: String, limit: Duration },
    #[error("the {what} failed ({status})")]
    Failed {
        what: String,
        status: std::process::ExitStatus,
    },
}

/// Reads the key. Blocking.
pub fn read(source: &Source) -> Result<Secret, Error> {
    let what = source.to_string();
    let raw = match source {
        Source::File(p) => read_file(p, &what)?,
        Source::Env(name) => std::env::var_os(name)
            .map(std::os::unix::ffi::OsStringExt::into_vec)
            .ok_or_else(|| Error::Unset(what.clone()))?,
        Source::Command(argv) => run(argv, &what, COMMAND_TIMEOUT)?,
    };
    if raw.len() > MAX_KEY_BYTES {
        return Err(Error::TooLong(what));
    }
    let secret = Secret::new(raw);
    let key = secret.expose().trim_ascii();
    if key.is_empty() {
        return Err(Error::Empty(what));
    }
    if !key.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Error::NotHeader(what));
    }
    if key.len() < MIN_KEY_BYTES {
        return Err(Error::TooShort {
            what,
            len: key.len(),
        });
    }
    Ok(Secret::new(key.to_vec()))
}

/// Reads a key file after checking, on the opened file itself (so a swap between the check
/// and the read cannot slip past), that nobody but its owner can read or replace it: a key
/// others can read is not in custody, and one others can write lets them choose the key
/// every workload's requests go out with.
fn read_file(p: &Path, what: &str) -> Result<Vec<u8>, Error> {
    let read_err = |error| Error::Read {
        what: what.to_string(),
        error,
    };
    let f = std::fs::File::open(p).map_err(read_err)?;
    let meta = f.metadata().map_err(read_err)?;
    exposure(meta.mode(), meta.uid(), nix::unistd::geteuid().as_raw()).map_or(
        Ok(()),
        |problem| {
            Err(Error::Exposed {
                what: what.to_string(),
                problem,
            })
        },
    )?;
    let mut buf = Vec::new();
    f.take(MAX_KEY_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    Ok(buf)
}

/// What is wrong with a key file of `mode` owned by `owner` for an agent running as `me`;
/// `None` when only root or the agent's own user can touch it. Group read is allowed (a
/// `sluice` group on a shared secrets directory); anything else beyond the owner is not.
pub(crate) fn exposure(mode: u32, owner: u32, me: u32) -> Option<String> {
    if owner != 0 && owner != me {
        return Some(format!("owned by uid {owner}, who could replace the key"));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "writable by group or others (mode {:04o})",
            mode & 0o7777
        ));
    }
    if mode & 0o004 != 0 {
        return Some(format!("readable by everyone (mode {:04o})", mode & 0o7777));
    }
    None
}

/// Runs `argv` with no shell, no stdin and stderr discarded (it may print the key), for at
/// most `limit`, keeping at most `MAX_KEY_BYTES + 1` bytes of its output.
fn run(argv: &[String], what: &str, limit: Duration) -> Result<Vec<u8>, Error> {
    let read_err = |error| Error::Read {
        what: what.to_string(),
        error,
    };
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Error::Empty(what.to_string()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(read_err)?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(read_err(io::Error::other("no stdout")));
    };
    // The pipe is read on its own thread so the deadline holds even if the command never
    // writes or never closes its output.
    let (tx, rx) = mpsc::sync_channel(1);
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = stdout
            .take(MAX_KEY_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .map(|_| buf);
        let _ = tx.send(r);
    });
    let deadline = Instant::now() + limit;
    let out = rx.recv_timeout(limit);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None)
                if Instant::now() < deadline
                    && matches!(out, Ok(Ok(ref b)) if b.len() <= MAX_KEY_BYTES) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                // Our own child, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    // A reader still blocked after the deadline (a grandchild holding the pipe open) is
    // left behind rather than waited for: the deadline is the promise.
    if out.is_ok() {
        let _ = reader.join();
    }
    match (out, status) {
        (Ok(Ok(buf)), _) if buf.len() > MAX_KEY_BYTES => Err(Error::TooLong(what.to_string())),
        (Ok(Ok(buf)), Some(s)) if s.success() => Ok(buf),
        (Ok(Ok(_)), Some(status)) => Err(Error::Failed {
            what: what.to_string(),
            status,
        }),
        (Ok(Err(e)), _) => Err(read_err(e)),
        _ => Err(Error::Timeout {
            what: what.to_string(),
            limit,
        }),
    }
}

/// What identifies one version of a key file: a rewrite in place changes its times or
/// length, a rename or a Kubernetes secret's symlink swap its inode, a chmod its ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The file's stamp (following symlinks); `None` if it cannot be seen. Blocking.
pub fn stamp(p: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(p).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("sluice-custody-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    fn write_private(p: &Path, content: impl AsRef<[u8]>) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(p, content).expect("write");
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    #[test]
    fn a_key_file_others_can_read_or_write_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let p = tmp("mode");
        write_private(&p, "sk-canary-0123456789");
        assert!(read(&Source::File(p.clone())).is_ok(), "0600 is fine");
        for (mode, ok, want) in [
            (0o640, true, ""),
            (0o400, true, ""),
            (0o644, false, "readable by everyone (mode 0644)"),
            (0o660, false, "writable by group or others (mode 0660)"),
            (0o602, false, "writable by group or others"),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            match read(&Source::File(p.clone())) {
                Ok(_) => assert!(ok, "{mode:o} accepted"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        !ok && e.contains(want) && e.contains("chmod 600"),
                        "{mode:o}: {e}"
                    );
                    assert!(!e.contains("canary"), "{e}");
                }
            }
        }
        std::fs::remove_file(&p).expect("rm");
        assert_eq!(
            exposure(0o100600, 1000, 0),
            Some("owned by uid 1000, who could replace the key".into())
        );
        assert_eq!(exposure(0o100600, 1000, 1000), None, "the agent's own user");
        assert_eq!(exposure(0o100600, 0, 1000), None, "root");
    }

    #[test]
    fn a_file_key_is_trimmed_and_bad_keys_are_refused_without_their_bytes() {
        let p = tmp("file");
        write_private(&p, "  sk-canary-0123456789\n");
        let s = read(&Source::File(p.clone())).expect("key");
        assert_eq!(s.expose(), b"sk-canary-0123456789");
        for (content, want) in [
            ("\n\n", "holds no key"),
            ("short", "shorter than"),
            ("sk-canary with space", "header cannot carry"),
        ] {
            write_private(&p, content);
            let e = read(&Source::File(p.clone()))
                .expect_err(content)
                .to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("canary"), "{e}");
        }
        write_private(&p, vec![b'k'; MAX_KEY_BYTES + 2]);
        assert!(matches!(
            read(&Source::File(p.clone())),
            Err(Error::TooLong(_))
        ));
        std::fs::remove_file(&p).expect("rm");
        let e = read(&Source::File(p)).expect_err("gone").to_string();
        assert!(e.contains("cannot read the file"), "{e}");
    }

    #[test]
    fn a_command_key_is_its_output_and_a_failing_command_is_an_error() {
        let s = read(&Source::Command(vec![
            "printf".into(),
            "%s".into(),
            "sk-from-command-1".into(),
        ]))
        .expect("printf");
        assert_eq!(s.expose(), b"sk-from-command-1");
        let e = read(&Source::Command(vec!["false".into()])).expect_err("false");
        assert!(matches!(e, Error::Failed { .. }), "{e}");
        let e = read(&Source::Command(vec!["/nonexistent/sluice-key".into()])).expect_err("none");
        assert!(matches!(e, Error::Read { .. }), "{e}");
        let e = read(&Source::Env("SLUICE_TEST_SURELY_UNSET_VAR".into())).expect_err("unset");
        assert!(matches!(e, Error::Unset(_)), "{e}");
    }

    #[test]
    fn a_command_is_bounded_in_time_and_output() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let limit = Duration::from_millis(300);
        for cmd in [
            argv(&["sleep", "5"]),
            // A grandchild keeps the pipe open after its parent is killed.
            argv(&["sh", "-c", "sleep 5 & exec sleep 5"]),
        ] {
            let t = Instant::now();
            let e = run(&cmd, "command", limit).expect_err("too slow");
            assert!(matches!(e, Error::Timeout { .. }), "{e}");
            assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        }
        let e = run(
            &argv(&["head", "-c", "100000", "/dev/zero"]),
            "command",
            Duration::from_secs(10),
        )
        .expect_err("too much");
        assert!(matches!(e, Error::TooLong(_)), "{e}");
    }

    #[test]
    fn the_stamp_changes_with_a_rewrite_and_a_rename() {
        let p = tmp("stamp");
        std::fs::write(&p, "sk-one-0000000").expect("write");
        let a = stamp(&p);
        assert!(a.is_some());
        assert_eq!(stamp(&p), a);
        let q = tmp("stamp-new");
        std::fs::write(&q, "sk-two-0000000").expect("write");
        std::fs::rename(&q, &p).expect("rename");
        assert_ne!(stamp(&p), a, "same length, new inode");
        std::fs::remove_file(&p).expect("rm");
        assert_eq!(stamp(&p), None);
    }
}
