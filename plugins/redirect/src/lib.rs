//! The `redirect` handler: answers every request with a redirection.
//!
//! ```kdl
//! redirect "https://new.example{path}" status=308
//! ```
//!
//! * The argument is the target, a [`Template`] rendered per request into the
//!   `Location` header (placeholders such as `{host}` and `{path}`; any other
//!   brace is literal). It must be an absolute URL (`https://...`) or a path
//!   on this site: starting with `/` or with `{path}` (which starts with `/`).
//!   A path target that renders into `//...` (another host) is refused with a
//!   500 rather than sent.
//! * The request's query string is kept when the target contains `{path}` and
//!   no `?` of its own: `?QUERY` is appended (before a `#fragment`, if the
//!   target has one). A target with its own `?`, or without `{path}`, is sent
//!   as written.
//! * `status` (optional, default `308`) is from 300 to 399. `308` and `307`
//!   keep the method and body; `301` and `302` let clients turn a POST into a
//!   GET.
//!
//! The answer has an empty body. A target without placeholders is checked and
//! turned into a header value once, when the Edgefile is compiled.
//!
//! `redirect` is a terminal handler: it ends its route's chain.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use edge_plugin_api::{
    empty, error_response, BoxFuture, BuildContext, BuildError, Directive, Handler, Kind, Next, Plugin, Registry,
    Request, RequestContext, Response, Template, TemplateError,
};
use http::{header, HeaderValue, StatusCode};

/// Registers the `redirect` plugin.
pub fn register(registry: &mut Registry) {
    registry.register(Box::new(RedirectPlugin));
}

/// The `redirect` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedirectPlugin;

/// How the directive is written, the hint for mistakes that have none.
const USAGE: &str = "write it as `redirect \"https://new.example{path}\" status=308` (status from 300 to 399)";

/// `e`, with [`USAGE`] as its hint unless it has a better one.
fn with_usage(e: BuildError) -> BuildError {
    if e.hint.is_some() {
        e
    } else {
        e.with_hint(USAGE)
    }
}

/// Where a `redirect` handler sends clients.
#[derive(Debug)]
enum Target {
    /// One fixed `Location`.
    Static(HeaderValue),
    /// A `Location` rendered per request.
    Template(Template),
}

/// A built `redirect` handler.
#[derive(Debug)]
struct Redirect {
    /// The status of every answer.
    status: StatusCode,
    /// Where to send clients.
    target: Target,
    /// Whether to append the request's `?query` to the rendered target.
    keep_query: bool,
    /// Whether the target is a path on this site (so must not render as `//host`).
    local: bool,
}

/// Whether `s` starts with a URI scheme and `:` (`https:`, `mailto:`).
fn has_scheme(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else { return false };
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

impl Plugin for RedirectPlugin {
    fn name(&self) -> &'static str {
        "redirect"
    }

    fn kind(&self) -> Kind {
        Kind::Terminal
    }

    fn build(&self, d: &Directive, _cx: &BuildContext) -> Result<Box<dyn Handler>, Vec<BuildError>> {
        d.check(1, 1, &["status"]).map_err(|errs| errs.into_iter().map(with_usage).collect::<Vec<_>>())?;
        let mut errs = Vec::new();
        let status = match d.status_prop("status", 300..=399) {
            Ok(s) => s.unwrap_or(StatusCode::PERMANENT_REDIRECT),
            Err(e) => {
                errs.push(with_usage(e));
                StatusCode::PERMANENT_REDIRECT
            }
        };
        let redirect = match d.string_arg(0) {
            Err(e) => {
                errs.push(with_usage(e));
                None
            }
            Ok(raw) => build_target(raw, d.args[0].span, status).map_err(|e| errs.push(e)).ok(),
        };
        match redirect {
            Some(redirect) if errs.is_empty() => Ok(Box::new(redirect)),
            _ => Err(errs),
        }
    }
}

/// Parses and checks the target written at `span`, into a handler answering `status`.
fn build_target(raw: &str, span: edge_plugin_api::Span, status: StatusCode) -> Result<Redirect, BuildError> {
    let template =
        Template::parse(raw).map_err(|e| BuildError::new(span, e.to_string()).with_hint(TemplateError::hint()))?;
    if raw.starts_with("/{path}") {
        return Err(BuildError::new(span, "redirect target `/{path}` renders as `//...`, another host")
            .with_hint(format!("`{{path}}` already starts with `/`: write `{}`", &raw[1..])));
    }
    let local = raw.starts_with("{path}") || (raw.starts_with('/') && !raw.starts_with("//"));
    if !(local || raw.starts_with('/') || has_scheme(raw)) {
        let hint = if raw.starts_with('{') {
            format!("a relative target is resolved against the request's URL; write `https://{raw}`")
        } else if raw.is_empty() {
            "write the URL to send clients to, e.g. `https://new.example{path}`".to_string()
        } else {
            format!("write `https://{raw}` for another host, or `/{raw}` for a path on this one")
        };
        return Err(BuildError::new(span, format!("redirect target `{raw}` is neither an absolute URL nor a path"))
            .with_hint(hint));
    }
    // An unknown placeholder fails above, so `{path}` can only be the placeholder.
    let keep_query = raw.contains("{path}") && !raw.contains('?');
    let target = if template.is_static() {
        let value = HeaderValue::from_str(raw).map_err(|_| {
            BuildError::new(span, "invalid redirect target")
                .with_hint("a URL cannot hold control characters such as newlines; percent-encode them")
        })?;
        Target::Static(value)
    } else {
        Target::Template(template)
    };
    Ok(Redirect { status, target, keep_query, local })
}

impl Redirect {
    /// The `Location` for one request.
    fn location(&self, cx: &RequestContext) -> Option<HeaderValue> {
        let query = cx.query.as_deref().filter(|q| self.keep_query && !q.is_empty());
        match (&self.target, query) {
            (Target::Static(v), None) => Some(v.clone()),
            (target, query) => {
                let mut s = match target {
                    Target::Static(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    Target::Template(t) => t.render(cx),
                };
                if let Some(q) = query {
                    let at = s.find('#').unwrap_or(s.len());
                    s.insert_str(at, &format!("?{q}"));
                }
                if self.local && (s.starts_with("//") || s.starts_with("/\\")) {
                    return None;
                }
                HeaderValue::from_str(&s).ok()
            }
        }
    }
}

impl Handler for Redirect {
    fn handle<'a>(&'a self, _req: Request, cx: &'a RequestContext, _next: Next<'a>) -> BoxFuture<'a, Response> {
        let resp = match self.location(cx) {
            Some(location) => {
                let mut resp = http::Response::new(empty());
                *resp.status_mut() = self.status;
                resp.headers_mut().insert(header::LOCATION, location);
                resp
            }
            None => error_response(StatusCode::INTERNAL_SERVER_ERROR, "redirect target is not a valid URL"),
        };
        Box::pin(std::future::ready(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_plugin_api::{Arg, ClientIdentity, Prop, Proto, Span, Value};
    use http_body_util::BodyExt;
    use std::sync::Arc;

    fn span(offset: usize) -> Span {
        Span { offset, len: 1 }
    }

    fn directive(args: Vec<Value>, props: Vec<(&str, Value)>) -> Directive {
        Directive {
            name: "redirect".into(),
            args: args.into_iter().enumerate().map(|(i, value)| Arg { value, span: span(10 + i) }).collect(),
            props: props
                .into_iter()
                .enumerate()
                .map(|(i, (n, value))| Prop { name: n.into(), value, span: span(20 + i) })
                .collect(),
            span: span(0),
            has_children: false,
        }
    }

    fn build(target: &str, props: Vec<(&str, Value)>) -> Result<Box<dyn Handler>, Vec<BuildError>> {
        RedirectPlugin.build(
            &directive(vec![Value::String(target.into())], props),
            &BuildContext { base_dir: std::env::temp_dir() },
        )
    }

    fn rcx(path: &str, query: Option<&str>, cn: Option<&str>) -> RequestContext {
        RequestContext {
            site: Arc::from("old.example"),
            host: "old.example".into(),
            path: path.into(),
            query: query.map(String::from),
            method: http::Method::POST,
            proto: Proto::Http11,
            tls_version: "TLSv1.3",
            remote: "127.0.0.1:5555".parse().unwrap(),
            local: "127.0.0.1:8443".parse().unwrap(),
            client: cn.map(|cn| Arc::new(ClientIdentity { cn: Some(cn.into()), ..Default::default() })),
        }
    }

    async fn call(h: &dyn Handler, cx: &RequestContext) -> (StatusCode, Option<String>, usize) {
        let req = http::Request::builder().method("POST").uri("/x").body(empty()).unwrap();
        let (parts, body) = h.handle(req, cx, Next::new(&[])).await.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let location = parts.headers.get(header::LOCATION).map(|v| v.to_str().unwrap().to_string());
        (parts.status, location, body.len())
    }

    #[test]
    fn registers_as_terminal() {
        let mut r = Registry::new();
        register(&mut r);
        assert_eq!(r.get("redirect").map(|p| p.kind()), Some(Kind::Terminal));
    }

    #[tokio::test]
    async fn path_and_query_are_carried_over() {
        let h = build("https://new.example{path}", vec![]).unwrap();
        let (status, location, body) = call(h.as_ref(), &rcx("/a/b", Some("x=1&y"), None)).await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(location.as_deref(), Some("https://new.example/a/b?x=1&y"));
        assert_eq!(body, 0);
        let (_, location, _) = call(h.as_ref(), &rcx("/a", None, None)).await;
        assert_eq!(location.as_deref(), Some("https://new.example/a"));
    }

    #[tokio::test]
    async fn query_is_not_appended_when_target_has_one_or_no_path() {
        let h = build("https://new.example{path}?from=old", vec![("status", Value::Integer(301))]).unwrap();
        let (status, location, _) = call(h.as_ref(), &rcx("/a", Some("x=1"), None)).await;
        assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(location.as_deref(), Some("https://new.example/a?from=old"));
        let h = build("/login", vec![("status", Value::Integer(302))]).unwrap();
        let (status, location, _) = call(h.as_ref(), &rcx("/a", Some("x=1"), None)).await;
        assert_eq!(status, StatusCode::FOUND);
        assert_eq!(location.as_deref(), Some("/login"));
    }

    #[tokio::test]
    async fn query_goes_before_a_fragment_and_placeholders_render() {
        let h = build("https://{host}.new{path}#top", vec![]).unwrap();
        let (_, location, _) = call(h.as_ref(), &rcx("/a", Some("q"), None)).await;
        assert_eq!(location.as_deref(), Some("https://old.example.new/a?q#top"));
        let h = build("{path}/", vec![]).unwrap();
        let (_, location, _) = call(h.as_ref(), &rcx("/a", Some("q"), None)).await;
        assert_eq!(location.as_deref(), Some("/a/?q"));
        let h = build("/users/{client.cn}", vec![]).unwrap();
        let (_, location, _) = call(h.as_ref(), &rcx("/", Some("q"), Some("alice"))).await;
        assert_eq!(location.as_deref(), Some("/users/alice"));
        // A rendered target that is no valid header value is a 500, not a broken header.
        let (status, location, _) = call(h.as_ref(), &rcx("/", None, Some("a\nb"))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(location, None);
        // A path target never sends clients to another host.
        let h = build("/{client.cn}", vec![]).unwrap();
        let (status, location, _) = call(h.as_ref(), &rcx("/", None, Some("/evil.example"))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(location, None);
    }

    fn one_error(d: Directive) -> BuildError {
        let errs = RedirectPlugin.build(&d, &BuildContext { base_dir: std::env::temp_dir() }).err().unwrap();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let e = errs.into_iter().next().unwrap();
        assert!(e.hint.is_some(), "no hint: {e:?}");
        e
    }

    #[test]
    fn bad_directives_point_at_the_offending_part() {
        let s = |t: &str| vec![Value::String(t.into())];
        let e = one_error(directive(s("https://x{pth}"), vec![]));
        assert_eq!(e.span, span(10));
        assert!(e.hint.unwrap().contains("{path}"));
        assert_eq!(one_error(directive(s("new.example{path}"), vec![])).span, span(10));
        assert_eq!(one_error(directive(s("{host}{path}"), vec![])).span, span(10));
        assert_eq!(one_error(directive(s(""), vec![])).span, span(10));
        assert_eq!(one_error(directive(s("/{path}"), vec![])).span, span(10));
        assert_eq!(one_error(directive(s("/a\nb"), vec![])).span, span(10));
        assert_eq!(one_error(directive(s("/"), vec![("status", Value::Integer(200))])).span, span(20));
        assert_eq!(one_error(directive(s("/"), vec![("status", Value::Integer(400))])).span, span(20));
        assert_eq!(one_error(directive(s("/"), vec![("code", Value::Integer(301))])).span, span(20));
        assert_eq!(one_error(directive(vec![], vec![])).span, span(0));
        assert_eq!(one_error(directive(vec![Value::Integer(3)], vec![])).span, span(10));
    }
}
