//! ftscale-core: the data engine of ftscale, in pure Rust (no Python dependency).
//!
//! Dedup (exact and MinHash LSH), decontamination, mixture planning and sequence packing.
//! Every parallel function runs on the crate's own rayon pool (`pool`), and every output is
//! independent of the thread count.

pub mod audit;
pub mod components;
pub mod decontam;
pub mod error;
pub mod exact;
pub mod hash;
pub mod keep;
pub mod lines;
pub mod lsh;
pub mod minhash;
pub mod mixture;
pub mod neardup;
pub mod normalize;
pub mod pack;
pub mod pool;
pub mod shingle;
pub mod spill;
pub mod words;

#[cfg(test)]
mod test_support;

pub use error::{CoreError, Result};
pub mod chat;
