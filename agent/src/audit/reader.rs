//! Reading the store in order, record after record, while the agent may be writing it
//! (`export --follow`, `replay`): only whole frames are returned, a frame still being written
//! is waited for, and the reader moves on when a segment is closed and the next one exists,
//! or when retention deleted the segment it was in. It never trusts more than a frame's own
//! checksum: `verify` judges the chain.
use std::{
    fs,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use super::{
    Error,
    entry::Kind,
    frame::{self, Bad},
    segment,
};

/// Bytes read from a segment at once (a larger frame is read whole).
const WINDOW: usize = 4 << 20;

/// One record as read.
#[derive(Debug)]
pub struct Read {
    pub segment: u64,
    pub offset: u64,
    pub seq: u64,
    pub kind: Kind,
    pub body: Vec<u8>,
}

pub struct Reader {
    dir: PathBuf,
    /// The segment and offset of the next frame to read; `None` before the first segment.
    at: Option<(u64, u64)>,
    /// Frames up to this sequence number are not returned (again).
    after_seq: u64,
    buf: Vec<u8>,
}

impl Reader {
    /// From the store's first record, returning those after `after_seq`.
    pub fn new(dir: &Path, after_seq: u64) -> Reader {
        Reader {
            dir: dir.to_path_buf(),
            at: None,
            after_seq,
            buf: Vec::new(),
        }
    }

    /// From the frame at `offset` in `segment` (an index's place).
    pub fn at(dir: &Path, segment: u64, offset: u64) -> Reader {
        Reader {
            dir: dir.to_path_buf(),
            at: Some((segment, offset)),
            after_seq: 0,
            buf: Vec::new(),
        }
    }

    /// The sequence number of the last record returned.
    pub fn last_seq(&self) -> u64 {
        self.after_seq
    }

    /// Hands every whole record written since the last call to `each`, in order, until it
    /// returns false (then false is returned) or the store's end is reached (true).
    pub fn poll(&mut self, mut each: impl FnMut(&Read) -> bool) -> Result<bool, Error> {
        loop {
            // Listed before the current segment is read: a segment after it exists only
            // once the current one is closed and whole, so what is read next is all of it.
            let segments = segment::list(&self.dir)?;
            let Some((n, offset)) = self.position(&segments) else {
                return Ok(true);
            };
            let path = self.dir.join(segment::seg_name(n));
            let (next, stop) = self.read_segment(n, &path, offset, &mut each)?;
            self.at = Some((n, next));
            if stop {
                return Ok(false);
            }
            match segments.iter().find(|(m, _)| *m > n) {
                Some((m, _)) => self.at = Some((*m, 0)),
                None => return Ok(true),
            }
        }
    }

    /// Where to read now: the current place, or the first segment after it when retention
    /// deleted it (or the first segment of all).
    fn position(&self, segments: &[(u64, PathBuf)]) -> Option<(u64, u64)> {
        match self.at {
            None => segments.first().map(|(n, _)| (*n, 0)),
            Some((n, off)) if segments.iter().any(|(m, _)| *m == n) => Some((n, off)),
            Some((n, _)) => segments.iter().find(|(m, _)| *m > n).map(|(m, _)| (*m, 0)),
        }
    }

    /// Reads whole frames of segment `n` from `offset`; returns where the next one starts and
    /// whether `each` asked to stop.
    fn read_segment(
        &mut self,
        n: u64,
        path: &Path,
        mut offset: u64,
        each: &mut impl FnMut(&Read) -> bool,
    ) -> Result<(u64, bool), Error> {
        let file = match fs::File::open(path) {
            Ok(f) => f,
            // Deleted by retention since it was listed: the next poll moves on.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((offset, false)),
            Err(e) => return Err(Error::io(path, e)),
        };
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut want = WINDOW;
        while offset < len {
            let remaining = (len - offset) as usize;
            self.buf.resize(remaining.min(want), 0);
            file.read_exact_at(&mut self.buf, offset)
                .map_err(|e| Error::io(path, e))?;
            let mut at = 0usize;
            let mut short = false;
            while at < self.buf.len() {
                match frame::decode(&self.buf[at..]) {
                    Ok(f) => {
                        let size = f.size();
                        if f.seq > self.after_seq {
                            let r = Read {
                                segment: n,
                                offset: offset + at as u64,
                                seq: f.seq,
                                kind: f.kind,
                                body: f.body.to_vec(),
                            };
                            self.after_seq = f.seq;
                            if !each(&r) {
                                return Ok((offset + (at + size) as u64, true));
                            }
                        }
                        at += size;
                    }
                    // Damaged in place: `verify` reports it; the records after it are read.
                    Err(Bad::Checksum { size, .. }) => at += size,
                    Err(Bad::Short) => {
                        short = true;
                        break;
                    }
                    // Not a frame: damage, or a crash's torn tail the agent cuts at its
                    // next start; nothing more of this segment is read now.
                    Err(Bad::Garbage) => return Ok((offset + at as u64, false)),
                }
            }
            let need = if short { frame_len(&self.buf[at..]) } else { 0 };
            offset += at as u64;
            if short {
                if need > (len - offset) as usize {
                    // The last frame is still being written.
                    break;
                }
                // A frame larger than the window: read it whole.
                want = WINDOW.max(need);
            }
        }
        Ok((offset, false))
    }
}

/// The size a frame's header announces (at least a header's worth).
fn frame_len(buf: &[u8]) -> usize {
    if buf.len() < 4 {
        return frame::HEAD + frame::TAIL;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    frame::HEAD + len.min(frame::MAX_BODY) + frame::TAIL
}
