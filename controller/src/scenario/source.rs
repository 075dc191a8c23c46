//! A scenario file's text, and errors that point into it: `file:line:column`, the line, a caret
//! and a hint, in the manner of rustc.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// A step in a path through the file: a key, or an index into an array of tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Builds a path: `path!["group", 2, "publish", "qos"]`.
#[macro_export]
macro_rules! path {
    ($($s:expr),* $(,)?) => { vec![$($crate::scenario::source::Seg::from($s)),*] };
}

impl From<&str> for Seg {
    fn from(s: &str) -> Seg {
        Seg::Key(s.to_string())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Seg {
        Seg::Index(i)
    }
}

/// One problem in a scenario file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no place in the file (e.g. a missing section).
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
    line_text: String,
    caret_len: usize,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            writeln!(f, "error: {}: {}", self.file.display(), self.message)?;
        } else {
            writeln!(f, "error: {}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)?;
            let n = self.line.to_string();
            let pad = " ".repeat(n.len());
            writeln!(f, " {pad} |")?;
            writeln!(f, " {n} | {}", self.line_text)?;
            writeln!(
                f,
                " {pad} | {}{}",
                " ".repeat(self.column.saturating_sub(1)),
                "^".repeat(self.caret_len.max(1))
            )?;
        }
        if let Some(h) = &self.hint {
            writeln!(f, "  hint: {h}")?;
        }
        Ok(())
    }
}

/// All problems found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A scenario's text and where it came from.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn new(path: impl AsRef<Path>, text: impl Into<String>) -> Source {
        Source { path: path.as_ref().to_path_buf(), text: text.into() }
    }

    /// A diagnostic at a byte range of the text (or at no place).
    pub fn at(
        &self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        let message = message.into();
        let Some(span) = span else {
            return Diagnostic {
                file: self.path.clone(),
                line: 0,
                column: 0,
                message,
                hint,
                line_text: String::new(),
                caret_len: 0,
            };
        };
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..].find('\n').map_or(self.text.len(), |i| start + i);
        let line = self.text[..start].matches('\n').count() + 1;
        let column = self.text[line_start..start].chars().count() + 1;
        let end = span.end.clamp(start, line_end);
        Diagnostic {
            file: self.path.clone(),
            line,
            column,
            message,
            hint,
            line_text: self.text[line_start..line_end].trim_end_matches('\r').to_string(),
            caret_len: self.text[start..end].chars().count(),
        }
    }

    /// The byte range of the value at `path`, or of the deepest part of it that exists
    /// (so a missing key points at its table).
    pub fn locate(&self, path: &[Seg]) -> Option<Range<usize>> {
        let root = DeTable::parse(&self.text).ok()?;
        let mut span = None;
        let mut cur: Option<&DeValue<'_>> = None;
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        for seg in path {
            let next = match (seg, table, cur) {
                (Seg::Key(k), Some(t), _) => t.iter().find(|(key, _)| key.get_ref() == k).map(|(_, v)| v),
                (Seg::Index(i), _, Some(DeValue::Array(a))) => a.get(*i),
                _ => None,
            };
            let Some(v) = next else { break };
            span = Some(v.span());
            cur = Some(v.get_ref());
            table = match v.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        span
    }

    /// A diagnostic at the value of `path`.
    pub fn at_path(&self, path: &[Seg], message: impl Into<String>, hint: Option<String>) -> Diagnostic {
        self.at(self.locate(path), message, hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "name = \"x\"\n\n[[group]]\nname = \"a\"\n\n[[group]]\nname = \"b\"\n[group.publish]\nqos = 3\n";

    #[test]
    fn locates_nested_values_in_arrays_of_tables() {
        let s = Source::new("s.toml", TEXT);
        let d = s.at_path(&crate::path!["group", 1, "publish", "qos"], "bad qos", Some("0, 1 or 2".into()));
        assert_eq!((d.line, d.column), (9, 7));
        let shown = d.to_string();
        assert!(shown.contains("s.toml:9:7: bad qos"), "{shown}");
        assert!(shown.contains(" 9 | qos = 3"), "{shown}");
        assert!(shown.contains("hint: 0, 1 or 2"), "{shown}");
    }

    #[test]
    fn a_missing_key_points_at_its_table() {
        let s = Source::new("s.toml", TEXT);
        let d = s.at_path(&crate::path!["group", 0, "clients"], "missing", None);
        assert_eq!(d.line, 3, "{d}");
    }
}
