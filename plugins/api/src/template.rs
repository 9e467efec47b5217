//! Strings with placeholders (`hello {client.cn}`), parsed once when the
//! Edgefile is compiled and rendered per request without parsing again.

use crate::RequestContext;

/// A placeholder the contract defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    ClientCn,
    ClientOu,
    ClientSerial,
    ClientFingerprint,
    ClientSan,
    ClientNotAfter,
    Host,
    Path,
    Method,
    Proto,
    TlsVersion,
    Remote,
}

const VARS: &[(&str, Var)] = &[
    ("client.cn", Var::ClientCn),
    ("client.ou", Var::ClientOu),
    ("client.serial", Var::ClientSerial),
    ("client.fingerprint", Var::ClientFingerprint),
    ("client.san", Var::ClientSan),
    ("client.not-after", Var::ClientNotAfter),
    ("host", Var::Host),
    ("path", Var::Path),
    ("method", Var::Method),
    ("proto", Var::Proto),
    ("tls.version", Var::TlsVersion),
    ("remote", Var::Remote),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Var),
}

/// A parsed string with placeholders.
///
/// `{name}` where `name` is made of lowercase letters, digits, `.` and `-` is a
/// placeholder and must be one the contract defines; any other brace is
/// literal text (so JSON bodies need no escaping). An absent value (no client
/// certificate, say) renders as the empty string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// An unknown placeholder, with its byte offset in the string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// The offending placeholder as written, `{client.nmae}`.
    pub placeholder: String,
    /// Byte offset of its `{` in the template string.
    pub offset: usize,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown placeholder `{}`", self.placeholder)
    }
}

impl std::error::Error for TemplateError {}

impl TemplateError {
    /// The list of valid placeholders, for a hint.
    pub fn hint() -> String {
        let names: Vec<String> = VARS.iter().map(|(n, _)| format!("{{{n}}}")).collect();
        format!("placeholders are {}", names.join(" "))
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

impl Template {
    /// Parses `s`; fails on a placeholder the contract does not define.
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        let mut consumed = 0;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            match after.find('}') {
                Some(close) if is_name(&after[..close]) => {
                    let name = &after[..close];
                    let Some((_, var)) = VARS.iter().find(|(n, _)| *n == name) else {
                        return Err(TemplateError { placeholder: format!("{{{name}}}"), offset: consumed + open });
                    };
                    lit.push_str(&rest[..open]);
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var(*var));
                    let used = open + 1 + close + 1;
                    consumed += used;
                    rest = &rest[used..];
                }
                _ => {
                    lit.push_str(&rest[..=open]);
                    consumed += open + 1;
                    rest = &rest[open + 1..];
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    /// Whether the template holds no placeholder (so it renders to one fixed string).
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// Whether the template uses a `{client.*}` placeholder.
    pub fn uses_client(&self) -> bool {
        self.parts.iter().any(|p| {
            matches!(
                p,
                Part::Var(
                    Var::ClientCn
                        | Var::ClientOu
                        | Var::ClientSerial
                        | Var::ClientFingerprint
                        | Var::ClientSan
                        | Var::ClientNotAfter
                )
            )
        })
    }

    /// Renders for one request.
    pub fn render(&self, cx: &RequestContext) -> String {
        let mut out = String::new();
        self.render_into(cx, &mut out);
        out
    }

    /// Renders for one request, appending to `out`.
    pub fn render_into(&self, cx: &RequestContext, out: &mut String) {
        use std::fmt::Write;
        let client = cx.client.as_deref();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => match v {
                    Var::ClientCn => out.push_str(client.and_then(|c| c.cn.as_deref()).unwrap_or("")),
                    Var::ClientOu => {
                        if let Some(c) = client {
                            out.push_str(&c.ou_joined())
                        }
                    }
                    Var::ClientSerial => out.push_str(client.map(|c| c.serial.as_str()).unwrap_or("")),
                    Var::ClientFingerprint => out.push_str(client.map(|c| c.fingerprint.as_str()).unwrap_or("")),
                    Var::ClientSan => {
                        if let Some(c) = client {
                            out.push_str(&c.san_joined())
                        }
                    }
                    Var::ClientNotAfter => out.push_str(client.map(|c| c.not_after.as_str()).unwrap_or("")),
                    Var::Host => out.push_str(&cx.host),
                    Var::Path => out.push_str(&cx.path),
                    Var::Method => out.push_str(cx.method.as_str()),
                    Var::Proto => out.push_str(cx.proto.as_str()),
                    Var::TlsVersion => out.push_str(cx.tls_version),
                    Var::Remote => {
                        let _ = write!(out, "{}", cx.remote);
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientIdentity, Proto};
    use std::sync::Arc;

    fn cx(client: Option<ClientIdentity>) -> RequestContext {
        RequestContext {
            site: Arc::from("app.localhost"),
            host: "app.localhost".into(),
            path: "/a/b".into(),
            query: None,
            method: http::Method::GET,
            proto: Proto::H2,
            tls_version: "TLSv1.3",
            remote: "127.0.0.1:5555".parse().unwrap(),
            local: "127.0.0.1:8443".parse().unwrap(),
            client: client.map(Arc::new),
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let t = Template::parse(
            "{client.cn}|{client.ou}|{client.serial}|{client.fingerprint}|{client.san}|{client.not-after}|{host}|{path}|{method}|{proto}|{tls.version}|{remote}",
        )
        .unwrap();
        let id = ClientIdentity {
            cn: Some("alice".into()),
            ous: vec!["editors".into(), "ops".into()],
            serial: "0a1b".into(),
            fingerprint: "sha256:ff".into(),
            san_dns: vec!["a.example".into()],
            san_uri: vec!["spiffe://x/y".into()],
            not_after: "2026-12-05T00:00:00Z".into(),
            der: Default::default(),
        };
        assert_eq!(
            t.render(&cx(Some(id))),
            "alice|editors,ops|0a1b|sha256:ff|a.example,spiffe://x/y|2026-12-05T00:00:00Z|app.localhost|/a/b|GET|HTTP/2|TLSv1.3|127.0.0.1:5555"
        );
        assert_eq!(t.render(&cx(None)), "||||||app.localhost|/a/b|GET|HTTP/2|TLSv1.3|127.0.0.1:5555");
        assert!(t.uses_client());
    }

    #[test]
    fn braces_that_are_not_placeholders_are_literal() {
        let t = Template::parse(r#"{"ok": true, "host": "{host}"} {} {A}"#).unwrap();
        assert_eq!(t.render(&cx(None)), r#"{"ok": true, "host": "app.localhost"} {} {A}"#);
        assert!(Template::parse("plain").unwrap().is_static());
    }

    #[test]
    fn unknown_placeholder_is_an_error_with_offset() {
        let e = Template::parse("hi {client.nmae}").unwrap_err();
        assert_eq!(e.placeholder, "{client.nmae}");
        assert_eq!(e.offset, 3);
    }
}
