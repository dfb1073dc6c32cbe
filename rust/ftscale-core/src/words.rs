//! One 64-bit hash per word of the normalised, lowercased text (Python:
//! `norm(text).lower().split()`): the input of word shingling.
//!
//! The text is first copied into a buffer, lowercased and padded with spaces: through
//! `normalize_into` in general, or, when punctuation is kept and every non-ASCII character is
//! "inert" (`is_inert`: typographic quotes and dashes, lowercase Latin-1 letters, ...), by an
//! ASCII lowercasing copy that LLVM vectorises, because NFKC and lowercasing leave inert
//! characters unchanged. Then words are read off whitespace bitmasks, 64 bytes at a time, and
//! each is hashed from two 8-byte loads.
//!
//! Performance (KJV benchmark text, 1 thread, `minhash_profile`, A/B runs interleaved): a
//! byte-at-a-time splitter plus an XXH3 call per word was 67% of MinHash time. An in-place
//! SWAR splitter that lowercased each 8-byte block in registers, with a branch per word on
//! where its first whitespace fell, took MinHash from ~96k to 329k docs/s. Then: whitespace
//! bitmasks over a padded copy, 329k → 351k; lowercasing during the copy instead of per block,
//! and one multiply per word of up to 16 bytes (no branch on the word length), → 379k. Word
//! positions first and hashes second (two loops) was ~3% slower than one loop on its own, but
//! with the shingle windows also in a loop over a slice (`shingle`) the whole measured 451k
//! against 428k. A third of the KJV documents contain a `’`, which is why inert characters
//! stay off the normalising path (that path cost 14% of MinHash time).

use crate::hash::mum;
use crate::normalize::{normalize_into, only_inert_non_ascii, Normalization};

const K_LEN: u64 = 0xA076_1D64_78BD_642F;
const K_MIX: u64 = 0xE703_7ED1_A0B4_28DB;

/// Bytes per whitespace mask: one bit per byte.
const CHUNK: usize = 64;

/// Bit `j` set when `chunk[j]` is ASCII whitespace (`is_ascii_space`); exact for every byte.
#[inline(always)]
fn whitespace_mask(chunk: &[u8; CHUNK]) -> u64 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use std::arch::x86_64::*;
        let mut mask = 0u64;
        for k in 0..CHUNK / 16 {
            // SAFETY: SSE2 is enabled (cfg above); the load reads 16 of the chunk's 64 bytes.
            let bits = unsafe {
                let v = _mm_loadu_si128(chunk.as_ptr().add(16 * k).cast());
                let at_most = |lo: i8, span: i8| {
                    let d = _mm_sub_epi8(v, _mm_set1_epi8(lo)); // unsigned v - lo <= span
                    _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(span)), d)
                };
                let ws = _mm_or_si128(
                    _mm_cmpeq_epi8(v, _mm_set1_epi8(b' ' as i8)),
                    _mm_or_si128(at_most(b'\t' as i8, 4), at_most(0x1c, 3)),
                );
                _mm_movemask_epi8(ws) as u32 as u64
            };
            mask |= bits << (16 * k);
        }
        mask
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        chunk.iter().enumerate().fold(0u64, |m, (j, &b)| m | (crate::normalize::is_ascii_space(b) as u64) << j)
    }
}

/// Masks keeping the first `r` bytes of a 16-byte block read as two little-endian u64s.
const KEEP: [[u64; 2]; 17] = {
    let mut t = [[0u64; 2]; 17];
    let mut r = 0;
    while r <= 16 {
        let lo = if r >= 8 { 8 } else { r };
        let hi = r - lo;
        t[r] = [
            if lo == 8 { u64::MAX } else { (1u64 << (8 * lo)) - 1 },
            if hi == 8 { u64::MAX } else { (1u64 << (8 * hi)) - 1 },
        ];
        r += 1;
    }
    t
};

/// Hash of `bytes[start..start + len]`, a lowercase word in a buffer that extends at least 16
/// bytes past the word: per 16-byte block (the last one masked), one multiply of the running
/// hash xor the block's first half by a constant xor its second half. A word of up to 16 bytes
/// (nearly all) is one multiply and takes no branch on its length. The multiplier is never 0:
/// `K_MIX`'s little-endian bytes (DB 28 …) are not UTF-8, and a partial second half has a zero
/// top byte where `K_MIX` has E7. Not finalised here: shingling mixes word hashes again.
#[inline(always)]
fn hash_padded(bytes: &[u8], start: usize, len: usize, seed: u64) -> u64 {
    let mut h = seed ^ (len as u64).wrapping_mul(K_LEN);
    let (mut i, end) = (start, start + len);
    loop {
        let block: &[u8; 16] = bytes[i..i + 16].try_into().expect("16 bytes");
        let (first, second) = block.split_at(8);
        let [lo, hi] = KEEP[(end - i).min(16)];
        let first = u64::from_le_bytes(first.try_into().expect("8 bytes")) & lo;
        let second = u64::from_le_bytes(second.try_into().expect("8 bytes")) & hi;
        h = mum(h ^ first, K_MIX ^ second);
        i += 16;
        if i >= end {
            return h;
        }
    }
}

/// Hash of one lowercase word: what `word_hashes` gives for it.
pub fn hash_word(word: &[u8], seed: u64) -> u64 {
    let mut padded = word.to_vec();
    padded.resize(word.len() + 16, b' ');
    hash_padded(&padded, 0, word.len(), seed)
}

/// Reusable buffers of `word_hashes`, so that it allocates nothing per document once warm.
#[derive(Default)]
pub struct WordScratch {
    text: Vec<u8>,
    starts: Vec<usize>,
    ends: Vec<usize>,
    hashes: Vec<u64>,
}

/// The hash of every word of `text`, in order.
pub fn word_hashes<'s>(text: &str, cfg: &Normalization, seed: u64, scratch: &'s mut WordScratch) -> &'s [u64] {
    let buf = &mut scratch.text;
    let n = if !cfg.strip_punctuation && only_inert_non_ascii(text) {
        buf.clear();
        buf.resize(padded_len(text.len()), b' ');
        for (d, s) in buf.iter_mut().zip(text.as_bytes()) {
            *d = s.to_ascii_lowercase();
        }
        text.len()
    } else {
        let cfg = Normalization { lowercase: true, collapse_whitespace: true, ..*cfg };
        normalize_into(text, &cfg, buf);
        let n = buf.len();
        buf.resize(padded_len(n), b' ');
        n
    };
    // Pass 1: where words start and end, from whitespace bitmasks. Pass 2: hash them. Two
    // tight loops instead of one whose exits depend on the text.
    let most = n / 2 + 1 + GROUP; // words of a text of n bytes, plus `push_positions`' overrun
    for v in [&mut scratch.starts, &mut scratch.ends] {
        if v.len() < most {
            v.resize(most, 0);
        }
    }
    let (mut count, mut closed, mut ws_before, mut base) = (0, 0, 1u64, 0);
    while base <= n {
        let ws = whitespace_mask(buf[base..base + CHUNK].try_into().expect("a chunk"));
        let prev = (ws << 1) | ws_before;
        ws_before = ws >> 63;
        count = push_positions(!ws & prev, base, &mut scratch.starts, count);
        closed = push_positions(ws & !prev, base, &mut scratch.ends, closed);
        base += CHUNK;
    }
    debug_assert_eq!(count, closed, "the padding closes every word");
    if scratch.hashes.len() < count {
        scratch.hashes.resize(count, 0);
    }
    let (bytes, hashes) = (&buf[..], &mut scratch.hashes[..count]);
    for ((h, &start), &end) in hashes.iter_mut().zip(&scratch.starts[..count]).zip(&scratch.ends[..count]) {
        *h = hash_padded(bytes, start, end - start, seed);
    }
    hashes
}

/// Positions written per round by `push_positions`.
const GROUP: usize = 4;

/// Append `base + j` for every set bit `j` of `bits` to `out[at..]`; returns the new length.
/// Writes whole rounds of `GROUP` (slots past the new length hold junk, overwritten later), so
/// the loop's exit is mispredicted about once per chunk, not once per bit pattern.
#[inline(always)]
fn push_positions(mut bits: u64, base: usize, out: &mut [usize], at: usize) -> usize {
    let end = at + bits.count_ones() as usize;
    let mut k = at;
    while k < end {
        for slot in &mut out[k..k + GROUP] {
            *slot = base + bits.trailing_zeros() as usize;
            bits &= bits.wrapping_sub(1);
        }
        k += GROUP;
    }
    end
}

/// A whole number of chunks plus one: every chunk and every 16-byte word load stays in
/// bounds, and the padding (spaces) closes the last word.
fn padded_len(n: usize) -> usize {
    n.next_multiple_of(CHUNK) + CHUNK
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::SplitMix64;
    use crate::normalize::is_inert;

    fn via_python_split(text: &str) -> Vec<u64> {
        // The reference: lowercase, split on Python whitespace, hash each word.
        text.to_lowercase()
            .split(|c: char| crate::normalize::is_space(c))
            .filter(|w| !w.is_empty())
            .map(|w| hash_word(w.as_bytes(), 9))
            .collect()
    }

    #[test]
    fn ascii_fast_path_equals_reference() {
        let mut rng = SplitMix64::new(4);
        let alphabet = b"abcXYZ  \t\n\x1c\x1f\x01\x07.,!Q";
        let mut scratch = WordScratch::default();
        for len in 0..200usize {
            let text: String = (0..len).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize] as char).collect();
            let got = word_hashes(&text, &Normalization::default(), 9, &mut scratch);
            assert_eq!(got, via_python_split(&text), "{text:?}");
        }
    }

    /// The normalising path, forced: the reference the fast path must equal.
    fn via_normalisation(text: &str) -> Vec<u64> {
        let cfg = Normalization { lowercase: true, collapse_whitespace: true, ..Normalization::default() };
        let mut buf = Vec::new();
        normalize_into(text, &cfg, &mut buf);
        std::str::from_utf8(&buf).unwrap().split(' ').filter(|w| !w.is_empty()).map(|w| hash_word(w.as_bytes(), 9)).collect()
    }

    #[test]
    fn inert_characters_survive_normalisation() {
        let cfg = Normalization { lowercase: true, collapse_whitespace: true, ..Normalization::default() };
        let mut buf = Vec::new();
        for c in (0xA0u32..=0x2FFF).filter_map(char::from_u32).filter(|&c| is_inert(c)) {
            let text = format!("a{c}b");
            normalize_into(&text, &cfg, &mut buf);
            assert_eq!(buf, text.as_bytes(), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn fast_path_with_inert_unicode_equals_normalising_path() {
        let mut rng = SplitMix64::new(11);
        let alphabet: Vec<char> = "abcXYZ  \t\n\x1c\x01.,!Q\u{2019}\u{2014}\u{e6}\u{df}\u{201c}".chars().collect();
        let slow: Vec<char> = "\u{c6}\u{a0}\u{2026}\u{301}\u{130}".chars().collect(); // Æ, NBSP, …, combining acute, İ
        let mut scratch = WordScratch::default();
        for len in 0..300usize {
            let mut text: String =
                (0..len).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
            if len % 3 == 0 && len > 0 {
                text.push(slow[rng.below(slow.len() as u64) as usize]);
                text.push_str("ab");
            }
            let got = word_hashes(&text, &Normalization::default(), 9, &mut scratch);
            assert_eq!(got, via_normalisation(&text), "{text:?}");
        }
    }

    #[test]
    fn unicode_text_uses_the_same_word_hash() {
        let mut scratch = WordScratch::default();
        let text = "Caf\u{00e9} DU  Monde\u{00A0}end";
        let got = word_hashes(text, &Normalization::default(), 9, &mut scratch).to_vec();
        assert_eq!(got, via_python_split(text));
        let ascii = word_hashes("DU monde", &Normalization::default(), 9, &mut scratch);
        assert_eq!(ascii[..], got[1..3]);
    }
}
