//! One text channel of an event stream: its masker (text, or JSON for tool arguments),
//! its pseudonym restorer, and the carry that keeps every event's string whole UTF-8.
use super::{ChanKey, Counts, JsonError, JsonMasker, Restorer, StreamMasker};

pub(super) enum Body {
    Text {
        masker: Box<StreamMasker>,
        restorer: Option<Restorer>,
        scratch: Vec<u8>,
    },
    Json(Box<JsonMasker>),
}

pub(super) struct Channel {
    pub(super) key: ChanKey,
    pub(super) body: Body,
    /// Released bytes that end inside a UTF-8 character: each event's string must be whole.
    pub(super) carry: Vec<u8>,
}

impl Channel {
    /// Pushes `text` and appends the released text (whole characters) to `out`.
    pub(super) fn push(
        &mut self,
        text: &[u8],
        end: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), JsonError> {
        let from = out.len();
        out.append(&mut self.carry);
        match &mut self.body {
            Body::Text {
                masker,
                restorer,
                scratch,
            } => match restorer {
                Some(r) => {
                    scratch.clear();
                    masker.push(text, end, scratch);
                    r.push(scratch, end, out);
                }
                None => masker.push(text, end, out),
            },
            Body::Json(j) => j.push(text, end, out)?,
        }
        if !end {
            let cut = from + utf8_whole(&out[from..]);
            self.carry.extend_from_slice(&out[cut..]);
            out.truncate(cut);
        }
        Ok(())
    }

    pub(super) fn move_counts_to(&mut self, total: &mut Counts) {
        match &mut self.body {
            Body::Text { masker, .. } => masker.move_counts_to(total),
            Body::Json(j) => j.move_counts_to(total),
        }
    }

    pub(super) fn held(&self) -> usize {
        self.carry.len()
            + match &self.body {
                Body::Text {
                    masker, restorer, ..
                } => masker.held() + restorer.as_ref().map_or(0, Restorer::held),
                Body::Json(j) => j.held(),
            }
    }

    pub(super) fn restored(&self) -> u64 {
        match &self.body {
            Body::Text { restorer, .. } => restorer.as_ref().map_or(0, Restorer::restored),
            Body::Json(j) => j.restored(),
        }
    }
}

/// The length of the longest prefix of `b` that does not end inside a UTF-8 character.
pub(super) fn utf8_whole(b: &[u8]) -> usize {
    for back in 1..=b.len().min(4) {
        let c = b[b.len() - back];
        if c & 0xC0 == 0x80 {
            continue;
        }
        let len = match c {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        };
        return if len > back { b.len() - back } else { b.len() };
    }
    b.len()
}
