//! The `header` middleware: sets or removes a header on the response.
//!
//! ```kdl
//! header "Strict-Transport-Security" "max-age=63072000"
//! header "X-Client" "{client.cn}"
//! header "-Server"
//! ```
//!
//! * `header "NAME" "VALUE"` sets `NAME` to `VALUE` on the way back, replacing
//!   every value the response already had for it. `VALUE` is a [`Template`]:
//!   placeholders (`{client.cn}`, `{host}`, ...) are filled per request; any
//!   other brace is literal. A value without placeholders is checked and turned
//!   into a header value once, when the Edgefile is compiled; a rendered value
//!   that is not a valid header value (a control character) removes the header
//!   instead of setting it.
//! * `header "-NAME"` removes every `NAME` header from the response.
//!
//! Header names are checked when the Edgefile is compiled and are
//! case-insensitive. `Content-Length` and `Transfer-Encoding` cannot be set or
//! removed: edge frames the body itself.
//!
//! `header` is a middleware: it passes the request on unchanged, then edits
//! whatever the rest of the route answers (errors included). Several `header`
//! directives apply in reverse order of writing on the way back, so for the
//! same name the first one written wins.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use edge_plugin_api::{
    BoxFuture, BuildContext, BuildError, Directive, Handler, Kind, Next, Plugin, Registry, Request, RequestContext,
    Response, Template, TemplateError,
};
use http::{header, HeaderName, HeaderValue};

/// Registers the `header` plugin.
pub fn register(registry: &mut Registry) {
    registry.register(Box::new(HeaderPlugin));
}

/// The `header` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderPlugin;

/// How the directive is written, the hint for mistakes that have none.
const USAGE: &str = "write it as `header \"NAME\" \"VALUE\"` to set a header or `header \"-NAME\"` to remove one";

/// `e`, with [`USAGE`] as its hint unless it has a better one.
fn with_usage(e: BuildError) -> BuildError {
    if e.hint.is_some() {
        e
    } else {
        e.with_hint(USAGE)
    }
}

/// What to do with the header.
#[derive(Debug)]
enum Action {
    /// Set it to one fixed value.
    SetStatic(HeaderValue),
    /// Set it to a value rendered per request.
    SetTemplate(Template),
    /// Remove it.
    Remove,
}

/// A built `header` handler.
#[derive(Debug)]
struct SetHeader {
    /// The header to change.
    name: HeaderName,
    /// What to do with it.
    action: Action,
}

impl Plugin for HeaderPlugin {
    fn name(&self) -> &'static str {
        "header"
    }

    fn kind(&self) -> Kind {
        Kind::Middleware
    }

    fn build(&self, d: &Directive, _cx: &BuildContext) -> Result<Box<dyn Handler>, Vec<BuildError>> {
        d.check(1, 2, &[]).map_err(|errs| errs.into_iter().map(with_usage).collect::<Vec<_>>())?;
        let args = d.string_args().map_err(|errs| errs.into_iter().map(with_usage).collect::<Vec<_>>())?;
        let (raw_name, value) = match args.as_slice() {
            [name] => (*name, None),
            [name, value] => (*name, Some(*value)),
            _ => return Err(vec![with_usage(BuildError::new(d.span, "`header` takes 1 or 2 arguments"))]),
        };
        let name_span = d.args[0].span;
        let (remove, name_text) = match raw_name.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, raw_name),
        };
        let mut errs = Vec::new();
        let name = match HeaderName::from_bytes(name_text.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                let msg = if name_text.is_empty() {
                    "empty header name".to_string()
                } else {
                    format!("`{name_text}` is not a valid header name")
                };
                errs.push(BuildError::new(name_span, msg).with_hint(
                    "header names are made of letters, digits and `-` (e.g. X-Frame-Options); write `-NAME` to remove one",
                ));
                None
            }
        };
        if let Some(n) = &name {
            if n == header::CONTENT_LENGTH || n == header::TRANSFER_ENCODING {
                errs.push(
                    BuildError::new(name_span, format!("`{n}` cannot be changed by `header`"))
                        .with_hint("edge sets it from the body it sends"),
                );
            }
        }
        let action = match (remove, value) {
            (true, None) => Some(Action::Remove),
            (true, Some(_)) => {
                errs.push(
                    BuildError::new(d.args[1].span, "removing a header takes no value")
                        .with_hint(format!("write `header \"-{name_text}\"` alone, or drop the `-` to set it")),
                );
                None
            }
            (false, None) => {
                errs.push(BuildError::new(d.span, format!("`header \"{raw_name}\"` needs a value")).with_hint(
                    format!("write `header \"{raw_name}\" \"VALUE\"`, or `header \"-{raw_name}\"` to remove it"),
                ));
                None
            }
            (false, Some(v)) => {
                let value_span = d.args[1].span;
                match Template::parse(v) {
                    Err(e) => {
                        errs.push(BuildError::new(value_span, e.to_string()).with_hint(TemplateError::hint()));
                        None
                    }
                    Ok(t) if t.is_static() => match HeaderValue::from_str(v) {
                        Ok(hv) => Some(Action::SetStatic(hv)),
                        Err(_) => {
                            errs.push(
                                BuildError::new(value_span, "invalid header value")
                                    .with_hint("header values cannot hold control characters such as newlines"),
                            );
                            None
                        }
                    },
                    Ok(t) => Some(Action::SetTemplate(t)),
                }
            }
        };
        match (name, action) {
            (Some(name), Some(action)) if errs.is_empty() => Ok(Box::new(SetHeader { name, action })),
            _ => Err(errs),
        }
    }
}

impl Handler for SetHeader {
    fn handle<'a>(&'a self, req: Request, cx: &'a RequestContext, next: Next<'a>) -> BoxFuture<'a, Response> {
        Box::pin(async move {
            let mut resp = next.run(req, cx).await;
            let headers = resp.headers_mut();
            match &self.action {
                Action::SetStatic(v) => {
                    headers.insert(self.name.clone(), v.clone());
                }
                Action::SetTemplate(t) => match HeaderValue::from_str(&t.render(cx)) {
                    Ok(v) => {
                        headers.insert(self.name.clone(), v);
                    }
                    Err(_) => {
                        headers.remove(&self.name);
                    }
                },
                Action::Remove => {
                    headers.remove(&self.name);
                }
            }
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_plugin_api::{empty, text_response, Arg, ClientIdentity, Proto, Span, Value};
    use http_body_util::BodyExt;
    use std::sync::Arc;

    fn span(offset: usize) -> Span {
        Span { offset, len: 1 }
    }

    fn directive(args: &[&str]) -> Directive {
        Directive {
            name: "header".into(),
            args: args
                .iter()
                .enumerate()
                .map(|(i, s)| Arg { value: Value::String((*s).into()), span: span(10 + i) })
                .collect(),
            props: vec![],
            span: span(0),
            has_children: false,
        }
    }

    fn build(d: &Directive) -> Result<Box<dyn Handler>, Vec<BuildError>> {
        HeaderPlugin.build(d, &BuildContext { base_dir: std::env::temp_dir() })
    }

    fn rcx(cn: Option<&str>) -> RequestContext {
        RequestContext {
            site: Arc::from("app.localhost"),
            host: "app.localhost".into(),
            path: "/".into(),
            query: None,
            method: http::Method::GET,
            proto: Proto::Http11,
            tls_version: "TLSv1.3",
            remote: "127.0.0.1:5555".parse().unwrap(),
            local: "127.0.0.1:8443".parse().unwrap(),
            client: cn.map(|cn| Arc::new(ClientIdentity { cn: Some(cn.into()), ..Default::default() })),
        }
    }

    /// The end of the chain: answers "inner" with a `Server` and two `X-Multi` headers.
    struct Inner;
    impl Handler for Inner {
        fn handle<'a>(&'a self, _req: Request, _cx: &'a RequestContext, _next: Next<'a>) -> BoxFuture<'a, Response> {
            let mut resp = text_response(http::StatusCode::IM_A_TEAPOT, "inner");
            resp.headers_mut().insert("server", HeaderValue::from_static("upstream"));
            resp.headers_mut().append("x-multi", HeaderValue::from_static("1"));
            resp.headers_mut().append("x-multi", HeaderValue::from_static("2"));
            Box::pin(std::future::ready(resp))
        }
    }

    async fn run(handlers: Vec<Box<dyn Handler>>, cx: &RequestContext) -> (http::StatusCode, http::HeaderMap, String) {
        let mut chain = handlers;
        chain.push(Box::new(Inner));
        let req = http::Request::builder().uri("/").body(empty()).unwrap();
        let resp = Next::new(&chain).run(req, cx).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn registers_as_middleware() {
        let mut r = Registry::new();
        register(&mut r);
        assert_eq!(r.get("header").map(|p| p.kind()), Some(Kind::Middleware));
    }

    #[tokio::test]
    async fn sets_replaces_and_removes() {
        let chain = vec![
            build(&directive(&["X-Frame-Options", "DENY"])).unwrap(),
            build(&directive(&["X-Multi", "only"])).unwrap(),
            build(&directive(&["-server"])).unwrap(),
            build(&directive(&["-X-Absent"])).unwrap(),
        ];
        let (status, headers, body) = run(chain, &rcx(None)).await;
        assert_eq!(status, http::StatusCode::IM_A_TEAPOT);
        assert_eq!(body, "inner");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers.get_all("x-multi").iter().collect::<Vec<_>>(), vec!["only"]);
        assert!(headers.get("server").is_none());
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    }

    #[tokio::test]
    async fn template_values_are_rendered_per_request() {
        let h = || vec![build(&directive(&["X-Client", "cn={client.cn} host={host}"])).unwrap()];
        let (_, headers, _) = run(h(), &rcx(Some("alice"))).await;
        assert_eq!(headers["x-client"], "cn=alice host=app.localhost");
        let (_, headers, _) = run(h(), &rcx(None)).await;
        assert_eq!(headers["x-client"], "cn= host=app.localhost");
        // A rendered value that is no valid header value removes the header.
        let (_, headers, _) =
            run(vec![build(&directive(&["Server", "{client.cn}"])).unwrap()], &rcx(Some("a\nb"))).await;
        assert!(headers.get("server").is_none());
    }

    fn one_error(args: &[&str]) -> BuildError {
        let errs = build(&directive(args)).err().unwrap();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let e = errs.into_iter().next().unwrap();
        assert!(e.hint.is_some(), "no hint: {e:?}");
        e
    }

    #[test]
    fn bad_directives_point_at_the_offending_argument() {
        assert_eq!(one_error(&["Bad Name", "x"]).span, span(10));
        assert_eq!(one_error(&["-"]).span, span(10));
        assert_eq!(one_error(&["X-A", "line\nbreak"]).span, span(11));
        let e = one_error(&["X-A", "{client.nmae}"]);
        assert_eq!(e.span, span(11));
        assert!(e.hint.unwrap().contains("{client.cn}"));
        assert_eq!(one_error(&["-X-A", "value"]).span, span(11));
        assert_eq!(one_error(&["X-A"]).span, span(0));
        assert_eq!(one_error(&["Content-Length", "5"]).span, span(10));
        assert_eq!(one_error(&[]).span, span(0));
        assert_eq!(one_error(&["a", "b", "c"]).span, span(12));
        let mut d = directive(&["X-A", "b"]);
        d.args[1].value = Value::Integer(3);
        let errs = build(&d).err().unwrap();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].span, span(11));
        assert!(errs[0].hint.is_some());
    }
}
