//! Python's `repr` of JSON values, as Celery's events and `inspect` replies show a task's
//! arguments and result (`saferepr`): `[2, 3]`, `{'x': 'a'}`, `None`, `True`.

use serde_json::Value;

/// The longest repr sent; a longer one is cut there and ends with `...` (Celery's
/// `resultrepr_maxsize` is 1024 as well).
pub(crate) const MAX_REPR: usize = 1024;

/// Python's `repr` of `v` (a JSON value as Python's `json` loads it), cut at
/// [`MAX_REPR`] bytes.
pub(crate) fn py_repr(v: &Value) -> String {
    let mut out = String::new();
    write(&mut out, v);
    cut(out)
}

/// Python's `repr` of a `str`, whole (not cut): `'it'`, `"it's"`.
pub(crate) fn py_str_repr(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    string(&mut out, s);
    out
}

/// `out` cut at [`MAX_REPR`] bytes (on a character boundary), ending with `...` if cut.
fn cut(mut out: String) -> String {
    if out.len() > MAX_REPR {
        let mut at = MAX_REPR;
        while !out.is_char_boundary(at) {
            at -= 1;
        }
        out.truncate(at);
        out.push_str("...");
    }
    out
}

/// Python's `repr` of a task's positional arguments, a tuple: `(2, 3)`, `(4,)`, `()`.
pub(crate) fn py_tuple_repr(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, item) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write(&mut out, item);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    cut(out)
}

fn write(out: &mut String, v: &Value) {
    // Deep values are cut anyway: stop writing once past the bound.
    if out.len() > MAX_REPR {
        return;
    }
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (None, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&float(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                string(out, k);
                out.push_str(": ");
                write(out, item);
            }
            out.push('}');
        }
    }
}

/// Python's `repr` of a float: `1.0`, `0.1`, `1e+16`, `inf`.
fn float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Python: shortest digits, exponent with a sign and at least two digits.
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    // Rust's `Debug` of a float is its shortest round-trip form with a `.0` when whole,
    // as Python's.
    format!("{f:?}")
}

/// Python's `repr` of a `str`: single quotes unless the text has one and no double quote;
/// backslash, the quote, `\n`, `\r`, `\t` and other control characters escaped.
fn string(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if (0x80..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}
