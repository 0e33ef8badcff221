//! Where the detectors' literal anchors start, ASCII case-insensitively, and where runs of
//! digits start: the trigger positions of one scan.
//!
//! Anchors such as `token`, `secret` or `password` are made of common letters, so an
//! automaton that looks at every byte (the case-insensitive aho-corasick DFA this replaced)
//! ran at ~270 MB/s on mixed text however few anchors it found. Lowercasing the bytes (a
//! vectorised pass) lets a case-sensitive SIMD multi-literal searcher (Teddy, from
//! aho-corasick's `packed` module) skip to the few places a lowercased anchor may start
//! (~2.5 GB/s on the same text); one-byte anchors (`@`) are found with memchr. Where Teddy
//! is not available (no SSSE3, too many anchors) the DFA is the fallback.
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind, Span, packed};

use super::MaskError;

#[derive(Debug, Clone)]
pub(crate) struct Anchors {
    /// Lowercased; the index is the anchor's id.
    lits: Vec<Vec<u8>>,
    how: How,
}

#[derive(Debug, Clone)]
enum How {
    None,
    /// Teddy over the lowercased multi-byte anchors, memchr for up to three one-byte ones.
    Packed {
        teddy: Option<packed::Searcher>,
        /// Multi-byte anchor ids by their first (lowercased) byte.
        by_first: Box<[Vec<u32>; 256]>,
        /// One-byte anchors: (byte, id).
        single: Vec<(u8, u32)>,
    },
    Dfa(AhoCorasick),
}

impl Anchors {
    pub(crate) fn new(lits: Vec<Vec<u8>>) -> Result<Anchors, MaskError> {
        if lits.is_empty() {
            return Ok(Anchors {
                lits,
                how: How::None,
            });
        }
        let how = match packed_parts(&lits) {
            Some(p) => p,
            None => How::Dfa(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .kind(Some(aho_corasick::AhoCorasickKind::DFA))
                    .match_kind(MatchKind::Standard)
                    .build(&lits)
                    .map_err(|e| MaskError::Prefilter(e.to_string()))?,
            ),
        };
        Ok(Anchors { lits, how })
    }

    pub(crate) fn max_len(&self) -> usize {
        self.lits.iter().map(Vec::len).max().unwrap_or(1).max(1)
    }

    /// Calls `fire(p, id)` for every anchor `id` starting at a position `p < to` in `hay`
    /// (each pair once, in no particular order). `lower` is scratch space.
    pub(crate) fn each(
        &self,
        hay: &[u8],
        to: usize,
        lower: &mut Vec<u8>,
        mut fire: impl FnMut(usize, usize),
    ) {
        match &self.how {
            How::None => {}
            How::Dfa(ac) => {
                for m in ac.find_overlapping_iter(hay) {
                    if m.start() < to {
                        fire(m.start(), m.pattern().as_usize());
                    }
                }
            }
            How::Packed {
                teddy,
                by_first,
                single,
            } => {
                lower.clear();
                lower.extend(hay.iter().map(u8::to_ascii_lowercase));
                let low = &lower[..];
                if let Some(t) = teddy {
                    let mut at = 0;
                    while at < to {
                        let Some(m) = t.find_in(low, Span::from(at..low.len())) else {
                            break;
                        };
                        let p = m.start();
                        if p >= to {
                            break;
                        }
                        // Every anchor starting here, not only the one Teddy reported
                        // (`auth` and `auth_token` both start at an `auth_token`).
                        for &id in &by_first[usize::from(low[p])] {
                            if low[p..].starts_with(&self.lits[id as usize]) {
                                fire(p, id as usize);
                            }
                        }
                        at = p + 1;
                    }
                }
                let low = &low[..to.min(low.len())];
                match single[..] {
                    [] => {}
                    [(a, i)] => memchr::memchr_iter(a, low).for_each(|p| fire(p, i as usize)),
                    _ => {
                        for (p, &b) in low.iter().enumerate() {
                            for &(c, i) in single {
                                if b == c {
                                    fire(p, i as usize);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The packed searcher's parts, or `None` when it cannot be used for these anchors.
fn packed_parts(lits: &[Vec<u8>]) -> Option<How> {
    let mut by_first: Box<[Vec<u32>; 256]> = Box::new(std::array::from_fn(|_| Vec::new()));
    let mut single = Vec::new();
    let mut multi = Vec::new();
    for (i, l) in lits.iter().enumerate() {
        let id = u32::try_from(i).ok()?;
        match l[..] {
            [b] => single.push((b, id)),
            [b, ..] => {
                by_first[usize::from(b)].push(id);
                multi.push(l.as_slice());
            }
            [] => return None,
        }
    }
    if single.len() > 3 {
        return None;
    }
    let teddy = if multi.is_empty() {
        None
    } else {
        Some(
            packed::Config::new()
                .match_kind(packed::MatchKind::LeftmostFirst)
                .builder()
                .extend(multi)
                .build()?,
        )
    };
    Some(How::Packed {
        teddy,
        by_first,
        single,
    })
}

/// Calls `fire(k, run)` for every `k < to` where a run of `run` ASCII digits starts in
/// `hay` (the run may go on past `to`, not past `hay`);
/// `after_digit` says whether the byte before `hay` was a digit, and becomes whether
/// `hay[to - 1]` is. Sixty-four bytes at a time: number-dense text (logs, JSON timestamps) has
/// a digit run every ~20 bytes, and a byte-at-a-time loop was a tenth of the scan.
pub(crate) fn digit_starts(
    hay: &[u8],
    to: usize,
    after_digit: &mut bool,
    mut fire: impl FnMut(usize, usize),
) {
    let run_from = |k: usize| hay[k..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut prev = u64::from(*after_digit);
    let mut blocks = hay[..to].chunks_exact(64);
    let mut off = 0;
    for b in blocks.by_ref() {
        let m = digit_mask(b);
        let mut starts = m & !((m << 1) | prev);
        prev = m >> 63;
        while starts != 0 {
            let i = starts.trailing_zeros() as usize;
            // The run's length from the mask, unless it reaches the block's end.
            let run = (!m >> i).trailing_zeros() as usize;
            let k = off + i;
            fire(k, if i + run < 64 { run } else { run_from(k) });
            starts &= starts - 1;
        }
        off += 64;
    }
    for (j, b) in blocks.remainder().iter().enumerate() {
        let digit = b.is_ascii_digit();
        if digit && prev == 0 {
            fire(off + j, run_from(off + j));
        }
        prev = u64::from(digit);
    }
    *after_digit = prev != 0;
}

/// Bit `i` set when `b[i]` is an ASCII digit (`b` is 64 bytes): eight bytes per word
/// (SWAR), as safe code cannot name the SIMD movemask.
#[inline]
fn digit_mask(b: &[u8]) -> u64 {
    const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut m = 0u64;
    for (k, w) in b.chunks_exact(8).enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        // Digits become 0..=9; `t + 0x76` (on the low seven bits, so no carry crosses a
        // byte) sets the high bit of every byte >= 10, and `t`'s own high bit the rest.
        let t = u64::from_le_bytes(word) ^ 0x3030_3030_3030_3030;
        let not_digit = ((t & LO7) + (LO7 & 0x7676_7676_7676_7676)) | t;
        let digit = !not_digit & HI;
        // Gathers the eight high bits into one byte (bit j from byte j).
        let byte = (digit >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56;
        m |= byte << (8 * k);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (position, anchor) pair, case-insensitively, from the packed searcher and from
    /// the DFA fallback alike (four one-byte anchors force the fallback).
    #[test]
    fn anchors_are_found_at_every_position_by_either_searcher() {
        let text = b"Auth_Token=x; API-KEY: y @ sk-ant-1 AUTHtoken a@b.c -- SECRET secret_access";
        let naive = |lits: &[&[u8]]| {
            let mut want = Vec::new();
            for p in 0..text.len() {
                for (i, l) in lits.iter().enumerate() {
                    if text.len() - p >= l.len() && text[p..p + l.len()].eq_ignore_ascii_case(l) {
                        want.push((p, i));
                    }
                }
            }
            want
        };
        let packed: &[&[u8]] = &[
            b"auth",
            b"auth_token",
            b"token",
            b"api-key",
            b"@",
            b"sk-",
            b"sk-ant-",
            b"secret",
            b"secret_access",
        ];
        let dfa: &[&[u8]] = &[b"auth", b"token", b"@", b"-", b":", b";", b"secret"];
        for (lits, is_packed) in [(packed, true), (dfa, false)] {
            let a = Anchors::new(lits.iter().map(|l| l.to_vec()).collect()).expect("anchors");
            assert_eq!(matches!(a.how, How::Packed { .. }), is_packed);
            for to in [0, 5, 30, text.len()] {
                let mut got = Vec::new();
                a.each(text, to, &mut Vec::new(), |p, i| got.push((p, i)));
                got.sort_unstable();
                let want: Vec<(usize, usize)> =
                    naive(lits).into_iter().filter(|(p, _)| *p < to).collect();
                assert_eq!(got, want, "up to {to}, packed {is_packed}");
            }
        }
    }

    #[test]
    fn the_digit_mask_marks_exactly_the_digits() {
        let bytes: Vec<u8> = (0..=255u8).chain(b"0123456789/:".iter().copied()).collect();
        for start in 0..bytes.len() - 64 {
            let b = &bytes[start..start + 64];
            let want = b
                .iter()
                .enumerate()
                .fold(0u64, |m, (i, c)| m | (u64::from(c.is_ascii_digit()) << i));
            assert_eq!(digit_mask(b), want, "at {start}");
        }
    }

    #[test]
    fn digit_runs_start_where_a_digit_follows_a_non_digit_however_cut() {
        let text: Vec<u8> =
            b"ab12 3x4567890123456789012345678901234567890123456789012345678901234567 89 1"
                .repeat(5);
        let want: Vec<usize> = (0..text.len())
            .filter(|&k| text[k].is_ascii_digit() && (k == 0 || !text[k - 1].is_ascii_digit()))
            .collect();
        for cut in [0, 1, 7, 64, 65, 130, text.len()] {
            let mut got = Vec::new();
            let mut after = false;
            digit_starts(&text, cut, &mut after, |k, run| got.push((k, run)));
            digit_starts(&text[cut..], text.len() - cut, &mut after, |k, run| {
                got.push((cut + k, run))
            });
            let runs: Vec<(usize, usize)> = want
                .iter()
                .map(|&k| {
                    let run = text[k..].iter().take_while(|c| c.is_ascii_digit()).count();
                    (k, run)
                })
                .collect();
            assert_eq!(got, runs, "cut at {cut}");
        }
    }
}
