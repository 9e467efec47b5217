//! The Edgefile: KDL 2.0 text -> typed [`Model`] with source spans, and the
//! diagnostics that name FILE:LINE:COLUMN.
//!
//! Parsing never stops at the first problem: every node is checked and every
//! problem is collected, so one `edge validate` shows them all.

mod layout;
mod model;
mod parse;

pub use model::*;
pub use parse::{parse, parse_partial};

use edge_plugin_api::Span;
use std::fmt;
use std::path::{Path, PathBuf};

/// The text of an Edgefile with its name, to turn byte offsets into
/// LINE:COLUMN.
#[derive(Debug, Clone)]
pub struct Source {
    /// The path as given by the user.
    pub path: PathBuf,
    /// The text.
    pub text: String,
    line_starts: Vec<usize>,
}

impl Source {
    /// Wraps `text` read from `path`.
    pub fn new(path: impl Into<PathBuf>, text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source { path: path.into(), text, line_starts }
    }

    /// Reads `path`; an unreadable file is a diagnostic at 1:1.
    pub fn read(path: &Path) -> Result<Self, Diagnostic> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Source::new(path, text)),
            Err(e) => Err(Diagnostic {
                file: path.to_path_buf(),
                line: 1,
                column: 1,
                message: format!("cannot read the Edgefile: {}", crate::util::io_reason(&e)),
                hint: Some("pass another file with --config FILE".into()),
            }),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let mut end = offset;
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        (line + 1, self.text[start..end].chars().count() + 1)
    }

    /// A diagnostic at `span`.
    pub fn diag(&self, span: Span, message: impl Into<String>, hint: Option<String>) -> Diagnostic {
        let (line, column) = self.line_col(span.offset);
        Diagnostic { file: self.path.clone(), line, column, message: message.into(), hint }
    }
}

/// One problem with an Edgefile, at a place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The Edgefile.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE:COLUMN: error: MESSAGE (hint: HINT)`, on one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: error: {}", self.file.display(), self.line, self.column, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Every diagnostic, one per line.
pub fn render(diags: &[Diagnostic]) -> String {
    let mut s = String::new();
    for d in diags {
        s.push_str(&d.to_string());
        s.push('\n');
    }
    s
}

/// `edge fmt`: the canonical form of an Edgefile (comments kept).
pub fn format(source: &Source) -> Result<String, Vec<Diagnostic>> {
    parse::parse_kdl(source)?;
    Ok(layout::canonical(&source.text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let s = Source::new("E", "ab\nçd e\n".into());
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(3), (2, 1));
        assert_eq!(s.line_col(6), (2, 3));
        assert_eq!(s.line_col(100), (3, 1));
    }

    #[test]
    fn diagnostic_is_one_line() {
        let s = Source::new("dir/Edgefile", "x\n  y\n".into());
        let d = s.diag(Span { offset: 4, len: 1 }, "bad", Some("fix it".into()));
        assert_eq!(d.to_string(), "dir/Edgefile:2:3: error: bad (hint: fix it)");
    }
}
