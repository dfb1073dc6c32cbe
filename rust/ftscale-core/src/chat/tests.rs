//! End to end: a ChatML template and a word-level tokenizer whose tokens are easy to read.

use super::*;

const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Word-level tokenizer: added tokens for the markers, whitespace splitting, a small vocab.
fn tokenizer_json() -> String {
    let words = ["[UNK]", "user", "assistant", "hello", "there", "how", "are", "you", "fine", "thanks"];
    let vocab: Vec<String> = words.iter().enumerate().map(|(i, w)| format!("\"{w}\": {}", i + 2)).collect();
    let added = |id: usize, content: &str| {
        format!("{{\"id\": {id}, \"content\": \"{content}\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}}")
    };
    format!(
        "{{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, \"added_tokens\": [{}, {}], \"normalizer\": null, \
         \"pre_tokenizer\": {{\"type\": \"WhitespaceSplit\"}}, \"post_processor\": null, \"decoder\": null, \
         \"model\": {{\"type\": \"WordLevel\", \"vocab\": {{\"<|im_start|>\": 0, \"<|im_end|>\": 1, {}}}, \"unk_token\": \"[UNK]\"}}}}",
        added(0, "<|im_start|>"),
        added(1, "<|im_end|>"),
        vocab.join(", ")
    )
}

fn conv(turns: &[(&str, &str)]) -> Conversation {
    let messages = turns.iter().map(|(r, c)| Value::from_pairs([("role", *r), ("content", *c)])).collect();
    Conversation { messages, tools: Value::from(()) }
}

#[test]
fn masks_cover_assistant_content_and_end_of_turn_only() {
    let enc = ChatEncoder::new(CHATML, &[], &tokenizer_json(), RewritePolicy::Expand).unwrap();
    let c = conv(&[("user", "hello there"), ("assistant", "fine thanks"), ("user", "how are you"), ("assistant", "fine")]);
    let out = enc.encode(&c).unwrap();
    assert_eq!(out.samples.len(), 1);
    let s = &out.samples[0];
    // <s> user hello there </s> <s> assistant fine thanks </s> <s> user how are you </s> <s> assistant fine </s>
    assert_eq!(s.ids, vec![0, 3, 5, 6, 1, 0, 4, 10, 11, 1, 0, 3, 7, 8, 9, 1, 0, 4, 10, 1]);
    assert_eq!(s.mask, vec![0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
}

#[test]
fn batch_results_do_not_depend_on_threads_and_report_failures() {
    let enc = ChatEncoder::new(CHATML, &[], &tokenizer_json(), RewritePolicy::Expand).unwrap();
    let convs: Vec<Conversation> = (0..50)
        .map(|i| if i % 7 == 0 { conv(&[("user", "hello")]) } else { conv(&[("user", "hello"), ("assistant", "fine")]) })
        .collect();
    let one = enc.encode_batch(&convs, Some(1));
    let two = enc.encode_batch(&convs, Some(2));
    assert_eq!(one, two);
    assert_eq!(one[0], Err(ChatFailure::NoAssistantTurn));
    assert!(one[1].is_ok());
}

#[test]
fn uncompilable_template_and_bad_policy_are_invalid_arguments() {
    assert!(ChatEncoder::new("{% for %}", &[], &tokenizer_json(), RewritePolicy::Expand).is_err());
    assert!(parse_policy("sometimes").is_err());
    assert_eq!(parse_policy("locate").unwrap(), RewritePolicy::Locate);
}

/// A byte-level BPE tokenizer trained here (GPT-2 pre-tokenizer, a few hundred merges) with
/// ChatML markers as added tokens; `split` swaps in a Llama-3-style Split + ByteLevel pipeline.
fn trained_byte_level(split: bool, ignore_merges: bool) -> String {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, TokenizerBuilder};

    let corpus = "the quick brown fox jumps over the lazy dog. It's 2024; we'll see 123 456 tokens!\n\
                  Café naïve 東京 😀 — emoji and   spaces\tand tabs. the the the quick quick fox";
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(400)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer = TokenizerBuilder::<BPE, tokenizers::NormalizerWrapper, ByteLevel, tokenizers::PostProcessorWrapper, ByteLevel>::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
        .with_decoder(Some(ByteLevel::default()))
        .build()
        .unwrap();
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("ftscale-bpe-corpus-{}-{call}.txt", std::process::id()));
    std::fs::write(&path, corpus.repeat(20)).unwrap();
    tokenizer.train_from_files(&mut trainer, vec![path.to_string_lossy().into_owned()]).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut tokenizer: tokenizers::Tokenizer = tokenizers::Tokenizer::from(tokenizer);
    tokenizer.add_special_tokens([AddedToken::from("<|im_start|>", true), AddedToken::from("<|im_end|>", true)]).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&tokenizer.to_string(false).unwrap()).unwrap();
    if split {
        json["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
             "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
    }
    json["model"]["ignore_merges"] = serde_json::Value::Bool(ignore_merges);
    json.to_string()
}

#[test]
fn byte_level_fast_path_matches_the_tokenizers_crate_on_random_text() {
    use rand::{Rng, SeedableRng};

    // ASCII classes the GPT-2 scanner tells apart (VT, FF, US, DEL; contractions) and non-ASCII
    // letters, marks, spaces and symbols next to them, where it hands over to the regex.
    let alphabet: Vec<char> = "the quick brown fox  ÉéüÜ東京😀👍🏽\u{301}\n\t\r\u{a0}\u{3000}\u{85}\u{b}\u{c}\u{1f}\u{7f}'sll'rev'dm'T123.;!<|>imstartend_ ".chars().collect();
    let markers = ["<|im_start|>", "<|im_end|>"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (split, ignore_merges) in [(false, false), (true, false), (true, true)] {
        let json = trained_byte_level(split, ignore_merges);
        let fast = bpe::ByteLevelBpe::from_json(&json).expect("a plain byte-level BPE takes the fast path");
        let slow: tokenizers::Tokenizer = json.parse().unwrap();
        for _ in 0..1000 {
            let len = rng.random_range(0..60);
            let mut text = String::new();
            for _ in 0..len {
                if rng.random_bool(0.05) {
                    text.push_str(markers[rng.random_range(0..2)]);
                } else {
                    text.push(alphabet[rng.random_range(0..alphabet.len())]);
                }
            }
            let want = slow.encode_char_offsets(text.as_str(), false).unwrap();
            let got = fast.encode(&text).expect("no normalizer: every text takes the fast path");
            assert_eq!(got, (want.get_ids().to_vec(), want.get_offsets().to_vec()), "split={split} text={text:?}");
        }
    }
}

#[test]
fn unsupported_tokenizers_do_not_take_the_fast_path() {
    assert!(bpe::ByteLevelBpe::from_json(&tokenizer_json()).is_none()); // word-level model
    let mut json: serde_json::Value = serde_json::from_str(&trained_byte_level(false, false)).unwrap();
    // A byte the vocabulary lacks (SmolLM2 lacks 21): texts holding it go to the crate.
    json["model"]["vocab"].as_object_mut().unwrap().remove("Ą"); // byte 0x04
    let fast = bpe::ByteLevelBpe::from_json(&json.to_string()).unwrap();
    assert!(fast.encode("a\u{4}b").is_none() && fast.encode("ab").is_some());
    json["added_tokens"][0]["lstrip"] = serde_json::Value::Bool(true);
    assert!(bpe::ByteLevelBpe::from_json(&json.to_string()).is_none());
}
