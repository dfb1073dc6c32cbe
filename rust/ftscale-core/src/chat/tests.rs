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
