//! The `respond` handler: answers every request with a fixed status and body.
//!
//! ```kdl
//! respond "hello {client.cn}\n" status=200
//! ```
//!
//! * The one optional argument is the body, a [`Template`]: placeholders such
//!   as `{client.cn}`, `{host}` or `{path}` are filled per request; any other
//!   brace is literal text. Without it the body is empty. A body without
//!   placeholders is turned into bytes once, when the Edgefile is compiled.
//! * `status` (optional, default `200`) is the HTTP status, from 100 to 599.
//!   A status that cannot carry a body (1xx, 204, 304) cannot be given one.
//! * The answer is `Content-Type: text/plain; charset=utf-8` (except for those
//!   bodiless statuses, which get no `Content-Type`).
//!
//! `respond` is a terminal handler: it ends its route's chain.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use bytes::Bytes;
use edge_plugin_api::{
    empty, full, BoxFuture, BuildContext, BuildError, Directive, Handler, Kind, Next, Plugin, Registry, Request,
    RequestContext, Response, Template, TemplateError,
};
use http::{header, HeaderValue, StatusCode};

/// Registers the `respond` plugin.
pub fn register(registry: &mut Registry) {
    registry.register(Box::new(RespondPlugin));
}

/// The `respond` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct RespondPlugin;

/// What a `respond` handler answers with.
#[derive(Debug)]
enum Body {
    /// Fixed bytes, shared by every response.
    Static(Bytes),
    /// A template rendered per request.
    Template(Template),
}

/// A built `respond` handler.
#[derive(Debug)]
struct Respond {
    /// The status of every answer.
    status: StatusCode,
    /// The body of every answer (ignored for bodiless statuses).
    body: Body,
}

/// How the directive is written, the hint for mistakes that have none.
const USAGE: &str = "write it as `respond \"BODY\" status=200` (both optional; status from 100 to 599)";

/// `e`, with [`USAGE`] as its hint unless it has a better one.
fn with_usage(e: BuildError) -> BuildError {
    if e.hint.is_some() {
        e
    } else {
        e.with_hint(USAGE)
    }
}

/// Whether responses with `status` never carry a body.
fn is_bodiless(status: StatusCode) -> bool {
    status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

impl Plugin for RespondPlugin {
    fn name(&self) -> &'static str {
        "respond"
    }

    fn kind(&self) -> Kind {
        Kind::Terminal
    }

    fn build(&self, d: &Directive, _cx: &BuildContext) -> Result<Box<dyn Handler>, Vec<BuildError>> {
        d.check(0, 1, &["status"]).map_err(|errs| errs.into_iter().map(with_usage).collect::<Vec<_>>())?;
        let mut errs = Vec::new();
        let status = match d.status_prop("status", 100..=599) {
            Ok(s) => s.unwrap_or(StatusCode::OK),
            Err(e) => {
                errs.push(with_usage(e));
                StatusCode::OK
            }
        };
        let mut body = Body::Static(Bytes::new());
        if let Some(arg) = d.args.first() {
            match d.string_arg(0) {
                Err(e) => errs.push(with_usage(e)),
                Ok(text) => match Template::parse(text) {
                    Err(e) => errs.push(BuildError::new(arg.span, e.to_string()).with_hint(TemplateError::hint())),
                    Ok(_) if !text.is_empty() && is_bodiless(status) => errs.push(
                        BuildError::new(arg.span, format!("a {} response cannot have a body", status.as_u16()))
                            .with_hint("remove the body, or choose another status"),
                    ),
                    Ok(t) if t.is_static() => body = Body::Static(Bytes::copy_from_slice(text.as_bytes())),
                    Ok(t) => body = Body::Template(t),
                },
            }
        }
        if errs.is_empty() {
            Ok(Box::new(Respond { status, body }))
        } else {
            Err(errs)
        }
    }
}

impl Handler for Respond {
    fn handle<'a>(&'a self, _req: Request, cx: &'a RequestContext, _next: Next<'a>) -> BoxFuture<'a, Response> {
        let resp = if is_bodiless(self.status) {
            let mut resp = http::Response::new(empty());
            *resp.status_mut() = self.status;
            resp
        } else {
            let bytes = match &self.body {
                Body::Static(b) => b.clone(),
                Body::Template(t) => Bytes::from(t.render(cx)),
            };
            let mut resp = http::Response::new(full(bytes));
            *resp.status_mut() = self.status;
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            resp
        };
        Box::pin(std::future::ready(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_plugin_api::{empty, Arg, ClientIdentity, Prop, Proto, Span, Value};
    use http_body_util::BodyExt;
    use std::sync::Arc;

    fn span(offset: usize) -> Span {
        Span { offset, len: 1 }
    }

    fn directive(args: Vec<Value>, props: Vec<(&str, Value)>) -> Directive {
        Directive {
            name: "respond".into(),
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

    fn bcx() -> BuildContext {
        BuildContext { base_dir: std::env::temp_dir() }
    }

    fn rcx(client: Option<ClientIdentity>) -> RequestContext {
        RequestContext {
            site: Arc::from("app.localhost"),
            host: "app.localhost".into(),
            path: "/hello".into(),
            query: None,
            method: http::Method::GET,
            proto: Proto::H2,
            tls_version: "TLSv1.3",
            remote: "127.0.0.1:5555".parse().unwrap(),
            local: "127.0.0.1:8443".parse().unwrap(),
            client: client.map(Arc::new),
        }
    }

    fn build(d: &Directive) -> Result<Box<dyn Handler>, Vec<BuildError>> {
        RespondPlugin.build(d, &bcx())
    }

    async fn call(h: &dyn Handler, cx: &RequestContext) -> (StatusCode, http::HeaderMap, Bytes) {
        let req = http::Request::builder().uri("/hello").body(empty()).unwrap();
        let resp = h.handle(req, cx, Next::new(&[])).await;
        let (parts, body) = resp.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
    }

    #[test]
    fn registers_as_terminal() {
        let mut r = Registry::new();
        register(&mut r);
        assert_eq!(r.get("respond").map(|p| p.kind()), Some(Kind::Terminal));
    }

    #[tokio::test]
    async fn static_body_and_status() {
        let h = build(&directive(vec![Value::String("hi\n".into())], vec![("status", Value::Integer(201))])).unwrap();
        let (status, headers, body) = call(h.as_ref(), &rcx(None)).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(body, "hi\n");
    }

    #[tokio::test]
    async fn no_body_defaults_to_200_and_empty() {
        let h = build(&directive(vec![], vec![])).unwrap();
        let (status, _, body) = call(h.as_ref(), &rcx(None)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn template_body_is_rendered_per_request() {
        let h = build(&directive(vec![Value::String("hello {client.cn} on {host}{path}".into())], vec![])).unwrap();
        let id = ClientIdentity { cn: Some("alice".into()), ..Default::default() };
        let (_, _, body) = call(h.as_ref(), &rcx(Some(id))).await;
        assert_eq!(body, "hello alice on app.localhost/hello");
        let (_, _, body) = call(h.as_ref(), &rcx(None)).await;
        assert_eq!(body, "hello  on app.localhost/hello");
    }

    #[tokio::test]
    async fn no_content_has_no_body_nor_type() {
        let h = build(&directive(vec![], vec![("status", Value::Integer(204))])).unwrap();
        let (status, headers, body) = call(h.as_ref(), &rcx(None)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(headers.get(header::CONTENT_TYPE).is_none());
        assert!(body.is_empty());
    }

    fn one_error(d: Directive) -> BuildError {
        let errs = build(&d).err().unwrap();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let e = errs.into_iter().next().unwrap();
        assert!(e.hint.is_some(), "no hint: {e:?}");
        e
    }

    #[test]
    fn unknown_placeholder_points_at_the_body() {
        let e = one_error(directive(vec![Value::String("hi {client.nmae}".into())], vec![]));
        assert_eq!(e.span, span(10));
        assert!(e.message.contains("{client.nmae}"));
        assert!(e.hint.unwrap().contains("{client.cn}"));
    }

    #[test]
    fn bad_status_points_at_the_property() {
        for v in [Value::Integer(600), Value::Integer(99), Value::String("ok".into()), Value::Bool(true)] {
            let e = one_error(directive(vec![], vec![("status", v)]));
            assert_eq!(e.span, span(20));
        }
    }

    #[test]
    fn other_mistakes_are_reported() {
        let e = one_error(directive(vec![Value::Integer(1)], vec![]));
        assert_eq!(e.span, span(10));
        let e = one_error(directive(vec![], vec![("code", Value::Integer(200))]));
        assert_eq!(e.span, span(20));
        let e = one_error(directive(vec![Value::String("a".into()), Value::String("b".into())], vec![]));
        assert_eq!(e.span, span(11));
        let e = one_error(directive(vec![Value::String("body".into())], vec![("status", Value::Integer(304))]));
        assert_eq!(e.span, span(10));
    }
}
