//! What one masking pass does: which detectors count and what each finding becomes.
//!
//! Policy compiles one [`Scanner`] over every detector it knows (built-ins and its custom
//! ones) at load, because compiling automata per request would cost far more than scanning;
//! each request then gets a [`Plan`]: that scanner plus an action per detector, `None` for a
//! detector no rule turned on for this request. A finding of an off detector passes through
//! unchanged.
use std::sync::Arc;

use super::{Action, Scanner};

/// A scanner and an action per detector (indexed as [`Scanner::detectors`]).
#[derive(Clone)]
pub struct Plan {
    scanner: Arc<Scanner>,
    actions: Arc<[Option<Action>]>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("detectors", &self.scanner.detectors().len())
            .field("on", &self.actions.iter().filter(|a| a.is_some()).count())
            .finish()
    }
}

/// What a pass found, per detector; never the values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Findings masked (or, for [`Action::Block`] detectors, found) per detector index.
    pub per_detector: Vec<u64>,
    /// Whether any finding belonged to a detector whose action is [`Action::Block`].
    pub blocked: bool,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.per_detector.iter().sum()
    }

    /// Adds `other` to these counts and zeroes it.
    pub fn absorb(&mut self, other: &mut Counts) {
        if self.per_detector.len() < other.per_detector.len() {
            self.per_detector.resize(other.per_detector.len(), 0);
        }
        for (a, b) in self
            .per_detector
            .iter_mut()
            .zip(other.per_detector.iter_mut())
        {
            *a += std::mem::take(b);
        }
        self.blocked |= std::mem::take(&mut other.blocked);
    }
}

impl Plan {
    /// `actions` must have one entry per detector of `scanner`; missing entries are off.
    pub fn new(scanner: Arc<Scanner>, mut actions: Vec<Option<Action>>) -> Plan {
        actions.resize(scanner.detectors().len(), None);
        Plan {
            scanner,
            actions: actions.into(),
        }
    }

    /// Every detector of `scanner` with the same action.
    pub fn uniform(scanner: Arc<Scanner>, action: Action) -> Plan {
        let n = scanner.detectors().len();
        Plan::new(scanner, vec![Some(action); n])
    }

    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    /// The action for `detector`, `None` when it is off in this plan.
    pub fn action(&self, detector: usize) -> Option<&Action> {
        self.actions.get(detector).and_then(Option::as_ref)
    }

    /// Whether any detector is on (a plan with none need not scan at all).
    pub fn any(&self) -> bool {
        self.actions.iter().any(Option::is_some)
    }

    pub fn counts(&self) -> Counts {
        Counts {
            per_detector: vec![0; self.actions.len()],
            blocked: false,
        }
    }

    /// Appends the replacement for a finding of `detector` over `value` to `out` and counts
    /// it; an off detector's bytes pass unchanged and are not counted.
    pub(super) fn apply(&self, detector: usize, value: &[u8], out: &mut Vec<u8>, c: &mut Counts) {
        match self.action(detector) {
            None => out.extend_from_slice(value),
            Some(a) => {
                if matches!(a, Action::Block) {
                    c.blocked = true;
                }
                if let Some(n) = c.per_detector.get_mut(detector) {
                    *n += 1;
                }
                // Byte patterns may begin or end inside a UTF-8 character; the parts of
                // characters cut off stay, so valid text stays valid (and JSON strings,
                // events, stay valid too). Only the range's own bytes decide, so a stream
                // and the whole text cut alike.
                let (from, to) = whole_chars(value);
                out.extend_from_slice(&value[..from]);
                if from < to {
                    a.replace(self.scanner.name(detector), &value[from..to], out);
                }
                out.extend_from_slice(&value[to.max(from)..]);
            }
        }
    }

    /// Masks a whole text: the unsplit reference every stream must equal.
    pub fn mask(&self, text: &[u8], counts: &mut Counts) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for f in self.scanner.find(text) {
            out.extend_from_slice(&text[at..f.range.start]);
            self.apply(f.detector, &text[f.range.clone()], &mut out, counts);
            at = f.range.end;
        }
        out.extend_from_slice(&text[at..]);
        out
    }
}

/// The part of `v` made of whole UTF-8 characters: past the continuation bytes it starts
/// with, and short of a character its end cuts.
fn whole_chars(v: &[u8]) -> (usize, usize) {
    let cont = |b: u8| b & 0xC0 == 0x80;
    let from = v.iter().take(3).take_while(|b| cont(**b)).count();
    let mut to = v.len();
    for back in 1..=v.len().saturating_sub(from).min(4) {
        let b = v[v.len() - back];
        if cont(b) {
            continue;
        }
        let len = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        if len > back {
            to = v.len() - back;
        }
        break;
    }
    (from, to)
}

#[cfg(test)]
mod tests {
    use super::whole_chars;

    #[test]
    fn cut_characters_are_left_out_of_a_finding() {
        assert_eq!(whole_chars(b"abc"), (0, 3));
        let s = "x日本".as_bytes(); // x, then two 3-byte characters
        assert_eq!(whole_chars(s), (0, 7));
        assert_eq!(whole_chars(&s[..5]), (0, 4), "the second character is cut");
        assert_eq!(whole_chars(&s[2..]), (2, 5), "starts inside the first");
        assert_eq!(whole_chars("😀".as_bytes()), (0, 4));
        assert_eq!(whole_chars(&"😀".as_bytes()[..3]), (0, 0));
    }
}
