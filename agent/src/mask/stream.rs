//! Masking a stream chunk by chunk with a bounded hold-back, so that any split of the input
//! gives exactly the output of the unsplit text.
use super::{
    Action,
    scan::{Finding, Scanner, Tracker},
};

/// Masks one byte stream. Output lags input by at most [`Scanner::max_hold`] bytes, and by
/// [`Scanner::min_hold`] while no trigger (an anchor literal, a digit run) is pending.
pub struct StreamMasker<'s> {
    scanner: &'s Scanner,
    action: Action,
    tracker: Tracker,
    /// Next byte to release.
    emit: usize,
    found: Vec<Finding>,
    counts: Vec<u64>,
}

impl<'s> StreamMasker<'s> {
    pub fn new(scanner: &'s Scanner, action: Action) -> Self {
        StreamMasker {
            scanner,
            action,
            tracker: Tracker::new(scanner),
            emit: 0,
            found: Vec::new(),
            counts: vec![0; scanner.detectors().len()],
        }
    }

    /// Feeds `chunk` (`end`: the stream is over) and appends to `out` every byte now safe
    /// to release, masked.
    pub fn push(&mut self, chunk: &[u8], end: bool, out: &mut Vec<u8>) {
        self.found.clear();
        self.tracker.feed(self.scanner, chunk, end, &mut self.found);
        let decided = self.tracker.decided();
        let from = self.emit;
        let bytes = self.tracker.bytes_from(from);
        let mut at = from;
        for f in &self.found {
            out.extend_from_slice(&bytes[at - from..f.range.start - from]);
            let value = &bytes[f.range.start - from..f.range.end - from];
            self.action
                .replace(self.scanner.name(f.detector), value, out);
            self.counts[f.detector] += 1;
            at = f.range.end;
        }
        if at < decided {
            out.extend_from_slice(&bytes[at - from..decided - from]);
            at = decided;
        }
        self.emit = at;
        self.tracker.trim(self.scanner, self.emit);
    }

    /// Findings so far per detector (index as in [`Scanner::detectors`]); never the values.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Bytes received but not yet released.
    pub fn held(&self) -> usize {
        self.tracker.avail() - self.emit
    }
}

/// Masks a whole text (the unsplit reference for streams).
pub fn mask(scanner: &Scanner, text: &[u8], action: &Action) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    for f in scanner.find(text) {
        out.extend_from_slice(&text[at..f.range.start]);
        action.replace(scanner.name(f.detector), &text[f.range.clone()], &mut out);
        at = f.range.end;
    }
    out.extend_from_slice(&text[at..]);
    out
}
