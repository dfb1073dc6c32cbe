//! Conversations to token ids and assistant-only loss masks, in parallel on the crate's pool.
//!
//! Each conversation is planned (`spans::plan`: which samples, which spans carry loss) with the
//! template (`template::ChatTemplate`), every sample's text is tokenized once with the
//! `tokenizers` crate (the model's own `tokenizer.json`, character offsets, no special tokens
//! added: the template writes them), and a token with character range `[s, e)` is supervised
//! iff it overlaps a span `[a, b)`: `s < b && e > a` (empty spans dropped).
//!
//! Held per conversation while it is encoded: its renderings (2 per assistant turn + 1; copies
//! of the full one's prefixes where the template allows) and the
//! ids / masks of its samples (4 + 1 bytes per token). Per batch: every conversation's ids and
//! masks until the caller takes them.

use std::sync::OnceLock;

use minijinja::value::Value;
use rayon::prelude::*;
use tokenizers::Tokenizer;

use super::bpe::{ByteLevelBpe, Encoded};
use super::spans::{plan, probe_markers, Markers, PlanError, RewritePolicy, Turns};
use super::template::ChatTemplate;
use crate::error::{invalid, CoreError, Result};
use crate::pool;

/// Probe texts that no template rewrites and that occur nowhere else in a probe's rendering.
const PROBE_REPLY: (&str, &str) = ("ftscale-probe-reply-a", "ftscale-probe-reply-b");
const PROBE_QUESTION: &str = "ftscale-probe-question";
/// Texts the byte-level fast path must tokenize exactly as the crate does before it is used:
/// contractions, digits, punctuation runs, whitespace runs and newlines, non-ASCII letters,
/// CJK, emoji (multi-byte characters split across tokens), and the added tokens.
const FAST_PATH_PROBES: [&str; 4] = [
    "Hello, world! It's 2024-06-01: we'll test   spaces\n\n\tand tabs... ok?",
    "Ünïcödé café naïve — «quotes» ¿qué? 東京は晴れ。 Ελληνικά 😀👍🏽 e\u{301}",
    "  leading and trailing  \n",
    "x=1;y=22;z=333; (a+b)*c; 'S 'LL 'Re don't",
];

/// One conversation: its messages (maps with `role`, `content`, ...) and the `tools` the template
/// is rendered with (none when the record has none).
pub struct Conversation {
    pub messages: Vec<Value>,
    pub tools: Value,
}

/// One encoded sample: token ids and the loss mask (1: the model learns to produce the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub ids: Vec<u32>,
    pub mask: Vec<u8>,
}

/// The samples of one conversation and how its turns were placed (see `spans::Plan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChat {
    pub samples: Vec<Sample>,
    pub expanded_turns: u32,
    pub located_turns: u32,
}

/// Why a conversation was not encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatFailure {
    NoAssistantTurn,
    /// The template did not render it (it raised, or minijinja lacks what it uses): the Python
    /// side renders it again with Jinja2, which decides.
    Render(String),
    TemplateMismatch(String),
}

/// A template plus a tokenizer: encodes conversations as `ftscale.data.chat`'s Python path does.
pub struct ChatEncoder {
    template: ChatTemplate,
    tokenizer: Tokenizer,
    fast: Option<ByteLevelBpe>,
    policy: RewritePolicy,
    eos_token: Option<String>,
    markers: OnceLock<Markers>,
}

impl ChatEncoder {
    /// `tokenizer_json`: the serialized tokenizer (`tokenizer.json`); truncation and padding in
    /// it are switched off, as `transformers` does for an untruncated call.
    pub fn new(template: &str, special_tokens: &[(String, String)], tokenizer_json: &str, policy: RewritePolicy) -> Result<ChatEncoder> {
        let template = ChatTemplate::new(template, special_tokens)
            .map_err(|e| CoreError::InvalidArgument(format!("chat template does not compile with minijinja: {e}")))?;
        let mut tokenizer: Tokenizer = tokenizer_json
            .parse()
            .map_err(|e| CoreError::InvalidArgument(format!("tokenizer.json cannot be loaded: {e}")))?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| CoreError::InvalidArgument(format!("tokenizer truncation cannot be disabled: {e}")))?;
        tokenizer.with_padding(None);
        let eos_token = special_tokens.iter().find(|(k, _)| k == "eos_token").map(|(_, v)| v.clone());
        let fast = ByteLevelBpe::from_json(tokenizer_json).filter(|fast| {
            let added: String = special_tokens.iter().map(|(_, v)| format!("{v}x {v}\n")).collect();
            // None (a text this path hands to the crate, e.g. not NFC) is fine; a different answer is not.
            fast.encode(FAST_PATH_PROBES[0]).is_some()
                && FAST_PATH_PROBES.iter().copied().chain([added.as_str()]).all(|text| {
                    let want = tokenizer.encode_char_offsets(text, false).ok().map(|e| (e.get_ids().to_vec(), e.get_offsets().to_vec()));
                    want.is_some() && fast.encode(text).is_none_or(|got| Some(got) == want)
                })
        });
        Ok(ChatEncoder { template, tokenizer, fast, policy, eos_token, markers: OnceLock::new() })
    }

    /// Whether the byte-level fast path tokenizes (else the `tokenizers` crate does).
    pub fn fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Whether the template's string `+` chains are rendered by one call each (`fuse`).
    pub fn fused_concatenations(&self) -> bool {
        self.template.fused()
    }

    /// Whether one render of a conversation gives every prefix's rendering (`prefix`).
    pub fn prefixes_from_one_render(&self) -> bool {
        self.template.gives_prefixes()
    }

    /// Ids and character offsets of `text`, no special tokens added.
    fn encode_text(&self, text: &str) -> std::result::Result<Encoded, String> {
        match self.fast.as_ref().and_then(|f| f.encode(text)) {
            Some(encoded) => Ok(encoded),
            None => self.crate_encode(text),
        }
    }

    /// Ids and character offsets of `text` by the `tokenizers` crate, no special tokens added.
    fn crate_encode(&self, text: &str) -> std::result::Result<Encoded, String> {
        let e = self.tokenizer.encode_char_offsets(text, false).map_err(|e| format!("tokenizer failed: {e}"))?;
        Ok((e.get_ids().to_vec(), e.get_offsets().to_vec()))
    }

    /// Render a conversation's first messages as `apply_chat_template(tokenize=False)`.
    pub fn render(&self, conv: &Conversation, add_generation_prompt: bool) -> std::result::Result<String, String> {
        self.template.render(&conv.messages, &conv.tools, add_generation_prompt)
    }

    fn markers(&self) -> &Markers {
        self.markers.get_or_init(|| {
                let message = |role: &str, content: &str| Value::from_pairs([("role", role), ("content", content)]);
                let render = |two: bool| {
                    let mut messages = vec![message("user", PROBE_QUESTION), message("assistant", PROBE_REPLY.0)];
                    if two {
                        messages.extend([message("user", PROBE_QUESTION), message("assistant", PROBE_REPLY.1)]);
                    }
                    self.template.render(&messages, &Value::from(()), false).ok()
                };
                probe_markers(&render, PROBE_REPLY.0, self.eos_token.as_deref())
            })
    }

    /// Encode one conversation.
    pub fn encode(&self, conv: &Conversation) -> std::result::Result<EncodedChat, ChatFailure> {
        let roles: Vec<Value> = conv.messages.iter().map(|m| m.get_attr("role").unwrap_or_default()).collect();
        let contents: Vec<Value> = conv.messages.iter().map(|m| m.get_attr("content").unwrap_or_default()).collect();
        let turns = Turns {
            assistant: roles.iter().map(|r| r.as_str() == Some("assistant")).collect(),
            contents: contents.iter().map(Value::as_str).collect(),
        };
        // One render gives every prefix's rendering where the template allows (`prefix`).
        let prefixes = self.template.prefixes(&conv.messages, &conv.tools);
        let render = |n: usize, gp: bool| match prefixes.as_ref().and_then(|p| p.render(n, gp)) {
            Some(text) => Ok(text),
            None => self.template.render(&conv.messages[..n], &conv.tools, gp),
        };
        let no_markers = Markers::default();
        let markers = if turns.assistant.iter().any(|&a| a) { self.markers() } else { &no_markers };
        let planned = plan(&turns, self.policy, &render, markers).map_err(|e| match e {
            PlanError::NoAssistantTurn => ChatFailure::NoAssistantTurn,
            PlanError::Render(m) => ChatFailure::Render(m),
            PlanError::Mismatch(m) => ChatFailure::TemplateMismatch(m),
        })?;
        let mut samples = Vec::with_capacity(planned.samples.len());
        for sample in &planned.samples {
            samples.push(self.tokenize(&sample.text, &sample.spans).map_err(ChatFailure::Render)?);
        }
        Ok(EncodedChat { samples, expanded_turns: planned.expanded_turns, located_turns: planned.located_turns })
    }

    /// The sample of `text` whose byte spans `byte_spans` carry loss.
    fn tokenize(&self, text: &str, byte_spans: &[(usize, usize)]) -> std::result::Result<Sample, String> {
        let spans = byte_spans.iter().filter(|(a, b)| b > a);
        // A token with character range [s, e) is supervised iff it overlaps a span [a, b). The
        // fast path gives byte ranges; as spans start and end on character boundaries, a token's
        // bytes overlap a span's bytes iff its characters overlap the span's characters, so the
        // rule is applied to bytes without counting characters.
        if let Some((ids, token_bytes)) = self.fast.as_ref().and_then(|f| f.encode_bytes(text)) {
            let spans: Vec<(usize, usize)> = spans.copied().collect();
            return Ok(Sample { ids, mask: overlap_mask(&token_bytes, &spans) });
        }
        let (ids, offsets) = self.crate_encode(text)?;
        let spans: Vec<(usize, usize)> = spans.map(|&(a, b)| (char_index(text, a), char_index(text, b))).collect();
        Ok(Sample { ids, mask: overlap_mask(&offsets, &spans) })
    }

    /// Encode many conversations on `num_threads` threads (None: the default); one result per
    /// conversation, in order, whatever the thread count.
    pub fn encode_batch(&self, convs: &[Conversation], num_threads: Option<usize>) -> Vec<std::result::Result<EncodedChat, ChatFailure>> {
        pool::install(num_threads, || convs.par_iter().map(|c| self.encode(c)).collect())
    }

    /// The ids and character offsets of `text` (no special tokens added), as samples are tokenized.
    pub fn tokenize_text(&self, text: &str) -> Result<Encoded> {
        self.encode_text(text).or_else(invalid)
    }
}

/// 1 for each token range that overlaps one of `spans` (`s < b && e > a`), else 0. Tokens are
/// in text order and spans ascending and disjoint (a plan's), so one pass over both does: the
/// first span that does not end at or before a token's start is the only one it can overlap.
fn overlap_mask(tokens: &[(usize, usize)], spans: &[(usize, usize)]) -> Vec<u8> {
    debug_assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "spans ascending and disjoint");
    let mut next = 0;
    tokens
        .iter()
        .map(|&(s, e)| {
            while next < spans.len() && spans[next].1 <= s {
                next += 1;
            }
            u8::from(spans.get(next).is_some_and(|&(a, b)| s < b && e > a))
        })
        .collect()
}

/// The code-point index of byte offset `byte` (a char boundary) in `text`.
fn char_index(text: &str, byte: usize) -> usize {
    text[..byte].chars().count()
}

/// Parse a policy name (`expand` or `locate`).
pub fn parse_policy(name: &str) -> Result<RewritePolicy> {
    match name {
        "expand" => Ok(RewritePolicy::Expand),
        "locate" => Ok(RewritePolicy::Locate),
        other => invalid(format!("rewritten_turns must be 'expand' or 'locate', got {other:?}")),
    }
}
