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
                a.replace(self.scanner.name(detector), value, out);
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
