//! What to look for: the built-in secret and PII detectors, and custom ones from config.
//!
//! A detector is a regex confirmed on a bounded window around a cheap trigger: a literal
//! anchor (found for all detectors at once by one aho-corasick automaton) or the start of a
//! run of digits (numbers carry no literal). `back` and `fwd` bound the window, so the
//! longest match a detector can report is `back + fwd` bytes, which is what a stream must
//! hold back for it.
use regex_automata::{meta::Regex, util::syntax};
use serde::Deserialize;

use super::{MaskError, validate::Validator};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Secret,
    Pii,
}

/// What makes the engine look at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Any of these literals, matched ASCII case-insensitively (the regex decides case).
    Literals(Vec<Vec<u8>>),
    /// The first digit of a run of digits.
    Digits,
}

/// Where a match lies relative to its trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The match starts exactly at the trigger (or where the detector's [`Gate`] says):
    /// an anchored search, which fails in a few bytes on a look-alike.
    At,
    /// The match contains the trigger position.
    Within,
    /// The match starts at or after the trigger (a keyword before the value).
    After,
}

#[derive(Debug, Clone)]
pub struct Detector {
    pub(crate) name: String,
    pub(crate) class: Class,
    pub(crate) regex: Regex,
    pub(crate) trigger: Trigger,
    pub(crate) place: Place,
    /// How far before the trigger a match may start.
    pub(crate) back: usize,
    /// How far after the trigger a match may end.
    pub(crate) fwd: usize,
    pub(crate) validators: Vec<Validator>,
    pub(crate) gate: Gate,
    /// Capture group holding the part to mask (`v`), when the match carries a keyword too.
    pub(crate) value_group: Option<usize>,
}

impl Detector {
    fn new(
        name: &str,
        class: Class,
        pattern: &str,
        trigger: Trigger,
        (back, fwd): (usize, usize),
        validators: Vec<Validator>,
    ) -> Result<Self, MaskError> {
        let regex = Regex::builder()
            .syntax(syntax::Config::new().utf8(false))
            .configure(Regex::config().utf8_empty(false))
            .build(pattern)
            .map_err(|e| MaskError::Regex {
                detector: name.to_string(),
                error: e.to_string(),
            })?;
        let value_group = regex
            .group_info()
            .to_index(regex_automata::PatternID::ZERO, "v");
        Ok(Detector {
            name: name.to_string(),
            class,
            regex,
            trigger,
            place: Place::Within,
            back,
            fwd,
            validators,
            gate: Gate::None,
            value_group,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn class(&self) -> Class {
        self.class
    }

    /// The longest match this detector can report.
    pub fn max_len(&self) -> usize {
        self.back + self.fwd
    }

    /// Every built-in detector, most specific first (the order breaks ties between
    /// detectors matching the same bytes).
    pub fn builtin() -> Vec<Detector> {
        builtin_specs()
            .into_iter()
            .map(|(name, class, pat, trig, win, vals)| {
                // Built-in patterns are constants covered by tests; a failure here is a bug.
                #[allow(clippy::expect_used)]
                let mut d =
                    Detector::new(name, class, pat, trig, win, vals).expect("built-in detector");
                (d.place, d.gate) = placement(name);
                d
            })
            .collect()
    }

    /// A detector from a policy pack's configuration.
    pub fn custom(spec: &CustomSpec) -> Result<Detector, MaskError> {
        let err = |error: String| MaskError::Regex {
            detector: spec.name.clone(),
            error,
        };
        if spec.max_len == 0 || spec.max_len > MAX_CUSTOM_LEN {
            return Err(err(format!("max_len must be 1..={MAX_CUSTOM_LEN}")));
        }
        let keywords: Vec<Vec<u8>> = spec
            .keywords
            .iter()
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_ascii_lowercase())
            .collect();
        let kw_len = keywords.iter().map(Vec::len).max().unwrap_or(0);
        let mut validators: Vec<Validator> = spec.validator.iter().map(Into::into).collect();
        let (trigger, place, back, fwd) = match prefix_literals(&spec.regex) {
            Some(lits) => {
                if !keywords.is_empty() {
                    validators.push(Validator::Near {
                        keywords: keywords.clone(),
                        within: spec.proximity + kw_len,
                    });
                }
                (
                    Trigger::Literals(lits),
                    Place::At,
                    spec.proximity + kw_len,
                    spec.max_len,
                )
            }
            None if !keywords.is_empty() => (
                Trigger::Literals(keywords),
                Place::After,
                0,
                kw_len + spec.proximity + spec.max_len,
            ),
            None => {
                return Err(err(
                    "needs a literal prefix (at least 2 bytes) or keywords to anchor it".into(),
                ));
            }
        };
        let mut d = Detector::new(
            &spec.name,
            spec.class.unwrap_or(ClassSpec::Secret).into(),
            &spec.regex,
            trigger,
            (back, fwd),
            validators,
        )?;
        d.place = place;
        Ok(d)
    }
}

const MAX_CUSTOM_LEN: usize = 4096;

/// Cheap byte checks at a digit run that say where a match could start, or that none can:
/// most numbers (timestamps, counts, ids) are dismissed without running a regex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    None,
    Card,
    Ssn,
    Phone,
    Iban,
    Ipv4,
    Ipv6,
}

impl Gate {
    /// Whether any digit gate can pass at `p`: one look at the bytes around the run, so
    /// the common number (a timestamp, a count) costs a few comparisons for all of them.
    pub(crate) fn any_digit_gate(h: &[u8], p: usize) -> bool {
        let run = h[p..].iter().take_while(|c| c.is_ascii_digit()).count();
        let next = h.get(p + run).copied().unwrap_or(0);
        let prev = p.checked_sub(1).map_or(0, |i| h[i]);
        let prev2 = p.checked_sub(2).map_or(0, |i| h[i]);
        run >= 13
            || matches!(next, b' ' | b'-' | b'.' | b')' | b':')
            || next.is_ascii_hexdigit()
            || matches!(prev, b'+' | b'(')
            || (prev == b':' && (prev2.is_ascii_hexdigit() || prev2 == b':'))
            || prev.is_ascii_hexdigit()
            || (prev.is_ascii_uppercase() && prev2.is_ascii_uppercase())
    }

    /// The gates that may pass at the digit run starting at `p` in `h`, as a bit set (see
    /// [`Gate::bit`]): the run's shape is read once for all of them. `h` may extend further
    /// on either side than any detector's window: a gate absent from the set fails
    /// [`Gate::start`] on every window holding `p` (each test here is implied by its gate's
    /// own), so skipping it changes no finding. [`Gate::None`] is always in.
    pub(crate) fn possible(h: &[u8], p: usize) -> u8 {
        let run = h[p..].iter().take_while(|c| c.is_ascii_digit()).count();
        Gate::possible_run(h, p, run)
    }

    /// [`Gate::possible`] for a run of `run` digits at `p`.
    #[inline]
    pub(crate) fn possible_run(h: &[u8], p: usize, run: usize) -> u8 {
        let next = h.get(p + run).copied();
        let prev = p.checked_sub(1).map(|i| h[i]);
        if Gate::all_shut(prev, run, next) {
            return Gate::None.bit();
        }
        let after = h.get(p + run + 1).copied();
        let prev2 = p.checked_sub(2).map(|i| h[i]);
        let mut set = Gate::None.bit();
        let digit_after = after.is_some_and(|c| c.is_ascii_digit());
        // A card's 13 digits are one run, or go on across a separator.
        if (run >= 13 || (matches!(next, Some(b' ' | b'-')) && digit_after)) && card_digits(h, p) {
            set |= Gate::Card.bit();
        }
        if run == 3 && next == Some(b'-') {
            set |= Gate::Ssn.bit();
        }
        if (1..=3).contains(&run) && next == Some(b'.') && digit_after && dotted_quad(h, p, false) {
            set |= Gate::Ipv4.bit();
        }
        if run >= 2
            && prev.is_some_and(|c| c.is_ascii_uppercase())
            && prev2.is_some_and(|c| c.is_ascii_uppercase())
        {
            set |= Gate::Iban.bit();
        }
        if (matches!(prev, Some(b'+' | b'('))
            || ((2..=5).contains(&run) && matches!(next, Some(b' ' | b'-' | b'.')) && digit_after))
            && (phone_after_sign(h, p) || phone_national(h, p, run))
        {
            set |= Gate::Phone.bit();
        }
        // An IPv6 group holding the run ends or starts at a colon after or before it: a
        // colon or a hex letter must touch the run (most digit runs have neither).
        let touch = |c: Option<u8>| c.is_some_and(|c| NEAR_DIGITS[usize::from(c)] & HEXISH != 0);
        if (touch(next) || touch(prev))
            && colon_near(h, p, run)
            && ipv6_span(h, p - hexish_back(h, p))
        {
            set |= Gate::Ipv6.bit();
        }
        set
    }

    /// Whether no digit gate can open at a run of `run` digits between `prev` and `next`
    /// (`None`: the text's edge): every gate needs one of a few bytes right before or after
    /// the run, or a run of 13, so one table look each dismisses most numbers (a count, a
    /// timestamp's year). Less context (`prev` unknown) never dismisses less.
    #[inline]
    pub(crate) fn all_shut(prev: Option<u8>, run: usize, next: Option<u8>) -> bool {
        let next_class = next.map_or(0, |c| NEAR_DIGITS[usize::from(c)]);
        let prev_class = prev.map_or(0, |c| NEAR_DIGITS[usize::from(c)]);
        run < 13 && next_class & AFTER == 0 && prev_class & BEFORE == 0
    }

    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Where to try an anchored match for the trigger at `p` in `h` (a window, `h.len()`
    /// its end), or `None` when no match can start near it.
    ///
    /// Besides the gate's own test, a check of the shape every match starting there has
    /// (a dotted quad, 13 card digits, an SSN's or a phone number's groups, an IPv6
    /// address's `::` or seven colons) turns most look-alikes (dates, times, versions, hex ids) away before
    /// the regex: each check is implied by the detector's regex, so no finding changes.
    pub(crate) fn start(self, h: &[u8], p: usize) -> Option<usize> {
        let at = self.loose_start(h, p)?;
        let shaped = match self {
            Gate::None | Gate::Iban => true,
            Gate::Ssn => digits(h, p + 4, 2) && one_of(h, p + 6, b"-") && digits(h, p + 7, 4),
            Gate::Card => card_digits(h, p),
            Gate::Ipv4 => dotted_quad(h, p, true),
            Gate::Phone if at < p => phone_after_sign(h, p),
            Gate::Phone => {
                let run = h[p..].iter().take_while(|c| c.is_ascii_digit()).count();
                phone_national(h, p, run)
            }
            Gate::Ipv6 => ipv6_span(h, at),
        };
        shaped.then_some(at)
    }

    /// [`Gate::start`] without the shape checks.
    pub(crate) fn loose_start(self, h: &[u8], p: usize) -> Option<usize> {
        let run = h[p..].iter().take_while(|c| c.is_ascii_digit()).count();
        let next = h.get(p + run).copied();
        let prev = p.checked_sub(1).map(|i| h[i]);
        match self {
            Gate::None => Some(p),
            Gate::Card => {
                let mut digits = 0;
                for c in &h[p..] {
                    match c {
                        b'0'..=b'9' => digits += 1,
                        b' ' | b'-' => {}
                        _ => break,
                    }
                    if digits >= 13 {
                        return Some(p);
                    }
                }
                None
            }
            Gate::Ssn => (run == 3 && next == Some(b'-')).then_some(p),
            Gate::Ipv4 => ((1..=3).contains(&run)
                && next == Some(b'.')
                && h.get(p + run + 1).is_some_and(u8::is_ascii_digit))
            .then_some(p),
            Gate::Iban => (run >= 2
                && p >= 2
                && h[p - 2].is_ascii_uppercase()
                && h[p - 1].is_ascii_uppercase())
            .then(|| p - 2),
            Gate::Phone => match prev {
                Some(b'+' | b'(') => Some(p - 1),
                // A national form: a 2-5 digit group, a separator, then more digits.
                _ if (2..=5).contains(&run)
                    && matches!(next, Some(b' ' | b'-' | b'.'))
                    && h.get(p + run + 1).is_some_and(u8::is_ascii_digit) =>
                {
                    Some(p)
                }
                _ => None,
            },
            Gate::Ipv6 => {
                let tail = h[p..].iter().take(5).position(|c| !c.is_ascii_hexdigit());
                let head = h[..p]
                    .iter()
                    .rev()
                    .take(4)
                    .position(|c| !c.is_ascii_hexdigit());
                let colon_after = tail.is_some_and(|i| h[p + i] == b':');
                let colon_before = head.is_some_and(|i| h[p - i - 1] == b':');
                if !colon_after && !colon_before {
                    return None;
                }
                Some(p - hexish_back(h, p))
            }
        }
    }
}

/// [`NEAR_DIGITS`] bit: the byte after a digit run may open a gate (a separator, `.`, `:`,
/// or a hex letter continuing an IPv6 group).
const AFTER: u8 = 1;
/// The byte before a digit run may open a gate (`+`, `(`, an IBAN's country letters, `:`
/// or a hex letter of an IPv6 group).
const BEFORE: u8 = 2;
/// A colon or a hex letter.
const HEXISH: u8 = 4;

static NEAR_DIGITS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let hex_letter = matches!(b, b'a'..=b'f' | b'A'..=b'F');
        if matches!(b, b' ' | b'-' | b'.' | b':') || hex_letter {
            t[c] |= AFTER;
        }
        if matches!(b, b'+' | b'(' | b':' | b'A'..=b'Z') || hex_letter {
            t[c] |= BEFORE;
        }
        if b == b':' || hex_letter {
            t[c] |= HEXISH;
        }
        c += 1;
    }
    t
};

/// Whether the first byte that is not a hex digit within five bytes from `p` (a run of
/// `run` digits), or within four before it, is a colon: an IPv6 group holds the run.
fn colon_near(h: &[u8], p: usize, run: usize) -> bool {
    let end = (p + 5).min(h.len());
    let mut i = p + run;
    while i < end && h[i].is_ascii_hexdigit() {
        i += 1;
    }
    if i < end && h[i] == b':' {
        return true;
    }
    let stop = p.saturating_sub(4);
    let mut i = p;
    while i > stop && h[i - 1].is_ascii_hexdigit() {
        i -= 1;
    }
    i > stop && h[i - 1] == b':'
}

fn hexish(c: &u8) -> bool {
    c.is_ascii_hexdigit() || *c == b':'
}

/// How many hex digits and colons directly precede `p`.
fn hexish_back(h: &[u8], p: usize) -> usize {
    let mut i = p;
    while i > 0 && hexish(&h[i - 1]) {
        i -= 1;
    }
    p - i
}

fn digit(h: &[u8], i: usize) -> bool {
    h.get(i).is_some_and(u8::is_ascii_digit)
}

fn digits(h: &[u8], from: usize, n: usize) -> bool {
    (from..from + n).all(|i| digit(h, i))
}

fn one_of(h: &[u8], i: usize, set: &[u8]) -> bool {
    h.get(i).is_some_and(|c| set.contains(c))
}

/// Whether 13 digits follow `p`, at most one space or hyphen between two of them (a card
/// number's shape).
fn card_digits(h: &[u8], p: usize) -> bool {
    let (mut n, mut sep) = (0, false);
    for &c in &h[p..] {
        if c.is_ascii_digit() {
            n += 1;
            sep = false;
            if n >= 13 {
                return true;
            }
        } else if matches!(c, b' ' | b'-') && !sep {
            sep = true;
        } else {
            return false;
        }
    }
    false
}

/// Whether four dot-separated groups of 1 to 3 digits start at `p`. `exact`: the last
/// group too is at most 3 digits (in a window: a longer group fails the regex's `\b`, but
/// a window cut inside it does not).
fn dotted_quad(h: &[u8], p: usize, exact: bool) -> bool {
    let mut i = p;
    for group in 0..4 {
        let n = h[i.min(h.len())..]
            .iter()
            .take(4)
            .take_while(|c| c.is_ascii_digit())
            .count();
        if n == 0 || (n > 3 && (exact || group < 3)) {
            return false;
        }
        i += n;
        if group < 3 {
            if h.get(i) != Some(&b'.') {
                return false;
            }
            i += 1;
        }
    }
    true
}

/// A phone number starting at `p - 1` with `+` (E.164) or `(` (a North American area code).
fn phone_after_sign(h: &[u8], p: usize) -> bool {
    match p.checked_sub(1).map(|i| h[i]) {
        Some(b'+') => matches!(h[p], b'1'..=b'9'),
        Some(b'(') => matches!(h[p], b'2'..=b'9') && digits(h, p + 1, 2) && one_of(h, p + 3, b")"),
        _ => false,
    }
}

/// A phone number starting at `p` (a digit run of `run` digits) without a sign: North
/// American `555-123-4567`, or a national form with a trunk 0.
fn phone_national(h: &[u8], p: usize, run: usize) -> bool {
    let nanp = run == 3
        && matches!(h[p], b'2'..=b'9')
        && one_of(h, p + 3, b" .-")
        && digits(h, p + 4, 3)
        && one_of(h, p + 7, b" .-")
        && digits(h, p + 8, 4);
    let trunk = h[p] == b'0'
        && matches!(h.get(p + 1), Some(b'1'..=b'9'))
        && (2..=6).contains(&run)
        && one_of(h, p + run, b" -")
        && digits(h, p + run + 1, 2);
    nanp || trunk
}

/// Whether the hex digits and colons from `at` hold a `::` or seven colons, as every IPv6
/// match (which lies within them) does.
fn ipv6_span(h: &[u8], at: usize) -> bool {
    let (mut colons, mut after_colon) = (0, false);
    for c in &h[at..] {
        if *c == b':' {
            if after_colon {
                return true;
            }
            colons += 1;
            if colons >= 7 {
                return true;
            }
            after_colon = true;
        } else if c.is_ascii_hexdigit() {
            after_colon = false;
        } else {
            break;
        }
    }
    false
}

fn placement(name: &str) -> (Place, Gate) {
    match name {
        "aws_secret_key" | "email" => (Place::Within, Gate::None),
        "payment_card" => (Place::At, Gate::Card),
        "us_ssn" => (Place::At, Gate::Ssn),
        "phone" => (Place::At, Gate::Phone),
        "iban" => (Place::At, Gate::Iban),
        "ipv4" => (Place::At, Gate::Ipv4),
        "ipv6" => (Place::At, Gate::Ipv6),
        _ => (Place::At, Gate::None),
    }
}

/// The literal prefixes every match of `pattern` starts with, if they are few and long
/// enough to anchor on (lowercased: the automaton is case-insensitive).
fn prefix_literals(pattern: &str) -> Option<Vec<Vec<u8>>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let hir = regex_syntax::ParserBuilder::new()
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()?;
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    let mut lits: Vec<Vec<u8>> = seq
        .literals()?
        .iter()
        .map(|l| l.as_bytes().to_ascii_lowercase())
        .collect();
    lits.sort();
    lits.dedup();
    // A small class after the prefix (`EMP-[0-9]{6}`) expands into many literals; their
    // common shorter prefixes anchor every match as well.
    while lits.len() > 64 {
        let longest = lits.iter().map(Vec::len).max().unwrap_or(0);
        if longest <= 2 {
            return None;
        }
        for l in &mut lits {
            l.truncate(longest - 1);
        }
        lits.dedup();
    }
    (!lits.is_empty() && lits.iter().all(|l| l.len() >= 2)).then_some(lits)
}

/// A custom detector in a policy pack.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomSpec {
    pub name: String,
    /// Rust regex syntax. Either it starts with literal text, or `keywords` are given.
    pub regex: String,
    /// Words (case-insensitive) that must appear within `proximity` bytes before a match.
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default = "default_proximity")]
    pub proximity: usize,
    #[serde(default)]
    pub validator: Option<ValidatorSpec>,
    /// The longest match to look for (bytes); a stream holds back this much.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    #[serde(default)]
    pub class: Option<ClassSpec>,
}

fn default_proximity() -> usize {
    32
}

fn default_max_len() -> usize {
    256
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassSpec {
    Secret,
    Pii,
}

impl From<ClassSpec> for Class {
    fn from(c: ClassSpec) -> Class {
        match c {
            ClassSpec::Secret => Class::Secret,
            ClassSpec::Pii => Class::Pii,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ValidatorSpec {
    Luhn,
    Mod97,
    Entropy {
        min_bits: f64,
        #[serde(default)]
        min_classes: u8,
    },
}

impl From<&ValidatorSpec> for Validator {
    fn from(v: &ValidatorSpec) -> Validator {
        match v {
            ValidatorSpec::Luhn => Validator::Luhn,
            ValidatorSpec::Mod97 => Validator::Mod97,
            ValidatorSpec::Entropy {
                min_bits,
                min_classes,
            } => Validator::Entropy {
                min_bits: *min_bits,
                min_classes: *min_classes,
            },
        }
    }
}

type Spec = (
    &'static str,
    Class,
    &'static str,
    Trigger,
    (usize, usize),
    Vec<Validator>,
);

fn lits(l: &[&str]) -> Trigger {
    Trigger::Literals(l.iter().map(|s| s.as_bytes().to_vec()).collect())
}

// Every pattern is byte-oriented and ASCII-only ((?-u)), so `\b` looks at one byte and
// classes never decode UTF-8.
fn builtin_specs() -> Vec<Spec> {
    use Class::{Pii, Secret};
    let entropy = Validator::Entropy {
        min_bits: 3.5,
        min_classes: 3,
    };
    vec![
        (
            "anthropic_key",
            Secret,
            r"(?-u)\bsk-ant-[A-Za-z0-9_\-]{32,200}",
            lits(&["sk-ant-"]),
            (0, 207),
            vec![Validator::Mixed],
        ),
        (
            "openai_key",
            Secret,
            r"(?-u)\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,200}",
            lits(&["sk-"]),
            (0, 212),
            vec![Validator::Mixed],
        ),
        (
            "aws_access_key",
            Secret,
            r"(?-u)\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
            lits(&["AKIA", "ASIA", "ABIA", "ACCA"]),
            (0, 20),
            vec![],
        ),
        (
            "aws_secret_key",
            Secret,
            r#"(?-u)(?i:aws_?secret_?(?:access_?)?key|secret_?access_?key)["']?\s{0,4}[:=]\s{0,4}["']?(?P<v>[A-Za-z0-9/+=]{40})(?:[^A-Za-z0-9/+=]|$)"#,
            lits(&["aws_secret", "awssecret", "secret_access", "secretaccess"]),
            (8, 100),
            vec![],
        ),
        (
            "github_token",
            Secret,
            r"(?-u)\b(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,251})\b",
            lits(&["ghp_", "gho_", "ghs_", "ghu_", "ghr_", "github_pat_"]),
            (0, 262),
            vec![],
        ),
        (
            "gitlab_token",
            Secret,
            r"(?-u)\bglpat-[A-Za-z0-9_\-]{20,60}",
            lits(&["glpat-"]),
            (0, 66),
            vec![],
        ),
        (
            "slack_token",
            Secret,
            r"(?-u)\bxox[abpr]-[0-9A-Za-z\-]{20,250}",
            lits(&["xoxa-", "xoxb-", "xoxp-", "xoxr-"]),
            (0, 255),
            vec![Validator::Mixed],
        ),
        (
            "stripe_key",
            Secret,
            r"(?-u)\b[sr]k_live_[0-9A-Za-z]{24,99}",
            lits(&["sk_live_", "rk_live_"]),
            (0, 107),
            vec![],
        ),
        (
            "google_api_key",
            Secret,
            r"(?-u)\bAIza[0-9A-Za-z_\-]{35}",
            lits(&["AIza"]),
            (0, 39),
            vec![],
        ),
        (
            "jwt",
            Secret,
            // Open-ended runs, bounded by the detector's window: a bounded repetition is
            // unrolled into one NFA state per count (`{2,3000}` made this regex 0.7 MB of
            // the agent's memory), and the window already caps the match's length.
            r"(?-u)\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*",
            lits(&["eyJ"]),
            (0, 4106),
            vec![Validator::Jwt],
        ),
        (
            "private_key",
            Secret,
            // As for `jwt`: the window, not the repetition, bounds the key's length.
            r"(?-u)-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY-----[A-Za-z0-9+/=\s:,\\\-]{16,}?-----END (?:[A-Z0-9]+ ){0,3}PRIVATE KEY-----",
            lits(&["-----BEGIN "]),
            (0, 6100),
            vec![],
        ),
        (
            "password_assignment",
            Secret,
            r#"(?-u)(?i:passwd|password|passphrase|api[_\-]?key|client[_\-]?secret|secret(?:[_\-]?key)?|access[_\-]?token|auth[_\-]?token|private[_\-]?key)["']?\s{0,3}[:=]\s{0,3}["']?(?P<v>[^\s"'`,;]{4,128})"#,
            lits(&[
                "passwd",
                "password",
                "passphrase",
                "api_key",
                "api-key",
                "apikey",
                "client_secret",
                "client-secret",
                "clientsecret",
                "secret",
                "access_token",
                "access-token",
                "accesstoken",
                "auth_token",
                "auth-token",
                "authtoken",
                "private_key",
                "private-key",
                "privatekey",
            ]),
            (0, 170),
            vec![Validator::Secretish],
        ),
        (
            "keyword_entropy",
            Secret,
            r"(?-u)(?i:bearer|token|secret|credential|api[_\-]?key|access[_\-]?key|auth)[^\n]{0,24}?\b(?P<v>[A-Za-z0-9+/_\-]{20,200}={0,2})",
            lits(&[
                "bearer",
                "token",
                "secret",
                "credential",
                "api_key",
                "api-key",
                "apikey",
                "access_key",
                "access-key",
                "accesskey",
                "auth",
            ]),
            (0, 240),
            vec![entropy],
        ),
        (
            "email",
            Pii,
            r"(?-u)[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?){0,6}\.[A-Za-z]{2,24}\b",
            lits(&["@"]),
            (64, 255),
            vec![Validator::EmailTld],
        ),
        (
            "payment_card",
            Pii,
            r"(?-u)\b[0-9](?:[ \-]?[0-9]){12,18}\b",
            Trigger::Digits,
            (24, 26),
            vec![Validator::Luhn, Validator::Standalone],
        ),
        (
            "iban",
            Pii,
            r"(?-u)\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
            Trigger::Digits,
            (2, 42),
            vec![Validator::Mod97],
        ),
        (
            "us_ssn",
            Pii,
            r"(?-u)\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b",
            Trigger::Digits,
            (0, 11),
            vec![Validator::Ssn],
        ),
        (
            "phone",
            Pii,
            concat!(
                r"(?-u)",
                // E.164, compact or grouped, optionally with a parenthesised area code.
                r"\+[1-9][0-9]{0,2}(?:[ .\-]?\(?[0-9]{1,4}\)?){1,2}(?:[ .\-]?[0-9]{2,4}){1,4}\b",
                // North American (555) 123-4567, 555-123-4567, 555.123.4567.
                r"|(?:\([2-9][0-9]{2}\) ?|\b[2-9][0-9]{2}[ .\-])[0-9]{3}[ .\-][0-9]{4}\b",
                // National forms with a trunk 0: 020 7946 0958, 07700 900123, 01 23 45 67 89.
                r"|\b0[1-9][0-9]{0,3}(?:[ \-][0-9]{2,4}){2,4}\b|\b0[1-9][0-9]{2,4} [0-9]{6,8}\b",
            ),
            Trigger::Digits,
            (4, 26),
            vec![Validator::Standalone],
        ),
        (
            "ipv4",
            Pii,
            r"(?-u)\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b",
            Trigger::Digits,
            // Two bytes before: enough to see that "1.2.3.4" follows another dotted number.
            (2, 15),
            vec![Validator::Ipv4],
        ),
        (
            "ipv6",
            Pii,
            concat!(
                r"(?-u)\b(?:",
                r"(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}",
                r"|(?:[0-9A-Fa-f]{1,4}:){1,6}(?::[0-9A-Fa-f]{1,4}){1,6}",
                r"|(?:[0-9A-Fa-f]{1,4}:){1,7}:",
                r")",
            ),
            Trigger::Digits,
            (39, 39),
            vec![Validator::Ipv6],
        ),
    ]
}
