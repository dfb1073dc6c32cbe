//! One 64-bit hash per word of the normalised, lowercased text (Python:
//! `norm(text).lower().split()`): the input of word shingling.
//!
//! Performance: on ASCII text (no punctuation stripping) words are found and hashed without
//! copying: 8 bytes at a time, the first byte below 0x21 ends a candidate word (exact
//! whitespace test only for that byte), and each 8-byte block is lowercased in-register
//! (SWAR) before it is mixed into the hash. Profiled on KJV text (perf, 1 thread), the
//! byte-at-a-time splitter plus an XXH3 call per word was 67% of MinHash time.
//!
//! The same path takes text whose non-ASCII characters are all "inert" (`is_inert`: typographic
//! quotes and dashes, lowercase Latin-1 letters, ...): characters that NFKC and lowercasing
//! leave unchanged and that are neither whitespace nor combining, so the normalised text is the
//! input with ASCII letters lowercased, byte for byte. A third of the KJV benchmark documents
//! contain a `’` and used to take the normalising path (14% of MinHash time). A word that fits
//! one 8-byte block (most English words) is found and hashed from a single load.

use crate::normalize::{is_ascii_space, normalize_into, Normalization};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const K_LEN: u64 = 0xA076_1D64_78BD_642F;
const K_MIX: u64 = 0xE703_7ED1_A0B4_28DB;

#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Little-endian load of the bytes `i..min(i + 8, end)`, zero-padded. Reads a full 8 bytes
/// whenever the buffer has them and masks, because a short copy (memcpy call plus a
/// store-forwarding stall) on every word's tail was 35% of MinHash time (perf).
#[inline(always)]
fn load(bytes: &[u8], i: usize, end: usize) -> u64 {
    let len = end - i;
    if i + 8 <= bytes.len() {
        let x = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        if len >= 8 { x } else { x & ((1u64 << (8 * len)) - 1) }
    } else {
        bytes[i..end].iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64)
    }
}

/// ASCII 'A'..='Z' → lowercase in all 8 bytes; bytes >= 0x80 (UTF-8 sequences) unchanged.
#[inline(always)]
fn lower8(x: u64) -> u64 {
    let low7 = x & !HIGHS; // no byte can carry into its neighbour below
    let above_a = low7.wrapping_add(ONES * (0x80 - b'A' as u64));
    let above_z = low7.wrapping_add(ONES * (0x80 - b'Z' as u64 - 1));
    x | ((above_a & !above_z & !x & HIGHS) >> 2)
}

/// Characters the word path may copy as they are: unchanged by NFKC and by lowercasing,
/// not whitespace, not combining, never the second half of a canonical composition.
/// (Computed with Python's `unicodedata` over U+00A0..U+00FF and U+2010..U+203F; the test
/// `inert_characters_survive_normalisation` re-checks every one against `normalize_into`.)
#[inline]
fn is_inert(c: char) -> bool {
    matches!(c as u32,
        0xA1..=0xA7 | 0xA9 | 0xAB..=0xAC | 0xAE | 0xB0..=0xB1 | 0xB6..=0xB7 | 0xBB | 0xBF | 0xD7
        | 0xDF..=0xFF | 0x2010 | 0x2012..=0x2016 | 0x2018..=0x2023 | 0x2027 | 0x2030..=0x2032
        | 0x2035 | 0x2038..=0x203B | 0x203D | 0x203F)
}

/// True when every non-ASCII character of `text` is inert (ASCII text included).
fn only_inert_non_ascii(text: &str) -> bool {
    if text.is_ascii() {
        return true; // std's check is vectorised
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if i + 32 <= bytes.len() && bytes[i..i + 32].iter().fold(0u8, |acc, &b| acc | b) < 0x80 {
            i += 32;
            continue;
        }
        if bytes[i] < 0x80 {
            i += 1;
            continue;
        }
        let c = text[i..].chars().next().expect("i is a char boundary");
        if !is_inert(c) {
            return false;
        }
        i += c.len_utf8();
    }
    true
}

/// High bit of the lowest byte < 0x21 is exact (bytes above it may be false positives).
#[inline(always)]
fn below_0x21(x: u64) -> u64 {
    x.wrapping_sub(ONES * 0x21) & !x & HIGHS
}

/// Hash of a word that is already lowercase (the reference the ASCII path must equal): a
/// 64×64→128-bit multiply folded per 8-byte block (the wyhash construction). Not finalised
/// here: shingling mixes word hashes again.
pub fn hash_word(word: &[u8], seed: u64) -> u64 {
    hash_span(word, 0, word.len(), seed)
}

/// `hash_word(&bytes[start..end])`, loading from the whole buffer so that word tails take
/// the masked 8-byte load instead of a byte loop.
#[inline(always)]
fn hash_span(bytes: &[u8], start: usize, end: usize, seed: u64) -> u64 {
    let mut h = seed ^ ((end - start) as u64).wrapping_mul(K_LEN);
    let mut i = start;
    while i < end {
        h = fold(h ^ load(bytes, i, end), K_MIX);
        i += 8;
    }
    h
}

#[inline(always)]
fn hash_ascii_lowering(bytes: &[u8], start: usize, end: usize, seed: u64) -> u64 {
    let mut h = seed ^ ((end - start) as u64).wrapping_mul(K_LEN);
    let mut i = start;
    while i < end {
        h = fold(h ^ lower8(load(bytes, i, end)), K_MIX);
        i += 8;
    }
    h
}

/// Call `f` with the hash of every word, in order.
pub fn for_each_word_hash(text: &str, cfg: &Normalization, seed: u64, scratch: &mut Vec<u8>, mut f: impl FnMut(u64)) {
    if !cfg.strip_punctuation && only_inert_non_ascii(text) {
        let bytes = text.as_bytes();
        let n = bytes.len();
        let mut i = 0;
        loop {
            while i < n && is_ascii_space(bytes[i]) {
                i += 1;
            }
            if i >= n {
                return;
            }
            let start = i;
            let first = load(bytes, i, n);
            let stop = below_0x21(first);
            if stop != 0 {
                let pos = i + (stop.trailing_zeros() / 8) as usize;
                if pos >= n || is_ascii_space(bytes[pos]) {
                    // The whole word is in `first`: hash it from that load (= hash_span).
                    let len = pos.min(n) - start;
                    let word = if len == 8 { first } else { first & ((1u64 << (8 * len)) - 1) };
                    f(fold(seed ^ (len as u64).wrapping_mul(K_LEN) ^ lower8(word), K_MIX));
                    i = pos.min(n);
                    continue;
                }
            }
            loop {
                let stop = below_0x21(load(bytes, i, n));
                if stop == 0 {
                    i += 8;
                    continue;
                }
                let pos = i + (stop.trailing_zeros() / 8) as usize;
                if pos >= n || is_ascii_space(bytes[pos]) {
                    i = pos.min(n);
                    break;
                }
                i = pos + 1; // a control byte that is not whitespace belongs to the word
            }
            f(hash_ascii_lowering(bytes, start, i, seed));
        }
    }
    let cfg = Normalization { lowercase: true, collapse_whitespace: true, ..*cfg };
    normalize_into(text, &cfg, scratch);
    // Normalised text has single spaces and no leading/trailing space.
    let buf = scratch.as_slice();
    let mut start = 0;
    while start < buf.len() {
        let end = buf[start..].iter().position(|&b| b == b' ').map_or(buf.len(), |p| start + p);
        f(hash_span(buf, start, end, seed));
        start = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::SplitMix64;

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
        let mut scratch = Vec::new();
        for len in 0..200usize {
            let text: String = (0..len).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize] as char).collect();
            let mut got = Vec::new();
            for_each_word_hash(&text, &Normalization::default(), 9, &mut scratch, |h| got.push(h));
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
        let mut scratch = Vec::new();
        for len in 0..300usize {
            let mut text: String =
                (0..len).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
            if len % 3 == 0 && len > 0 {
                text.push(slow[rng.below(slow.len() as u64) as usize]);
                text.push_str("ab");
            }
            let mut got = Vec::new();
            for_each_word_hash(&text, &Normalization::default(), 9, &mut scratch, |h| got.push(h));
            assert_eq!(got, via_normalisation(&text), "{text:?}");
        }
    }

    #[test]
    fn unicode_text_uses_the_same_word_hash() {
        let mut scratch = Vec::new();
        let mut got = Vec::new();
        let text = "Caf\u{00e9} DU  Monde\u{00A0}end";
        for_each_word_hash(text, &Normalization::default(), 9, &mut scratch, |h| got.push(h));
        assert_eq!(got, via_python_split(text));
        let mut ascii = Vec::new();
        for_each_word_hash("DU monde", &Normalization::default(), 9, &mut scratch, |h| ascii.push(h));
        assert_eq!(ascii[..], got[1..3]);
    }
}
