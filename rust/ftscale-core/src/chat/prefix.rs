//! Every prefix rendering of a conversation from its one full rendering, for templates whose
//! output for `messages[:n]` is the output for all messages cut after message `n - 1`.
//!
//! Placing assistant turns (`spans::plan`) needs, per assistant turn `i`, the renderings of
//! `messages[:i]` with the generation prompt and of `messages[:i+1]` without: with ~2.7 turns a
//! conversation that was 5.5 renders instead of 1. Most chat templates (ChatML, Llama 3 style)
//! are one loop over `messages` whose iteration `j` looks only at message `j`, at
//! `messages[0]`, at the loop's counters and at what earlier iterations set, followed by the
//! generation prompt. For those,
//!
//! `render(messages[:n], gp) = full[..start of iteration n] + post(gp)`,
//!
//! where `post(gp)` is what the template writes after the loop (the generation prompt when `gp`).
//! This module decides on the template's own parse whether a template is of that kind
//! (`mark_message_loop`), and if so returns it with a call of `__ftscale_mark()` (which writes
//! nothing and records how much has been written) at the start of each iteration and after the
//! loop. The rule, checked on every node (macro bodies included):
//!
//! - the template's top level has exactly one `for` over `messages` (or over a name set to
//!   `messages` at the top and nowhere else, as Llama 3's `loop_messages`), with no filter, no
//!   recursion, no `else` and no `break`; what comes before it is the *pre*, after it the *post*;
//! - `messages` appears nowhere else except as `messages[0]` before the loop or in it (every
//!   prefix that is rendered has message 0);
//! - in the loop body (outside loops nested in it) `loop` is used only for `index`, `index0`,
//!   `first`, `previtem`, `depth`, `depth0`, `cycle` and `changed` (never `last`, `length`,
//!   `revindex`, `nextitem`: what comes later); macros do not use `loop`;
//! - `add_generation_prompt` appears only in the post, and the post reads no variable the
//!   template assigns, nor `messages` or `tools`: `post(gp)` is the same for every conversation.
//!
//! Then the pre writes the same for every prefix, iteration `j` writes the same in every
//! rendering that has message `j`, and the post writes `post(gp)`. `ChatTemplate` also checks the
//! result against real renders of probe conversations before using it, and the encoder checks
//! each conversation's marks (one per message, then the loop's end, after which `post(false)`).

use std::collections::{HashMap, HashSet};

use minijinja::machinery::ast::{CallArg, Expr, Stmt};
use minijinja::machinery::{parse, tokenize, Token};
use minijinja::syntax::SyntaxConfig;

/// The global the marked template calls where an iteration starts and where the loop ends.
pub const MARK: &str = "__ftscale_mark";
/// The variable the mark's (empty) result is assigned to.
const MARK_TARGET: &str = "__ftscale_at";

/// `source` with the marks inserted, when its output for a prefix of the messages is the full
/// output cut there (the rule above); None otherwise or when it does not parse.
pub fn mark_message_loop(source: &str) -> Option<String> {
    let ast = parse(source, "chat_template", SyntaxConfig::default()).ok()?;
    let Stmt::Template(template) = &ast else { return None };
    let mut assigned = HashMap::new();
    assigned_names(&template.children, &mut assigned);
    let alias_of = |s| alias(s, &assigned);
    let mut check = Check { assigned: assigned.keys().copied().collect(), messages: vec!["messages"] };
    check.messages.extend(template.children.iter().filter_map(alias_of));
    let mains: Vec<usize> = (0..template.children.len()).filter(|&k| check.message_loop(&template.children[k])).collect();
    let [main] = mains[..] else { return None };
    for (k, s) in template.children.iter().enumerate() {
        let fine = match (k.cmp(&main), s) {
            (std::cmp::Ordering::Less, _) if alias_of(s).is_some() => true,
            (std::cmp::Ordering::Less, _) => check.stmt(s, Region::Pre),
            (std::cmp::Ordering::Greater, _) => check.stmt(s, Region::Post),
            (std::cmp::Ordering::Equal, Stmt::ForLoop(f)) => check.stmts(&f.body, Region::Body { depth: 0 }),
            _ => false,
        };
        if !fine {
            return None;
        }
    }
    let Stmt::ForLoop(main_loop) = &template.children[main] else { return None };
    let (body_start, loop_end) = tag_ends(source, main_loop.span().start_offset as usize)?;
    let mark = |tag_end: usize| {
        if source[..tag_end].ends_with("-%}") {
            format!("{{%- set {MARK_TARGET} = {MARK}() -%}}")
        } else {
            format!("{{% set {MARK_TARGET} = {MARK}() %}}")
        }
    };
    let mut out = String::with_capacity(source.len() + 96);
    out.push_str(&source[..body_start]);
    out.push_str(&mark(body_start));
    out.push_str(&source[body_start..loop_end]);
    out.push_str(&mark(loop_end));
    out.push_str(&source[loop_end..]);
    Some(out)
}

/// The name `s` sets to `messages` when it is `{% set loop_messages = messages %}` (Llama 3) and
/// the name is assigned nowhere else.
fn alias<'s>(s: &Stmt<'s>, assigned: &HashMap<&str, usize>) -> Option<&'s str> {
    match s {
        Stmt::Set(set) if is_var(&set.expr, "messages") => match &set.target {
            Expr::Var(v) if assigned.get(v.id) == Some(&1) => Some(v.id),
            _ => None,
        },
        _ => None,
    }
}

fn is_var(e: &Expr<'_>, name: &str) -> bool {
    matches!(e, Expr::Var(v) if v.id == name)
}

/// Where the tag that opens the loop starting at `loop_start` ends (its body starts there) and
/// where its `endfor` tag ends; None when a tag has the `+` modifier, whose whitespace rule the
/// inserted tag would change.
fn tag_ends(source: &str, loop_start: usize) -> Option<(usize, usize)> {
    let mut tokens = tokenize(source, false, SyntaxConfig::default());
    let mut after_block_start = false;
    let mut depth = 0usize;
    let mut body_start = None;
    let mut closing = false;
    for token in tokens.by_ref() {
        let (token, span) = token.ok()?;
        let (start, end) = (span.start_offset as usize, span.end_offset as usize);
        match token {
            Token::BlockStart => {
                after_block_start = true;
                continue;
            }
            Token::Ident("for") if after_block_start && start >= loop_start => depth += 1,
            Token::Ident("endfor") if after_block_start && body_start.is_some() => {
                depth -= 1;
                closing = depth == 0;
            }
            Token::BlockEnd if start >= loop_start => {
                if source[..end].ends_with("+%}") {
                    return None;
                }
                if body_start.is_none() {
                    body_start = Some(end);
                } else if closing {
                    return Some((body_start?, end));
                }
            }
            _ => {}
        }
        after_block_start = false;
    }
    None
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Region {
    /// Before the loop over the messages.
    Pre,
    /// In that loop's body, `depth` loops deep inside it.
    Body { depth: u32 },
    /// After the loop.
    Post,
    /// In a macro's body (wherever it is called from).
    Macro,
}

/// `loop` attributes that depend only on the current and earlier iterations.
const LOOP_BACKWARD: [&str; 8] = ["index", "index0", "first", "previtem", "depth", "depth0", "cycle", "changed"];

struct Check<'s> {
    /// Every variable the template assigns (set, for targets, macros, with).
    assigned: HashSet<&'s str>,
    /// `messages` and its aliases.
    messages: Vec<&'s str>,
}

impl Check<'_> {
    fn is_messages(&self, e: &Expr<'_>) -> bool {
        matches!(e, Expr::Var(v) if self.messages.contains(&v.id))
    }

    /// A `{% for x in messages %}` without a filter, recursion or `else`.
    fn message_loop(&self, s: &Stmt<'_>) -> bool {
        matches!(s, Stmt::ForLoop(f) if self.is_messages(&f.iter) && f.filter_expr.is_none() && !f.recursive && f.else_body.is_empty())
    }

    fn stmts(&self, body: &[Stmt<'_>], region: Region) -> bool {
        body.iter().all(|s| self.stmt(s, region))
    }

    fn stmt(&self, s: &Stmt<'_>, region: Region) -> bool {
        let inner = match region {
            Region::Body { depth } => Region::Body { depth: depth + 1 },
            other => other,
        };
        match s {
            Stmt::Template(t) => self.stmts(&t.children, region),
            Stmt::EmitExpr(e) => self.expr(&e.expr, region),
            Stmt::EmitRaw(_) | Stmt::Continue(_) => true,
            Stmt::Break(_) => region != Region::Body { depth: 0 },
            Stmt::ForLoop(f) => {
                self.expr(&f.iter, region)
                    && f.filter_expr.as_ref().is_none_or(|e| self.expr(e, inner))
                    && self.stmts(&f.body, inner)
                    && self.stmts(&f.else_body, inner)
            }
            Stmt::IfCond(c) => self.expr(&c.expr, region) && self.stmts(&c.true_body, region) && self.stmts(&c.false_body, region),
            Stmt::WithBlock(w) => w.assignments.iter().all(|(_, v)| self.expr(v, region)) && self.stmts(&w.body, region),
            Stmt::Set(set) => self.expr(&set.target, region) && self.expr(&set.expr, region),
            Stmt::SetBlock(set) => set.filter.as_ref().is_none_or(|f| self.expr(f, region)) && self.stmts(&set.body, region),
            Stmt::AutoEscape(a) => self.expr(&a.enabled, region) && self.stmts(&a.body, region),
            Stmt::FilterBlock(f) => self.expr(&f.filter, region) && self.stmts(&f.body, region),
            Stmt::Macro(m) => m.defaults.iter().all(|d| self.expr(d, region)) && self.stmts(&m.body, Region::Macro),
            Stmt::CallBlock(c) => {
                self.expr(&c.call.expr, region) && self.args(&c.call.args, region) && self.stmts(&c.macro_decl.body, Region::Macro)
            }
            Stmt::Do(d) => self.expr(&d.call.expr, region) && self.args(&d.call.args, region),
        }
    }

    fn args(&self, list: &[CallArg<'_>], region: Region) -> bool {
        list.iter().all(|arg| match arg {
            CallArg::Pos(e) | CallArg::Kwarg(_, e) | CallArg::PosSplat(e) | CallArg::KwargSplat(e) => self.expr(e, region),
        })
    }

    fn var(&self, name: &str, region: Region) -> bool {
        match name {
            _ if self.messages.contains(&name) => false,
            "add_generation_prompt" => region == Region::Post,
            "loop" => !matches!(region, Region::Body { depth: 0 } | Region::Macro),
            "tools" => region != Region::Post,
            other => region != Region::Post || !self.assigned.contains(other),
        }
    }

    fn expr(&self, e: &Expr<'_>, region: Region) -> bool {
        match e {
            Expr::Var(v) => self.var(v.id, region),
            Expr::Const(_) => true,
            Expr::GetItem(g) if self.is_messages(&g.expr) => {
                region != Region::Post
                    && matches!(&g.subscript_expr, Expr::Const(c) if c.value.is_integer() && c.value.as_i64() == Some(0))
            }
            Expr::GetAttr(g) if is_var(&g.expr, "loop") && region == (Region::Body { depth: 0 }) => LOOP_BACKWARD.contains(&g.name),
            Expr::GetAttr(g) => self.expr(&g.expr, region),
            Expr::GetItem(g) => self.expr(&g.expr, region) && self.expr(&g.subscript_expr, region),
            Expr::Slice(s) => self.expr(&s.expr, region) && [&s.start, &s.stop, &s.step].into_iter().flatten().all(|p| self.expr(p, region)),
            Expr::UnaryOp(u) => self.expr(&u.expr, region),
            Expr::BinOp(b) => self.expr(&b.left, region) && self.expr(&b.right, region),
            Expr::Compare(c) => self.expr(&c.expr, region) && c.ops.iter().all(|op| self.expr(&op.expr, region)),
            Expr::IfExpr(i) => {
                self.expr(&i.test_expr, region)
                    && self.expr(&i.true_expr, region)
                    && i.false_expr.as_ref().is_none_or(|f| self.expr(f, region))
            }
            Expr::Filter(f) => f.expr.as_ref().is_none_or(|x| self.expr(x, region)) && self.args(&f.args, region),
            Expr::Test(t) => self.expr(&t.expr, region) && self.args(&t.args, region),
            Expr::Call(c) => self.expr(&c.expr, region) && self.args(&c.args, region),
            Expr::List(l) => l.items.iter().all(|i| self.expr(i, region)),
            Expr::Tuple(t) => t.items.iter().all(|i| self.expr(i, region)),
            Expr::Map(m) => m.keys.iter().chain(&m.values).all(|i| self.expr(i, region)),
        }
    }
}

/// The names an assignment target binds (`x`, `a, b`, the namespace of `ns.x`).
fn target_names<'s>(e: &Expr<'s>, out: &mut HashMap<&'s str, usize>) {
    match e {
        Expr::Var(v) => *out.entry(v.id).or_default() += 1,
        Expr::GetAttr(g) => target_names(&g.expr, out),
        Expr::List(l) => l.items.iter().for_each(|i| target_names(i, out)),
        Expr::Tuple(t) => t.items.iter().for_each(|i| target_names(i, out)),
        _ => {}
    }
}

/// Every name the statements assign, at any depth, with how many times it is assigned.
fn assigned_names<'s>(body: &[Stmt<'s>], out: &mut HashMap<&'s str, usize>) {
    for s in body {
        match s {
            Stmt::Template(t) => assigned_names(&t.children, out),
            Stmt::ForLoop(f) => {
                target_names(&f.target, out);
                assigned_names(&f.body, out);
                assigned_names(&f.else_body, out);
            }
            Stmt::IfCond(c) => {
                assigned_names(&c.true_body, out);
                assigned_names(&c.false_body, out);
            }
            Stmt::WithBlock(w) => {
                w.assignments.iter().for_each(|(t, _)| target_names(t, out));
                assigned_names(&w.body, out);
            }
            Stmt::Set(set) => target_names(&set.target, out),
            Stmt::SetBlock(set) => {
                target_names(&set.target, out);
                assigned_names(&set.body, out);
            }
            Stmt::AutoEscape(a) => assigned_names(&a.body, out),
            Stmt::FilterBlock(f) => assigned_names(&f.body, out),
            Stmt::Macro(m) => {
                *out.entry(m.name).or_default() += 1;
                m.args.iter().for_each(|a| target_names(a, out));
                assigned_names(&m.body, out);
            }
            Stmt::CallBlock(c) => assigned_names(&c.macro_decl.body, out),
            Stmt::EmitExpr(_) | Stmt::EmitRaw(_) | Stmt::Continue(_) | Stmt::Break(_) | Stmt::Do(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ 'sys\n' }}{% endif %}\
                          {{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}\
                          {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn marks_go_after_the_loop_tag_and_after_endfor_keeping_whitespace_control() {
        let marked = mark_message_loop(CHATML).unwrap();
        assert!(marked.starts_with("{% for message in messages %}{% set __ftscale_at = __ftscale_mark() %}{% if loop.first"));
        assert!(marked.contains("'\n'}}{% endfor %}{% set __ftscale_at = __ftscale_mark() %}{% if add_generation_prompt"));
        let dashed = "{%- for m in messages -%}\n  {%- for c in m.parts %}{{ c }}{% endfor %}\n{%- endfor -%}\n{{ eos_token }}";
        assert_eq!(
            mark_message_loop(dashed).unwrap(),
            "{%- for m in messages -%}{%- set __ftscale_at = __ftscale_mark() -%}\n  {%- for c in m.parts %}{{ c }}{% endfor %}\n\
             {%- endfor -%}{%- set __ftscale_at = __ftscale_mark() -%}\n{{ eos_token }}"
        );
    }

    #[test]
    fn templates_that_look_ahead_or_rewrite_history_are_not_marked() {
        for source in [
            "{% for m in messages %}{{ m.content }}{% if not loop.last %},{% endif %}{% endfor %}",
            "{% for m in messages %}{{ m.content }}{{ messages|length }}{% endfor %}",
            "{% for m in messages %}{{ messages[loop.index0 + 1].role }}{% endfor %}",
            "{% for m in messages %}{{ m.content }}{% if add_generation_prompt %}>{% endif %}{% endfor %}",
            "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
            "{% for m in messages %}{{ m.content }}{% endfor %}{{ tools }}",
            "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}{{ messages[0].role }}{% endif %}",
            "{% set last = messages[-1] %}{% for m in messages %}{{ m.content }}{% endfor %}",
            "{% for m in messages if m.role != 'system' %}{{ m.content }}{% endfor %}",
            "{% for m in messages %}{{ m.content }}{% endfor %}{% for m in messages %}{{ m.role }}{% endfor %}",
            "{% macro f() %}{{ loop.index }}{% endmacro %}{% for m in messages %}{{ f() }}{% endfor %}",
            "{% for m in messages %}{{ m.content }}{% if m.role == 'x' %}{% break %}{% endif %}{% endfor %}",
            "{% for m in messages +%}{{ m.content }}{% endfor %}",
            "{{ messages[0].content }}",
            "{% set xs = messages %}{% if x %}{% set xs = messages[1:] %}{% endif %}{% for m in xs %}{{ m.content }}{% endfor %}",
            "{% set xs = messages %}{% for m in xs %}{{ xs|length }}{% endfor %}",
        ] {
            assert_eq!(mark_message_loop(source), None, "{source}");
        }
        // What iterations set for later ones, inner loops' own `loop`, `messages[0]` and tools
        // before the loop are fine.
        for source in [
            "{% set ns = namespace(n=0) %}{% if tools %}{{ tools|tojson }}{% endif %}{% for m in messages %}{% set ns.n = ns.n + 1 %}\
             {{ ns.n }}{{ messages[0].role }}{% for c in m.parts %}{{ c }}{% if not loop.last %},{% endif %}{% endfor %}{% endfor %}\
             {% if add_generation_prompt %}{{ bos_token }}{% endif %}",
            CHATML,
            "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|h|>' + message['role'] \
             + message['content'] | trim + '<|e|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}\
             {{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|h|>assistant' }}{% endif %}",
        ] {
            assert!(mark_message_loop(source).is_some(), "{source}");
        }
    }
}
