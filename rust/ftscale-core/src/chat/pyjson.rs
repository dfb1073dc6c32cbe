//! Python's `json.dumps`, byte for byte, over template values.
//!
//! Hugging Face registers its own `tojson` filter (`json.dumps(x, ensure_ascii=False,
//! indent=None, separators=None, sort_keys=False)`), and templates pass tool schemas and tool
//! call arguments through it, so the rendered text (and so the token ids) depends on Python's
//! exact output: `", "` and `": "` separators, `repr` of floats (`1.0`, `1e-05`, `1e+16`),
//! `\uXXXX` escapes for control characters. minijinja's own `tojson` follows serde_json (compact,
//! HTML-escaped), which would render different bytes.

use std::fmt::Write;

use minijinja::value::{Value, ValueKind};

/// `json.dumps` options the templates use.
pub struct DumpOptions {
    pub ensure_ascii: bool,
    /// None: one line; Some(s): newline and `s` per nesting level (Python's int indent is s spaces).
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
}

impl DumpOptions {
    /// Python's defaults for the given indent: `", "` between items on one line, `","` with an indent.
    pub fn new(indent: Option<String>) -> DumpOptions {
        let item_separator = if indent.is_some() { "," } else { ", " }.to_string();
        DumpOptions { ensure_ascii: false, indent, item_separator, key_separator: ": ".to_string(), sort_keys: false }
    }
}

/// `json.dumps(value, ...)`; Err names the value Python's encoder would refuse.
pub fn dumps(value: &Value, opts: &DumpOptions) -> Result<String, String> {
    let mut out = String::new();
    write_value(&mut out, value, opts, 0)?;
    Ok(out)
}

fn write_value(out: &mut String, value: &Value, opts: &DumpOptions, level: usize) -> Result<(), String> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::String => write_string(out, value.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter().map_err(|e| e.to_string())?.collect();
            write_container(out, opts, level, '[', ']', items.len(), |out, i, level| {
                write_value(out, &items[i], opts, level)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter().map_err(|e| e.to_string())? {
                let item = value.get_item(&key).map_err(|e| e.to_string())?;
                entries.push((key_text(&key)?, item));
            }
            if opts.sort_keys {
                // Python sorts str keys by code point; UTF-8 byte order is the same order.
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, opts, level, '{', '}', entries.len(), |out, i, level| {
                write_string(out, &entries[i].0, opts.ensure_ascii);
                out.push_str(&opts.key_separator);
                write_value(out, &entries[i].1, opts, level)
            })?;
        }
        ValueKind::Undefined => return Err("Object of type Undefined is not JSON serializable".into()),
        other => return Err(format!("Object of type {other} is not JSON serializable")),
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    opts: &DumpOptions,
    level: usize,
    open: char,
    close: char,
    len: usize,
    mut item: impl FnMut(&mut String, usize, usize) -> Result<(), String>,
) -> Result<(), String> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        if i > 0 {
            out.push_str(&opts.item_separator);
        }
        if let Some(indent) = &opts.indent {
            out.push('\n');
            out.push_str(&indent.repeat(level + 1));
        }
        item(out, i, level + 1)?;
    }
    if let Some(indent) = &opts.indent {
        out.push('\n');
        out.push_str(&indent.repeat(level));
    }
    out.push(close);
    Ok(())
}

/// A map key as Python's encoder converts it (str as is; bool, None, numbers to text).
fn key_text(key: &Value) -> Result<String, String> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_string()),
        ValueKind::None => Ok("null".to_string()),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(&mut s, key);
            Ok(s)
        }
        other => Err(format!("keys must be str, int, float, bool or None, not {other}")),
    }
}

fn write_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        match i128::try_from(value.clone()) {
            Ok(n) => write!(out, "{n}").unwrap(),
            Err(_) => write!(out, "{value}").unwrap(),
        }
    } else {
        out.push_str(&float_repr(f64::try_from(value.clone()).unwrap_or(f64::NAN)));
    }
}

/// Python's `float.__repr__` as `json.dumps` writes it (`NaN`, `Infinity` for the non-finite).
///
/// The digits are Rust's shortest round-trip digits, the same digits Python's repr uses; only the
/// layout differs: Python writes fixed notation for decimal exponents in [-4, 16), always with a
/// fractional part, and otherwise `d.ddde+XX` with a signed exponent of at least two digits.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{x:e}"); // "-1.2345e-5", "1e16", "0e0"
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always writes an exponent");
    let exp: i32 = exp.parse().expect("{:e} writes an integer exponent");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.push_str(&"0".repeat(int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.push_str(&"0".repeat((-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs()).unwrap();
    }
    out
}

/// A JSON string literal as Python's encoder writes it.
pub fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c if ensure_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").unwrap();
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"), (0.1, "0.1"), (-0.0, "-0.0"), (0.0, "0.0"), (1e16, "1e+16"), (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"), (1e-5, "1e-05"), (0.0001, "0.0001"), (123.456, "123.456"),
            (1.2345678901234568e17, "1.2345678901234568e+17"), (2.5e-10, "2.5e-10"), (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"), (1e100, "1e+100"), (12345.0, "12345.0"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn dumps_matches_python_layout() {
        let v = Value::from_pairs([
            ("b", Value::from(vec![Value::from(1), Value::from(2.0)])),
            ("a", Value::from("é\n\u{1}\"")),
            ("c", Value::from_pairs::<_, &str, Value>([])),
        ]);
        assert_eq!(dumps(&v, &DumpOptions::new(None)).unwrap(), r#"{"b": [1, 2.0], "a": "é\n\u0001\"", "c": {}}"#);
        let mut opts = DumpOptions::new(Some("  ".into()));
        opts.sort_keys = true;
        assert_eq!(
            dumps(&v, &opts).unwrap(),
            "{\n  \"a\": \"é\\n\\u0001\\\"\",\n  \"b\": [\n    1,\n    2.0\n  ],\n  \"c\": {}\n}"
        );
        opts.ensure_ascii = true;
        assert!(dumps(&Value::from("é😀"), &opts).unwrap() == r#""\u00e9\ud83d\ude00""#);
        assert!(dumps(&Value::UNDEFINED, &opts).is_err());
    }
}
