//! The engine: one aho-corasick pass over every detector's literal anchors, plus the starts
//! of digit runs, gives trigger positions; each trigger is confirmed by its detectors'
//! regexes on a bounded window and their validators; overlapping findings are resolved
//! leftmost first, then longest, then by detector order.
//!
//! The same incremental [`Tracker`] serves whole texts and streams: it confirms a trigger
//! only once its whole window has arrived and decides a finding only once no later trigger
//! can produce one that starts earlier. Every verdict therefore depends on the same bytes
//! however the input was cut, which is what makes a stream mask exactly like the whole text.
use std::ops::Range;

use regex_automata::{Anchored, Input, meta::Cache};

use super::{
    MaskError,
    anchors::{Anchors, digit_starts},
    detector::{Detector, Gate, Place, Trigger},
};

/// One thing found: which detector (an index into [`Scanner::detectors`]) and the bytes to
/// mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub detector: usize,
    pub range: Range<usize>,
}

/// What fires at a trigger position: the detectors to confirm there and the window they need.
#[derive(Debug, Clone)]
struct Source {
    detectors: Vec<usize>,
    /// The digit-run source: only built-in detectors with digit gates.
    digits: bool,
    /// Every detector here is anchored at its gate's start (and the gate is not
    /// [`Gate::None`]): a closed gate set rules them all out.
    gated: bool,
    back: usize,
    fwd: usize,
}

/// Compiled detectors. Immutable and shared: streams keep their own [`Tracker`].
#[derive(Debug, Clone)]
pub struct Scanner {
    detectors: Vec<Detector>,
    anchors: Anchors,
    /// Per aho-corasick pattern.
    sources: Vec<Source>,
    /// Triggered by the first digit of a digit run; `None` when no detector wants digits.
    digits: Option<Source>,
    max_anchor: usize,
    /// The furthest any match may start before its trigger.
    back_max: usize,
    /// The furthest a finding's value may start before a trigger, for detectors with no
    /// class restriction (below). Usually far less than `back_max`: most matches start at
    /// their trigger, and `back` only widens their window for context.
    reach_any: usize,
    /// Detectors whose bytes between a value's start and its trigger all belong to a class
    /// (an e-mail's local part before its `@`, an IPv6 address's hex digits and colons
    /// before a digit run): (how far back at most, the class).
    reach_class: Vec<(usize, ByteClass)>,
}

/// A set of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ByteClass([u64; 4]);

impl ByteClass {
    fn of(f: impl Fn(u8) -> bool) -> ByteClass {
        let mut bits = [0u64; 4];
        for b in 0..=255u8 {
            if f(b) {
                bits[usize::from(b >> 6)] |= 1 << (b & 63);
            }
        }
        ByteClass(bits)
    }

    fn has(self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] >> (b & 63) & 1 != 0
    }
}

impl Scanner {
    pub fn new(detectors: &[Detector]) -> Result<Scanner, MaskError> {
        let mut literals: Vec<Vec<u8>> = Vec::new();
        let mut sources: Vec<Source> = Vec::new();
        let mut digits: Option<Source> = None;
        for (i, d) in detectors.iter().enumerate() {
            let widen = |s: &mut Source| {
                s.detectors.push(i);
                s.gated &= d.place == Place::At && d.gate != Gate::None;
                s.back = s.back.max(d.back);
                s.fwd = s.fwd.max(d.fwd);
            };
            match &d.trigger {
                Trigger::Digits => widen(digits.get_or_insert(Source {
                    detectors: Vec::new(),
                    digits: true,
                    gated: true,
                    back: 0,
                    fwd: 0,
                })),
                Trigger::Literals(lits) => {
                    for l in lits {
                        let l = l.to_ascii_lowercase();
                        let k = match literals.iter().position(|x| *x == l) {
                            Some(k) => k,
                            None => {
                                literals.push(l);
                                sources.push(Source {
                                    detectors: Vec::new(),
                                    digits: false,
                                    gated: true,
                                    back: 0,
                                    fwd: 0,
                                });
                                literals.len() - 1
                            }
                        };
                        if !sources[k].detectors.contains(&i) {
                            widen(&mut sources[k]);
                        }
                    }
                }
            }
        }
        let anchors = Anchors::new(literals)?;
        let back_max = detectors.iter().map(|d| d.back).max().unwrap_or(0);
        let mut reach_any = 0;
        let mut reach_class: Vec<(usize, ByteClass)> = Vec::new();
        for d in detectors {
            match reach(d) {
                Reach::Any(n) => reach_any = reach_any.max(n),
                Reach::Class(n, c) => match reach_class.iter_mut().find(|(_, k)| *k == c) {
                    Some((m, _)) => *m = (*m).max(n),
                    None => reach_class.push((n, c)),
                },
            }
        }
        Ok(Scanner {
            detectors: detectors.to_vec(),
            max_anchor: anchors.max_len(),
            anchors,
            sources,
            digits,
            back_max,
            reach_any,
            reach_class,
        })
    }

    /// Every built-in detector.
    pub fn builtin() -> Scanner {
        // The built-in set is constant and covered by tests.
        #[allow(clippy::expect_used)]
        Scanner::new(&Detector::builtin()).expect("built-in scanner")
    }

    pub fn detectors(&self) -> &[Detector] {
        &self.detectors
    }

    pub fn name(&self, detector: usize) -> &str {
        self.detectors.get(detector).map_or("unknown", |d| d.name())
    }

    /// The most a stream holds back while no trigger is pending: a trigger that has not
    /// fully arrived, plus how far before it a match may start. A pending trigger extends it
    /// to that trigger's window (at most [`Scanner::max_hold`]).
    pub fn min_hold(&self) -> usize {
        self.max_anchor + self.back_max + CTX
    }

    /// The most a stream ever holds back: the longest window of any detector, plus the
    /// anchor and context bytes. This is the bound on memory and delay per stream.
    pub fn max_hold(&self) -> usize {
        let widest = self
            .sources
            .iter()
            .chain(self.digits.iter())
            .map(|s| s.back + s.fwd)
            .max()
            .unwrap_or(0);
        widest + self.min_hold()
    }

    /// Every finding in `text`: non-overlapping, in order; among overlapping candidates the
    /// leftmost wins, then the longest, then the detector listed first.
    pub fn find<'a>(&'a self, text: &[u8]) -> impl Iterator<Item = Finding> + 'a {
        let mut t = Tracker::new(self);
        let mut out = Vec::new();
        self.feed_all(&mut t, text, &mut out);
        out.into_iter()
    }

    /// Feeds a whole text a slice at a time, dropping what is decided: a large body is not
    /// copied whole into the tracker (its copy and the lowercased scratch stay in cache).
    /// Exact, as any split is.
    fn feed_all(&self, t: &mut Tracker, text: &[u8], out: &mut Vec<Finding>) {
        const SLICE: usize = 64 << 10;
        let mut rest = text;
        while rest.len() > SLICE {
            let (now, later) = rest.split_at(SLICE);
            t.feed(self, now, false, out);
            t.trim(self, t.decided());
            rest = later;
        }
        t.feed(self, rest, true, out);
    }

    /// [`Scanner::find`] into `out`, reusing `t`'s scratch space: a body masked string by
    /// string pays for the regexes' caches once, not per string.
    pub fn find_with(&self, t: &mut Tracker, text: &[u8], out: &mut Vec<Finding>) {
        t.reset();
        self.feed_all(t, text, out);
    }

    /// Confirms trigger `p` of `source` against the bytes `hay` (which start at absolute
    /// offset `base` and end at `limit`), pushing what it finds.
    #[allow(clippy::too_many_arguments)]
    fn confirm(
        &self,
        caches: &mut [Option<Cache>],
        source: &Source,
        hay: &[u8],
        base: usize,
        p: usize,
        limit: usize,
        out: &mut Vec<Finding>,
    ) {
        // Which gates may pass at this digit run, read once: a number no gate can accept
        // (a time, a port, a count) costs a few comparisons, not a look per detector.
        let mut gates = u8::MAX;
        if source.digits {
            gates = Gate::possible(&hay[..limit - base], p - base);
            // Most digit runs (dates, times, counts, hex ids) leave no gate open: stop
            // before the per-detector loop.
            if source.gated && gates & !Gate::None.bit() == 0 {
                return;
            }
            let ctx = p.saturating_sub(2).max(base);
            let end = (p + source.fwd).min(limit);
            if !Gate::any_digit_gate(&hay[ctx - base..end - base], p - ctx) {
                return;
            }
        }
        for &i in &source.detectors {
            let d = &self.detectors[i];
            if d.place == Place::At && gates & d.gate.bit() == 0 {
                continue;
            }
            let ws = p.saturating_sub(d.back);
            let we = (p + d.fwd).min(limit);
            let ctx = ws.saturating_sub(CTX).max(base);
            let h = &hay[ctx - base..we - base];
            let (ws_rel, p_rel) = (ws - ctx, p - ctx);
            let cache = caches[i].get_or_insert_with(|| d.regex.create_cache());
            let Some((whole, value)) = first_match(d, cache, h, ws_rel, p_rel) else {
                continue;
            };
            if d.validators
                .iter()
                .all(|v| v.check(h, value.clone(), whole.clone()))
                && !value.is_empty()
            {
                out.push(Finding {
                    detector: i,
                    range: ctx + value.start..ctx + value.end,
                });
            }
        }
    }
}

/// The match the trigger belongs to, in the window `h`: (whole match, value to mask).
fn first_match(
    d: &Detector,
    cache: &mut Cache,
    h: &[u8],
    ws: usize,
    p: usize,
) -> Option<(Range<usize>, Range<usize>)> {
    let whole = match d.place {
        Place::At => {
            let at = d.gate.start(h, p)?;
            if at < ws {
                return None;
            }
            let input = Input::new(h).range(at..).anchored(Anchored::Yes);
            d.regex.search_with(cache, &input)?.range()
        }
        Place::Within | Place::After => {
            let mut at = ws;
            loop {
                let m = d.regex.search_with(cache, &Input::new(h).range(at..))?;
                let fits = match d.place {
                    Place::After => m.start() >= p,
                    _ => m.start() <= p && p < m.end(),
                };
                if fits {
                    break m.range();
                }
                if d.place != Place::After && m.start() > p {
                    return None;
                }
                at = m.end().max(m.start() + 1);
                if at > h.len() {
                    return None;
                }
            }
        }
    };
    let value = match d.value_group {
        Some(g) => {
            let mut caps = d.regex.create_captures();
            let input = Input::new(h).range(whole.start..).anchored(Anchored::Yes);
            d.regex.search_captures_with(cache, &input, &mut caps);
            caps.get_group(g).map_or(whole.clone(), |s| s.range())
        }
        None => whole.clone(),
    };
    Some((whole, value))
}

/// A trigger seen but not yet confirmable: its window has not fully arrived.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    p: usize,
    /// Index into `sources`, or `usize::MAX` for the digit source.
    source: usize,
}

const DIGITS: usize = usize::MAX;

/// Bytes of context kept before every window, so `\b` and validators see a match's real
/// neighbours (a version string's "1." before an address).
const CTX: usize = 4;

/// Incremental state over one byte stream (absolute offsets from the stream's start).
#[derive(Debug)]
pub struct Tracker {
    /// The regexes' scratch space, one per detector (no shared pool on the hot path), made
    /// when the detector is first confirmed: making all of them up front cost more than
    /// scanning a short text (a request body is masked string by string).
    caches: Vec<Option<Cache>>,
    /// Bytes from `base` on: context for windows still to confirm, and bytes not yet decided.
    buf: Vec<u8>,
    base: usize,
    /// Triggers before this offset have been enumerated.
    enumerated: usize,
    waiting: Vec<Waiting>,
    /// Confirmed findings not yet decided.
    pending: Vec<Finding>,
    /// End of the last finding chosen.
    covered: usize,
    /// Findings starting before this offset have been decided.
    decided: usize,
    /// Whether the byte before `enumerated` is a digit (a run continues across the cut).
    after_digit: bool,
    /// Scratch: the bytes being enumerated, lowercased.
    lower: Vec<u8>,
}

impl Tracker {
    pub fn new(sc: &Scanner) -> Tracker {
        Tracker {
            caches: (0..sc.detectors.len()).map(|_| None).collect(),
            buf: Vec::new(),
            base: 0,
            enumerated: 0,
            waiting: Vec::new(),
            pending: Vec::new(),
            covered: 0,
            decided: 0,
            after_digit: false,
            lower: Vec::new(),
        }
    }

    /// Forgets the stream (a new, unrelated text follows) but keeps the regex scratch
    /// space, which costs far more to build than a short text costs to scan.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.base = 0;
        self.enumerated = 0;
        self.waiting.clear();
        self.pending.clear();
        self.covered = 0;
        self.decided = 0;
        self.after_digit = false;
    }

    /// Offset just past the last byte fed.
    pub fn avail(&self) -> usize {
        self.base + self.buf.len()
    }

    /// Findings starting before this offset are final; bytes before it may be released.
    pub fn decided(&self) -> usize {
        self.decided
    }

    /// The bytes from absolute offset `from` (>= the oldest kept) to the end of input.
    pub fn bytes_from(&self, from: usize) -> &[u8] {
        &self.buf[from.saturating_sub(self.base).min(self.buf.len())..]
    }

    /// Feeds `data` (`end`: nothing follows) and appends the findings it decided, in order.
    pub fn feed(&mut self, sc: &Scanner, data: &[u8], end: bool, out: &mut Vec<Finding>) {
        self.buf.extend_from_slice(data);
        let avail = self.avail();
        // Triggers whose literal may still be incomplete wait for more bytes.
        let frontier = if end {
            avail
        } else {
            avail.saturating_sub(sc.max_anchor - 1).max(self.enumerated)
        };
        self.confirm_ready(sc, avail, end);
        self.enumerate(sc, frontier, end);
        let decided = if end {
            avail
        } else {
            let mut d = sc.settled(&self.buf, self.base, frontier);
            for w in &self.waiting {
                d = d.min(w.p.saturating_sub(sc.source(w.source).back));
            }
            d.max(self.decided)
        };
        self.decide(decided, out);
        self.decided = decided;
    }

    /// Drops bytes no later step needs; `keep_from` is the caller's own oldest needed byte.
    pub fn trim(&mut self, sc: &Scanner, keep_from: usize) {
        let mut keep = keep_from
            .min(self.enumerated.saturating_sub(sc.back_max + CTX))
            .min(self.decided);
        for w in &self.waiting {
            keep = keep.min(w.p.saturating_sub(sc.source(w.source).back + CTX));
        }
        if keep > self.base {
            let n = (keep - self.base).min(self.buf.len());
            self.buf.drain(..n);
            self.base += n;
        }
    }

    /// Finds the triggers in `[enumerated, to)`; those whose window is complete are
    /// confirmed at once, the others wait for more bytes.
    fn enumerate(&mut self, sc: &Scanner, to: usize, end: bool) {
        let from = self.enumerated;
        if to <= from {
            return;
        }
        let Tracker {
            buf,
            base,
            caches,
            waiting,
            pending,
            after_digit,
            lower,
            ..
        } = self;
        let base = *base;
        let avail = base + buf.len();
        let mut fire = |p: usize, source: usize| {
            let src = sc.source(source);
            if end || p + src.fwd <= avail {
                sc.confirm(caches, src, buf, base, p, avail, pending);
            } else {
                waiting.push(Waiting { p, source });
            }
        };
        let hay = &buf[from - base..];
        sc.anchors
            .each(hay, to - from, lower, |k, source| fire(from + k, source));
        if let Some(d) = &sc.digits {
            let gated = d.gated;
            let prefix = from - base;
            let all = &buf[..avail - base];
            digit_starts(hay, to - from, after_digit, |k, run| {
                // Most numbers are dismissed here, without a trigger: by the run's
                // neighbours once its end has arrived, by its gates once its window has.
                // `confirm` would dismiss them the same way, seeing the same or less
                // context.
                let p = prefix + k;
                if gated && k + run < hay.len() {
                    let prev = p.checked_sub(1).map(|i| all[i]);
                    if Gate::all_shut(prev, run, Some(hay[k + run])) {
                        return;
                    }
                    if (end || from + k + d.fwd <= avail)
                        && Gate::possible_run(all, p, run) == Gate::None.bit()
                    {
                        return;
                    }
                }
                fire(from + k, DIGITS)
            });
        }
        self.enumerated = to;
    }

    fn confirm_ready(&mut self, sc: &Scanner, avail: usize, end: bool) {
        let mut k = 0;
        while k < self.waiting.len() {
            let w = self.waiting[k];
            let src = sc.source(w.source);
            if end || w.p + src.fwd <= avail {
                sc.confirm(
                    &mut self.caches,
                    src,
                    &self.buf,
                    self.base,
                    w.p,
                    avail,
                    &mut self.pending,
                );
                self.waiting.swap_remove(k);
            } else {
                k += 1;
            }
        }
    }

    /// Chooses, among the pending findings that start before `to`, the non-overlapping ones.
    fn decide(&mut self, to: usize, out: &mut Vec<Finding>) {
        self.pending.sort_unstable_by(|a, b| {
            (a.range.start, std::cmp::Reverse(a.range.end), a.detector).cmp(&(
                b.range.start,
                std::cmp::Reverse(b.range.end),
                b.detector,
            ))
        });
        let n = self.pending.partition_point(|f| f.range.start < to);
        for f in self.pending.drain(..n) {
            if f.range.start >= self.covered {
                self.covered = f.range.end;
                out.push(f);
            }
        }
    }
}

/// How far before its trigger a detector's value may start.
enum Reach {
    Any(usize),
    /// At most this far, over bytes of the class only.
    Class(usize, ByteClass),
}

fn reach(d: &Detector) -> Reach {
    match (d.place, d.gate) {
        // Anchored where the gate says: at the trigger, or a fixed step before it.
        (Place::At, Gate::None | Gate::Card | Gate::Ssn | Gate::Ipv4) | (Place::After, _) => {
            Reach::Any(0)
        }
        (Place::At, Gate::Phone) => Reach::Any(1),
        (Place::At, Gate::Iban) => Reach::Any(2),
        (Place::At, Gate::Ipv6) => Reach::Class(
            d.back,
            ByteClass::of(|b| b.is_ascii_hexdigit() || b == b':'),
        ),
        // The e-mail's trigger is its `@`; the local part before it is of one class.
        (Place::Within, _) if d.name() == "email" => Reach::Class(
            d.back,
            ByteClass::of(|b| b.is_ascii_alphanumeric() || b"._%+-".contains(&b)),
        ),
        (Place::Within, _) => Reach::Any(d.back),
    }
}

impl Scanner {
    /// Findings starting before this offset are settled once every trigger before
    /// `frontier` has been confirmed: none found later can start earlier. The bytes kept
    /// from `base` on are `buf`.
    fn settled(&self, buf: &[u8], base: usize, frontier: usize) -> usize {
        let mut d = frontier.saturating_sub(self.reach_any);
        for (n, class) in &self.reach_class {
            let lo = frontier.saturating_sub(*n).max(base);
            let mut s = frontier;
            while s > lo && class.has(buf[s - 1 - base]) {
                s -= 1;
            }
            d = d.min(s);
        }
        d
    }

    fn source(&self, k: usize) -> &Source {
        match (&self.digits, k) {
            (Some(d), DIGITS) => d,
            _ => &self.sources[k],
        }
    }
}
