//! The plugin API of edge.
//!
//! Every handler an Edgefile names inside a `route` (`respond`, `header`,
//! `reverse-proxy`, `file-server`, `redirect`, ...) is a [`Plugin`] registered
//! by name in a [`Registry`]. The core of edge knows no handler by name: when it
//! compiles an Edgefile it looks each route directive up in the registry, hands
//! the parsed node to [`Plugin::build`] as a [`Directive`], and keeps the
//! returned [`Handler`] in the route's chain.
//!
//! A route's chain is its middleware (in the order written) followed by its one
//! terminal handler. A middleware calls [`Next::run`] to pass the request on and
//! may change the response on the way back; a terminal handler answers.
//!
//! Handlers never fail: an error is already a [`Response`] (see
//! [`error_response`]). Configuration problems are found in [`Plugin::build`]
//! and reported as [`BuildError`]s that point at the offending part of the node,
//! so that `edge validate` names FILE:LINE:COLUMN.
//!
//! ```
//! use edge_plugin_api::*;
//!
//! struct Hello;
//! impl Handler for Hello {
//!     fn handle<'a>(&'a self, _req: Request, cx: &'a RequestContext, _next: Next<'a>) -> BoxFuture<'a, Response> {
//!         let body = format!("hello {}\n", cx.host);
//!         Box::pin(async move { text_response(http::StatusCode::OK, body) })
//!     }
//! }
//!
//! struct HelloPlugin;
//! impl Plugin for HelloPlugin {
//!     fn name(&self) -> &'static str { "hello" }
//!     fn kind(&self) -> Kind { Kind::Terminal }
//!     fn build(&self, d: &Directive, _cx: &BuildContext) -> Result<Box<dyn Handler>, Vec<BuildError>> {
//!         d.check(0, 0, &[])?;
//!         Ok(Box::new(Hello))
//!     }
//! }
//!
//! let mut registry = Registry::new();
//! registry.register(Box::new(HelloPlugin));
//! assert!(registry.get("hello").is_some());
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod directive;
mod template;
mod units;

pub use directive::{Arg, BuildContext, BuildError, Directive, Prop, Span, Value};
pub use template::{Template, TemplateError};
pub use units::{parse_duration, parse_size};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// The error type carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every request and response a handler sees: streamed, boxed.
pub type Body = BoxBody<Bytes, BoxError>;
/// A request as handlers see it.
pub type Request = http::Request<Body>;
/// A response as handlers return it.
pub type Response = http::Response<Body>;
/// A boxed future, as returned by [`Handler::handle`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A body holding `bytes` in one piece.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A `text/plain` response with `body` as it is.
pub fn text_response(status: http::StatusCode, body: impl Into<Bytes>) -> Response {
    let mut resp = http::Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// An error answer: `status` with a one-line plain-text `reason`.
pub fn error_response(status: http::StatusCode, reason: &str) -> Response {
    let mut line = String::with_capacity(reason.len() + 1);
    line.push_str(reason.lines().next().unwrap_or(""));
    line.push('\n');
    text_response(status, line)
}

/// The error a request body yields when it grows past the route's `max-body`.
/// A handler that reads the body and meets it should answer 413.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body too large")
    }
}
impl std::error::Error for BodyTooLarge {}

/// Whether `err` (or any error it wraps) is [`BodyTooLarge`].
pub fn is_body_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<BodyTooLarge>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The HTTP version a request arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
    /// HTTP/2
    H2,
    /// HTTP/3
    H3,
}

impl Proto {
    /// The form `{proto}` renders: `HTTP/1.0`, `HTTP/1.1`, `HTTP/2` or `HTTP/3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Http10 => "HTTP/1.0",
            Proto::Http11 => "HTTP/1.1",
            Proto::H2 => "HTTP/2",
            Proto::H3 => "HTTP/3",
        }
    }
}

/// The identity of a client, read once per connection from its verified
/// certificate. Formats follow the contract: serial in lowercase hex without
/// separators, fingerprint `sha256:` + lowercase hex of the DER leaf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject's common name, if any.
    pub cn: Option<String>,
    /// The subject's organisational units, in order.
    pub ous: Vec<String>,
    /// The serial number, lowercase hex, no separators.
    pub serial: String,
    /// `sha256:` followed by the lowercase hex SHA-256 of the DER leaf.
    pub fingerprint: String,
    /// DNS subject alternative names.
    pub san_dns: Vec<String>,
    /// URI subject alternative names.
    pub san_uri: Vec<String>,
    /// The end of validity, RFC 3339 (`2026-12-05T20:31:00Z`).
    pub not_after: String,
    /// The DER of the leaf certificate (for RFC 9440 `Client-Cert`).
    pub der: Bytes,
}

impl ClientIdentity {
    /// Organisational units joined by `,` (the `{client.ou}` form).
    pub fn ou_joined(&self) -> String {
        self.ous.join(",")
    }
    /// All SANs (DNS, then URI) joined by `,` (the `{client.san}` form).
    pub fn san_joined(&self) -> String {
        let mut all: Vec<&str> = self.san_dns.iter().map(String::as_str).collect();
        all.extend(self.san_uri.iter().map(String::as_str));
        all.join(",")
    }
}

/// What the core knows about a request beyond the request itself.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The site's first configured name.
    pub site: Arc<str>,
    /// The host the client asked for (Host or :authority without the port; the
    /// SNI or the site name when the request has none), lowercase.
    pub host: String,
    /// The normalised path: percent-decoded unreserved characters, `.` and
    /// `..` resolved, repeated slashes collapsed. Routing used this path.
    pub path: String,
    /// The query string, without `?`, if any.
    pub query: Option<String>,
    /// The request method.
    pub method: http::Method,
    /// The HTTP version.
    pub proto: Proto,
    /// `TLSv1.2` or `TLSv1.3`.
    pub tls_version: &'static str,
    /// The client's address.
    pub remote: SocketAddr,
    /// The address the connection arrived on.
    pub local: SocketAddr,
    /// The verified client certificate's identity, if one was presented.
    pub client: Option<Arc<ClientIdentity>>,
}

/// Whether a plugin answers requests or wraps the handlers after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Runs before the terminal handler and calls [`Next::run`].
    Middleware,
    /// Answers the request; a route has exactly one.
    Terminal,
}

/// A request handler built from one Edgefile directive.
pub trait Handler: Send + Sync + 'static {
    /// Answers `req`, or (a middleware) passes it to `next` and returns what it
    /// answers, possibly changed.
    fn handle<'a>(&'a self, req: Request, cx: &'a RequestContext, next: Next<'a>) -> BoxFuture<'a, Response>;
}

/// The rest of a route's chain after the current handler.
pub struct Next<'a> {
    chain: &'a [Box<dyn Handler>],
}

impl<'a> Next<'a> {
    /// A chain to run from its first handler.
    pub fn new(chain: &'a [Box<dyn Handler>]) -> Self {
        Next { chain }
    }

    /// Runs the next handler; past the end of the chain, answers 404.
    pub fn run(self, req: Request, cx: &'a RequestContext) -> BoxFuture<'a, Response> {
        match self.chain.split_first() {
            Some((first, rest)) => first.handle(req, cx, Next { chain: rest }),
            None => Box::pin(async { error_response(http::StatusCode::NOT_FOUND, "not found") }),
        }
    }
}

/// A handler family, registered by the name the Edgefile uses.
pub trait Plugin: Send + Sync + 'static {
    /// The directive name (`respond`, `reverse-proxy`, ...).
    fn name(&self) -> &'static str;
    /// Middleware or terminal.
    fn kind(&self) -> Kind;
    /// Builds a handler from a directive, or says everything wrong with it.
    fn build(&self, directive: &Directive, cx: &BuildContext) -> Result<Box<dyn Handler>, Vec<BuildError>>;
}

/// The plugins known to this build of edge, by name.
#[derive(Default)]
pub struct Registry {
    plugins: BTreeMap<&'static str, Box<dyn Plugin>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a plugin; a later plugin of the same name replaces an earlier one.
    pub fn register(&mut self, plugin: Box<dyn Plugin>) {
        self.plugins.insert(plugin.name(), plugin);
    }

    /// The plugin registered as `name`.
    pub fn get(&self, name: &str) -> Option<&dyn Plugin> {
        self.plugins.get(name).map(|p| p.as_ref())
    }

    /// Every registered name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.plugins.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_one_line() {
        let r = error_response(http::StatusCode::BAD_GATEWAY, "no upstream\nsecond line");
        assert_eq!(r.status(), 502);
    }

    #[test]
    fn body_too_large_is_found_through_sources() {
        #[derive(Debug)]
        struct Wrap(BodyTooLarge);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert!(is_body_too_large(&Wrap(BodyTooLarge)));
        assert!(!is_body_too_large(&std::fmt::Error));
    }
}
