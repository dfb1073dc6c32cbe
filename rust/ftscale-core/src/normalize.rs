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
#[inline]
pub fn is_ascii_space(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | 0x1c..=0x1f | b' ')
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

/// Normalise `text` into `out` (cleared first) as bytes of valid UTF-8.
pub fn normalize_into(text: &str, cfg: &Normalization, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(text.len());
    if text.is_ascii() {
        normalize_ascii(text.as_bytes(), cfg, out);
        return;
    }
    let nfkc_needed = cfg.nfkc && is_nfkc_quick(text.chars()) != IsNormalized::Yes;
    if nfkc_needed {
        normalize_chars(text.nfkc(), cfg, out);
    } else {
        normalize_chars(text.chars(), cfg, out);
    }
}

fn normalize_ascii(bytes: &[u8], cfg: &Normalization, out: &mut Vec<u8>) {
    if !cfg.collapse_whitespace {
        out.extend(bytes.iter().map(|&b| map_ascii(b, cfg)));
        return;
    }
    // A space is emitted lazily before the next kept byte, which both collapses runs and
    // trims the ends without a second pass.
    let mut pending_space = false;
    for &b in bytes {
        let b = map_ascii(b, cfg);
        if is_ascii_space(b) {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(b' ');
                pending_space = false;
            }
            out.push(b);
        }
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

/// Call `f` on every word of the normalised, lowercased text (Python: `norm(text).lower().split()`).
/// ASCII text is split in place without copying unless a word needs lowercasing.
pub fn for_each_word(text: &str, cfg: &Normalization, scratch: &mut Vec<u8>, mut f: impl FnMut(&[u8])) {
    if text.is_ascii() && !cfg.strip_punctuation {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            while i < bytes.len() && is_ascii_space(bytes[i]) {
                i += 1;
            }
            let start = i;
            while i < bytes.len() && !is_ascii_space(bytes[i]) {
                i += 1;
            }
            if start < i {
                let word = &bytes[start..i];
                if word.iter().any(u8::is_ascii_uppercase) {
                    scratch.clear();
                    scratch.extend(word.iter().map(u8::to_ascii_lowercase));
                    f(scratch);
                } else {
                    f(word);
                }
            }
        }
        return;
    }
    let cfg = Normalization { lowercase: true, collapse_whitespace: true, ..*cfg };
    normalize_into(text, &cfg, scratch);
    for word in scratch.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        f(word);
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
    fn words_match_python_split() {
        let mut scratch = Vec::new();
        let mut words = Vec::new();
        for_each_word("The  quick\x1cBrown\u{00A0}fox ", &Normalization::default(), &mut scratch, |w| {
            words.push(String::from_utf8(w.to_vec()).unwrap())
        });
        assert_eq!(words, ["the", "quick", "brown", "fox"]);
    }

    #[test]
    fn keeps_whitespace_when_not_collapsing() {
        let cfg = Normalization { collapse_whitespace: false, nfkc: false, ..Default::default() };
        assert_eq!(norm(" A  B ", cfg), " a  b ");
    }
}
