//! A fast path for byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3, Qwen 2/3, ...), giving
//! the ids and character offsets the `tokenizers` crate gives, byte for byte.
//!
//! Why: `tokenizers` spends ~2-3 µs per token on this machine (a `NormalizedString` with a
//! per-byte alignment vector for every pre-token, then the byte-level transform and a cache lookup
//! behind a lock), 20x the cost of rendering the template; SFT prep was bound by it. The same work
//! on plain byte slices — added-token split (Aho-Corasick, leftmost-longest), the same regex split
//! (`fancy-regex`, the engine the crate itself uses without oniguruma), a whole-piece vocabulary
//! lookup or BPE merges by rank (lowest rank first, leftmost on ties: the crate's heap order) —
//! is several times cheaper. The GPT-2 pattern itself runs on `regex-automata` (anchored at each
//! piece, with a per-thread cache; see `Splitter`): fancy-regex's backtracking VM, needed only for
//! its one lookahead, was 40% of the encoding time.
//!
//! Only tokenizer.json files whose every part is understood take this path (`from_json` returns
//! None otherwise): no normalizer or NFC (texts that are not already NFC go to the crate), a
//! `ByteLevel` pre-tokenizer (its GPT-2 regex) or `Split(regex, isolated)` then
//! `ByteLevel(use_regex=false)`, no prefix space, post-processors that add or move nothing
//! without special tokens (`TemplateProcessing`, `ByteLevel` without offset trimming), a BPE model
//! without dropout, byte fallback or affixes, and added tokens without lstrip / rstrip /
//! single-word rules. `ChatEncoder` also checks it against the crate on probe texts at load.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use aho_corasick::{AhoCorasick, MatchKind};
use fancy_regex::Regex;
use regex_automata::{meta, Anchored, Input};
use serde_json::Value as Json;

/// The GPT-2 pre-tokenization pattern `ByteLevel(use_regex=true)` splits with.
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// `GPT2_PATTERN` without its lookahead alternative (`Splitter::Gpt2` restores its effect).
const GPT2_PATTERN_NO_LOOKAHEAD: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// The pre-tokenization split.
enum Splitter {
    /// `GPT2_PATTERN` as `GPT2_PATTERN_NO_LOOKAHEAD`. At a whitespace run no earlier alternative
    /// matches a whitespace-only string, so the run is matched by `\s+(?!\S)|\s+`: all of it when
    /// it ends the text or is one character, else all but its last character (which then starts
    /// the next piece, e.g. `" word"`). `\s+` matches the whole run; `pieces` gives back that
    /// last character. Every character matches some alternative, so each search is anchored
    /// where the previous piece ended.
    Gpt2(meta::Regex),
    /// Any other pattern, on fancy-regex as the crate runs it.
    Fancy(Regex),
}

impl Splitter {
    fn new(pattern: &str) -> Option<Splitter> {
        if pattern == GPT2_PATTERN {
            return meta::Regex::new(GPT2_PATTERN_NO_LOOKAHEAD).ok().map(Splitter::Gpt2);
        }
        Regex::new(pattern).ok().map(Splitter::Fancy)
    }

    /// Calls `piece(start, end)` for every byte range of `segment` in order, its matches and the
    /// text between them (GPT-2's matches cover the whole segment); None when the regex engine
    /// fails (the text then goes to the crate) or `piece` returns None. `instance` keys the
    /// per-thread search cache. No allocation: pieces are encoded as they are found.
    fn for_each_piece(&self, segment: &str, instance: u64, mut piece: impl FnMut(usize, usize) -> Option<()>) -> Option<()> {
        match self {
            Splitter::Gpt2(re) => {
                let bytes = segment.as_bytes();
                let mut at = 0;
                while at < bytes.len() {
                    let end = match gpt2_ascii_piece(bytes, at) {
                        Some(end) => end,
                        None => gpt2_regex_piece(re, segment, at, instance)?,
                    };
                    piece(at, end)?;
                    at = end;
                }
            }
            Splitter::Fancy(re) => {
                let mut previous = 0;
                for found in re.find_iter(segment) {
                    let found = found.ok()?;
                    if found.start() > previous {
                        piece(previous, found.start())?;
                    }
                    piece(found.start(), found.end())?;
                    previous = found.end();
                }
                if previous < segment.len() {
                    piece(previous, segment.len())?;
                }
            }
        }
        Some(())
    }
}

/// The GPT-2 piece at `at` by the regex (anchored there), with the whitespace rule of
/// `Splitter::Gpt2`; None when the engine fails or matches nothing.
fn gpt2_regex_piece(re: &meta::Regex, segment: &str, at: usize, instance: u64) -> Option<usize> {
    SPLIT_CACHE.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().is_none_or(|(owner, _)| *owner != instance) {
            *slot = Some((instance, re.create_cache()));
        }
        let (_, cache) = slot.as_mut().expect("set above");
        let input = Input::new(segment).range(at..).anchored(Anchored::Yes);
        let found = re.search_with(cache, &input).filter(|m| m.end() > at)?;
        let mut end = found.end();
        let run = &segment[at..end];
        if end < segment.len() && run.chars().all(char::is_whitespace) {
            let last = run.chars().next_back().map_or(0, char::len_utf8);
            if run.len() > last {
                end -= last;
            }
        }
        Some(end)
    })
}

/// ASCII classes of `GPT2_PATTERN`: `\p{L}`, `\p{N}`, `\s` (Unicode White_Space: tab, LF, VT,
/// FF, CR, space) and the rest (`[^\s\p{L}\p{N}]`, control characters included).
#[derive(Clone, Copy, PartialEq, Eq)]
enum AsciiClass {
    Letter,
    Number,
    Space,
    Other,
}

const ASCII_CLASSES: [AsciiClass; 128] = {
    let mut table = [AsciiClass::Other; 128];
    let mut b = 0;
    while b < 128 {
        table[b] = match b as u8 {
            b'a'..=b'z' | b'A'..=b'Z' => AsciiClass::Letter,
            b'0'..=b'9' => AsciiClass::Number,
            b'\t'..=b'\r' | b' ' => AsciiClass::Space,
            _ => AsciiClass::Other,
        };
        b += 1;
    }
    table
};

/// The class of an ASCII byte (`b < 0x80`).
fn ascii_class(b: u8) -> AsciiClass {
    ASCII_CLASSES[usize::from(b & 0x7f)]
}

/// The end of the `GPT2_PATTERN` piece that starts at `bytes[at]`, when ASCII characters alone
/// decide it; None when a non-ASCII character is the piece's first, follows its optional space,
/// or follows its run (it might extend the run): the regex decides those (`gpt2_regex_piece`).
///
/// Why: anchored regex searches were ~25% of SFT encoding (a search per piece, ~300
/// instructions each); this scan takes a few per byte and yields the same pieces (the property
/// test in `chat::tests` checks it against the crate).
fn gpt2_ascii_piece(bytes: &[u8], at: usize) -> Option<usize> {
    let byte = |k: usize| bytes.get(k).copied();
    let first = bytes[at];
    if first >= 0x80 {
        return None;
    }
    // 's|'t|'re|'ve|'m|'ll|'d
    if first == b'\'' {
        match (byte(at + 1), byte(at + 2)) {
            (Some(b's' | b't' | b'm' | b'd'), _) => return Some(at + 2),
            (Some(b'r' | b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => return Some(at + 3),
            _ => {}
        }
    }
    // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+`: the class of the first character after an
    // optional space; a space followed by whitespace (or nothing) is whitespace.
    let mut run_start = at;
    if first == b' ' {
        match byte(at + 1) {
            Some(next) if next >= 0x80 => return None,
            Some(next) if ascii_class(next) != AsciiClass::Space => run_start = at + 1,
            _ => {}
        }
    }
    let class = ascii_class(bytes[run_start]);
    let mut end = run_start + 1;
    while let Some(next) = byte(end) {
        if next >= 0x80 {
            return None;
        }
        if ascii_class(next) != class {
            break;
        }
        end += 1;
    }
    // `\s+(?!\S)|\s+`: a whitespace run gives its last character to the next piece when a
    // non-space follows and the run is longer than one.
    if class == AsciiClass::Space && end < bytes.len() && end - at > 1 {
        end -= 1;
    }
    Some(end)
}

/// Token ids and their (start, end) character offsets.
pub type Encoded = (Vec<u32>, Vec<(usize, usize)>);

/// Pieces of at most this many bytes have their tokens cached (natural text repeats its words).
const CACHED_PIECE_BYTES: usize = 48;
/// Cached pieces per thread; the cache is emptied when it is full. Bounds it to a few MiB.
const CACHED_PIECES: usize = 1 << 16;

/// A multiply-rotate hasher (the Fx hash) for the merge table and the piece cache: their keys
/// are token-id pairs and short byte strings, for which SipHash's cost dominated the merge loop.
/// Not flooding-resistant; the cache it serves is bounded.
#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("chunks of 8 bytes")));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Tokens of a cached piece: (id, byte length) each.
type PieceTokens = Box<[(u32, u8)]>;

/// Pieces of at most this many bytes with at most `SMALL_PIECE_TOKENS` tokens (nearly every
/// piece of natural text) are cached in `SmallSlot`s: a lookup is one hash of two words and one
/// compare, with no allocation or pointer chase. The hash-map lookup it replaces (hash the
/// bytes, probe, `memcmp`, follow the boxed tokens) was ~40% of tokenizing a chat rendering.
const SMALL_PIECE_BYTES: usize = 16;
const SMALL_PIECE_TOKENS: usize = 4;
/// Slots per thread, in pairs (2-way set-associative: a new piece goes first in its pair and
/// moves the piece there second): 40 bytes each, 1.25 MiB.
const SMALL_SLOTS_LOG2: u32 = 15;

#[derive(Clone, Copy, Default)]
struct SmallSlot {
    key: [u64; 2], // the piece's bytes, zero-padded
    len: u8,       // the piece's length in bytes; 0: an empty slot
    count: u8,     // tokens
    token_lens: [u8; SMALL_PIECE_TOKENS],
    ids: [u32; SMALL_PIECE_TOKENS],
}

/// The piece `text[start..start + len]` (`len <= SMALL_PIECE_BYTES`) as two zero-padded words,
/// and its pair of slots (`at`, `at ^ 1`). Words are read straight from the text when 16 bytes
/// remain (a padded copy cost two libc calls per piece).
fn small_key(text: &[u8], start: usize, len: usize) -> ([u64; 2], usize) {
    let word = |at: usize| u64::from_le_bytes(text[at..at + 8].try_into().expect("8 bytes"));
    let keep = |w: u64, n: usize| if n >= 8 { w } else { w & ((1u64 << (8 * n)) - 1) };
    let (lo, hi) = if start + SMALL_PIECE_BYTES <= text.len() {
        (keep(word(start), len), if len > 8 { keep(word(start + 8), len - 8) } else { 0 })
    } else {
        let mut padded = [0u8; SMALL_PIECE_BYTES];
        padded[..len].copy_from_slice(&text[start..start + len]);
        (u64::from_le_bytes(padded[..8].try_into().expect("8 bytes")), u64::from_le_bytes(padded[8..].try_into().expect("8 bytes")))
    };
    let mut hash = lo.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ hi.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ len as u64;
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(0x1656_67B1_9E37_79F9);
    hash ^= hash >> 32;
    ([lo, hi], (hash as usize) & ((1 << SMALL_SLOTS_LOG2) - 1))
}

/// The per-thread piece cache of one tokenizer instance: small pieces in fixed slots, in front
/// of a map of every piece up to `CACHED_PIECE_BYTES` (emptied when it holds `CACHED_PIECES`),
/// so a piece evicted from its slot is found again without merging.
struct PieceCache {
    instance: u64,
    small: Vec<SmallSlot>, // 1 << SMALL_SLOTS_LOG2 slots once the thread encodes
    large: FxMap<Box<[u8]>, PieceTokens>,
}

impl PieceCache {
    /// Make this the cache of `instance` (emptied when it held another's pieces).
    fn claim(&mut self, instance: u64) {
        if self.instance != instance || self.small.is_empty() {
            self.small.clear();
            self.small.resize(1 << SMALL_SLOTS_LOG2, SmallSlot::default());
            self.large.clear();
            self.instance = instance;
        }
    }
}

/// Token ids and byte spans of a text, as they are produced.
struct Pieces {
    ids: Vec<u32>,
    spans: Vec<(usize, usize)>,
}

impl Pieces {
    fn push(&mut self, id: u32, start: usize, end: usize) {
        self.ids.push(id);
        self.spans.push((start, end));
    }
}

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // The GPT-2 splitter's search state (lazy DFA tables) for one tokenizer instance per thread.
    static SPLIT_CACHE: RefCell<Option<(u64, meta::Cache)>> = const { RefCell::new(None) };
    // Per thread, so encoding threads never wait on each other: the tokens of pieces (by their
    // bytes) of one tokenizer instance, emptied when another instance encodes on the thread.
    // Holds 1.25 MiB of small slots plus at most CACHED_PIECES pieces of at most
    // CACHED_PIECE_BYTES bytes.
    static PIECE_CACHE: RefCell<PieceCache> =
        RefCell::new(PieceCache { instance: u64::MAX, small: Vec::new(), large: FxMap::default() });
}

struct AddedSet {
    matcher: AhoCorasick,
    ids: Vec<u32>,
}

pub struct ByteLevelBpe {
    instance: u64, // this tokenizer's key in the per-thread piece cache
    added: Option<AddedSet>,
    added_normalized: Option<AddedSet>,
    split: Splitter,
    vocab: FxMap<Box<[u8]>, u32>,
    byte_ids: [Option<u32>; 256], // None: a byte the vocabulary lacks (the crate drops it or emits unk)
    merges: FxMap<(u32, u32), (u32, u32)>, // (left, right) -> (rank, merged id)
    ignore_merges: bool,
    nfc: bool,
}

/// GPT-2's byte → printable char table, inverted: char → byte.
fn char_to_byte() -> HashMap<char, u8> {
    let mut printable: Vec<u8> = (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.iter().map(|&b| u32::from(b)).collect();
    let mut n = 0;
    for b in 0..=255u8 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    printable.into_iter().zip(chars).map(|(b, c)| (char::from_u32(c).expect("table chars are valid"), b)).collect()
}

fn is_false_or_absent(obj: &Json, key: &str) -> bool {
    matches!(obj.get(key), None | Some(Json::Null) | Some(Json::Bool(false)))
}

fn is_empty_or_absent(obj: &Json, key: &str) -> bool {
    match obj.get(key) {
        None | Some(Json::Null) => true,
        Some(Json::String(s)) => s.is_empty(),
        _ => false,
    }
}

fn byte_level_ok(obj: &Json) -> bool {
    obj.get("type").and_then(Json::as_str) == Some("ByteLevel") && is_false_or_absent(obj, "add_prefix_space")
}

/// The split pattern of a supported pre-tokenizer.
fn split_pattern(pre: &Json) -> Option<String> {
    match pre.get("type")?.as_str()? {
        "ByteLevel" if byte_level_ok(pre) && pre.get("use_regex").and_then(Json::as_bool).unwrap_or(true) => {
            Some(GPT2_PATTERN.to_string())
        }
        "Sequence" => {
            let parts = pre.get("pretokenizers")?.as_array()?;
            let [split, byte_level] = parts.as_slice() else { return None };
            let ok = split.get("type")?.as_str()? == "Split"
                && split.get("behavior")?.as_str()? == "Isolated"
                && is_false_or_absent(split, "invert")
                && byte_level_ok(byte_level)
                && byte_level.get("use_regex").and_then(Json::as_bool) == Some(false);
            if !ok {
                return None;
            }
            Some(split.get("pattern")?.get("Regex")?.as_str()?.to_string())
        }
        _ => None,
    }
}

/// Whether a post-processor adds or moves nothing when no special tokens are added.
fn post_processor_ok(post: &Json) -> bool {
    match post.get("type").and_then(Json::as_str) {
        None => post.is_null(),
        Some("TemplateProcessing") => true,
        Some("ByteLevel") => is_false_or_absent(post, "trim_offsets"),
        Some("Sequence") => post.get("processors").and_then(Json::as_array).is_some_and(|p| p.iter().all(post_processor_ok)),
        Some(_) => false,
    }
}

impl ByteLevelBpe {
    /// The fast path for `tokenizer_json`, or None when any part of it is not one it reproduces.
    pub fn from_json(tokenizer_json: &str) -> Option<ByteLevelBpe> {
        let doc: Json = serde_json::from_str(tokenizer_json).ok()?;
        let nfc = match doc.get("normalizer") {
            None | Some(Json::Null) => false,
            Some(n) if n.get("type").and_then(Json::as_str) == Some("NFC") => true,
            Some(_) => return None,
        };
        let split = Splitter::new(&split_pattern(doc.get("pre_tokenizer")?)?)?;
        if !post_processor_ok(doc.get("post_processor").unwrap_or(&Json::Null)) {
            return None;
        }
        let model = doc.get("model")?;
        let plain = model.get("type")?.as_str()? == "BPE"
            && matches!(model.get("dropout"), None | Some(Json::Null))
            && is_false_or_absent(model, "byte_fallback")
            && is_empty_or_absent(model, "continuing_subword_prefix")
            && is_empty_or_absent(model, "end_of_word_suffix");
        if !plain {
            return None;
        }
        let to_byte = char_to_byte();
        let raw = |token: &str| -> Option<Box<[u8]>> { token.chars().map(|c| to_byte.get(&c).copied()).collect() };
        let mut vocab = FxMap::default();
        let mut ids_of: HashMap<&str, u32> = HashMap::new();
        for (token, id) in model.get("vocab")?.as_object()? {
            let id = u32::try_from(id.as_u64()?).ok()?;
            ids_of.insert(token.as_str(), id);
            if let Some(bytes) = raw(token) {
                vocab.insert(bytes, id);
            }
        }
        let mut byte_ids = [None; 256];
        for (c, b) in &to_byte {
            byte_ids[*b as usize] = ids_of.get(c.to_string().as_str()).copied();
        }
        let mut merges = FxMap::default();
        for (rank, merge) in model.get("merges")?.as_array()?.iter().enumerate() {
            let (a, b) = match merge {
                Json::String(s) => s.split_once(' ')?,
                Json::Array(pair) => (pair.first()?.as_str()?, pair.get(1)?.as_str()?),
                _ => return None,
            };
            let merged = ids_of.get(format!("{a}{b}").as_str())?;
            merges.insert((*ids_of.get(a)?, *ids_of.get(b)?), (u32::try_from(rank).ok()?, *merged));
        }
        let (mut plain_tokens, mut normalized_tokens) = (Vec::new(), Vec::new());
        for token in doc.get("added_tokens").and_then(Json::as_array).map_or(&[][..], Vec::as_slice) {
            if !(is_false_or_absent(token, "lstrip") && is_false_or_absent(token, "rstrip") && is_false_or_absent(token, "single_word")) {
                return None;
            }
            let entry = (token.get("content")?.as_str()?.to_string(), u32::try_from(token.get("id")?.as_u64()?).ok()?);
            if token.get("normalized").and_then(Json::as_bool).unwrap_or(false) {
                normalized_tokens.push(entry);
            } else {
                plain_tokens.push(entry);
            }
        }
        Some(ByteLevelBpe {
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            added: added_set(plain_tokens)?,
            added_normalized: added_set(normalized_tokens)?,
            split,
            vocab,
            byte_ids,
            merges,
            ignore_merges: model.get("ignore_merges").and_then(Json::as_bool).unwrap_or(false),
            nfc,
        })
    }

    /// Ids and character offsets of `text` (no special tokens added); None when this path does
    /// not apply to the text (not NFC under an NFC normalizer, a byte the vocabulary lacks, a
    /// regex engine failure): the caller then asks the crate.
    pub fn encode(&self, text: &str) -> Option<Encoded> {
        let (ids, spans) = self.encode_bytes(text)?;
        let offsets = if text.is_ascii() { spans } else { char_offsets(text, &spans) };
        Some((ids, offsets))
    }

    /// `encode` with byte spans instead of character offsets (a token that holds part of a
    /// multi-byte character covers only its own bytes).
    pub fn encode_bytes(&self, text: &str) -> Option<Encoded> {
        if self.nfc && !unicode_normalization::is_nfc(text) {
            return None;
        }
        let mut out = Pieces { ids: Vec::with_capacity(text.len() / 3), spans: Vec::with_capacity(text.len() / 3) };
        // One borrow of the piece cache per text, not one per piece: the borrow and the
        // thread-local access were ~10% of encoding when taken per piece.
        PIECE_CACHE.with(|cache| {
            let cache = &mut *cache.borrow_mut();
            cache.claim(self.instance);
            for (start, end, added) in split_added(self.added.as_ref(), text, 0, text.len()) {
                if let Some(id) = added {
                    out.push(id, start, end);
                    continue;
                }
                for (s, e, added) in split_added(self.added_normalized.as_ref(), text, start, end) {
                    match added {
                        Some(id) => out.push(id, s, e),
                        None => self.encode_segment(text, s, e, cache, &mut out)?,
                    }
                }
            }
            Some(())
        })?;
        Some((out.ids, out.spans))
    }

    fn encode_segment(&self, text: &str, start: usize, end: usize, cache: &mut PieceCache, out: &mut Pieces) -> Option<()> {
        self.split.for_each_piece(&text[start..end], self.instance, |s, e| self.encode_piece(text, start + s, start + e, cache, out))
    }

    fn encode_piece(&self, text: &str, start: usize, end: usize, cache: &mut PieceCache, out: &mut Pieces) -> Option<()> {
        let bytes = &text.as_bytes()[start..end];
        if bytes.is_empty() {
            return Some(());
        }
        let small = (bytes.len() <= SMALL_PIECE_BYTES).then(|| small_key(text.as_bytes(), start, bytes.len()));
        if let Some((key, at)) = small {
            let hit = [at, at ^ 1].into_iter().map(|k| &cache.small[k]).find(|slot| usize::from(slot.len) == bytes.len() && slot.key == key);
            if let Some(slot) = hit {
                let mut from = start;
                for k in 0..usize::from(slot.count) {
                    let to = from + usize::from(slot.token_lens[k]);
                    out.push(slot.ids[k], from, to);
                    from = to;
                }
                return Some(());
            }
        }
        let first = out.ids.len();
        if let Some(tokens) = (bytes.len() <= CACHED_PIECE_BYTES).then(|| cache.large.get(bytes)).flatten() {
            let mut at = start;
            for &(id, len) in tokens.iter() {
                out.push(id, at, at + usize::from(len));
                at += usize::from(len);
            }
        } else {
            // Llama 3's `ignore_merges`: a piece in the vocabulary is its own token.
            match if self.ignore_merges { self.vocab.get(bytes) } else { None } {
                Some(&id) => out.push(id, start, end),
                None => self.merge_piece(bytes, start, &mut out.ids, &mut out.spans)?,
            }
            if bytes.len() > CACHED_PIECE_BYTES {
                return Some(());
            }
            // Token lengths are at most CACHED_PIECE_BYTES, so they fit a u8.
            let tokens: PieceTokens = (first..out.ids.len()).map(|k| (out.ids[k], (out.spans[k].1 - out.spans[k].0) as u8)).collect();
            if cache.large.len() >= CACHED_PIECES {
                cache.large.clear();
            }
            cache.large.insert(Box::from(bytes), tokens);
        }
        let count = out.ids.len() - first;
        if let Some((key, at)) = small.filter(|_| count <= SMALL_PIECE_TOKENS) {
            let mut slot = SmallSlot { key, len: bytes.len() as u8, count: count as u8, ..SmallSlot::default() };
            for k in 0..count {
                slot.ids[k] = out.ids[first + k];
                slot.token_lens[k] = (out.spans[first + k].1 - out.spans[first + k].0) as u8;
            }
            if cache.small[at].len != 0 {
                cache.small[at ^ 1] = cache.small[at];
            }
            cache.small[at] = slot;
        }
        Some(())
    }

    /// BPE merges of one piece (`bytes` = text[start..]), appended to `ids` and `spans`. Kept
    /// out of line: pieces are nearly always cached, and inlining this slowed the cached path.
    #[inline(never)]
    fn merge_piece(&self, bytes: &[u8], start: usize, ids: &mut Vec<u32>, spans: &mut Vec<(usize, usize)>) -> Option<()> {
        // (id, start, end) per symbol; merged in place, lowest rank first, leftmost on ties.
        let mut symbols = Vec::with_capacity(bytes.len());
        for (k, &b) in bytes.iter().enumerate() {
            symbols.push((self.byte_ids[b as usize]?, start + k, start + k + 1));
        }
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for k in 0..symbols.len().saturating_sub(1) {
                if let Some(&(rank, merged)) = self.merges.get(&(symbols[k].0, symbols[k + 1].0)) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, k, merged));
                    }
                }
            }
            let Some((_, k, merged)) = best else { break };
            symbols[k] = (merged, symbols[k].1, symbols[k + 1].2);
            symbols.remove(k + 1);
        }
        for (id, s, e) in symbols {
            ids.push(id);
            spans.push((s, e));
        }
        Some(())
    }
}

fn added_set(tokens: Vec<(String, u32)>) -> Option<Option<AddedSet>> {
    if tokens.is_empty() {
        return Some(None);
    }
    let matcher = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(tokens.iter().map(|(t, _)| t.as_str()))
        .ok()?;
    Some(Some(AddedSet { matcher, ids: tokens.into_iter().map(|(_, id)| id).collect() }))
}

/// `text[start..end]` cut at added tokens: (start, end, Some(id)) for a token, None between.
fn split_added(set: Option<&AddedSet>, text: &str, start: usize, end: usize) -> Vec<(usize, usize, Option<u32>)> {
    let Some(set) = set else { return vec![(start, end, None)] };
    let mut out = Vec::new();
    let mut previous = start;
    for found in set.matcher.find_iter(&text[start..end]) {
        let (s, e) = (start + found.start(), start + found.end());
        if s > previous {
            out.push((previous, s, None));
        }
        out.push((s, e, Some(set.ids[found.pattern().as_usize()])));
        previous = e;
    }
    if previous < end {
        out.push((previous, end, None));
    }
    out
}

/// Byte spans to character offsets (of a text that is not ASCII: there they are equal). A token that holds part of a multi-byte character covers
/// the whole character, as the byte-level alignments of the crate give it.
fn char_offsets(text: &str, spans: &[(usize, usize)]) -> Vec<(usize, usize)> {
    // char_of[b]: index of the character holding byte b; starts[c]: byte where character c starts.
    let mut char_of = vec![0usize; text.len() + 1];
    let mut count = 0;
    for (c, (at, ch)) in text.char_indices().enumerate() {
        char_of[at..at + ch.len_utf8()].fill(c);
        count = c + 1;
    }
    char_of[text.len()] = count;
    spans.iter().map(|&(s, e)| if e > s { (char_of[s], char_of[e - 1] + 1) } else { (char_of[s], char_of[s]) }).collect()
}
