//! Masking a stream chunk by chunk with a bounded hold-back, so that any split of the input
//! gives exactly the output of the unsplit text.
use super::{
    Plan,
    plan::Counts,
    scan::{Finding, Tracker},
};

/// Masks one byte stream. Output lags input by at most [`Scanner::max_hold`] bytes, and by
/// [`Scanner::min_hold`] while no trigger (an anchor literal, a digit run) is pending.
///
/// [`Scanner::max_hold`]: super::Scanner::max_hold
/// [`Scanner::min_hold`]: super::Scanner::min_hold
pub struct StreamMasker {
    plan: Plan,
    tracker: Tracker,
    /// Next byte to release.
    emit: usize,
    found: Vec<Finding>,
    counts: Counts,
}

impl StreamMasker {
    pub fn new(plan: Plan) -> Self {
        let tracker = Tracker::new(plan.scanner());
        let counts = plan.counts();
        StreamMasker {
            plan,
            tracker,
            emit: 0,
            found: Vec::new(),
            counts,
        }
    }

    /// Feeds `chunk` (`end`: the stream is over) and appends to `out` every byte now safe
    /// to release, masked.
    pub fn push(&mut self, chunk: &[u8], end: bool, out: &mut Vec<u8>) {
        self.found.clear();
        let scanner = self.plan.scanner();
        self.tracker.feed(scanner, chunk, end, &mut self.found);
        let decided = self.tracker.decided();
        let from = self.emit;
        let bytes = self.tracker.bytes_from(from);
        let mut at = from;
        for f in &self.found {
            out.extend_from_slice(&bytes[at - from..f.range.start - from]);
            let value = &bytes[f.range.start - from..f.range.end - from];
            self.plan.apply(f.detector, value, out, &mut self.counts);
            at = f.range.end;
        }
        if at < decided {
            out.extend_from_slice(&bytes[at - from..decided - from]);
            at = decided;
        }
        self.emit = at;
        self.tracker.trim(self.plan.scanner(), self.emit);
    }

    /// Findings so far per detector (index as in [`Scanner::detectors`]); never the values.
    ///
    /// [`Scanner::detectors`]: super::Scanner::detectors
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Starts an unrelated text (the next JSON string, the next event's field): nothing of
    /// the previous one can join a finding with it. Call after the previous text's `end`
    /// push; counts carry on.
    pub fn restart(&mut self) {
        self.tracker.reset();
        self.emit = 0;
        self.found.clear();
    }

    /// Adds this masker's counts to `total` and zeroes its own (no allocation), so one
    /// response can sum many maskers.
    pub fn move_counts_to(&mut self, total: &mut Counts) {
        total.absorb(&mut self.counts);
    }

    /// Bytes received but not yet released.
    pub fn held(&self) -> usize {
        self.tracker.avail() - self.emit
    }
}

/// Masks a whole text with one action for every detector (the unsplit reference for
/// streams; requests use [`Plan::mask`]).
pub fn mask(scanner: &super::Scanner, text: &[u8], action: &super::Action) -> Vec<u8> {
    let plan = Plan::uniform(std::sync::Arc::new(scanner.clone()), action.clone());
    plan.mask(text, &mut plan.counts())
}
