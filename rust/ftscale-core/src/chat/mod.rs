//! Chat templates and assistant-only loss masks for SFT data.
//!
//! `template` renders a Hugging Face chat template with minijinja as `transformers` renders it
//! with Jinja2 (`fuse` renders its string `+` chains with one call each; `prefix`
//! gives every prefix rendering from the full one where the template allows); `pyjson` is Python's
//! `json.dumps` for its `tojson`; `bpe` is a fast path
//! for byte-level BPE tokenizers, identical to the `tokenizers` crate; `spans` decides which samples
//! a conversation becomes and which characters carry loss; `encode` tokenizes the samples with the
//! `tokenizers` crate and builds the masks, many conversations at a time on the crate's pool.

pub mod bpe;
pub mod encode;
pub mod fuse;
pub mod prefix;
pub mod pyjson;
pub mod spans;
pub mod template;

pub use encode::{parse_policy, ChatEncoder, ChatFailure, Conversation, EncodedChat, Sample};
pub use minijinja::value::Value;
pub use spans::RewritePolicy;
pub use template::{field_name, json_value, Record};

#[cfg(test)]
mod tests;
