//! Where each assistant turn is in a rendered conversation, and which samples a conversation
//! becomes. The same rule as the Python reference (`ftscale.data.chat.spans`), which the tests
//! hold this to byte for byte; the rule is documented there in full. In short, for assistant
//! turn `i`, with `prompt = render(messages[:i], add_generation_prompt=True)` and
//! `turn = render(messages[:i+1])`:
//!
//! 1. prefix rule: `full` starts with `turn` (less an end-of-conversation marker), `turn` with
//!    `prompt` → the span is `[len(prompt), len(turn.rstrip()))` of `full`;
//! 2. expansion (policy `expand`): the template rewrote history (`full` does not start with
//!    `turn`, e.g. reasoning stripped from earlier turns) → the turn becomes a sample of its own,
//!    `turn` itself, with the turn supervised (by the prefix rule inside `turn`, else located);
//! 3. locating: the turn's content (verbatim, else stripped) searched in `full` after the previous
//!    span and the turns in between, extended over the template's end-of-turn text;
//! 4. otherwise the conversation is a template mismatch.
//!
//! Offsets here are byte offsets into Rust strings; Python's are code-point offsets into the same
//! text, and every comparison and search gives the same answer in both units.

use std::borrow::Cow;

/// What to do with an assistant turn the template renders differently once later turns follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewritePolicy {
    /// A sample of its own: the conversation up to that turn, as the template renders it.
    Expand,
    /// Supervise the turn where its text appears in the full rendering (none: mismatch).
    Locate,
}

/// One sample of a conversation: its text and the byte spans that carry loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleSpans {
    pub text: String,
    pub spans: Vec<(usize, usize)>,
}

/// The samples of one conversation (the full rendering first, when it supervises any turn,
/// then one per expanded turn, in turn order) and how many turns each rule placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub samples: Vec<SampleSpans>,
    pub expanded_turns: u32,
    pub located_turns: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// No assistant message: nothing to learn.
    NoAssistantTurn,
    /// The full conversation does not render (the template raised, or the engine failed).
    Render(String),
    /// A turn's text cannot be placed in any rendering.
    Mismatch(String),
}

/// The conversation as the planner sees it: per message, whether it is an assistant turn and
/// its text content (None when absent or not a string).
pub struct Turns<'a> {
    pub assistant: Vec<bool>,
    pub contents: Vec<Option<&'a str>>,
}

/// What a template writes after an assistant turn's content: `end_of_turn` after every turn
/// (`<|im_end|>`), `end_of_conversation` only after the last one (Phi-3's EOS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Markers {
    pub end_of_turn: Option<String>,
    pub end_of_conversation: Option<String>,
}

impl Markers {
    /// `rendering` without a trailing end-of-conversation marker.
    pub fn body<'a>(&self, rendering: &'a str) -> &'a str {
        if let Some(eoc) = self.end_of_conversation.as_deref().filter(|e| !e.is_empty()) {
            if let Some(body) = py_rstrip(rendering).strip_suffix(eoc) {
                return body;
            }
        }
        rendering
    }
}

/// Python's `str.isspace`: Unicode White_Space plus the separators U+001C..U+001F.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// Plan the samples of a conversation. `render(n, gp)` renders the first `n` messages with or
/// without the generation prompt; `markers` are the template's (`probe_markers`).
pub fn plan(
    turns: &Turns<'_>,
    policy: RewritePolicy,
    render: &dyn Fn(usize, bool) -> Result<String, String>,
    markers: &Markers,
) -> Result<Plan, PlanError> {
    let end_of_turn = markers.end_of_turn.as_deref();
    let assistant: Vec<usize> = (0..turns.assistant.len()).filter(|&i| turns.assistant[i]).collect();
    if assistant.is_empty() {
        return Err(PlanError::NoAssistantTurn);
    }
    let full = render(turns.assistant.len(), false).map_err(PlanError::Render)?;
    let mut full_spans = Vec::new();
    let mut expanded = Vec::new();
    let mut located = 0u32;
    let (mut previous_turn, mut previous_end): (Option<usize>, usize) = (None, 0);
    for &i in &assistant {
        // The last message's turn is the full rendering: not rendered twice (with ~2.5
        // exchanges per conversation that render was ~20% of the rendering time).
        let turn_of = |i: usize| if i + 1 == turns.assistant.len() { Some(Cow::Borrowed(full.as_str())) } else { render(i + 1, false).ok().map(Cow::Owned) };
        let (prompt, turn) = if i > 0 { (render(i, true).ok(), turn_of(i)) } else { (None, None) };
        let body = turn.as_deref().map(|t| markers.body(t));
        if let (Some(p), Some(b)) = (&prompt, body) {
            if p.len() >= previous_end && full.starts_with(b) && b.starts_with(p.as_str()) {
                let span = (p.len(), p.len() + py_rstrip(&b[p.len()..]).len());
                full_spans.push(span);
                (previous_turn, previous_end) = (Some(i), span.1);
                continue;
            }
        }
        if policy == RewritePolicy::Expand {
            if let (Some(t), Some(b)) = (&turn, body.filter(|b| !full.starts_with(b))) {
                let span = match &prompt {
                    Some(p) if b.starts_with(p.as_str()) => Some((p.len(), p.len() + py_rstrip(&b[p.len()..]).len())),
                    _ => locate(t, turns, i, None, 0, end_of_turn),
                };
                if let Some(span) = span {
                    expanded.push(SampleSpans { text: t.to_string(), spans: vec![span] });
                    continue;
                }
            }
        }
        let span = locate(&full, turns, i, previous_turn, previous_end, end_of_turn).ok_or_else(|| {
            PlanError::Mismatch(format!(
                "assistant turn at message {i}: the template rewrites earlier turns (rendering messages[:{}] is \
                 not a prefix of the full rendering) and the turn's content does not appear in the full rendering \
                 after the previous turn",
                i + 1
            ))
        })?;
        located += 1;
        full_spans.push(span);
        (previous_turn, previous_end) = (Some(i), span.1);
    }
    let expanded_turns = expanded.len() as u32;
    let mut samples = Vec::with_capacity(1 + expanded.len());
    if !full_spans.is_empty() {
        samples.push(SampleSpans { text: full, spans: full_spans });
    }
    samples.extend(expanded);
    Ok(Plan { samples, expanded_turns, located_turns: located })
}

/// Where turn `i`'s content is in `text`: searched from `cursor` after stepping over the contents
/// of the messages since `previous_turn` (so a reply that repeats the user's words is not matched
/// inside the user's turn), then extended over `end_of_turn` when that follows it exactly.
fn locate(
    text: &str,
    turns: &Turns<'_>,
    i: usize,
    previous_turn: Option<usize>,
    mut cursor: usize,
    end_of_turn: Option<&str>,
) -> Option<(usize, usize)> {
    let first = previous_turn.map_or(0, |p| p + 1);
    for m in first..i {
        if let Some((_, end)) = find_content(text, turns.contents[m], cursor) {
            cursor = end;
        }
    }
    let (start, mut end) = find_content(text, turns.contents[i], cursor)?;
    if let Some(eot) = end_of_turn.filter(|e| !e.is_empty()) {
        if text[end..].starts_with(eot) {
            end += eot.len();
        }
    }
    Some((start, end))
}

/// First occurrence of `content` (verbatim, else whitespace-stripped) at or after `cursor`;
/// None for absent or blank content.
fn find_content(text: &str, content: Option<&str>, cursor: usize) -> Option<(usize, usize)> {
    let content = content?;
    let stripped = content.trim_matches(is_py_space);
    if stripped.is_empty() {
        return None;
    }
    for needle in [content, stripped] {
        if let Some(at) = text[cursor..].find(needle) {
            return Some((cursor + at, cursor + at + needle.len()));
        }
    }
    None
}

/// The template's markers from rendering one and two probe exchanges (`render_probe(two)`);
/// the rule is `ftscale.data.chat.spans.probe_markers`'s.
pub fn probe_markers(render_probe: &dyn Fn(bool) -> Option<String>, reply_a: &str, eos_token: Option<&str>) -> Markers {
    let (Some(single), Some(double)) = (render_probe(false), render_probe(true)) else {
        return Markers::default();
    };
    let (Some(at_single), Some(at_double)) = (single.find(reply_a), double.find(reply_a)) else {
        return Markers::default();
    };
    let tail = py_rstrip(&single[at_single + reply_a.len()..]);
    let after = &double[at_double + reply_a.len()..];
    // The text after the last turn could be an end-of-conversation marker; keep it only if the
    // same text also closes a turn that is followed by another one.
    if !tail.is_empty() && after.starts_with(tail) {
        return Markers { end_of_turn: Some(tail.to_string()), end_of_conversation: None };
    }
    if let Some(eos) = eos_token.filter(|e| !e.is_empty()) {
        if let Some(before) = tail.strip_suffix(eos) {
            if !py_rstrip(before).is_empty() && after.starts_with(before) {
                return Markers { end_of_turn: Some(py_rstrip(before).to_string()), end_of_conversation: Some(eos.to_string()) };
            }
        }
    }
    Markers::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML_EOT: &str = "<|im_end|>";

    /// ChatML, optionally dropping the text before `</think>` in assistant turns but the last.
    fn chatml(roles: &[&str], contents: &[&str], n: usize, gp: bool, strip_reasoning: bool) -> String {
        let mut out = String::new();
        for k in 0..n {
            let mut c = contents[k];
            if strip_reasoning && roles[k] == "assistant" && k + 1 < n {
                c = c.rsplit("</think>").next().unwrap().trim_start();
            }
            out += &format!("<|im_start|>{}\n{}<|im_end|>\n", roles[k], c);
        }
        if gp {
            out += "<|im_start|>assistant\n";
        }
        out
    }

    fn turns<'a>(roles: &[&str], contents: &'a [&'a str]) -> Turns<'a> {
        Turns { assistant: roles.iter().map(|r| *r == "assistant").collect(), contents: contents.iter().map(|c| Some(*c)).collect() }
    }

    #[test]
    fn prefix_rule_spans_content_and_end_of_turn() {
        let roles = ["user", "assistant", "user", "assistant"];
        let contents = ["q1", "a1", "q2", "a2"];
        let render = |n: usize, gp: bool| Ok(chatml(&roles, &contents, n, gp, false));
        let plan = plan(&turns(&roles, &contents), RewritePolicy::Expand, &render, &eot(CHATML_EOT)).unwrap();
        assert_eq!(plan.samples.len(), 1);
        let s = &plan.samples[0];
        let picked: Vec<&str> = s.spans.iter().map(|&(a, b)| &s.text[a..b]).collect();
        assert_eq!(picked, ["a1<|im_end|>", "a2<|im_end|>"]);
        assert_eq!((plan.expanded_turns, plan.located_turns), (0, 0));
    }

    #[test]
    fn rewritten_history_expands_or_is_a_mismatch_when_located() {
        let roles = ["user", "assistant", "user", "assistant"];
        let contents = ["q1", "<think>r1</think> a1", "q2", "<think>r2</think> a2"];
        let render = |n: usize, gp: bool| Ok(chatml(&roles, &contents, n, gp, true));
        let t = turns(&roles, &contents);
        let plan = plan(&t, RewritePolicy::Expand, &render, &eot(CHATML_EOT)).unwrap();
        assert_eq!((plan.samples.len(), plan.expanded_turns), (2, 1));
        let last = &plan.samples[0];
        assert_eq!(&last.text[last.spans[0].0..last.spans[0].1], "<think>r2</think> a2<|im_end|>");
        assert!(last.text.contains("\na1<|im_end|>")); // the stripped history, unsupervised
        let first = &plan.samples[1];
        assert_eq!(&first.text[first.spans[0].0..first.spans[0].1], "<think>r1</think> a1<|im_end|>");
        let err = super::plan(&t, RewritePolicy::Locate, &render, &eot(CHATML_EOT)).unwrap_err();
        assert!(matches!(err, PlanError::Mismatch(_)));
    }

    #[test]
    fn no_assistant_and_render_failures() {
        let roles = ["user"];
        let contents = ["q"];
        let ok = |_: usize, _: bool| Ok(String::new());
        assert_eq!(plan(&turns(&roles, &contents), RewritePolicy::Expand, &ok, &Markers::default()), Err(PlanError::NoAssistantTurn));
        let roles = ["user", "assistant"];
        let contents = ["q", "a"];
        let fail = |_: usize, _: bool| Err("boom".to_string());
        assert_eq!(plan(&turns(&roles, &contents), RewritePolicy::Expand, &fail, &Markers::default()), Err(PlanError::Render("boom".into())));
    }

    fn eot(text: &str) -> Markers {
        Markers { end_of_turn: Some(text.to_string()), end_of_conversation: None }
    }

    #[test]
    fn markers_probe_and_python_whitespace() {
        let probe = |two: bool| {
            Some(if two { "U A<|end|>\n U B<|end|>\n".to_string() } else { "U A<|end|>\n".to_string() })
        };
        assert_eq!(probe_markers(&probe, "A", None), eot("<|end|>"));
        // Phi-3: EOS closes the conversation only.
        let phi = |two: bool| {
            Some(if two { "U A<|end|>\nU B<|end|>\n</s>".to_string() } else { "U A<|end|>\n</s>".to_string() })
        };
        let markers = probe_markers(&phi, "A", Some("</s>"));
        assert_eq!(markers, Markers { end_of_turn: Some("<|end|>".into()), end_of_conversation: Some("</s>".into()) });
        assert_eq!(markers.body("U A<|end|>\n</s>\n"), "U A<|end|>\n");
        assert_eq!(probe_markers(&phi, "A", None), Markers::default());
        assert!(is_py_space('\u{1f}') && is_py_space('\u{a0}') && !is_py_space('\u{200b}'));
    }
}
