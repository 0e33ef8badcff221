use proptest::prelude::*;
use std::sync::Arc;

use super::*;

const CORPUS: &str = include_str!("corpus/labelled.txt");

struct Case {
    positive: bool,
    label: String,
    text: String,
    /// Expected masked spans (positives).
    spans: Vec<std::ops::Range<usize>>,
}

fn corpus() -> Vec<Case> {
    CORPUS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (label, raw) = l.split_once('\t').expect("tab-separated corpus line");
            let positive = label.starts_with('+');
            let mut text = String::new();
            let mut spans = Vec::new();
            let mut start = 0;
            for c in raw.chars() {
                match c {
                    '«' => start = text.len(),
                    '»' => spans.push(start..text.len()),
                    _ => text.push(c),
                }
            }
            Case {
                positive,
                label: label[1..].to_string(),
                text,
                spans,
            }
        })
        .collect()
}

/// Runs every corpus line through the built-in scanner and reports false negatives (a
/// positive whose marked span is not found exactly, by its detector) and false positives
/// (a look-alike with any finding).
#[test]
fn corpus_rates() {
    let sc = Scanner::builtin();
    let cases = corpus();
    let (mut pos, mut neg, mut fneg, mut fpos) = (0, 0, 0, 0);
    for c in &cases {
        let got: Vec<(String, std::ops::Range<usize>)> = sc
            .find(c.text.as_bytes())
            .map(|f| (sc.name(f.detector).to_string(), f.range))
            .collect();
        if c.positive {
            pos += 1;
            let want: Vec<_> = c
                .spans
                .iter()
                .map(|s| (c.label.clone(), s.clone()))
                .collect();
            if got != want {
                fneg += 1;
                eprintln!("false negative [{}] {:?}: got {:?}", c.label, c.text, got);
            }
        } else {
            neg += 1;
            if !got.is_empty() {
                fpos += 1;
                eprintln!("false positive [{}] {:?}: got {:?}", c.label, c.text, got);
            }
        }
    }
    let (fnr, fpr) = (fneg as f64 / pos as f64, fpos as f64 / neg as f64);
    eprintln!(
        "mask corpus: {pos} positives, {neg} look-alikes; false negatives {fneg} ({:.1}%), false positives {fpos} ({:.1}%)",
        fnr * 100.0,
        fpr * 100.0
    );
    // Every built-in detector has at least one positive and one look-alike.
    for d in sc.detectors() {
        for want in [true, false] {
            assert!(
                cases
                    .iter()
                    .any(|c| c.positive == want && c.label == d.name()),
                "no {} case for {}",
                if want { "positive" } else { "look-alike" },
                d.name()
            );
        }
    }
    assert!(fnr <= 0.03, "false-negative rate {fnr}");
    assert!(fpr <= 0.03, "false-positive rate {fpr}");
}

fn key() -> PseudonymKey {
    PseudonymKey::new([7; 32])
}

#[test]
fn actions() {
    let sc = Scanner::builtin();
    let t = b"mail jane@example.com, card 4111 1111 1111 1111.";
    assert_eq!(
        mask(&sc, t, &Action::Redact),
        b"mail [REDACTED:email], card [REDACTED:payment_card].".to_vec()
    );
    assert_eq!(
        mask(&sc, t, &Action::Partial),
        "mail [REDACTED:email:….com], card [REDACTED:payment_card:…1111]."
            .as_bytes()
            .to_vec()
    );
    assert_eq!(mask(&sc, t, &Action::Block), t.to_vec());
    let p = |k: PseudonymKey, t: &[u8]| mask(&sc, t, &Action::Pseudonym(k));
    let a = p(key(), b"jane@example.com");
    assert_eq!(a, p(key(), b"jane@example.com"), "stable within a key");
    assert!(a.starts_with(b"[email:") && a.len() == "[email:".len() + 13);
    assert_ne!(a, p(key(), b"john@example.com"));
    assert_ne!(a, p(PseudonymKey::new([8; 32]), b"jane@example.com"));
}

#[test]
fn overlaps_resolve_leftmost_longest_then_order() {
    let sc = Scanner::builtin();
    // The Anthropic key also matches the OpenAI pattern: same span, the earlier detector wins.
    let k = format!("sk-ant-api03-{}", "aB3".repeat(30));
    let got: Vec<_> = sc
        .find(k.as_bytes())
        .map(|f| (sc.name(f.detector).to_string(), f.range))
        .collect();
    assert_eq!(got, vec![("anthropic_key".to_string(), 0..k.len())]);
    // A JWT after "Bearer" is one JWT, not a high-entropy token stopping at the dot.
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl";
    let t = format!("Authorization: Bearer {jwt}");
    let got: Vec<_> = sc
        .find(t.as_bytes())
        .map(|f| sc.name(f.detector).to_string())
        .collect();
    assert_eq!(got, vec!["jwt".to_string()]);
}

#[test]
fn custom_detectors() {
    let spec: CustomSpec = serde_norway::from_str(
        "name: employee_id\nregex: 'EMP-[0-9]{6}'\nkeywords: [employee]\nmax_len: 10\nclass: pii\n",
    )
    .expect("spec");
    let card: CustomSpec = serde_norway::from_str(
        "name: loyalty\nregex: '\\b[0-9]{16}\\b'\nkeywords: [loyalty]\nvalidator: luhn\n",
    )
    .expect("spec");
    let sc = Scanner::new(&[
        Detector::custom(&spec).expect("custom"),
        Detector::custom(&card).expect("custom"),
    ])
    .expect("scanner");
    let names = |t: &str| -> Vec<String> {
        sc.find(t.as_bytes())
            .map(|f| sc.name(f.detector).to_string())
            .collect()
    };
    assert_eq!(names("employee number EMP-123456"), vec!["employee_id"]);
    assert!(names("part EMP-123456").is_empty(), "keyword missing");
    assert_eq!(names("loyalty card: 4111111111111111"), vec!["loyalty"]);
    assert!(
        names("loyalty card: 4111111111111112").is_empty(),
        "fails Luhn"
    );
    let bad: CustomSpec = serde_norway::from_str("name: x\nregex: '[0-9]+'\n").expect("spec");
    assert!(Detector::custom(&bad).is_err(), "no anchor, no keywords");
    assert!(serde_norway::from_str::<CustomSpec>("name: x\nregex: a\nbogus: 1\n").is_err());
}

/// The corpus and some filler, joined: the reference text for stream tests.
fn stream_text() -> String {
    let mut t = String::new();
    for (i, c) in corpus().iter().enumerate() {
        t.push_str(&c.text);
        t.push_str(match i % 4 {
            0 => "\n",
            1 => " — ünïcødé ✓ 日本語 ",
            2 => "\ndata: {\"x\":1}\n\n",
            _ => " ",
        });
    }
    t
}

fn streamed(sc: &Scanner, text: &[u8], cuts: &[usize], action: &Action) -> Vec<u8> {
    let mut m = StreamMasker::new(Plan::uniform(Arc::new(sc.clone()), action.clone()));
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let c = c.min(text.len()).max(at);
        m.push(&text[at..c], false, &mut out);
        assert!(
            m.held() <= sc.max_hold(),
            "held {} > {}",
            m.held(),
            sc.max_hold()
        );
        at = c;
    }
    m.push(&text[at..], true, &mut out);
    assert_eq!(m.held(), 0);
    out
}

#[test]
fn one_byte_at_a_time_matches_whole() {
    let sc = Scanner::builtin();
    let t = stream_text();
    let whole = mask(&sc, t.as_bytes(), &Action::Redact);
    assert_ne!(whole, t.as_bytes(), "the corpus has findings");
    let cuts: Vec<usize> = (1..t.len()).collect();
    assert_eq!(streamed(&sc, t.as_bytes(), &cuts, &Action::Redact), whole);
}

#[test]
fn hold_back_is_small_without_triggers() {
    let sc = Scanner::builtin();
    let mut m = StreamMasker::new(Plan::uniform(Arc::new(sc.clone()), Action::Redact));
    let mut out = Vec::new();
    let prose = "the quick brown fox jumps over the lazy dog ".repeat(20);
    m.push(prose.as_bytes(), false, &mut out);
    assert!(m.held() <= sc.min_hold(), "held {}", m.held());
    assert_eq!(out.len() + m.held(), prose.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any split of the stream masks exactly what the unsplit text masks.
    #[test]
    fn any_chunking_matches_whole(mut cuts in proptest::collection::vec(0usize..6000, 0..40), seed in 0usize..10_000) {
        let sc = Scanner::builtin();
        let base = stream_text();
        // Rotate the text so each case starts somewhere else (at a char boundary).
        let mut r = seed % base.len();
        while !base.is_char_boundary(r) { r += 1; }
        let t = format!("{}{}", &base[r..], &base[..r]);
        let t = &t.as_bytes()[..t.len().min(6000)];
        cuts.sort_unstable();
        let action = Action::Pseudonym(key());
        prop_assert_eq!(streamed(&sc, t, &cuts, &action), mask(&sc, t, &action));
    }

    /// Arbitrary bytes (anchors, digits, separators and multibyte UTF-8 mixed in) as well.
    #[test]
    fn any_chunking_of_noise_matches_whole(
        parts in proptest::collection::vec(prop_oneof![
            Just("sk-".to_string()), Just("@".to_string()), Just("password=".to_string()),
            Just("4111 1111 1111 1111".to_string()), Just("é".to_string()), Just("日".to_string()),
            Just("-----BEGIN ".to_string()), Just("eyJ".to_string()), Just("::".to_string()),
            "[a-zA-Z0-9 .:+@_-]{0,12}",
        ], 0..60),
        mut cuts in proptest::collection::vec(0usize..600, 0..30),
    ) {
        let sc = Scanner::builtin();
        let t = parts.concat();
        cuts.sort_unstable();
        prop_assert_eq!(streamed(&sc, t.as_bytes(), &cuts, &Action::Redact), mask(&sc, t.as_bytes(), &Action::Redact));
    }
}

/// Throughput on one core, every built-in detector on. Run in release:
/// `AYA_BUILD_SKIP=1 cargo test --release -p sluice --lib mask::tests::throughput -- --ignored --nocapture`
#[test]
#[ignore = "measurement: run in release with --nocapture"]
fn throughput() {
    let sc = Scanner::builtin();
    let text = sample::mixed(32 << 20);
    let mb = text.len() as f64 / 1e6;
    let mut best_find = 0f64;
    let mut best_stream = 0f64;
    let mut n = 0;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        n = sc.find(&text).count();
        best_find = best_find.max(mb / t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        let mut m = StreamMasker::new(Plan::uniform(Arc::new(sc.clone()), Action::Redact));
        let mut out = Vec::with_capacity(text.len());
        for c in text.chunks(4096) {
            m.push(c, false, &mut out);
        }
        m.push(&[], true, &mut out);
        best_stream = best_stream.max(mb / t.elapsed().as_secs_f64());
    }
    // What dominates: the same body with subsets of the detectors.
    let all = Detector::builtin();
    let subsets: [(&str, Vec<Detector>); 3] = [
        (
            "literal-anchored only",
            all.iter()
                .filter(|d| d.trigger != detector::Trigger::Digits)
                .cloned()
                .collect(),
        ),
        (
            "digit-run only",
            all.iter()
                .filter(|d| d.trigger == detector::Trigger::Digits)
                .cloned()
                .collect(),
        ),
        (
            "no keyword anchors",
            all.iter()
                .filter(|d| {
                    !matches!(
                        d.name(),
                        "password_assignment" | "keyword_entropy" | "aws_secret_key"
                    )
                })
                .cloned()
                .collect(),
        ),
    ];
    for (name, dets) in subsets {
        let s = Scanner::new(&dets).expect("scanner");
        let mut best = 0f64;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            std::hint::black_box(s.find(&text).count());
            best = best.max(mb / t.elapsed().as_secs_f64());
        }
        eprintln!("  {name} ({} detectors): {best:.0} MB/s/core", dets.len());
    }
    eprintln!(
        "mask throughput: {mb:.0} MB mixed corpus, {n} findings, {} detectors: find {best_find:.0} MB/s/core, stream (4 KiB chunks, redact) {best_stream:.0} MB/s/core",
        sc.detectors().len()
    );
}

#[test]
fn plan_masks_only_the_detectors_it_turns_on() {
    let sc = Arc::new(Scanner::builtin());
    let email = sc
        .detectors()
        .iter()
        .position(|d| d.name() == "email")
        .expect("email detector");
    let card = sc
        .detectors()
        .iter()
        .position(|d| d.name() == "payment_card")
        .expect("card detector");
    let mut actions = vec![None; sc.detectors().len()];
    actions[email] = Some(Action::Redact);
    actions[card] = Some(Action::Block);
    let plan = Plan::new(sc, actions);
    let mut c = plan.counts();
    let t = b"mail jane@example.com, key AKIAIOSFODNN7EXAMPLE, card 4111 1111 1111 1111.";
    let out = plan.mask(t, &mut c);
    assert_eq!(
        out,
        b"mail [REDACTED:email], key AKIAIOSFODNN7EXAMPLE, card 4111 1111 1111 1111.".to_vec(),
        "off detectors pass, block leaves the bytes for the caller to refuse"
    );
    assert_eq!((c.per_detector[email], c.per_detector[card]), (1, 1));
    assert_eq!(c.total(), 2);
    assert!(c.blocked);
    // The stream masker counts the same way.
    let mut m = StreamMasker::new(plan.clone());
    let mut streamed = Vec::new();
    for ch in t.chunks(7) {
        m.push(ch, false, &mut streamed);
    }
    m.push(&[], true, &mut streamed);
    assert_eq!(streamed, out);
    assert_eq!(m.counts(), &c);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The gate set read once per digit run never leaves out a gate that would pass on some
    /// window holding the run's start: skipping the detectors it leaves out is exact.
    #[test]
    fn the_gate_set_never_leaves_out_a_passing_gate(
        text in "[0-9 .:+()A-Fa-fXY-]{1,40}",
        a in 0usize..40,
        b in 0usize..48,
    ) {
        use detector::Gate;
        let h = text.as_bytes();
        for p in 0..h.len() {
            if !h[p].is_ascii_digit() || (p > 0 && h[p - 1].is_ascii_digit()) {
                continue;
            }
            let set = Gate::possible(h, p);
            let (from, to) = (p.saturating_sub(a), (p + 1 + b).min(h.len()));
            for g in [Gate::None, Gate::Card, Gate::Ssn, Gate::Phone, Gate::Iban, Gate::Ipv4, Gate::Ipv6] {
                if g.start(&h[from..to], p - from).is_some() {
                    prop_assert!(set & g.bit() != 0, "{:?} at {} in {:?} ({}..{})", g, p, text, from, to);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The shape checks a digit gate adds (a dotted quad, 13 card digits, a phone number's
    /// groups, an IPv6 address's `::` or seven colons) never turn away a start where the
    /// detector's regex matches: they only spare the regex its look-alikes.
    #[test]
    fn the_shape_checks_never_turn_away_a_regex_match(
        parts in proptest::collection::vec(prop_oneof![
            Just("192.168.0.1".to_string()), Just("4111 1111 1111 1111".to_string()),
            Just("+44 20 7946 0958".to_string()), Just("(555) 123-4567".to_string()),
            Just("555.123.4567".to_string()), Just("020 7946 0958".to_string()),
            Just("07700 900123".to_string()), Just("fe80::1".to_string()),
            Just("2001:db8:0:0:0:0:2:1".to_string()), Just("078-05-1120".to_string()),
            Just("GB82 WEST 1234 5698 7654 32".to_string()),
            "[0-9 .:+()A-Fa-f-]{1,8}",
        ], 1..8),
        a in 0usize..48,
        b in 0usize..48,
    ) {
        use regex_automata::{Anchored, Input};
        let text = parts.concat();
        let h = text.as_bytes();
        let dets: Vec<Detector> = Detector::builtin()
            .into_iter()
            .filter(|d| d.trigger == detector::Trigger::Digits)
            .collect();
        for p in 0..h.len() {
            if !h[p].is_ascii_digit() || (p > 0 && h[p - 1].is_ascii_digit()) {
                continue;
            }
            let (from, to) = (p.saturating_sub(a), (p + 1 + b).min(h.len()));
            let w = &h[from..to];
            for d in &dets {
                let Some(at) = d.gate.loose_start(w, p - from) else { continue };
                let input = Input::new(w).range(at..).anchored(Anchored::Yes);
                if d.regex.search(&input).is_some() {
                    prop_assert_eq!(d.gate.start(w, p - from), Some(at), "{} at {} in {:?}", d.name(), p, &text[from..to]);
                }
            }
        }
    }
}

#[test]
fn a_finding_that_ends_inside_a_character_keeps_the_text_valid_utf8() {
    // The assignment's value class is byte-wise and stops at 128 bytes, so it can end in
    // the middle of a character.
    let sc = Scanner::builtin();
    let t = format!("password=hunter2{}", "日本😀é".repeat(20));
    let out = mask(&sc, t.as_bytes(), &Action::Redact);
    let s = String::from_utf8(out).expect("still UTF-8");
    assert!(
        s.starts_with("password=[REDACTED:password_assignment]"),
        "{s}"
    );
}
