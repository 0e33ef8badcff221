//! Segment files: names, permissions, listing, and walking their frames.
use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use super::{
    Error,
    frame::{self, Bad, Frame},
};

pub fn seg_name(n: u64) -> String {
    format!("{n:08}.seg")
}

pub fn idx_name(n: u64) -> String {
    format!("{n:08}.idx")
}

/// Creates `dir` 0700 (and its parents), and makes an existing one 0700.
pub fn make_dir(dir: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| Error::io(dir, e))
}

/// Opens `path` for appending, creating it 0600.
pub fn open_append(path: &Path) -> Result<fs::File, Error> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// The segments in `dir`, by number (the names the store gave them; a file named otherwise
/// is not the store's).
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_suffix(".seg"))
            .filter(|s| s.len() == 8)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((n, e.path()));
    }
    out.sort_unstable_by_key(|(n, _)| *n);
    Ok(out)
}

/// One step of walking a segment's bytes.
pub enum Step<'a> {
    Frame {
        offset: u64,
        frame: Frame<'a>,
    },
    /// Bytes at `offset` that are not a frame; the walk stops there.
    Bad {
        offset: u64,
        why: Bad,
    },
}

/// Walks the frames of `buf` from `start`. A frame whose hash does not match but whose length
/// is whole is stepped over (the walk goes on after it); any other bad bytes stop it.
pub fn frames(buf: &[u8], start: usize) -> impl Iterator<Item = Step<'_>> {
    let mut at = start;
    let mut stopped = false;
    std::iter::from_fn(move || {
        if stopped || at >= buf.len() {
            return None;
        }
        match frame::decode(&buf[at..]) {
            Ok(f) => {
                let offset = at as u64;
                at += f.size();
                Some(Step::Frame { offset, frame: f })
            }
            Err(why) => {
                let offset = at as u64;
                match why {
                    Bad::Checksum { size, .. } => at += size,
                    _ => stopped = true,
                }
                Some(Step::Bad { offset, why })
            }
        }
    })
}

/// Whether any complete frame starts after `from` in `buf`: tells damage in the middle of a
/// segment (complete records follow it) from a torn tail (nothing does).
pub fn frame_after(buf: &[u8], from: usize) -> Option<usize> {
    (from + 1..buf.len().saturating_sub(frame::HEAD + frame::TAIL))
        .find(|&i| frame::decode(&buf[i..]).is_ok())
}
