//! String concatenation chains of a chat template, fused into one call.
//!
//! Chat templates build each turn with `+`: ChatML writes
//! `{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}`.
//! minijinja evaluates that as one addition at a time, and each allocates and copies the text
//! so far twice (the concatenation, then the value): ~30% of rendering a ChatML turn. This
//! module rewrites every `+` chain that has a string literal among its operands into one call
//! of a Rust object with every operand: `__ftscale_emit((a), (b), ...)` when the chain is what
//! a `{{ }}` prints (the operands are written to the output one after the other, nothing is
//! joined), else `__ftscale_concat(...)` (joined with one allocation).
//!
//! Why it renders the same: `+` on a string and anything but a string fails in both Jinja2 and
//! minijinja, so a chain that holds a string literal succeeds only when every operand is a
//! string, and then it is their concatenation, whatever the grouping. The calls fail on any
//! operand that is not a string; a failed render goes to the Python engine, which decides.
//! Chains without a string literal (`loop.index0 + 1`, `messages + [x]`) are kept.
//!
//! The rewrite works on minijinja's own parse of the template: a chain's source range is its
//! AST node's span, and its operands are that text cut at the `+` tokens outside brackets,
//! each parenthesized. A chain is left as written unless that gives as many operands as the
//! AST has, each a valid expression alone (an operand's own span is not its whole text: a
//! filter's starts at the filter name). `ChatTemplate` keeps the rewrite only if it compiles
//! and renders the probe conversations exactly as the template as written does.

use std::sync::Arc;

use minijinja::machinery::ast::{BinOpKind, CallArg, Expr, Stmt};
use minijinja::machinery::{parse, parse_expr, tokenize, Token};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Object, Value};
use minijinja::{Error, ErrorKind, State};

/// The global a fused chain calls when its value is used.
pub const CONCAT: &str = "__ftscale_concat";
/// The global a fused chain calls when it is printed.
pub const EMIT: &str = "__ftscale_emit";

/// The operands of a chain, checked to be strings.
fn strings(args: &[Value]) -> Result<usize, Error> {
    let mut len = 0;
    for arg in args {
        len += arg.as_str().map(str::len).ok_or_else(|| {
            Error::new(ErrorKind::InvalidOperation, format!("tried to use + operator on a string and a {}", arg.kind()))
        })?;
    }
    Ok(len)
}

/// `__ftscale_concat`: the operands joined, when all are strings; else the render fails.
#[derive(Debug)]
pub struct Concat;

impl Object for Concat {
    fn call(self: &Arc<Self>, _state: &mut State<'_, '_>, args: &[Value]) -> Result<Value, Error> {
        let mut out = String::with_capacity(strings(args)?);
        for arg in args {
            out.push_str(arg.as_str().unwrap_or_default());
        }
        Ok(Value::from(out))
    }
}

/// `__ftscale_emit`: the operands as `Parts`, when all are strings; else the render fails.
#[derive(Debug)]
pub struct Emit;

impl Object for Emit {
    fn call(self: &Arc<Self>, _state: &mut State<'_, '_>, args: &[Value]) -> Result<Value, Error> {
        strings(args)?;
        Ok(Value::from_object(Parts(args.to_vec())))
    }
}

/// Strings printed one after the other: what `{{ a + b }}` prints, without joining them. Only
/// a `{{ }}` ever holds one (the rewrite emits `__ftscale_emit` nowhere else), and the
/// template's formatter writes it.
#[derive(Debug)]
pub struct Parts(pub Vec<Value>);

impl Object for Parts {}

/// `source` with its string `+` chains fused; None when it has none or does not parse.
pub fn fuse_concatenations(source: &str) -> Option<String> {
    let ast = parse(source, "chat_template", SyntaxConfig::default()).ok()?;
    let mut chains = Vec::new();
    stmt(&ast, &mut chains);
    if chains.is_empty() {
        return None;
    }
    chains.sort_by_key(|c| c.start);
    let mut out = String::with_capacity(source.len() + 32 * chains.len());
    let mut at = 0;
    for Chain { start, end, operands, printed } in chains {
        let Some(ranges) = operand_ranges(source, start, end, operands) else { continue };
        if start < at {
            return None; // overlapping chains cannot come from one parse; refuse rather than guess
        }
        out.push_str(source.get(at..start)?);
        out.push_str(if printed { EMIT } else { CONCAT });
        out.push('(');
        for (k, &(s, e)) in ranges.iter().enumerate() {
            if k > 0 {
                out.push_str(", ");
            }
            out.push('(');
            out.push_str(source.get(s..e)?.trim());
            out.push(')');
        }
        out.push(')');
        at = end;
    }
    if at == 0 {
        return None;
    }
    out.push_str(source.get(at..)?);
    Some(out)
}

/// The source ranges of the operands of the chain at `source[start..end]`: its text cut at the
/// `+` tokens outside brackets. None unless that gives `count` parts that each parse alone.
fn operand_ranges(source: &str, start: usize, end: usize, count: usize) -> Option<Vec<(usize, usize)>> {
    let text = source.get(start..end)?;
    let (mut depth, mut from, mut out) = (0i32, 0usize, Vec::with_capacity(count));
    for token in tokenize(text, true, SyntaxConfig::default()) {
        let (token, span) = token.ok()?;
        match token {
            Token::ParenOpen | Token::BracketOpen | Token::BraceOpen => depth += 1,
            Token::ParenClose | Token::BracketClose | Token::BraceClose => depth -= 1,
            Token::Plus if depth == 0 => {
                out.push((start + from, start + span.start_offset as usize));
                from = span.end_offset as usize;
            }
            _ => {}
        }
    }
    out.push((start + from, end));
    let whole = |&(s, e): &(usize, usize)| source.get(s..e).is_some_and(|part| !part.trim().is_empty() && parse_expr(part.trim()).is_ok());
    (out.len() == count && out.iter().all(whole)).then_some(out)
}

/// A chain: its byte range in the source, its number of operands, and whether a `{{ }}`
/// prints it.
struct Chain {
    start: usize,
    end: usize,
    operands: usize,
    printed: bool,
}

fn range(e: &Expr<'_>) -> (usize, usize) {
    let span = e.span();
    (span.start_offset as usize, span.end_offset as usize)
}

fn stmts(body: &[Stmt<'_>], out: &mut Vec<Chain>) {
    for s in body {
        stmt(s, out);
    }
}

fn stmt(s: &Stmt<'_>, out: &mut Vec<Chain>) {
    match s {
        Stmt::Template(t) => stmts(&t.children, out),
        Stmt::EmitExpr(e) => {
            expr(&e.expr, out);
            // The chain that is the whole printed expression is written part by part.
            if let Some(last) = out.last_mut() {
                if (last.start, last.end) == range(&e.expr) {
                    last.printed = true;
                }
            }
        }
        Stmt::EmitRaw(_) | Stmt::Continue(_) | Stmt::Break(_) => {}
        Stmt::ForLoop(f) => {
            expr(&f.iter, out);
            if let Some(filter) = &f.filter_expr {
                expr(filter, out);
            }
            stmts(&f.body, out);
            stmts(&f.else_body, out);
        }
        Stmt::IfCond(c) => {
            expr(&c.expr, out);
            stmts(&c.true_body, out);
            stmts(&c.false_body, out);
        }
        Stmt::WithBlock(w) => {
            for (_, value) in &w.assignments {
                expr(value, out);
            }
            stmts(&w.body, out);
        }
        Stmt::Set(set) => expr(&set.expr, out),
        Stmt::SetBlock(set) => {
            if let Some(filter) = &set.filter {
                expr(filter, out);
            }
            stmts(&set.body, out);
        }
        Stmt::AutoEscape(a) => {
            expr(&a.enabled, out);
            stmts(&a.body, out);
        }
        Stmt::FilterBlock(f) => {
            expr(&f.filter, out);
            stmts(&f.body, out);
        }
        Stmt::Macro(m) => {
            for default in &m.defaults {
                expr(default, out);
            }
            stmts(&m.body, out);
        }
        Stmt::CallBlock(c) => {
            expr(&c.call.expr, out);
            args(&c.call.args, out);
            stmts(&c.macro_decl.body, out);
        }
        Stmt::Do(d) => {
            expr(&d.call.expr, out);
            args(&d.call.args, out);
        }
    }
}

fn args(list: &[CallArg<'_>], out: &mut Vec<Chain>) {
    for arg in list {
        match arg {
            CallArg::Pos(e) | CallArg::Kwarg(_, e) | CallArg::PosSplat(e) | CallArg::KwargSplat(e) => expr(e, out),
        }
    }
}

/// The operands of a `+` chain rooted at `e` (left-nested, as the parser builds it).
fn flatten<'e, 'a>(e: &'e Expr<'a>, operands: &mut Vec<&'e Expr<'a>>) {
    match e {
        Expr::BinOp(b) if matches!(b.op, BinOpKind::Add) => {
            flatten(&b.left, operands);
            operands.push(&b.right);
        }
        other => operands.push(other),
    }
}

fn is_string_literal(e: &Expr<'_>) -> bool {
    matches!(e, Expr::Const(c) if c.value.as_str().is_some())
}

fn expr(e: &Expr<'_>, out: &mut Vec<Chain>) {
    match e {
        Expr::BinOp(b) if matches!(b.op, BinOpKind::Add) => {
            let mut operands = Vec::new();
            flatten(e, &mut operands);
            if operands.iter().any(|o| is_string_literal(o)) {
                let (start, end) = range(e);
                out.push(Chain { start, end, operands: operands.len(), printed: false });
                // Operands' own chains stay as they are: a rewrite inside a rewritten range
                // would overlap it.
                return;
            }
            for o in operands {
                expr(o, out);
            }
        }
        Expr::Var(_) | Expr::Const(_) => {}
        Expr::Slice(s) => {
            expr(&s.expr, out);
            for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                expr(part, out);
            }
        }
        Expr::UnaryOp(u) => expr(&u.expr, out),
        Expr::BinOp(b) => {
            expr(&b.left, out);
            expr(&b.right, out);
        }
        Expr::Compare(c) => {
            expr(&c.expr, out);
            for op in &c.ops {
                expr(&op.expr, out);
            }
        }
        Expr::IfExpr(i) => {
            expr(&i.test_expr, out);
            expr(&i.true_expr, out);
            if let Some(f) = &i.false_expr {
                expr(f, out);
            }
        }
        Expr::Filter(f) => {
            if let Some(inner) = &f.expr {
                expr(inner, out);
            }
            args(&f.args, out);
        }
        Expr::Test(t) => {
            expr(&t.expr, out);
            args(&t.args, out);
        }
        Expr::GetAttr(g) => expr(&g.expr, out),
        Expr::GetItem(g) => {
            expr(&g.expr, out);
            expr(&g.subscript_expr, out);
        }
        Expr::Call(c) => {
            expr(&c.expr, out);
            args(&c.args, out);
        }
        Expr::List(l) => l.items.iter().for_each(|i| expr(i, out)),
        Expr::Tuple(t) => t.items.iter().for_each(|i| expr(i, out)),
        Expr::Map(m) => m.keys.iter().chain(&m.values).for_each(|i| expr(i, out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_with_a_string_literal_become_one_call() {
        let src = "{{'<|im_start|>' + m['role'] + '\\n' + (m.content | trim) + '<|im_end|>'}}{{ loop.index0 + 1 }}";
        let got = fuse_concatenations(src).unwrap();
        assert_eq!(
            got,
            "{{__ftscale_emit(('<|im_start|>'), (m['role']), ('\\n'), ((m.content | trim)), ('<|im_end|>'))}}{{ loop.index0 + 1 }}"
        );
        assert_eq!(fuse_concatenations("{{ a + b }}{% set x = [1] + y %}"), None);
        // A filter on a parenthesized operand, `~` (which binds tighter than `+`, as in Jinja2),
        // a method call with a `+` inside.
        assert_eq!(
            fuse_concatenations("{{ (m) | trim + 'x' + (y is string) ~ '' }}{{ m.split('+')[0] + '|' }}").unwrap(),
            "{{ __ftscale_emit(((m) | trim), ('x'), ((y is string) ~ '')) }}{{ __ftscale_emit((m.split('+')[0]), ('|')) }}"
        );
    }

    #[test]
    fn nested_and_grouped_chains() {
        // A chain inside an `if` expression and inside a call argument are joined, not printed;
        // a parenthesized tuple operand stays a tuple.
        let got = fuse_concatenations("{% set s = ('a' + b) if c else f(d + 'e') %}{{ (x, y) + 'z' }}{{ ('p' + q) | trim }}").unwrap();
        assert_eq!(
            got,
            "{% set s = (__ftscale_concat(('a'), (b))) if c else f(__ftscale_concat((d), ('e'))) %}\
             {{ __ftscale_emit(((x, y)), ('z')) }}{{ (__ftscale_concat(('p'), (q))) | trim }}"
        );
    }
}
