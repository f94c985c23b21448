//! Where in the file a problem is: errors carry file, line, column and the dotted key.

use std::fmt;
use std::path::{Path, PathBuf};

/// A config error an admin can act on: `file:line:column: key: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no place in the file (e.g. the file is unreadable).
    pub line: usize,
    pub column: usize,
    /// Dotted path of the offending key, e.g. `ha.shared_secret` or `subnet[0].pool[1]`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// Maps between dotted key paths and places in the file.
pub(super) struct Locator<'a> {
    pub(super) text: &'a str,
    pub(super) doc: &'a toml_edit::ImDocument<String>,
    pub(super) file: &'a Path,
}

impl Locator<'_> {
    pub(super) fn error(&self, key: &str, message: String) -> ConfigError {
        let (line, column) = self
            .span_of(key)
            .map(|o| line_col(self.text, o))
            .unwrap_or((0, 0));
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
        }
    }

    /// The byte offset of `key` (`subnet[0].pool[1].range_start`), or of its nearest ancestor
    /// that is written in the file (a missing key points at its table).
    fn span_of(&self, key: &str) -> Option<usize> {
        let mut best = None;
        let mut item: Option<&toml_edit::Item> = Some(self.doc.as_item());
        for seg in split_path(key) {
            let Some(cur) = item else { break };
            let (name, idx) = seg;
            let next = if name.is_empty() {
                Some(cur)
            } else {
                cur.get(name)
            };
            let next = match (next, idx) {
                (Some(n), Some(i)) => n.get(i),
                (n, None) => n,
                _ => None,
            };
            if let Some(n) = next {
                // Prefer the key's own position over its value's.
                let key_span = if idx.is_none() && !name.is_empty() {
                    cur.as_table_like()
                        .and_then(|t| t.get_key_value(name))
                        .and_then(|(k, _)| k.span())
                } else {
                    None
                };
                if let Some(s) = key_span.or_else(|| item_span(n)) {
                    best = Some(s.start);
                }
            }
            item = next;
        }
        best
    }

    /// The dotted path of the innermost key whose value spans `offset`.
    pub(super) fn path_at(&self, offset: usize) -> String {
        let mut best = (String::new(), usize::MAX);
        walk(self.doc.as_item(), String::new(), offset, &mut best);
        best.0
    }
}

fn split_path(key: &str) -> Vec<(&str, Option<usize>)> {
    key.split('.')
        .map(|seg| match seg.find('[') {
            Some(b) => (&seg[..b], seg[b + 1..].trim_end_matches(']').parse().ok()),
            None => (seg, None),
        })
        .collect()
}

fn item_span(item: &toml_edit::Item) -> Option<std::ops::Range<usize>> {
    match item {
        toml_edit::Item::Value(v) => v.span(),
        toml_edit::Item::Table(t) => t.span(),
        toml_edit::Item::ArrayOfTables(a) => a.span(),
        toml_edit::Item::None => None,
    }
}

fn walk(item: &toml_edit::Item, path: String, offset: usize, best: &mut (String, usize)) {
    let consider = |span: Option<std::ops::Range<usize>>, p: &str, best: &mut (String, usize)| {
        if let Some(s) = span {
            if s.start <= offset && offset <= s.end && (s.end - s.start) <= best.1 {
                *best = (p.to_string(), s.end - s.start);
            }
        }
    };
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match item {
        toml_edit::Item::Table(t) => {
            for (k, v) in t.iter() {
                let p = join(k);
                if let Some((key, _)) = t.get_key_value(k) {
                    consider(key.span(), &p, best);
                }
                consider(item_span(v), &p, best);
                walk(v, p, offset, best);
            }
        }
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                consider(t.span(), &p, best);
                for (k, v) in t.iter() {
                    let pk = format!("{p}.{k}");
                    if let Some((key, _)) = t.get_key_value(k) {
                        consider(key.span(), &pk, best);
                    }
                    consider(item_span(v), &pk, best);
                    walk(v, pk, offset, best);
                }
            }
        }
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
            for (k, v) in t.iter() {
                let p = join(k);
                consider(v.span(), &p, best);
                walk(&toml_edit::Item::Value(v.clone()), p, offset, best);
            }
        }
        toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                consider(v.span(), &p, best);
            }
        }
        _ => {}
    }
}
