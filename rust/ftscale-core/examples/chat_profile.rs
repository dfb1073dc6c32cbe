//! Profile SFT chat encoding (render, plan, tokenize, mask), single thread:
//! `cargo run --release --example chat_profile -- CASE.json [ROUNDS]`, where CASE.json is
//! `{"template": str, "special_tokens": [[name, token], ...], "tokenizer": path of tokenizer.json,
//! "conversations": [[message, ...], ...]}` (`benchmarks/bench_chat.py --dump-case` writes one).
//! Prints conversations/s per round and, for the first conversations, the time split between
//! rendering alone and the whole encode.
use std::time::Instant;

use ftscale_core::chat::{json_value, ChatEncoder, Conversation, RewritePolicy, Value};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: chat_profile CASE.json [ROUNDS]");
    let rounds: usize = args.next().map_or(3, |r| r.parse().expect("ROUNDS is a number"));
    let case: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).expect("readable case")).expect("JSON case");
    let template = case["template"].as_str().expect("template");
    let special: Vec<(String, String)> = case["special_tokens"]
        .as_array()
        .expect("special_tokens")
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string()))
        .collect();
    let tokenizer = std::fs::read_to_string(case["tokenizer"].as_str().expect("tokenizer path")).expect("tokenizer.json");
    let convs: Vec<Conversation> = case["conversations"]
        .as_array()
        .expect("conversations")
        .iter()
        .map(|c| Conversation {
            messages: c.as_array().unwrap().iter().map(json_value).collect(),
            tools: Value::from(()),
        })
        .collect();
    let enc = ChatEncoder::new(template, &special, &tokenizer, RewritePolicy::Expand).expect("encoder");
    println!("fast path: {}, prefixes from one render: {}", enc.fast_path(), enc.prefixes_from_one_render());
    let tokens: usize = enc.encode_batch(&convs, Some(1)).iter().flatten().flat_map(|c| &c.samples).map(|s| s.ids.len()).sum();
    println!("{} conversations, {:.0} tokens each", convs.len(), tokens as f64 / convs.len() as f64);
    for _ in 0..rounds {
        let start = Instant::now();
        let out = enc.encode_batch(&convs, Some(1));
        let s = start.elapsed().as_secs_f64();
        println!("encode: {:.0} conversations/s ({:.1} µs each, {} ok)", convs.len() as f64 / s, s * 1e6 / convs.len() as f64, out.iter().flatten().count());
        let start = Instant::now();
        for c in &convs {
            std::hint::black_box(enc.render(c, false).ok());
        }
        let s = start.elapsed().as_secs_f64();
        println!("  one full render alone: {:.1} µs each", s * 1e6 / convs.len() as f64);
    }
}
