//! Showing an [`Explanation`] to a person, and to programs as JSON.
//!
//! The admin endpoint `/delegator.json` serves [`Explanation::to_json`]; `meshctl dtab
//! delegate` prints either a local explanation (its `Display`) or the admin's JSON through
//! [`render_json`]. Both go through the one renderer here, so the two look the same.
//!
//! The JSON of a step is an object with `path`, `dentry` (`null` or `{"prefix", "dst"}`) and
//! `type`: `neg`, `fail`, `empty`, `error` (with `error`, the message, and `kind`: `depth`,
//! `too_large`, `unknown_builtin` or `namer`), `bound` (with `bound`, as the caller renders
//! it), `delegate` (with `delegate`, the next step), `alt` (with `alt`, the branches) or
//! `union` (with `union`, a list of `{"weight", "tree"}`).
//!
//! The text form is one step per line, indented by two spaces per level:
//!
//! ```text
//! /svc/web
//!   /#/fs/web  via /svc=>/#/fs  -> bound /#/fs/web (2 endpoints)
//! ```

use std::fmt::{self, Write as _};

use serde_json::{Value, json};

use super::bind::{BindError, Explanation, Node};

impl<B> Explanation<B> {
    /// The explanation as JSON (see the [module docs](self) for the shape), rendering each
    /// bound name with `bound`.
    pub fn to_json(&self, bound: &dyn Fn(&B) -> Value) -> Value {
        let dentry = match &self.dentry {
            Some(d) => json!({ "prefix": d.prefix.to_string(), "dst": d.dst.to_string() }),
            None => Value::Null,
        };
        let mut out = json!({ "path": self.path.to_string(), "dentry": dentry });
        let (kind, extra): (&str, Option<(&str, Value)>) = match &self.node {
            Node::Neg => ("neg", None),
            Node::Fail => ("fail", None),
            Node::Empty => ("empty", None),
            Node::Error(e) => {
                out["kind"] = Value::from(error_kind(e));
                ("error", Some(("error", Value::from(e.to_string()))))
            }
            Node::Bound(b) => ("bound", Some(("bound", bound(b)))),
            Node::Delegate(c) => ("delegate", Some(("delegate", c.to_json(bound)))),
            Node::Alt(cs) => (
                "alt",
                Some(("alt", cs.iter().map(|c| c.to_json(bound)).collect())),
            ),
            Node::Union(ws) => (
                "union",
                Some((
                    "union",
                    ws.iter()
                        .map(|(w, c)| json!({ "weight": w, "tree": c.to_json(bound) }))
                        .collect(),
                )),
            ),
        };
        out["type"] = Value::from(kind);
        if let Some((key, value)) = extra {
            out[key] = value;
        }
        out
    }
}

fn error_kind(e: &BindError) -> &'static str {
    match e {
        BindError::Depth { .. } => "depth",
        BindError::TooLarge { .. } => "too_large",
        BindError::UnknownBuiltin { .. } => "unknown_builtin",
        BindError::Namer { .. } => "namer",
    }
}

/// Renders the JSON of an explanation ([`Explanation::to_json`], e.g. from the admin's
/// `/delegator.json`) in the text layout of its `Display`. A bound name given as a string is
/// shown as is; `{"id": "/#/fs/web", "endpoints": 2}` as `/#/fs/web (2 endpoints)`; anything
/// else as compact JSON. Missing fields show as `?` rather than failing.
pub fn render_json(value: &Value) -> String {
    let mut out = String::new();
    render(&mut out, value, 0, None);
    out
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "?".to_owned(),
        other => other.to_string(),
    }
}

fn bound_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(o) if o.contains_key("id") => {
            let id = o.get("id").map_or_else(|| "?".to_owned(), text);
            match o.get("endpoints").and_then(Value::as_u64) {
                Some(1) => format!("{id} (1 endpoint)"),
                Some(n) => format!("{id} ({n} endpoints)"),
                None => id,
            }
        }
        other => other.to_string(),
    }
}

fn render(out: &mut String, step: &Value, level: usize, weight: Option<f64>) {
    for _ in 0..level {
        out.push_str("  ");
    }
    if let Some(w) = weight {
        let _ = write!(out, "{w:.2}* ");
    }
    out.push_str(&text(&step["path"]));
    if let Value::Object(d) = &step["dentry"] {
        let prefix = d.get("prefix").map_or_else(|| "?".to_owned(), text);
        let dst = d.get("dst").map_or_else(|| "?".to_owned(), text);
        let _ = write!(out, "  via {prefix}=>{dst}");
    }
    let kind = step["type"].as_str().unwrap_or("?");
    match kind {
        "neg" | "fail" | "empty" => {
            let _ = writeln!(out, "  -> {kind}");
        }
        "error" => {
            let _ = writeln!(out, "  -> error: {}", text(&step["error"]));
        }
        "bound" => {
            let _ = writeln!(out, "  -> bound {}", bound_text(&step["bound"]));
        }
        "delegate" => {
            out.push('\n');
            render(out, &step["delegate"], level + 1, None);
        }
        "alt" => {
            out.push_str("  -> alt\n");
            for c in step["alt"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                render(out, c, level + 1, None);
            }
        }
        "union" => {
            out.push_str("  -> union\n");
            for c in step["union"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                render(
                    out,
                    &c["tree"],
                    level + 1,
                    Some(c["weight"].as_f64().unwrap_or(f64::NAN)),
                );
            }
        }
        other => {
            let _ = writeln!(out, "  -> {other}");
        }
    }
}

/// One step per line, indented, with the dentry that produced each step and how each
/// branch ended (see the [module docs](self)).
impl<B: fmt::Display> fmt::Display for Explanation<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render_json(&self.to_json(&|b| Value::from(b.to_string()))))
    }
}
