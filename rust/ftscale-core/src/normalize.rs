//! Text normalisation shared by exact dedup, MinHash shingling and decontamination.
//!
//! Order of operations: NFKC → lowercase → punctuation to space → whitespace collapse (and
//! trim). "Whitespace" is what Python's `str.split()` splits on, so that our word shingles
//! equal `text.lower().split()`.
//!
//! Performance: pure-ASCII text (the bulk of most corpora) takes a byte-table path with no
//! Unicode work and no per-char decoding; `str::is_ascii` is vectorised by std. NFKC is only
//! run when the quick check says the text may change under it.

use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Normalization {
    pub nfkc: bool,
    pub lowercase: bool,
    /// Replace punctuation (Unicode categories P*, and ASCII symbols) by a space.
    pub strip_punctuation: bool,
    /// Collapse every run of whitespace into one space and trim both ends.
    pub collapse_whitespace: bool,
}

impl Default for Normalization {
    /// The exact-dedup default: NFKC, lowercase, collapse whitespace; keep punctuation.
    fn default() -> Self {
        Self { nfkc: true, lowercase: true, strip_punctuation: false, collapse_whitespace: true }
    }
}

/// ASCII bytes Python's `str.split()` treats as whitespace (\t \n \v \f \r, 0x1c-0x1f, space).
/// Branch-free arithmetic, so that loops over 32-byte chunks vectorise.
#[inline(always)]
pub fn is_ascii_space(b: u8) -> bool {
    (b == b' ') | (b.wrapping_sub(b'\t') < 5) | (b.wrapping_sub(0x1c) < 4)
}

/// Whitespace as Python's `str.isspace()` sees it (Unicode White_Space plus 0x1c-0x1f).
#[inline]
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[inline]
fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_punctuation()
    } else {
        // General categories Pc Pd Ps Pe Pi Pf Po (std has no category API; these ranges
        // cover the general-punctuation, CJK and fullwidth blocks that occur in practice).
        matches!(c,
            '\u{00A1}' | '\u{00A7}' | '\u{00AB}' | '\u{00B6}' | '\u{00B7}' | '\u{00BB}' | '\u{00BF}'
            | '\u{2010}'..='\u{2027}' | '\u{2030}'..='\u{205E}' | '\u{3001}'..='\u{3003}'
            | '\u{3008}'..='\u{3011}' | '\u{3014}'..='\u{301F}' | '\u{FE10}'..='\u{FE19}'
            | '\u{FE30}'..='\u{FE4F}' | '\u{FF01}'..='\u{FF0F}' | '\u{FF1A}'..='\u{FF20}'
            | '\u{FF3B}'..='\u{FF40}' | '\u{FF5B}'..='\u{FF65}')
    }
}

/// True when normalisation cannot change `text` (all steps off, or nothing to do).
pub fn is_identity(text: &str, cfg: &Normalization) -> bool {
    !cfg.lowercase && !cfg.strip_punctuation && !cfg.collapse_whitespace && (!cfg.nfkc || text.is_ascii())
}

/// Characters that fast paths may copy as they are: unchanged by NFKC and by lowercasing,
/// not whitespace, not combining, never the second half of a canonical composition.
/// (Computed with Python's `unicodedata` over U+00A0..U+00FF and U+2010..U+203F; the test
/// `words::tests::inert_characters_survive_normalisation` re-checks every one against `normalize_into`.)
#[inline]
pub(crate) fn is_inert(c: char) -> bool {
    matches!(c as u32,
        0xA1..=0xA7 | 0xA9 | 0xAB..=0xAC | 0xAE | 0xB0..=0xB1 | 0xB6..=0xB7 | 0xBB | 0xBF | 0xD7
        | 0xDF..=0xFF | 0x2010 | 0x2012..=0x2016 | 0x2018..=0x2023 | 0x2027 | 0x2030..=0x2032
        | 0x2035 | 0x2038..=0x203B | 0x203D | 0x203F)
}

/// True when every non-ASCII character of `text` is inert (ASCII text included).
pub(crate) fn only_inert_non_ascii(text: &str) -> bool {
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

/// Normalise `text` into `out` (cleared first) as bytes of valid UTF-8.
pub fn normalize_into(text: &str, cfg: &Normalization, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(text.len());
    if !cfg.collapse_whitespace {
        if text.is_ascii() {
            out.extend(text.bytes().map(|b| map_ascii(b, cfg)));
            return;
        }
        let nfkc_needed = cfg.nfkc && is_nfkc_quick(text.chars()) != IsNormalized::Yes;
        if nfkc_needed {
            normalize_chars(text.nfkc(), cfg, out);
        } else {
            normalize_chars(text.chars(), cfg, out);
        }
        return;
    }
    // Inert characters pass every step unchanged, so a text holding no others is one byte run
    // (no NFKC check, no split at each non-ASCII character).
    let inert = !cfg.strip_punctuation && only_inert_non_ascii(text);
    if inert || !cfg.nfkc || !needs_nfkc(text) {
        normalize_mixed_dispatch(text, cfg, inert, out);
    } else {
        let composed: String = text.nfkc().collect();
        normalize_mixed_dispatch(&composed, cfg, false, out);
    }
}

/// The block path compiled for AVX2 when the CPU has it (256-bit compares and lowering:
/// 0.81 → 1.10 GB/s on KJV text, `--example exact_profile`), else the portable build.
fn normalize_mixed_dispatch(text: &str, cfg: &Normalization, inert: bool, out: &mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { normalize_mixed_avx2(text, cfg, inert, out) };
            return;
        }
    }
    normalize_mixed(text, cfg, inert, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn normalize_mixed_avx2(text: &str, cfg: &Normalization, inert: bool, out: &mut Vec<u8>) {
    normalize_mixed(text, cfg, inert, out)
}

/// Index of the first byte >= 0x80 at or after `from` (8 bytes per step), or `bytes.len()`.
#[inline]
fn next_non_ascii(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while i + 8 <= bytes.len() {
        let high = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes")) & 0x8080_8080_8080_8080;
        if high != 0 {
            return i + (high.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < bytes.len() && bytes[i] < 0x80 {
        i += 1;
    }
    i
}

/// Whether NFKC may change `text`. ASCII is always NFKC and has combining class 0, which
/// resets the quick check's ordering state, so only the non-ASCII runs need checking (the
/// per-char quick check over whole documents was 20% of exact-dedup time on KJV text).
fn needs_nfkc(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = next_non_ascii(bytes, 0);
    while i < bytes.len() {
        let mut j = i;
        while j < bytes.len() && bytes[j] >= 0x80 {
            j += 1;
        }
        if is_nfkc_quick(text[i..j].chars()) != IsNormalized::Yes {
            return true;
        }
        i = next_non_ascii(bytes, j);
    }
    false
}

/// Lowercase / punctuation / whitespace-collapse of already-NFKC text. ASCII runs (most of
/// the bytes even in non-English web text) take the block path; only non-ASCII chars are
/// decoded. Spaces are emitted eagerly (one per run, none at the start) and a trailing one
/// is popped at the end. Measured with `exact_duplicates(num_threads=1)` on 129 MB of
/// mixed-case ASCII prose (2-core EPYC): a plain byte loop 0.29 GB/s, the block path
/// 1.22 GB/s (hash and sort included). Before ASCII runs were split out, one curly
/// apostrophe sent a whole document down the per-char path (0.18 GB/s on KJV text).
#[inline(always)]
fn normalize_mixed(text: &str, cfg: &Normalization, inert: bool, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    let mut last_space = false;
    // With only inert non-ASCII characters (and punctuation kept) the whole text is one run:
    // the block path keeps bytes >= 0x80 as they are.
    if inert {
        collapse_ascii(bytes, cfg, &mut last_space, out);
    } else {
        let mut i = 0;
        while i < bytes.len() {
            let j = next_non_ascii(bytes, i);
            collapse_ascii(&bytes[i..j], cfg, &mut last_space, out);
            if j == bytes.len() {
                break;
            }
            let c = text[j..].chars().next().expect("j is a char boundary");
            if cfg.lowercase {
                for lc in c.to_lowercase() {
                    emit_char(lc, cfg, &mut last_space, out);
                }
            } else {
                emit_char(c, cfg, &mut last_space, out);
            }
            i = j + c.len_utf8();
        }
    }
    if last_space {
        out.pop();
    }
}

#[inline]
fn emit_char(c: char, cfg: &Normalization, last_space: &mut bool, out: &mut Vec<u8>) {
    let c = if cfg.strip_punctuation && is_punctuation(c) { ' ' } else { c };
    if is_space(c) {
        if !*last_space && !out.is_empty() {
            out.push(b' ');
            *last_space = true;
        }
    } else {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        *last_space = false;
    }
}

/// Collapse an ASCII run: 32-byte chunks without a run of two whitespace bytes (nearly all,
/// in prose) are lowercased, and their whitespace bytes turned into b' ', as a block with
/// branch-free, vectorisable arithmetic; others go byte by byte. (KJV text, `exact_profile`,
/// 1 thread: whole texts of ASCII plus inert characters as one run took exact dedup from 1.27
/// to 1.53 GB/s; a lone \n or \t kept on the block path, to 1.61; the byte path by masks, to 1.82.)
#[inline(always)]
fn collapse_ascii(bytes: &[u8], cfg: &Normalization, last_space: &mut bool, out: &mut Vec<u8>) {
    let mut chunks = bytes.chunks_exact(CHUNK);
    for chunk in &mut chunks {
        let chunk: &[u8; CHUNK] = chunk.try_into().expect("exact chunk");
        collapse_chunk(chunk, CHUNK, cfg, last_space, out);
    }
    // The tail (and every short run between non-ASCII chars) is padded with a plain letter
    // so it takes the block path too; only its real bytes are kept.
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut padded = [b'a'; CHUNK];
        padded[..tail.len()].copy_from_slice(tail);
        collapse_chunk(&padded, tail.len(), cfg, last_space, out);
    }
}

/// One 32-byte block of which the first `len` bytes are real.
#[inline(always)]
fn collapse_chunk(chunk: &[u8; CHUNK], len: usize, cfg: &Normalization, last_space: &mut bool, out: &mut Vec<u8>) {
    let joins_space = is_ascii_space(chunk[0]) && (*last_space || out.is_empty());
    if !joins_space && chunk_is_plain(chunk, cfg.strip_punctuation) {
        let mut mapped = *chunk;
        for b in &mut mapped {
            let lowered = if cfg.lowercase { *b | (((b.wrapping_sub(b'A') < 26) as u8) << 5) } else { *b };
            *b = if is_ascii_space(*b) { b' ' } else { lowered };
        }
        if len == CHUNK {
            out.extend_from_slice(&mapped); // fixed size: inlined, no memcpy call
        } else {
            out.extend_from_slice(&mapped[..len]);
        }
        *last_space = mapped[len - 1] == b' ';
    } else {
        collapse_bytes(&chunk[..len], cfg, last_space, out);
    }
}

const CHUNK: usize = 32;

/// True when no two adjacent bytes of the chunk are whitespace (and it has no punctuation
/// when stripping it): every whitespace byte then becomes one b' ' in place.
#[inline(always)]
fn chunk_is_plain(c: &[u8; CHUNK], strip_punctuation: bool) -> bool {
    let mut special = 0u8;
    for j in 0..CHUNK - 1 {
        special |= (is_ascii_space(c[j]) & is_ascii_space(c[j + 1])) as u8;
    }
    if strip_punctuation {
        for &b in c {
            special |= b.is_ascii_punctuation() as u8;
        }
    }
    special == 0
}

/// The byte path for one chunk (at most `CHUNK` bytes, e.g. one holding a run of whitespace):
/// which bytes survive is decided for the whole chunk with bit masks, then the kept bytes are
/// compacted by a loop whose only dependency is the write position. (A loop deciding byte by
/// byte, each decision waiting on the previous one, was 8% of exact-dedup time on KJV text for
/// the 2% of chunks that hold a run.)
#[inline]
fn collapse_bytes(bytes: &[u8], cfg: &Normalization, last_space: &mut bool, out: &mut Vec<u8>) {
    debug_assert!(bytes.len() <= CHUNK);
    let mut mapped = [0u8; CHUNK];
    let mut ws = 0u32;
    for (j, (&b, m)) in bytes.iter().zip(&mut mapped).enumerate() {
        let b = map_ascii(b, cfg);
        let w = is_ascii_space(b);
        *m = if w { b' ' } else { b };
        ws |= (w as u32) << j;
    }
    let real = if bytes.len() == CHUNK { u32::MAX } else { (1u32 << bytes.len()) - 1 };
    let word = !ws & real;
    // A whitespace byte survives when the byte before it (or, for the first, the last byte
    // written) is not whitespace and something was written before it.
    let ws_before = (ws << 1) | *last_space as u32;
    let written_before = match (out.is_empty(), word) {
        (false, _) => u32::MAX,
        (true, 0) => 0,
        (true, w) => u32::MAX.checked_shl(w.trailing_zeros() + 1).unwrap_or(0),
    };
    let keep = word | (ws & !ws_before & written_before & real);
    let mut buf = [0u8; CHUNK];
    let mut k = 0;
    for (j, &m) in mapped[..bytes.len()].iter().enumerate() {
        buf[k] = m;
        k += ((keep >> j) & 1) as usize;
    }
    out.extend_from_slice(&buf[..k]);
    if keep != 0 {
        *last_space = ws & (1u32 << (31 - keep.leading_zeros())) != 0;
    }
}

#[inline]
fn map_ascii(b: u8, cfg: &Normalization) -> u8 {
    if cfg.strip_punctuation && b.is_ascii_punctuation() {
        b' '
    } else if cfg.lowercase {
        b.to_ascii_lowercase()
    } else {
        b
    }
}

fn normalize_chars(chars: impl Iterator<Item = char>, cfg: &Normalization, out: &mut Vec<u8>) {
    let mut pending_space = false;
    let mut buf = [0u8; 4];
    let mut emit = |c: char, out: &mut Vec<u8>| {
        let c = if cfg.strip_punctuation && is_punctuation(c) { ' ' } else { c };
        if cfg.collapse_whitespace && is_space(c) {
            pending_space = !out.is_empty();
            return;
        }
        if pending_space {
            out.push(b' ');
            pending_space = false;
        }
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    };
    for c in chars {
        if cfg.lowercase {
            for lc in c.to_lowercase() {
                emit(lc, out);
            }
        } else {
            emit(c, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str, cfg: Normalization) -> String {
        let mut out = Vec::new();
        normalize_into(s, &cfg, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ascii_and_unicode_paths_agree() {
        let cfg = Normalization { strip_punctuation: true, ..Default::default() };
        assert_eq!(norm("  Hello,\t\tWORLD!\n", cfg), "hello world");
        assert_eq!(norm("  Hello,\t\tWORLD!\n\u{00e9}", cfg), "hello world \u{00e9}");
    }

    #[test]
    fn nfkc_folds_compatibility_forms() {
        let cfg = Normalization::default();
        // fullwidth letters and the "fi" ligature fold to ASCII under NFKC
        assert_eq!(norm("\u{FF21}\u{FF22} \u{FB01}ne", cfg), "ab fine");
        let no_nfkc = Normalization { nfkc: false, ..cfg };
        assert_ne!(norm("\u{FB01}ne", no_nfkc), "fine");
    }

    #[test]
    fn chunked_ascii_path_equals_char_path() {
        let mut rng = crate::hash::SplitMix64::new(1);
        // Inert non-ASCII characters (’ — é ß «) make the whole text one run when punctuation
        // is kept; the last alphabet adds a non-inert one (É) that forces the split path.
        let alphabets: [Vec<char>; 3] = [
            "aB .,\t\n  xyZ!\x1c".chars().collect(),
            "aB .,\t\n  xyZ!\x1c\u{2019}\u{2014}\u{e9}\u{df}\u{ab}".chars().collect(),
            "aB .,\t\n  xyZ!\x1c\u{2019}\u{2014}\u{e9}\u{c9}".chars().collect(),
        ];
        for (strip_punctuation, alphabet) in [false, true].into_iter().flat_map(|s| alphabets.iter().map(move |a| (s, a))) {
            let cfg = Normalization { strip_punctuation, ..Default::default() };
            for len in [0usize, 1, 31, 32, 33, 64, 100, 257] {
                let text: String = (0..len).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
                let mut fast = Vec::new();
                normalize_into(&text, &cfg, &mut fast);
                let mut slow = Vec::new();
                normalize_chars(text.chars(), &cfg, &mut slow);
                assert_eq!(fast, slow, "{text:?}");
            }
            // Prose-like text (mostly single separators, some a lone \n or \t, some runs)
            // exercises the block path and its hand-over to the byte path.
            for _ in 0..50 {
                let mut text = String::from(" ");
                for _ in 0..rng.below(80) {
                    text.push_str(["The", "cat", "sat,", "ON", "a", "mat.", "\u{2019}s"][rng.below(7) as usize]);
                    text.push_str([" ", " ", " ", " ", "\n", "\t", "\n ", "  "][rng.below(8) as usize]);
                }
                let mut fast = Vec::new();
                normalize_into(&text, &cfg, &mut fast);
                let mut slow = Vec::new();
                normalize_chars(text.chars(), &cfg, &mut slow);
                assert_eq!(fast, slow, "{text:?}");
            }
        }
    }

    #[test]
    fn keeps_whitespace_when_not_collapsing() {
        let cfg = Normalization { collapse_whitespace: false, nfkc: false, ..Default::default() };
        assert_eq!(norm(" A  B ", cfg), " a  b ");
    }
}
