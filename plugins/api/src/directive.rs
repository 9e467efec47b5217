//! A directive: one Edgefile node as a plugin sees it, with source spans.

use std::path::{Path, PathBuf};

/// A byte range in the Edgefile; the core turns it into LINE:COLUMN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Byte offset from the start of the file.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// A KDL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    String(String),
    /// An integer.
    Integer(i128),
    /// A floating-point number.
    Float(f64),
    /// `#true` or `#false`.
    Bool(bool),
    /// `#null`.
    Null,
}

impl Value {
    /// The KDL type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Bool(_) => "a boolean",
            Value::Null => "#null",
        }
    }
}

/// A positional argument.
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    /// Its value.
    pub value: Value,
    /// Where it stands.
    pub span: Span,
}

/// A property `name=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prop {
    /// The property's name.
    pub name: String,
    /// Its value.
    pub value: Value,
    /// Where it stands.
    pub span: Span,
}

/// One Edgefile node handed to [`crate::Plugin::build`].
#[derive(Debug, Clone, PartialEq)]
pub struct Directive {
    /// The node name (the plugin's name).
    pub name: String,
    /// Positional arguments in order.
    pub args: Vec<Arg>,
    /// Properties in order.
    pub props: Vec<Prop>,
    /// The whole node.
    pub span: Span,
    /// Whether the node has a `{ ... }` block (no built-in plugin takes one).
    pub has_children: bool,
}

/// A problem with a directive, pointing at the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// What to underline.
    pub span: Span,
    /// What is wrong, one line.
    pub message: String,
    /// How to fix it, if there is something useful to say.
    pub hint: Option<String>,
}

impl BuildError {
    /// An error at `span`.
    pub fn new(span: Span, message: impl Into<String>) -> Self {
        BuildError { span, message: message.into(), hint: None }
    }
    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// What a plugin may need from the Edgefile around it.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The Edgefile's folder: relative paths resolve against it.
    pub base_dir: PathBuf,
}

impl BuildContext {
    /// `path` resolved against the Edgefile's folder.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

impl Directive {
    /// Checks the shape: between `min` and `max` positional arguments, and no
    /// property outside `props`. Returns every problem found.
    pub fn check(&self, min: usize, max: usize, props: &[&str]) -> Result<(), Vec<BuildError>> {
        let mut errs = Vec::new();
        if self.args.len() < min {
            let want = if min == max { format!("{min}") } else { format!("at least {min}") };
            errs.push(
                BuildError::new(
                    self.span,
                    format!("`{}` takes {want} argument(s), found {}", self.name, self.args.len()),
                )
                .with_hint(format!("write it as `{}` followed by its arguments", self.name)),
            );
        }
        if self.args.len() > max {
            for a in &self.args[max..] {
                errs.push(BuildError::new(a.span, format!("`{}` takes at most {max} argument(s)", self.name)));
            }
        }
        for p in &self.props {
            if !props.contains(&p.name.as_str()) {
                let hint = if props.is_empty() {
                    format!("`{}` takes no properties", self.name)
                } else {
                    format!("`{}` takes: {}", self.name, props.join(", "))
                };
                errs.push(
                    BuildError::new(p.span, format!("unknown property `{}` on `{}`", p.name, self.name))
                        .with_hint(hint),
                );
            }
        }
        if self.has_children {
            errs.push(BuildError::new(self.span, format!("`{}` takes no `{{ ... }}` block", self.name)));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// The property `name`, if given.
    pub fn prop(&self, name: &str) -> Option<&Prop> {
        self.props.iter().rev().find(|p| p.name == name)
    }

    /// Positional argument `i` as a string.
    pub fn string_arg(&self, i: usize) -> Result<&str, BuildError> {
        match self.args.get(i) {
            Some(Arg { value: Value::String(s), .. }) => Ok(s),
            Some(a) => Err(BuildError::new(a.span, format!("expected a string, found {}", a.value.type_name()))
                .with_hint("quote it: \"...\"")),
            None => Err(BuildError::new(self.span, format!("`{}` needs argument {}", self.name, i + 1))),
        }
    }

    /// Every positional argument as a string.
    pub fn string_args(&self) -> Result<Vec<&str>, Vec<BuildError>> {
        let mut out = Vec::new();
        let mut errs = Vec::new();
        for i in 0..self.args.len() {
            match self.string_arg(i) {
                Ok(s) => out.push(s),
                Err(e) => errs.push(e),
            }
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(errs)
        }
    }

    /// The string property `name`, if given.
    pub fn string_prop(&self, name: &str) -> Result<Option<&str>, BuildError> {
        match self.prop(name) {
            None => Ok(None),
            Some(Prop { value: Value::String(s), .. }) => Ok(Some(s)),
            Some(p) => {
                Err(BuildError::new(p.span, format!("`{name}` must be a string, found {}", p.value.type_name())))
            }
        }
    }

    /// The property `status` (or another name) as an HTTP status in `range`.
    pub fn status_prop(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u16>,
    ) -> Result<Option<http::StatusCode>, BuildError> {
        let Some(p) = self.prop(name) else { return Ok(None) };
        let bad = || {
            BuildError::new(
                p.span,
                format!("`{name}` must be an HTTP status from {} to {}", range.start(), range.end()),
            )
        };
        match &p.value {
            Value::Integer(n) if (*range.start() as i128..=*range.end() as i128).contains(n) => {
                http::StatusCode::from_u16(*n as u16).map(Some).map_err(|_| bad())
            }
            Value::String(s) => match s.parse::<u16>() {
                Ok(n) if range.contains(&n) => http::StatusCode::from_u16(n).map(Some).map_err(|_| bad()),
                _ => Err(bad().with_hint(format!("write it as a number: {name}={}", range.start()))),
            },
            _ => Err(bad()),
        }
    }

    /// The property `name` as a duration (`90s`, `15m`, `24h`, `30d`).
    pub fn duration_prop(&self, name: &str) -> Result<Option<std::time::Duration>, BuildError> {
        let Some(p) = self.prop(name) else { return Ok(None) };
        match &p.value {
            Value::String(s) => crate::parse_duration(s).map(Some).map_err(|e| {
                BuildError::new(p.span, format!("`{name}`: {e}")).with_hint("durations look like 90s, 15m, 24h, 30d")
            }),
            v => Err(BuildError::new(p.span, format!("`{name}` must be a duration string, found {}", v.type_name()))
                .with_hint(format!("{name}=\"30s\""))),
        }
    }

    /// The property `name` as a boolean.
    pub fn bool_prop(&self, name: &str) -> Result<Option<bool>, BuildError> {
        match self.prop(name) {
            None => Ok(None),
            Some(Prop { value: Value::Bool(b), .. }) => Ok(Some(*b)),
            Some(p) => {
                Err(BuildError::new(p.span, format!("`{name}` must be #true or #false, found {}", p.value.type_name())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(args: Vec<Value>, props: Vec<(&str, Value)>) -> Directive {
        Directive {
            name: "x".into(),
            args: args.into_iter().map(|value| Arg { value, span: Span::default() }).collect(),
            props: props.into_iter().map(|(n, value)| Prop { name: n.into(), value, span: Span::default() }).collect(),
            span: Span::default(),
            has_children: false,
        }
    }

    #[test]
    fn check_reports_every_problem() {
        let dir = d(vec![], vec![("bogus", Value::Bool(true)), ("other", Value::Null)]);
        let errs = dir.check(1, 1, &["status"]).unwrap_err();
        assert_eq!(errs.len(), 3);
    }

    #[test]
    fn status_prop_accepts_integers_in_range_only() {
        let ok = d(vec![], vec![("status", Value::Integer(308))]);
        assert_eq!(ok.status_prop("status", 300..=399).unwrap(), Some(http::StatusCode::PERMANENT_REDIRECT));
        let bad = d(vec![], vec![("status", Value::Integer(200))]);
        assert!(bad.status_prop("status", 300..=399).is_err());
        let none = d(vec![], vec![]);
        assert_eq!(none.status_prop("status", 300..=399).unwrap(), None);
    }
}
