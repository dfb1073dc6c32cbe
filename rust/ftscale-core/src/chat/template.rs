//! A Hugging Face chat template rendered with minijinja, as `transformers` renders it.
//!
//! `transformers.apply_chat_template` compiles the template in a Jinja2 sandbox with
//! `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension and a `{% generation %}` block
//! tag, adds `raise_exception`, `strftime_now` and its own `tojson` filter, and renders it with
//! `messages`, `tools`, `documents`, `add_generation_prompt` and the tokenizer's special tokens
//! (`bos_token`, `eos_token`, ...). This module sets minijinja up the same way:
//!
//! - Python string / dict methods (`strip`, `split`, `startswith`, `items`, `get`, ...) come from
//!   minijinja-contrib's `pycompat` (as text-generation-inference and mistral.rs do);
//! - `tojson` writes Python's `json.dumps` bytes (`pyjson`), `raise_exception` fails the render,
//!   `strftime_now` formats the local time;
//! - printed `None`, booleans and floats are written as Python prints them (`None`, `True`,
//!   `1e-05`) rather than minijinja's `none`, `true`, ...;
//! - `{% generation %}` / `{% endgeneration %}` (HF's marker for assistant text, which renders
//!   its body unchanged) become an always-true `if` block with the same whitespace modifiers.
//!
//! Where the template allows (`prefix`), a second, marked form of it renders a conversation once
//! and gives every prefix's rendering from that (`ChatTemplate::prefixes`).
//!
//! What remains different from Jinja2 (printing a list or dict as Python's repr, Python-only
//! methods pycompat lacks) makes a render differ or fail; the Python side compares both engines
//! on probe conversations before trusting this one for a source, and re-renders any conversation
//! this one fails on with Jinja2.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Write;
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State};

use super::{fuse, prefix};
use super::pyjson::{dumps, float_repr, DumpOptions};

const NAME: &str = "chat_template";
/// The template with `prefix`'s marks.
const MARKED: &str = "chat_template_marked";

/// A compiled chat template plus the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: Arc<[(String, Value)]>,
    fused: bool, // string `+` chains rendered by one call each (`fuse`)
    /// What the template writes after its loop over the messages without and with the
    /// generation prompt, when its marked form gives every prefix rendering (`prefix`).
    post: Option<[String; 2]>,
}

impl ChatTemplate {
    /// Compile `source`; `special_tokens` are the tokenizer's `special_tokens_map` entries
    /// (`("bos_token", "<s>")`, ...). Err: minijinja cannot parse the template.
    pub fn new(source: &str, special_tokens: &[(String, String)]) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| e.to_string())?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_global(fuse::CONCAT, Value::from_object(fuse::Concat));
        env.add_global(fuse::EMIT, Value::from_object(fuse::Emit));
        env.add_function(prefix::MARK, mark);
        let source = without_generation_tags(source);
        let special_tokens: Arc<[(String, Value)]> = special_tokens.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        let fused = fuse::fuse_concatenations(&source).and_then(|fused| {
            let mut fused_env = env.clone();
            fused_env.add_template_owned(NAME, fused.clone()).ok()?;
            Some((fused_env, fused))
        });
        env.add_template_owned(NAME, source.clone()).map_err(|e| describe(&e))?;
        let written = ChatTemplate { env, special_tokens: Arc::clone(&special_tokens), fused: false, post: None };
        // The fused template is used only where it renders every probe as the template as
        // written does (the same text, or both failing).
        let (template, used_source) = match fused {
            Some((env, fused_source)) => {
                let fused = ChatTemplate { env, special_tokens, fused: true, post: None };
                if renders_alike(&written, &fused) { (fused, fused_source) } else { (written, source) }
            }
            None => (written, source),
        };
        Ok(template.with_prefixes(&used_source))
    }

    /// This template with its marked form (`prefix`) when it has one, which renders the probes'
    /// prefixes exactly as rendering them does.
    fn with_prefixes(mut self, source: &str) -> ChatTemplate {
        let Some(marked) = prefix::mark_message_loop(source) else { return self };
        if self.env.add_template_owned(MARKED, marked).is_err() {
            return self;
        }
        let probe = [Record::value([(field_name("role"), Value::from("user")), (field_name("content"), Value::from("x"))])];
        let post = |gp: bool| {
            let (text, marks) = self.render_traced(&probe, &Value::from(()), gp)?;
            text.get(*marks.last()?..).map(str::to_string)
        };
        if let (Some(without), Some(with)) = (post(false), post(true)) {
            self.post = Some([without, with]);
            if !prefixes_alike(&self) {
                self.post = None;
            }
        }
        self
    }

    /// Whether the template's string `+` chains are fused (see `fuse`).
    pub fn fused(&self) -> bool {
        self.fused
    }

    /// Whether one render gives every prefix's rendering (`prefix`).
    pub fn gives_prefixes(&self) -> bool {
        self.post.is_some()
    }

    /// Render `messages` (a sequence of message maps) as `apply_chat_template(tokenize=False)`
    /// does; `tools` is passed as given (none when absent), `documents` as none.
    pub fn render(&self, messages: &[Value], tools: &Value, add_generation_prompt: bool) -> Result<String, String> {
        let template = self.env.get_template(NAME).map_err(|e| describe(&e))?;
        template.render(self.context(messages, tools, add_generation_prompt)).map_err(|e| describe(&e))
    }

    /// The variables a render sees.
    fn context(&self, messages: &[Value], tools: &Value, add_generation_prompt: bool) -> Value {
        Value::from_object(RenderContext {
            special_tokens: Arc::clone(&self.special_tokens),
            messages: Value::from(messages.to_vec()),
            tools: tools.clone(),
            add_generation_prompt,
        })
    }

    /// The full rendering of `messages` (no generation prompt) with what gives each prefix's
    /// rendering from it, when the template allows (`prefix`) and the render succeeds with one
    /// mark per message and the loop's end followed by `post(false)`; None otherwise.
    pub fn prefixes(&self, messages: &[Value], tools: &Value) -> Option<Prefixes<'_>> {
        let post = self.post.as_ref()?;
        let (full, marks) = self.render_traced(messages, tools, false)?;
        (marks.len() == messages.len() + 1 && full.get(marks[messages.len()]..) == Some(post[0].as_str()))
            .then_some(Prefixes { full, marks, post })
    }

    /// The marked template's rendering and its marks (bytes written before each); None when it
    /// fails. Held per render: the output and one offset per message.
    fn render_traced(&self, messages: &[Value], tools: &Value, add_generation_prompt: bool) -> Option<(String, Vec<usize>)> {
        let template = self.env.get_template(MARKED).ok()?;
        TRACE.with(|t| {
            *t.out.borrow_mut() = Vec::with_capacity(256 * messages.len() + 256);
            t.marks.borrow_mut().clear();
        });
        let rendered = template.render_captured_to(self.context(messages, tools, add_generation_prompt), TracedWriter).is_ok();
        let (out, marks) = TRACE.with(|t| (std::mem::take(&mut *t.out.borrow_mut()), std::mem::take(&mut *t.marks.borrow_mut())));
        if !rendered {
            return None;
        }
        String::from_utf8(out).ok().map(|text| (text, marks))
    }
}

/// A conversation's full rendering and where each message's part of it ends.
pub struct Prefixes<'t> {
    pub full: String,
    marks: Vec<usize>,
    post: &'t [String; 2],
}

impl Prefixes<'_> {
    /// `render(messages[:n], add_generation_prompt)` for `1 <= n <= len(messages)`, else None.
    pub fn render(&self, n: usize, add_generation_prompt: bool) -> Option<String> {
        let cut = *self.marks.get(n).filter(|_| n >= 1)?;
        let post = &self.post[usize::from(add_generation_prompt)];
        let mut text = String::with_capacity(cut + post.len());
        text.push_str(&self.full[..cut]);
        text.push_str(post);
        Some(text)
    }
}

/// The output of the marked render running on this thread, and its marks.
struct Trace {
    out: RefCell<Vec<u8>>,
    marks: RefCell<Vec<usize>>,
}

thread_local! {
    static TRACE: Trace = const { Trace { out: RefCell::new(Vec::new()), marks: RefCell::new(Vec::new()) } };
}

/// Writes a marked render's output into this thread's `Trace` (captured output, such as a
/// `{% set %}` block's, is not written here).
struct TracedWriter;

impl std::io::Write for TracedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        TRACE.with(|t| t.out.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `__ftscale_mark()`: records how much the render has written; writes nothing.
fn mark() -> Value {
    TRACE.with(|t| t.marks.borrow_mut().push(t.out.borrow().len()));
    Value::from(())
}

/// Whether every prefix of every probe (with and without the generation prompt) comes out of
/// `prefixes` exactly as rendering it does.
fn prefixes_alike(template: &ChatTemplate) -> bool {
    let cases: serde_json::Value = serde_json::from_str(FUSION_PROBES).expect("the probes are valid JSON");
    cases.as_array().expect("a list of probes").iter().all(|case| {
        let messages: Vec<Value> = case["messages"].as_array().expect("probe messages").iter().map(json_value).collect();
        let tools = json_value(&case["tools"]);
        let Some(prefixes) = template.prefixes(&messages, &tools) else { return template.render(&messages, &tools, false).is_err() };
        (1..=messages.len()).all(|n| {
            [false, true].into_iter().all(|gp| template.render(&messages[..n], &tools, gp).ok() == prefixes.render(n, gp))
        })
    })
}

/// Conversations the fused template must render as written: every prefix, with and without the
/// generation prompt, of a system + multi-turn exchange, a tool call with its result and tools,
/// and reasoning turns.
fn renders_alike(written: &ChatTemplate, fused: &ChatTemplate) -> bool {
    let cases: serde_json::Value = serde_json::from_str(FUSION_PROBES).expect("the probes are valid JSON");
    cases.as_array().expect("a list of probes").iter().all(|case| {
        let messages: Vec<Value> = case["messages"].as_array().expect("probe messages").iter().map(json_value).collect();
        let tools = json_value(&case["tools"]);
        (0..=messages.len()).all(|n| {
            [false, true].into_iter().all(|gp| {
                match (written.render(&messages[..n], &tools, gp), fused.render(&messages[..n], &tools, gp)) {
                    (Ok(a), Ok(b)) => a == b,
                    (Err(_), Err(_)) => true,
                    _ => false,
                }
            })
        })
    })
}

/// The conversations of `renders_alike`.
const FUSION_PROBES: &str = r#"[
  {"tools": null, "messages": [
    {"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": " Et ça ? "},
    {"role": "assistant", "content": "Bien.\n"}]},
  {"tools": [{"type": "function", "function": {"name": "get_weather"}}], "messages": [
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
      "name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
    {"role": "tool", "content": "{\"c\": 21}"}, {"role": "assistant", "content": "21 C."}]},
  {"tools": null, "messages": [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "Two and two."},
    {"role": "user", "content": "3+3?"},
    {"role": "assistant", "content": "6", "reasoning_content": "Three and three."}]}
]"#;

/// A JSON value as the template sees it (objects as `Record`s, integers that fit i64 as
/// integers, other numbers as floats).
pub fn json_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => n.as_i64().map_or_else(|| Value::from(n.as_f64().unwrap_or(f64::NAN)), Value::from),
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => Value::from(items.iter().map(json_value).collect::<Vec<_>>()),
        serde_json::Value::Object(map) => Record::value(map.iter().map(|(k, v)| (field_name(k), json_value(v)))),
    }
}

/// The variables a template is rendered with, looked up by name. A map built per render
/// (`Value::from_pairs`: hashing every special token's name) was ~10% of rendering a turn.
#[derive(Debug)]
struct RenderContext {
    special_tokens: Arc<[(String, Value)]>,
    messages: Value,
    tools: Value,
    add_generation_prompt: bool,
}

const CONTEXT_NAMES: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

impl Object for RenderContext {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        match key {
            "messages" => Some(self.messages.clone()),
            "tools" => Some(self.tools.clone()),
            "documents" => Some(Value::from(())),
            "add_generation_prompt" => Some(Value::from(self.add_generation_prompt)),
            name => self.special_tokens.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let special = self.special_tokens.iter().map(|(k, _)| k.as_str()).filter(|k| !CONTEXT_NAMES.contains(k));
        Enumerator::Values(special.chain(CONTEXT_NAMES).map(Value::from).collect())
    }
}

/// A string-keyed map from the data (a message, a tool call, its arguments) as templates see
/// it: its fields in their order, looked up by comparing names. Messages have 2-6 fields, and
/// hashing the key on every `message['role']` (what a `Value::from_pairs` map does) cost more
/// than comparing it with each; common field names are shared, not copied per record.
#[derive(Debug)]
pub struct Record {
    fields: Vec<(Cow<'static, str>, Value)>,
}

/// Field names shared by every record (`field_name`).
const COMMON_FIELDS: [&str; 12] =
    ["role", "content", "name", "type", "text", "tool_calls", "tool_call_id", "function", "arguments", "id", "reasoning_content", "thinking"];

/// `name` as a record field name: a shared one for common names, else a copy.
pub fn field_name(name: &str) -> Cow<'static, str> {
    COMMON_FIELDS.iter().find(|&&common| common == name).map_or_else(|| Cow::Owned(name.to_string()), |&common| Cow::Borrowed(common))
}

impl Record {
    /// A record of `(name, value)` fields (names unique, as in a Python dict or JSON object)
    /// as a template value.
    pub fn value(fields: impl IntoIterator<Item = (Cow<'static, str>, Value)>) -> Value {
        Value::from_object(Record { fields: fields.into_iter().collect() })
    }
}

impl Object for Record {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        self.fields.iter().find(|(name, _)| name == key).map(|(_, value)| value.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.fields.iter().map(|(name, _)| Value::from(name.as_ref())).collect())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.fields.len())
    }
}

/// The error with its causes (minijinja nests the template's own message inside).
fn describe(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        write!(text, ": {cause}").unwrap();
        source = cause.source();
    }
    text
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("template raised: {message}")))
}

fn strftime_now(format: String) -> Result<String, Error> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format))
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: invalid format {format:?}")))?;
    Ok(out)
}

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let bad = |msg: String| Error::new(ErrorKind::InvalidOperation, msg);
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
        Some(v) => Some(" ".repeat(v.as_usize().ok_or_else(|| bad(format!("tojson: bad indent {v}")))?)),
    };
    let mut opts = DumpOptions::new(indent);
    opts.ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    opts.sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let separators: Option<Value> = kwargs.get("separators")?;
    if let Some(seps) = separators.filter(|v| !v.is_none()) {
        let pair: Vec<Value> = seps.try_iter()?.collect();
        match (pair.first().and_then(Value::as_str), pair.get(1).and_then(Value::as_str), pair.len()) {
            (Some(item), Some(key), 2) => {
                opts.item_separator = item.to_string();
                opts.key_separator = key.to_string();
            }
            _ => return Err(bad("tojson: separators must be a pair of strings".into())),
        }
    }
    kwargs.assert_all_used()?;
    dumps(&value, &opts).map_err(bad)
}

/// Print values as Python's `str()` does where minijinja's spelling differs.
fn python_formatter(out: &mut minijinja::Output, state: &mut State, value: &Value) -> Result<(), Error> {
    // A string without auto-escaping is written as is (what `escape_formatter` writes, without
    // its `fmt::Display` round trip, which was ~8% of rendering a ChatML turn).
    if value.kind() == ValueKind::String && matches!(state.auto_escape(), AutoEscape::None) {
        if let Some(s) = value.as_str() {
            return out.write_str(s).map_err(Error::from);
        }
    }
    if let Some(parts) = value.downcast_object_ref::<fuse::Parts>() {
        return parts.0.iter().try_for_each(|part| python_formatter(out, state, part));
    }
    let text = match value.kind() {
        ValueKind::None => Some("None".to_string()),
        ValueKind::Bool => Some(if value.is_true() { "True" } else { "False" }.to_string()),
        ValueKind::Number if !value.is_integer() => f64::try_from(value.clone()).ok().map(|x| match x {
            x if x.is_nan() => "nan".to_string(),
            x if x.is_infinite() => if x > 0.0 { "inf" } else { "-inf" }.to_string(),
            x => float_repr(x),
        }),
        _ => None,
    };
    match text {
        Some(t) => out.write_str(&t).map_err(Error::from),
        None => minijinja::escape_formatter(out, state, value),
    }
}

/// `source` with HF's `{% generation %}` / `{% endgeneration %}` tags (which Jinja2 renders as
/// their body) replaced by `{% if true %}` / `{% endif %}`, keeping `-` / `+` whitespace control.
pub fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        match generation_tag(tag) {
            Some((len, open_mod, close_mod, end)) => {
                let body = if end { "endif" } else { "if true" };
                write!(out, "{{%{open_mod} {body} {close_mod}%}}").unwrap();
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// For a tag at the start of `s`: (its length, the modifiers after `{%` and before `%}`, whether
/// it is `endgeneration`), when it is a generation tag.
fn generation_tag(s: &str) -> Option<(usize, &str, &str, bool)> {
    let inner = &s[2..];
    let open_mod = if inner.starts_with(['-', '+']) { &inner[..1] } else { "" };
    let body = inner[open_mod.len()..].trim_start();
    let (end, after) = if let Some(a) = body.strip_prefix("endgeneration") {
        (true, a)
    } else {
        (false, body.strip_prefix("generation")?)
    };
    let after_ws = after.trim_start();
    if after_ws.len() == after.len() && !after.starts_with(['-', '+', '%']) {
        return None; // a longer name such as `generation_x`
    }
    let close_mod = if after_ws.starts_with(['-', '+']) { &after_ws[..1] } else { "" };
    let close = after_ws[close_mod.len()..].strip_prefix("%}")?;
    Some((s.len() - close.len(), open_mod, close_mod, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Value {
        Value::from_pairs([("role", role), ("content", content)])
    }

    #[test]
    fn renders_with_hf_whitespace_and_python_methods() {
        let source = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip() | upper }}]\n  {% else %}\n{{ m['content'].split(',')[0] }}{{ eos_token }}\n  {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}>{% endif %}";
        let t = ChatTemplate::new(source, &[("eos_token".into(), "</s>".into())]).unwrap();
        let out = t.render(&[msg("user", " hi "), msg("assistant", "a,b")], &Value::from(()), true).unwrap();
        assert_eq!(out, "[HI]\na</s>\n>");
    }

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", &[]).unwrap();
        let err = t.render(&[], &Value::from(()), false).unwrap_err();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn tojson_and_printing_follow_python() {
        let t = ChatTemplate::new("{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}|{{ none }} {{ true }} {{ 0.5 }} {{ 1e-5 }}", &[]).unwrap();
        let tools = Value::from(vec![Value::from_pairs([("name", Value::from("f")), ("x", Value::from(1.0))])]);
        let out = t.render(&[], &tools, false).unwrap();
        assert_eq!(out, "[{\"name\": \"f\", \"x\": 1.0}]|{\n  \"name\": \"f\",\n  \"x\": 1.0\n}|None True 0.5 1e-05");
    }

    #[test]
    fn records_behave_as_python_dicts() {
        let call = Record::value([(field_name("name"), Value::from("f")), (field_name("arguments"), Value::from("{}"))]);
        let m = Record::value([(field_name("role"), Value::from("assistant")), (field_name("tool_calls"), Value::from(vec![call]))]);
        let source = "{% for m in messages %}{{ m | length }} {{ 'tool_calls' in m }} {{ 'content' in m }} {{ m.get('content', 'none') }} \
                      {% for k, v in m.items() %}{{ k }};{% endfor %} {{ m.tool_calls[0].name }} {{ m['role'] }} {{ m | tojson }}{% endfor %}";
        let t = ChatTemplate::new(source, &[]).unwrap();
        assert_eq!(
            t.render(&[m], &Value::from(()), false).unwrap(),
            "2 True False none role;tool_calls; f assistant {\"role\": \"assistant\", \"tool_calls\": [{\"name\": \"f\", \"arguments\": \"{}\"}]}"
        );
    }

    #[test]
    fn string_chains_are_fused_unless_the_fusion_renders_differently() {
        let chatml = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}";
        let t = ChatTemplate::new(chatml, &[]).unwrap();
        assert!(t.fused());
        assert_eq!(t.render(&[msg("user", "hi")], &Value::from(()), false).unwrap(), "<|im_start|>user\nhi<|im_end|>\n");
        // A number added to a string fails in minijinja as in Jinja2, fused or not.
        let numbered = "{{ 'n=' + messages|length }}";
        let t = ChatTemplate::new(numbered, &[]).unwrap();
        assert!(t.fused());
        assert!(t.render(&[msg("user", "hi")], &Value::from(()), false).unwrap_err().contains("+ operator"));
        // The guard: a rewrite that rendered any probe differently would not be used.
        let other = ChatTemplate::new("{% for m in messages %}{{ m['content'] }}{% endfor %}", &[]).unwrap();
        let same = ChatTemplate::new("{% for m in messages %}{{ '' + m['content'] }}{% endfor %}", &[]).unwrap();
        assert!(same.fused() && renders_alike(&other, &same) && !renders_alike(&t, &other));
    }

    #[test]
    fn prefixes_from_one_render_equal_rendering_each_prefix() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        // Templates the marks apply to, with every whitespace control around the loop's tags,
        // state carried forward (a namespace), `messages[0]`, `loop.first` / `loop.index0`, an
        // inner loop's `loop.last`, text after the loop with and without the generation prompt.
        let templates = [
            "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ 'sys\n' }}{% endif %}\
             {{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}\
             {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
            "{{- bos_token }}\n{%- for m in messages -%}\n  {{ m.role | upper }}: {{ m.content | trim }}\n\n{%- endfor -%}\n\
             {%- if add_generation_prompt %}\nASSISTANT:{% else %}{{ eos_token }}{% endif %}",
            "{% set ns = namespace(n=0) %}{% for m in messages %}\n    {% set ns.n = ns.n + m.content|length %}\
             [{{ loop.index0 }}:{{ ns.n }}{% for w in m.content.split(' ') %}{{ w }}{% if not loop.last %}_{% endif %}{% endfor %}]\n\
             {% endfor %}\n{% if add_generation_prompt %}>{% endif %}",
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let words = ["a", "Be", "é", "🙂", " ", "\n", "x y", "  pad  ", "<s>", "!"];
        for source in templates {
            let t = ChatTemplate::new(source, &[("bos_token".into(), "<s>".into()), ("eos_token".into(), "</s>".into())]).unwrap();
            assert!(t.gives_prefixes(), "{source}");
            for _ in 0..200 {
                let n = rng.random_range(1..7);
                let messages: Vec<Value> = (0..n)
                    .map(|i| {
                        let role = if i == 0 && rng.random_bool(0.3) { "system" } else if i % 2 == 0 { "user" } else { "assistant" };
                        let content: String = (0..rng.random_range(0..5)).map(|_| words[rng.random_range(0..words.len())]).collect();
                        msg(role, &content)
                    })
                    .collect();
                let prefixes = t.prefixes(&messages, &Value::from(())).expect("marks for every message");
                assert_eq!(prefixes.full, t.render(&messages, &Value::from(()), false).unwrap());
                for k in 1..=messages.len() {
                    for gp in [false, true] {
                        assert_eq!(prefixes.render(k, gp).unwrap(), t.render(&messages[..k], &Value::from(()), gp).unwrap(), "{source} {k} {gp}");
                    }
                }
                assert_eq!(prefixes.render(0, false), None);
            }
        }
        // A template that looks ahead renders each prefix itself.
        let ahead = ChatTemplate::new("{% for m in messages %}{{ m.content }}{% if not loop.last %},{% endif %}{% endfor %}", &[]).unwrap();
        assert!(!ahead.gives_prefixes() && ahead.prefixes(&[msg("user", "a")], &Value::from(())).is_none());
    }

    #[test]
    fn generation_tags_render_their_body() {
        assert_eq!(without_generation_tags("a{%- generation %}b{% endgeneration -%}c{% if x %}"), "a{%- if true %}b{% endif -%}c{% if x %}");
        assert_eq!(without_generation_tags("{% generation_x %}"), "{% generation_x %}");
        let t = ChatTemplate::new("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}", &[]).unwrap();
        assert_eq!(t.render(&[msg("assistant", "x")], &Value::from(()), false).unwrap(), "x");
    }
}
