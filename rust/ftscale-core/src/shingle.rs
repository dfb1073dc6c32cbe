//! Shingling: a text becomes a set of 64-bit shingle hashes.
//!
//! Word shingles: `ngram` consecutive words of the normalised, lowercased text (Python:
//! `norm(text).lower().split()`); a text with fewer words than `ngram` is one shingle of all
//! its words; an empty text has no shingles. Char shingles: every window of `ngram` chars of
//! the normalised text (whitespace collapsed); a shorter text is one shingle.

use crate::hash::{hash64, mum};
use crate::normalize::{normalize_into, Normalization};
use crate::words::{word_hashes, WordScratch};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShingleKind {
    Words,
    Chars,
}

#[derive(Clone, Copy, Debug)]
pub struct Shingling {
    pub kind: ShingleKind,
    pub ngram: usize,
    pub normalization: Normalization,
    pub seed: u64,
}

impl Shingling {
    /// The default MinHash shingling: 5-word shingles, NFKC + lowercase, punctuation kept.
    pub fn words(ngram: usize, seed: u64) -> Self {
        Self { kind: ShingleKind::Words, ngram, normalization: Normalization::default(), seed }
    }
}

/// Finaliser of a window hash: one `mum`, which breaks the window hash's linearity (over
/// GF(2)) at half the cost of splitmix64.
#[inline(always)]
fn finish(h: u64, seed: u64) -> u64 {
    mum(h ^ seed, FINISH)
}

const FINISH: u64 = 0x8EBC_6AF0_9C88_C6E3; // odd, and not a constant of the word hash

/// The window hash before finishing: `XOR_j rotl(w_j, n-1-j)` (a cyclic polynomial, "buzhash",
/// over the already-mixed word hashes), so sliding the window costs two rotations and no
/// multiply: `h' = rotl(h, 1) ^ rotl(w_out, n) ^ w_in` (`windows_into`).
#[inline]
fn window(words: &[u64]) -> u64 {
    words.iter().fold(0u64, |h, &w| h.rotate_left(1) ^ w)
}

/// The finished hash of one window (the definition the rolling updates must equal).
#[inline]
fn combine(words: &[u64], seed: u64) -> u64 {
    finish(window(words), seed)
}

/// Reusable buffers so that shingling allocates nothing per document.
#[derive(Default)]
pub struct ShingleScratch {
    text: Vec<u8>,
    words: WordScratch,
    shingles: Vec<u64>,
}

/// Every shingle hash of `text`, in order (duplicates included; callers that need a set sort
/// and dedup).
pub fn shingle_hashes<'s>(text: &str, cfg: &Shingling, scratch: &'s mut ShingleScratch) -> &'s [u64] {
    let n = cfg.ngram.max(1);
    let out = &mut scratch.shingles;
    out.clear();
    match cfg.kind {
        ShingleKind::Words => {
            let words = word_hashes(text, &cfg.normalization, cfg.seed ^ 0x5757_5757, &mut scratch.words);
            windows_into(words, n, cfg.seed, out);
        }
        ShingleKind::Chars => {
            let norm = Normalization { collapse_whitespace: true, ..cfg.normalization };
            normalize_into(text, &norm, &mut scratch.text);
            let s = std::str::from_utf8(&scratch.text).expect("normalisation keeps UTF-8");
            let starts: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
            let nchars = starts.len() - 1;
            if nchars > n {
                out.extend((0..=nchars - n).map(|i| hash64(&s.as_bytes()[starts[i]..starts[i + n]], cfg.seed)));
            } else if nchars > 0 {
                out.push(hash64(s.as_bytes(), cfg.seed));
            }
        }
    }
    out
}

/// Call `f` with every shingle hash of `text` (see `shingle_hashes`); returns their number.
pub fn for_each_shingle(text: &str, cfg: &Shingling, scratch: &mut ShingleScratch, mut f: impl FnMut(u64)) -> usize {
    let hashes = shingle_hashes(text, cfg, scratch);
    hashes.iter().for_each(|&h| f(h));
    hashes.len()
}

/// Appends the hashes of every `n` consecutive word hashes (one of all of them when there are
/// fewer than `n`), by a rolling window (see `combine`).
fn windows_into(words: &[u64], n: usize, seed: u64, out: &mut Vec<u64>) {
    if words.is_empty() {
        return;
    }
    if words.len() <= n {
        out.push(combine(words, seed));
        return;
    }
    let out_rotation = (n % 64) as u32;
    let mut h = window(&words[..n]);
    out.push(finish(h, seed));
    // `extend` from slices zipped: one reservation, no capacity check per shingle.
    out.extend(words[n..].iter().zip(words).map(|(&w_in, &w_out)| {
        h = h.rotate_left(1) ^ w_in ^ w_out.rotate_left(out_rotation);
        finish(h, seed)
    }));
}

/// The sorted, deduplicated shingle set of `text` (for exact Jaccard).
pub fn shingle_set(text: &str, cfg: &Shingling, scratch: &mut ShingleScratch) -> Vec<u64> {
    let mut out = shingle_hashes(text, cfg, scratch).to_vec();
    out.sort_unstable();
    out.dedup();
    out
}

/// Jaccard similarity of two sorted, deduplicated sets (two empty sets: 0).
pub fn jaccard_sorted(a: &[u64], b: &[u64]) -> f64 {
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - inter;
    if union == 0 { 0.0 } else { inter as f64 / union as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(t: &str, cfg: &Shingling) -> Vec<u64> {
        shingle_set(t, cfg, &mut ShingleScratch::default())
    }

    #[test]
    fn short_text_is_one_shingle_and_empty_is_none() {
        let cfg = Shingling::words(5, 0);
        assert_eq!(set("a b c", &cfg).len(), 1);
        assert_eq!(set("  ", &cfg).len(), 0);
        assert_eq!(set("a b c d e f g", &cfg).len(), 3);
    }

    #[test]
    fn case_and_spacing_do_not_matter_but_order_does() {
        let cfg = Shingling::words(2, 7);
        assert_eq!(set("A  b C", &cfg), set("a b c", &cfg));
        assert_ne!(set("a b c", &cfg), set("c b a", &cfg));
    }

    #[test]
    fn char_shingles_count_chars_not_bytes() {
        let cfg = Shingling { kind: ShingleKind::Chars, ..Shingling::words(3, 0) };
        assert_eq!(set("h\u{00e9}llo", &cfg).len(), 3);
    }

    #[test]
    fn rolling_window_equals_direct_combination() {
        // The rolling updates must give the windows' hashes by definition (`combine`), also
        // for texts shorter than n and for n above the rotation width.
        let text: String = (0..80).map(|i| format!("w{} ", i % 23)).collect();
        let words: Vec<&str> = text.split_whitespace().collect();
        for ngram in [1, 3, 5, 32, 33, 64, 65, 70, 80, 95] {
            let cfg = Shingling::words(ngram, 5);
            let mut rolled = Vec::new();
            for_each_shingle(&text, &cfg, &mut ShingleScratch::default(), |h| rolled.push(h));
            let hashes: Vec<u64> =
                words.iter().map(|w| crate::words::hash_word(w.as_bytes(), cfg.seed ^ 0x5757_5757)).collect();
            let direct: Vec<u64> = if hashes.len() <= ngram {
                vec![combine(&hashes, cfg.seed)]
            } else {
                hashes.windows(ngram).map(|w| combine(w, cfg.seed)).collect()
            };
            assert_eq!(rolled, direct, "ngram {ngram}");
        }
    }

    #[test]
    fn jaccard_of_sets() {
        assert_eq!(jaccard_sorted(&[1, 2, 3], &[2, 3, 4]), 0.5);
        assert_eq!(jaccard_sorted(&[], &[]), 0.0);
    }
}
