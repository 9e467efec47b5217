//! The `reverse-proxy` handler: forwards a route's requests to HTTP/1.1 upstreams.
//!
//! ```kdl
//! reverse-proxy "http://127.0.0.1:9000" "http://127.0.0.1:9001/api" connect-timeout="5s" timeout="60s"
//! ```
//!
//! - One or more upstreams, each `http://HOST[:PORT][/PREFIX]` (the port
//!   defaults to 80). Requests are spread over them round-robin. `https://`,
//!   user info, a query or a fragment in an upstream are configuration errors.
//! - `connect-timeout` (default `5s`): how long connecting to an upstream may take.
//! - `timeout` (default `60s`): how long the upstream may take to send its
//!   response headers, counted from the start of the request (so it includes
//!   connecting and sending the request body). Nothing cuts a response body
//!   while it streams: long downloads are not limited.
//!
//! What the upstream receives:
//!
//! - the method, and the normalised path and query the route matched on,
//!   prefixed by the upstream's path prefix: `/x?y` to `http://u:9000/api`
//!   becomes `/api/x?y`;
//! - always HTTP/1.1, whatever the client spoke (HTTP/1.x, HTTP/2 or HTTP/3);
//! - the client's `Host` (the `Host` header, or the `:authority` of an HTTP/2
//!   or HTTP/3 request, else the host edge routed on);
//! - the client's headers minus the hop-by-hop ones (`Connection` and the
//!   names it lists, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`,
//!   `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`);
//! - never a client-supplied identity: every `X-Client-Cert-*`,
//!   `X-Client-Verify`, `Client-Cert`, `Client-Cert-Chain`, `X-Forwarded-For`,
//!   `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` header the client
//!   sent is removed, then edge sets, from the verified client certificate:
//!   `X-Client-Verify: SUCCESS` (or `NONE` without a certificate) and, with
//!   one, `X-Client-Cert-CN`, `X-Client-Cert-OU` (joined by `,`),
//!   `X-Client-Cert-Serial`, `X-Client-Cert-Fingerprint` and the RFC 9440
//!   `Client-Cert: :BASE64(DER):`; then `X-Forwarded-For` (the client's IP),
//!   `X-Forwarded-Proto: https` and `X-Forwarded-Host` (the client's host).
//!
//! Bodies stream both ways; neither is buffered whole. The answer is the
//! upstream's status, headers (minus hop-by-hop ones) and body, or:
//!
//! - `413 request body too large` when the request body passes the route's
//!   `max-body`;
//! - `502 bad gateway: HOST:PORT: CAUSE` when the upstream cannot be reached or
//!   fails. A request without a body (`GET`, `HEAD`, `DELETE` or `OPTIONS` with
//!   no `Content-Length` or `Content-Length: 0`, and no `Transfer-Encoding`)
//!   whose upstream refuses the connection is tried on the next upstreams in
//!   turn; the 502 then names every upstream tried;
//! - `504 upstream timed out` when `timeout` passes without response headers.
//!
//! WebSocket and other `Upgrade` requests are not supported: `Upgrade` is a
//! hop-by-hop header and is not forwarded.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use base64::Engine as _;
use bytes::Bytes;
use edge_plugin_api::{
    error_response, is_body_too_large, Arg, Body, BoxError, BoxFuture, BuildContext, BuildError, Directive, Handler,
    Kind, Next, Plugin, Registry, Request, RequestContext, Response, Value,
};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

/// Registers the `reverse-proxy` plugin.
pub fn register(registry: &mut Registry) {
    registry.register(Box::new(ReverseProxyPlugin));
}

/// Default for `connect-timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for `timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle pooled upstream connection is kept (also the TCP keepalive).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Hop-by-hop headers, never forwarded in either direction (besides the names
/// `Connection` lists).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Identity headers a client must never be able to set itself (besides every
/// name starting with [`CLIENT_CERT_PREFIX`]).
const SPOOFABLE: &[&str] = &[
    "x-client-verify",
    "client-cert",
    "client-cert-chain",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Incoming headers whose name starts with this are dropped.
const CLIENT_CERT_PREFIX: &str = "x-client-cert-";

/// The plugin: builds [`ReverseProxy`] handlers.
struct ReverseProxyPlugin;

impl Plugin for ReverseProxyPlugin {
    fn name(&self) -> &'static str {
        "reverse-proxy"
    }

    fn kind(&self) -> Kind {
        Kind::Terminal
    }

    fn build(&self, d: &Directive, _cx: &BuildContext) -> Result<Box<dyn Handler>, Vec<BuildError>> {
        let mut errs = Vec::new();
        if let Err(e) = d.check(1, usize::MAX, &["connect-timeout", "timeout"]) {
            errs.extend(e);
        }
        let mut upstreams = Vec::new();
        for arg in &d.args {
            match parse_upstream_arg(arg) {
                Ok(u) => upstreams.push(u),
                Err(e) => errs.push(e),
            }
        }
        let connect_timeout = timeout_prop(d, "connect-timeout", DEFAULT_CONNECT_TIMEOUT, &mut errs);
        let timeout = timeout_prop(d, "timeout", DEFAULT_TIMEOUT, &mut errs);
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Box::new(ReverseProxy::new(upstreams, connect_timeout, timeout)))
    }
}

/// The duration property `name`, which must be above zero; `default` when absent.
fn timeout_prop(d: &Directive, name: &str, default: Duration, errs: &mut Vec<BuildError>) -> Duration {
    match d.duration_prop(name) {
        Ok(Some(t)) if t.is_zero() => {
            if let Some(p) = d.prop(name) {
                errs.push(
                    BuildError::new(p.span, format!("`{name}` must be longer than zero"))
                        .with_hint(format!("{name}=\"{}s\"", default.as_secs())),
                );
            }
            default
        }
        Ok(t) => t.unwrap_or(default),
        Err(e) => {
            errs.push(e);
            default
        }
    }
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Upstream {
    /// `host:port`, as error messages and logs name it.
    authority: String,
    /// `http://host:port` followed by the path prefix without a trailing `/`.
    base: String,
}

/// Parses one positional argument as an upstream, with the error at its span.
fn parse_upstream_arg(arg: &Arg) -> Result<Upstream, BuildError> {
    let Value::String(s) = &arg.value else {
        return Err(BuildError::new(
            arg.span,
            format!("expected an upstream URL string, found {}", arg.value.type_name()),
        )
        .with_hint("quote it: \"http://127.0.0.1:9000\""));
    };
    parse_upstream(s).map_err(|(message, hint)| BuildError::new(arg.span, message).with_hint(hint))
}

/// Parses `http://host[:port][/prefix]`; on failure, a message and a hint.
fn parse_upstream(s: &str) -> Result<Upstream, (String, String)> {
    const EXAMPLE: &str =
        "write an upstream as \"http://127.0.0.1:9000\" (optionally with a path prefix: \"http://127.0.0.1:9000/api\")";
    let Some((scheme, _)) = s.split_once("://") else {
        return Err((format!("upstream {s:?} is not an http:// URL"), EXAMPLE.to_string()));
    };
    if scheme.eq_ignore_ascii_case("https") {
        return Err((
            format!("upstream {s:?}: https:// upstreams are not supported"),
            "edge speaks plain HTTP/1.1 to upstreams; use http:// and keep the upstream on a trusted network (e.g. 127.0.0.1)"
                .to_string(),
        ));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err((format!("upstream {s:?}: unsupported scheme `{scheme}://`"), EXAMPLE.to_string()));
    }
    let uri: Uri = s.parse().map_err(|e| (format!("upstream {s:?} is not a valid URL: {e}"), EXAMPLE.to_string()))?;
    let Some(auth) = uri.authority() else {
        return Err((format!("upstream {s:?} has no host"), EXAMPLE.to_string()));
    };
    if auth.as_str().contains('@') {
        return Err((format!("upstream {s:?}: user info is not supported"), EXAMPLE.to_string()));
    }
    let host = auth.host();
    if host.is_empty() {
        return Err((format!("upstream {s:?} has no host"), EXAMPLE.to_string()));
    }
    if uri.query().is_some() || s.contains('#') {
        return Err((
            format!("upstream {s:?}: a query or fragment is not supported"),
            "an upstream is a host and port with an optional path prefix".to_string(),
        ));
    }
    let port = match auth.as_str().strip_prefix(host) {
        Some("") => Some(80),
        Some(rest) => rest.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()).filter(|p| *p != 0),
        None => None,
    };
    let Some(port) = port else {
        return Err((format!("upstream {s:?}: bad port"), "a port is a number from 1 to 65535".to_string()));
    };
    let authority = format!("{host}:{port}");
    let prefix = uri.path().trim_end_matches('/');
    Ok(Upstream { base: format!("http://{authority}{prefix}"), authority })
}

/// The handler: one shared, pooled HTTP/1.1 client and its upstreams.
struct ReverseProxy {
    /// At least one.
    upstreams: Vec<Upstream>,
    /// Round-robin counter.
    next: AtomicUsize,
    /// Time allowed until the upstream's response headers.
    timeout: Duration,
    /// Shared by every request. Building it needs no tokio runtime (the pool's
    /// idle-eviction task is spawned on first use, at request time).
    client: Client<HttpConnector, Body>,
}

impl ReverseProxy {
    /// A handler for `upstreams` (not empty).
    fn new(upstreams: Vec<Upstream>, connect_timeout: Duration, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(POOL_IDLE_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        ReverseProxy { upstreams, next: AtomicUsize::new(0), timeout, client }
    }

    /// Forwards one request.
    async fn proxy(&self, req: Request, cx: &RequestContext) -> Response {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (parts, body) = req.into_parts();
        let retryable = has_no_body(&parts.method, &parts.headers);
        let host = client_host(&parts.uri, &parts.headers, cx);
        let mut headers = upstream_headers(&parts.headers, cx, host.as_ref());
        let mut path_and_query = cx.path.clone();
        if let Some(q) = &cx.query {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }

        // A body that may have to go to a second upstream stays in `slot` until
        // the upstream connection reads it; a failed connect leaves it there.
        let slot = Arc::new(Mutex::new(None));
        let mut body = Some(body);
        if retryable {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = body.take();
        }

        let n = self.upstreams.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut failures: Vec<String> = Vec::new();
        for i in 0..n {
            let up = &self.upstreams[(start + i) % n];
            let last = i + 1 == n;
            let uri = match format!("{}{}", up.base, path_and_query).parse::<Uri>() {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(path = %path_and_query, error = %e, "reverse-proxy: path cannot be forwarded");
                    return error_response(StatusCode::BAD_REQUEST, "bad request: the path cannot be forwarded");
                }
            };
            let req_body = if retryable {
                Deferred { slot: slot.clone(), body: None }.boxed()
            } else {
                body.take().unwrap_or_else(edge_plugin_api::empty)
            };
            let mut up_req = http::Request::new(req_body);
            *up_req.method_mut() = parts.method.clone();
            *up_req.uri_mut() = uri;
            *up_req.version_mut() = Version::HTTP_11;
            *up_req.headers_mut() = if retryable && !last { headers.clone() } else { std::mem::take(&mut headers) };

            let err = match tokio::time::timeout_at(deadline, self.client.request(up_req)).await {
                Ok(Ok(resp)) => return downstream_response(resp),
                Ok(Err(e)) => e,
                Err(_elapsed) => {
                    tracing::warn!(
                        upstream = %up.authority,
                        timeout = ?self.timeout,
                        "reverse-proxy: upstream sent no response headers in time"
                    );
                    return error_response(StatusCode::GATEWAY_TIMEOUT, "upstream timed out");
                }
            };
            if is_body_too_large(&err) {
                tracing::debug!(upstream = %up.authority, "reverse-proxy: request body too large");
                return error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
            }
            let cause = describe(&err, err.is_connect());
            if is_request_body_error(&err) {
                tracing::debug!(upstream = %up.authority, error = %cause, "reverse-proxy: reading the request body failed");
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("bad request: reading the request body failed: {cause}"),
                );
            }
            tracing::warn!(upstream = %up.authority, error = %cause, "reverse-proxy: upstream failed");
            failures.push(format!("{}: {cause}", up.authority));
            if !(err.is_connect() && retryable) {
                break;
            }
        }
        error_response(StatusCode::BAD_GATEWAY, &format!("bad gateway: {}", failures.join("; ")))
    }
}

impl Handler for ReverseProxy {
    fn handle<'a>(&'a self, req: Request, cx: &'a RequestContext, _next: Next<'a>) -> BoxFuture<'a, Response> {
        Box::pin(self.proxy(req, cx))
    }
}

/// Whether the request certainly has no body, so that it may go to another
/// upstream when connecting fails.
fn has_no_body(method: &Method, headers: &HeaderMap) -> bool {
    let bodiless_method = matches!(*method, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS);
    let no_length = headers.get_all(header::CONTENT_LENGTH).iter().all(|v| v.as_bytes().trim_ascii() == b"0");
    bodiless_method && no_length && !headers.contains_key(header::TRANSFER_ENCODING)
}

/// The host the client asked for, as it wrote it (port included): the `Host`
/// header, else the URI authority (HTTP/2 and HTTP/3), else the routed host.
fn client_host(uri: &Uri, headers: &HeaderMap, cx: &RequestContext) -> Option<HeaderValue> {
    if let Some(h) = headers.get(header::HOST) {
        return Some(h.clone());
    }
    if let Some(auth) = uri.authority() {
        let hostport = match auth.port() {
            Some(p) => format!("{}:{}", auth.host(), p.as_str()),
            None => auth.host().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&hostport) {
            return Some(v);
        }
    }
    HeaderValue::from_str(&cx.host).ok()
}

/// The names the `Connection` headers list.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Whether `name` may be forwarded at all (not hop-by-hop, not listed in `Connection`).
fn is_end_to_end(name: &HeaderName, listed: &[HeaderName]) -> bool {
    !HOP_BY_HOP.contains(&name.as_str()) && !listed.contains(name)
}

/// Adds `name: value` when `value` is a valid header value; skips it otherwise.
fn insert_str(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => tracing::debug!(header = %name, "reverse-proxy: value is not a valid header value; not sent"),
    }
}

/// The headers the upstream receives: the client's end-to-end headers minus
/// any identity header, then the identity and forwarding headers edge vouches for.
fn upstream_headers(incoming: &HeaderMap, cx: &RequestContext, host: Option<&HeaderValue>) -> HeaderMap {
    let listed = connection_listed(incoming);
    let mut out = HeaderMap::with_capacity(incoming.len() + 10);
    let mut cookies: Vec<&HeaderValue> = Vec::new();
    for (name, value) in incoming {
        if !is_end_to_end(name, &listed)
            || name == header::HOST
            || SPOOFABLE.contains(&name.as_str())
            || name.as_str().starts_with(CLIENT_CERT_PREFIX)
        {
            continue;
        }
        if name == header::COOKIE {
            cookies.push(value);
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    // HTTP/2 and HTTP/3 may split cookies over several fields; HTTP/1.1 wants one.
    if cookies.len() > 1 {
        let joined: Option<Vec<&str>> = cookies.iter().map(|v| v.to_str().ok()).collect();
        match joined.and_then(|parts| HeaderValue::from_str(&parts.join("; ")).ok()) {
            Some(v) => {
                out.insert(header::COOKIE, v);
            }
            None => {
                for v in cookies {
                    out.append(header::COOKIE, v.clone());
                }
            }
        }
    } else if let Some(v) = cookies.first() {
        out.insert(header::COOKIE, (*v).clone());
    }
    if let Some(h) = host {
        out.insert(header::HOST, h.clone());
    }

    match cx.client.as_deref() {
        Some(id) => {
            out.insert(HeaderName::from_static("x-client-verify"), HeaderValue::from_static("SUCCESS"));
            if let Some(cn) = &id.cn {
                insert_str(&mut out, HeaderName::from_static("x-client-cert-cn"), cn);
            }
            if !id.ous.is_empty() {
                insert_str(&mut out, HeaderName::from_static("x-client-cert-ou"), &id.ou_joined());
            }
            if !id.serial.is_empty() {
                insert_str(&mut out, HeaderName::from_static("x-client-cert-serial"), &id.serial);
            }
            if !id.fingerprint.is_empty() {
                insert_str(&mut out, HeaderName::from_static("x-client-cert-fingerprint"), &id.fingerprint);
            }
            if !id.der.is_empty() {
                let b64 = base64::engine::general_purpose::STANDARD.encode(&id.der);
                insert_str(&mut out, HeaderName::from_static("client-cert"), &format!(":{b64}:"));
            }
        }
        None => {
            out.insert(HeaderName::from_static("x-client-verify"), HeaderValue::from_static("NONE"));
        }
    }
    insert_str(&mut out, HeaderName::from_static("x-forwarded-for"), &cx.remote.ip().to_canonical().to_string());
    out.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("https"));
    if let Some(h) = host {
        out.insert(HeaderName::from_static("x-forwarded-host"), h.clone());
    }
    out
}

/// The upstream's answer as the client gets it: status, end-to-end headers, streamed body.
fn downstream_response(resp: http::Response<hyper::body::Incoming>) -> Response {
    let (parts, body) = resp.into_parts();
    let listed = connection_listed(&parts.headers);
    let mut headers = parts.headers;
    for name in &listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    let mut out = http::Response::new(body.map_err(|e| -> BoxError { Box::new(e) }).boxed());
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    out
}

/// Whether the client's own request body failed (rather than the upstream).
fn is_request_body_error(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return h.is_user();
        }
        cur = e.source();
    }
    false
}

/// A short, lowercase cause for a failed upstream request: the innermost I/O
/// error's kind when there is one, else the innermost error's message.
fn describe(err: &(dyn StdError + 'static), connecting: bool) -> String {
    let mut cur = Some(err);
    let mut innermost = err;
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return describe_io(io, connecting);
        }
        innermost = e;
        cur = e.source();
    }
    innermost.to_string()
}

/// An I/O error in a few words.
fn describe_io(e: &std::io::Error, connecting: bool) -> String {
    use std::io::ErrorKind as K;
    let s = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset",
        K::ConnectionAborted => "connection aborted",
        K::TimedOut if connecting => "connect timed out",
        K::TimedOut => "timed out",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::AddrNotAvailable => "address not available",
        K::BrokenPipe => "broken pipe",
        K::UnexpectedEof => "connection closed early",
        _ => {
            let text = e.to_string();
            // "Some message (os error 113)" -> "some message"
            let text = match text.rfind(" (os error ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            let mut chars = text.chars();
            return match chars.next() {
                Some(c) => c.to_lowercase().chain(chars).collect(),
                None => format!("{:?}", e.kind()),
            };
        }
    };
    s.to_string()
}

/// A request body handed to an upstream request without giving it up: it is
/// taken out of the shared slot only when the upstream connection first reads
/// it. A connect failure never reads it, so the next upstream can have it.
struct Deferred {
    /// Where the body waits until first read.
    slot: Arc<Mutex<Option<Body>>>,
    /// The body once taken.
    body: Option<Body>,
}

impl Deferred {
    /// Applies `f` to the body wherever it is; `None` when it is gone.
    fn peek<T>(&self, f: impl FnOnce(&Body) -> T) -> Option<T> {
        match &self.body {
            Some(b) => Some(f(b)),
            None => self.slot.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(f),
        }
    }
}

impl http_body::Body for Deferred {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.body.is_none() {
            this.body = this.slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
        match this.body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.peek(|b| b.is_end_stream()).unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        self.peek(|b| b.size_hint()).unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_plugin_api::{full, BodyTooLarge, ClientIdentity, Prop, Proto, Span};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use tokio::net::TcpListener;

    /// A test upstream. `/slow` answers after 2 s; `/echo-body` streams the
    /// request body back; anything else answers, after reading the whole body,
    /// with the request line, `body-len`, and every header received.
    async fn upstream(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = service_fn(move |req| serve(name, req));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        addr
    }

    async fn serve(name: &'static str, req: http::Request<hyper::body::Incoming>) -> Result<Response, Infallible> {
        let mut resp = match req.uri().path() {
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                http::Response::new(full("late"))
            }
            "/echo-body" => http::Response::new(req.into_body().map_err(|e| -> BoxError { Box::new(e) }).boxed()),
            _ => {
                let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
                let mut lines: Vec<String> = req
                    .headers()
                    .iter()
                    .map(|(n, v)| format!("{}: {}", n, String::from_utf8_lossy(v.as_bytes())))
                    .collect();
                let body = req.into_body().collect().await.map(|c| c.to_bytes().len()).unwrap_or(usize::MAX);
                lines.push(format!("body-len: {body}"));
                text.push_str(&lines.join("\n"));
                http::Response::new(full(text))
            }
        };
        let h = resp.headers_mut();
        h.insert("x-upstream", HeaderValue::from_static(name));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("connection", HeaderValue::from_static("x-secret"));
        Ok(resp)
    }

    /// An address nothing listens on.
    fn dead() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn span(i: usize) -> Span {
        Span { offset: 100 + 40 * i, len: 30 }
    }

    fn directive(args: &[&str], props: &[(&str, &str)]) -> Directive {
        Directive {
            name: "reverse-proxy".into(),
            args: args
                .iter()
                .enumerate()
                .map(|(i, a)| Arg { value: Value::String(a.to_string()), span: span(i) })
                .collect(),
            props: props
                .iter()
                .enumerate()
                .map(|(i, (n, v))| Prop {
                    name: n.to_string(),
                    value: Value::String(v.to_string()),
                    span: Span { offset: 500 + 40 * i, len: 20 },
                })
                .collect(),
            span: Span { offset: 0, len: 600 },
            has_children: false,
        }
    }

    fn try_build(args: &[&str], props: &[(&str, &str)]) -> Result<Box<dyn Handler>, Vec<BuildError>> {
        let mut registry = Registry::new();
        register(&mut registry);
        let plugin = registry.get("reverse-proxy").unwrap();
        assert_eq!(plugin.kind(), Kind::Terminal);
        plugin.build(&directive(args, props), &BuildContext { base_dir: ".".into() })
    }

    fn build(addrs: &[SocketAddr], props: &[(&str, &str)]) -> Box<dyn Handler> {
        let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        try_build(&urls, props).map_err(|e| format!("{e:?}")).unwrap()
    }

    fn identity() -> ClientIdentity {
        ClientIdentity {
            cn: Some("alice".into()),
            ous: vec!["editors".into(), "ops".into()],
            serial: "0a1b".into(),
            fingerprint: "sha256:ff00".into(),
            san_dns: vec![],
            san_uri: vec![],
            not_after: "2030-01-01T00:00:00Z".into(),
            der: Bytes::from_static(b"\x30\x03\x02\x01\x05"),
        }
    }

    fn cx(path: &str, query: Option<&str>, client: Option<ClientIdentity>) -> RequestContext {
        RequestContext {
            site: Arc::from("app.localhost"),
            host: "app.localhost".into(),
            path: path.into(),
            query: query.map(Into::into),
            method: Method::GET,
            proto: Proto::Http11,
            tls_version: "TLSv1.3",
            remote: "203.0.113.7:5555".parse().unwrap(),
            local: "127.0.0.1:8443".parse().unwrap(),
            client: client.map(Arc::new),
        }
    }

    fn get(path: &str) -> Request {
        http::Request::builder().uri(path).header("host", "app.localhost:8443").body(edge_plugin_api::empty()).unwrap()
    }

    async fn call(h: &dyn Handler, req: Request, cx: &RequestContext) -> (StatusCode, HeaderMap, String) {
        let resp = tokio::time::timeout(Duration::from_secs(5), h.handle(req, cx, Next::new(&[]))).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The echoed headers, by name (lowercase), every value.
    fn echoed(body: &str, name: &str) -> Vec<String> {
        body.lines()
            .skip(1)
            .filter_map(|l| l.split_once(": "))
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
            .collect()
    }

    /// A request body fed from a channel.
    struct ChanBody(tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>);

    impl http_body::Body for ChanBody {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
        }
    }

    #[test]
    fn build_needs_no_runtime() {
        let h = try_build(&["http://127.0.0.1:9000", "http://localhost:9001/api/"], &[("timeout", "2m")]);
        assert!(h.is_ok());
        drop(h);
    }

    #[test]
    fn upstream_urls() {
        let u = parse_upstream("http://127.0.0.1:9000").unwrap();
        assert_eq!((u.authority.as_str(), u.base.as_str()), ("127.0.0.1:9000", "http://127.0.0.1:9000"));
        let u = parse_upstream("http://backend/api/").unwrap();
        assert_eq!((u.authority.as_str(), u.base.as_str()), ("backend:80", "http://backend:80/api"));
        let u = parse_upstream("HTTP://[::1]:8080").unwrap();
        assert_eq!(u.authority, "[::1]:8080");
        for bad in [
            "https://127.0.0.1:9000",
            "127.0.0.1:9000",
            "not a url",
            "http://",
            "http://:9000",
            "http://h:0",
            "http://h:",
            "http://u@h:1",
            "http://h:1/?q",
            "http://h:1/#f",
            "ftp://h",
            "http://h:99999",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn build_errors_point_at_the_argument() {
        let errs = try_build(&["http://127.0.0.1:9000", "https://127.0.0.1:9001", "nope"], &[]).err().unwrap();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].span, span(1));
        assert!(errs[0].message.contains("https://"), "{}", errs[0].message);
        assert!(errs[0].hint.as_deref().unwrap().contains("http://"));
        assert_eq!(errs[1].span, span(2));
        assert!(errs[1].message.contains("not an http:// URL"), "{}", errs[1].message);
        assert!(errs[1].hint.is_some());

        let errs = try_build(&[], &[]).err().unwrap();
        assert_eq!(errs.len(), 1);

        let errs = try_build(&["http://h:1"], &[("timeout", "soon"), ("connect-timeout", "0s"), ("retries", "3")])
            .err()
            .unwrap();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[tokio::test]
    async fn identity_headers_cannot_be_spoofed() {
        let a = upstream("a").await;
        let h = build(&[a], &[]);
        let spoofed = || {
            http::Request::builder()
                .method("GET")
                .uri("/ignored?ignored")
                .header("host", "app.localhost:8443")
                .header("x-client-cert-cn", "mallory")
                .header("X-Client-Cert-Whatever", "evil")
                .header("x-client-verify", "SUCCESS")
                .header("client-cert", ":AAAA:")
                .header("client-cert-chain", ":AAAA:")
                .header("x-forwarded-for", "6.6.6.6")
                .header("x-forwarded-proto", "http")
                .header("x-forwarded-host", "evil.example")
                .header("forwarded", "for=6.6.6.6")
                .header("connection", "x-hop, keep-alive")
                .header("x-hop", "1")
                .header("keep-alive", "300")
                .header("te", "trailers")
                .header("proxy-authorization", "Basic eA==")
                .header("x-app", "kept")
                .body(edge_plugin_api::empty())
                .unwrap()
        };

        let (status, headers, body) = call(&*h, spoofed(), &cx("/a/b", Some("x=1&y"), Some(identity()))).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("GET /a/b?x=1&y HTTP/1.1\n"), "{body}");
        let one = |n: &str| echoed(&body, n);
        assert_eq!(one("host"), ["app.localhost:8443"]);
        assert_eq!(one("x-client-verify"), ["SUCCESS"]);
        assert_eq!(one("x-client-cert-cn"), ["alice"]);
        assert_eq!(one("x-client-cert-ou"), ["editors,ops"]);
        assert_eq!(one("x-client-cert-serial"), ["0a1b"]);
        assert_eq!(one("x-client-cert-fingerprint"), ["sha256:ff00"]);
        assert_eq!(one("client-cert"), [":MAMCAQU=:"]);
        assert_eq!(one("x-forwarded-for"), ["203.0.113.7"]);
        assert_eq!(one("x-forwarded-proto"), ["https"]);
        assert_eq!(one("x-forwarded-host"), ["app.localhost:8443"]);
        assert_eq!(one("x-app"), ["kept"]);
        for gone in ["x-client-cert-whatever", "client-cert-chain", "forwarded", "x-hop", "te", "proxy-authorization"] {
            assert!(one(gone).is_empty(), "{gone} reached the upstream: {body}");
        }
        assert!(!body.contains("mallory") && !body.contains("6.6.6.6") && !body.contains("evil"), "{body}");
        // Hop-by-hop response headers are not passed back.
        assert_eq!(headers.get("x-upstream").unwrap(), "a");
        for gone in ["keep-alive", "connection", "x-secret"] {
            assert!(!headers.contains_key(gone), "{gone} came back");
        }

        let (status, _, body) = call(&*h, spoofed(), &cx("/", None, None)).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("GET / HTTP/1.1\n"), "{body}");
        assert_eq!(echoed(&body, "x-client-verify"), ["NONE"]);
        assert_eq!(echoed(&body, "x-forwarded-for"), ["203.0.113.7"]);
        for gone in ["x-client-cert-cn", "x-client-cert-whatever", "client-cert", "client-cert-chain"] {
            assert!(echoed(&body, gone).is_empty(), "{gone} reached the upstream: {body}");
        }
    }

    #[tokio::test]
    async fn h2_request_goes_out_as_http11_with_its_authority_and_a_prefix() {
        let a = upstream("a").await;
        let h = try_build(&[&format!("http://{a}/api/")], &[]).unwrap();
        let req = http::Request::builder()
            .version(Version::HTTP_2)
            .method("DELETE")
            .uri("https://app.localhost:8443/x")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(edge_plugin_api::empty())
            .unwrap();
        let (status, _, body) = call(&*h, req, &cx("/x", Some("q"), None)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("DELETE /api/x?q HTTP/1.1\n"), "{body}");
        assert_eq!(echoed(&body, "host"), ["app.localhost:8443"]);
        assert_eq!(echoed(&body, "x-forwarded-host"), ["app.localhost:8443"]);
        assert_eq!(echoed(&body, "cookie"), ["a=1; b=2"]);
        assert!(echoed(&body, "transfer-encoding").is_empty(), "{body}");
    }

    #[tokio::test]
    async fn round_robin_alternates() {
        let (a, b) = (upstream("a").await, upstream("b").await);
        let h = build(&[a, b], &[]);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (status, headers, _) = call(&*h, get("/"), &cx("/", None, None)).await;
            assert_eq!(status, 200);
            seen.push(headers.get("x-upstream").unwrap().to_str().unwrap().to_string());
        }
        assert_eq!(seen, ["a", "b", "a", "b"]);
    }

    #[tokio::test]
    async fn a_dead_upstream_is_skipped_for_requests_without_body() {
        let (d, b) = (dead(), upstream("b").await);
        let h = build(&[d, b], &[]);
        // The first request goes to the dead one: a POST with a body is not retried.
        let post =
            http::Request::builder().method("POST").uri("/").header("content-length", "5").body(full("hello")).unwrap();
        let (status, _, body) = call(&*h, post, &cx("/", None, None)).await;
        assert_eq!(status, 502);
        assert_eq!(body, format!("bad gateway: {d}: connection refused\n"));
        for _ in 0..4 {
            let (status, headers, body) = call(&*h, get("/"), &cx("/", None, None)).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(headers.get("x-upstream").unwrap(), "b");
        }
    }

    #[tokio::test]
    async fn a_retried_request_keeps_an_undeclared_body() {
        // An HTTP/2 GET may carry DATA frames without Content-Length; a failed
        // connect must not lose them on the way to the next upstream.
        let (d, b) = (dead(), upstream("b").await);
        let h = build(&[d, b], &[]);
        let req = http::Request::builder()
            .version(Version::HTTP_2)
            .uri("https://app.localhost/")
            .body(full("payload"))
            .unwrap();
        let (status, headers, body) = call(&*h, req, &cx("/", None, None)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers.get("x-upstream").unwrap(), "b");
        assert_eq!(echoed(&body, "body-len"), ["7"]);
    }

    #[tokio::test]
    async fn all_dead_is_502_naming_them() {
        let (d1, d2) = (dead(), dead());
        let h = build(&[d1, d2], &[]);
        let (status, _, body) = call(&*h, get("/"), &cx("/", None, None)).await;
        assert_eq!(status, 502);
        assert_eq!(body, format!("bad gateway: {d1}: connection refused; {d2}: connection refused\n"));
    }

    #[tokio::test]
    async fn slow_upstream_is_504() {
        let a = upstream("a").await;
        let h = build(&[a], &[("timeout", "150ms")]);
        let started = std::time::Instant::now();
        let (status, _, body) = call(&*h, get("/slow"), &cx("/slow", None, None)).await;
        assert_eq!(status, 504);
        assert_eq!(body, "upstream timed out\n");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn large_bodies_stream_both_ways_intact() {
        let a = upstream("a").await;
        let h = build(&[a], &[]);
        let data: Bytes = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
        let req = http::Request::builder()
            .method("PUT")
            .uri("/echo-body")
            .header("content-length", data.len())
            .body(full(data.clone()))
            .unwrap();
        let resp = h.handle(req, &cx("/echo-body", None, None), Next::new(&[])).await;
        assert_eq!(resp.status(), 200);
        let got = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await.unwrap().unwrap();
        assert!(got.to_bytes() == data, "body changed on the way");
    }

    #[tokio::test]
    async fn bodies_are_not_buffered_whole() {
        let a = upstream("a").await;
        let h = build(&[a], &[]);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let req = http::Request::builder().method("POST").uri("/echo-body").body(ChanBody(rx).boxed()).unwrap();
        let cx = cx("/echo-body", None, None);
        let test = async {
            tx.send(Ok(Bytes::from_static(b"first"))).await.unwrap();
            // The response (and its first chunk) arrives while the request body is still open.
            let resp = h.handle(req, &cx, Next::new(&[])).await;
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "first");
            tx.send(Ok(Bytes::from_static(b"second"))).await.unwrap();
            drop(tx);
            assert_eq!(body.collect().await.unwrap().to_bytes(), "second");
        };
        tokio::time::timeout(Duration::from_secs(5), test).await.unwrap();
    }

    #[tokio::test]
    async fn body_too_large_is_413() {
        let a = upstream("a").await;
        let h = build(&[a], &[]);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(Ok(Bytes::from(vec![b'x'; 64 * 1024]))).await.unwrap();
        tx.send(Err(Box::new(BodyTooLarge) as BoxError)).await.unwrap();
        let req = http::Request::builder().method("POST").uri("/").body(ChanBody(rx).boxed()).unwrap();
        let (status, _, body) = call(&*h, req, &cx("/", None, None)).await;
        assert_eq!(status, 413, "{body}");
        assert_eq!(body, "request body too large\n");
    }

    #[tokio::test]
    async fn another_request_body_error_is_not_blamed_on_the_upstream() {
        let a = upstream("a").await;
        let h = build(&[a], &[]);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(Ok(Bytes::from_static(b"x"))).await.unwrap();
        tx.send(Err(Box::new(std::io::Error::other("client went away")) as BoxError)).await.unwrap();
        let req = http::Request::builder().method("POST").uri("/").body(ChanBody(rx).boxed()).unwrap();
        let (status, _, body) = call(&*h, req, &cx("/", None, None)).await;
        assert_eq!(status, 400, "{body}");
    }
}
