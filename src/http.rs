//! One request, whatever the transport: Host/SNI check (421), header limits
//! (431), path normalisation (400), route (404), the route's client-auth
//! (403), body limit (413), then the route's handler chain.

use crate::compile::{Route, Site, Snapshot};
use crate::config::Mode;
use crate::policy::{self, host_of};
use bytes::{Buf, Bytes};
use edge_plugin_api::{error_response, BodyTooLarge, BoxError, ClientIdentity, Next, Proto, RequestContext, Response};
use http::{header, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// What a connection knows once its handshake is done.
pub struct ConnInfo {
    /// The snapshot the connection started with.
    pub snap: Arc<Snapshot>,
    /// The listener it arrived on (configured address).
    pub listener: SocketAddr,
    /// Index of its site in `snap.sites`.
    pub site: usize,
    /// The client's address.
    pub remote: SocketAddr,
    /// The local address.
    pub local: SocketAddr,
    /// `TLSv1.2` or `TLSv1.3`.
    pub tls_version: &'static str,
    /// The verified client certificate's identity.
    pub client: Option<Arc<ClientIdentity>>,
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// `Alt-Svc` for HTTP/1.1 and HTTP/2 answers when the address serves HTTP/3.
    pub alt_svc: Option<http::HeaderValue>,
}

impl ConnInfo {
    fn site(&self) -> &Site {
        &self.snap.sites[self.site]
    }
}

/// A request body a handler did not read (a refusal, `respond`) is read and
/// dropped in the background, up to this much and for this long, so that a
/// client still uploading gets the answer instead of a reset stream.
const DRAIN_MAX: u64 = 1 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Answers one request on a connection.
pub async fn handle<B>(req: http::Request<B>, conn: &ConnInfo) -> Response
where
    B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let started = std::time::Instant::now();
    let proto = match req.version() {
        http::Version::HTTP_2 => 1,
        http::Version::HTTP_3 => 2,
        _ => 0,
    };
    let mut resp = answer(req, conn).await;
    if let Some(v) = &conn.alt_svc {
        resp.headers_mut().insert(header::ALT_SVC, v.clone());
    }
    conn.site().metrics.request(proto, resp.status().as_u16(), started.elapsed().as_secs_f64());
    resp
}

async fn answer<B>(req: http::Request<B>, conn: &ConnInfo) -> Response
where
    B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    match admit(&parts, conn) {
        Ok((route, cx)) => {
            let body = Limited::new(body.map_err(Into::into).boxed(), route.max_body);
            let req = http::Request::from_parts(parts, body.boxed());
            Next::new(&route.chain).run(req, &cx).await
        }
        Err((status, reason)) => {
            // Dropped unread: drained in the background (see `Limited`).
            drop(Limited::new(body.map_err(Into::into).boxed(), DRAIN_MAX));
            error_response(status, &reason)
        }
    }
}

/// Every check before the handlers: the route and the context, or a refusal.
fn admit<'c>(
    req: &http::request::Parts,
    conn: &'c ConnInfo,
) -> Result<(&'c Route, RequestContext), (StatusCode, String)> {
    let refuse = |status: StatusCode, reason: &str| Err((status, reason.to_string()));
    let site = conn.site();
    let proto = match req.version {
        http::Version::HTTP_10 | http::Version::HTTP_09 => Proto::Http10,
        http::Version::HTTP_2 => Proto::H2,
        http::Version::HTTP_3 => Proto::H3,
        _ => Proto::Http11,
    };

    // Header limits: hyper bounds HTTP/1 by its buffer; this holds for every
    // protocol and answers 431 rather than a reset.
    let headers = &req.headers;
    if headers.len() > site.limits.max_headers {
        return refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too many request headers");
    }
    let size: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if size as u64 > site.limits.max_header_size {
        return refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers too large");
    }

    // The site is the connection's; a Host or :authority naming another one
    // is misdirected. Both are checked when both are present. The name the
    // handshake chose the site by needs no lookup.
    let mut host: Option<String> = None;
    let authorities = req
        .uri
        .authority()
        .map(|a| a.as_str())
        .into_iter()
        .chain(headers.get_all(header::HOST).iter().map(|v| v.to_str().unwrap_or("\u{0}")));
    for a in authorities {
        let h = host_of(a);
        let ours = conn.sni.as_deref().is_some_and(|sni| sni.eq_ignore_ascii_case(h))
            || conn.snap.listener(&conn.listener).and_then(|l| l.index.lookup(h)) == Some(conn.site);
        if !ours {
            return refuse(
                StatusCode::MISDIRECTED_REQUEST,
                &format!("misdirected request: {} is not served on this connection", h.to_ascii_lowercase()),
            );
        }
        if host.is_none() {
            host = Some(h.to_ascii_lowercase());
        }
    }
    let host = match host {
        Some(h) => h,
        None if proto == Proto::Http10 => conn.sni.clone().unwrap_or_else(|| site.name.to_string()),
        None => return refuse(StatusCode::BAD_REQUEST, "missing Host header"),
    };

    let path = match policy::normalise_path(req.uri.path()) {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Some(route) = site.table.lookup(&path).map(|i| &site.routes[i]) else {
        return refuse(StatusCode::NOT_FOUND, "not found");
    };

    if let Some(p) = &route.policy {
        match conn.client.as_deref() {
            None if p.mode == Mode::Require => {
                return refuse(StatusCode::FORBIDDEN, "a client certificate is required for this path");
            }
            Some(id) if !policy::allowed(&p.allow, id) => {
                return refuse(StatusCode::FORBIDDEN, "this client certificate is not allowed on this path");
            }
            _ => {}
        }
    }

    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
        if len > route.max_body {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
    }

    let query = req.uri.query().map(str::to_string);
    let method = req.method.clone();
    let cx = RequestContext {
        site: site.name.clone(),
        host,
        path,
        query,
        method,
        proto,
        tls_version: conn.tls_version,
        remote: conn.remote,
        local: conn.local,
        client: conn.client.clone(),
    };
    Ok((route, cx))
}

/// A body that fails with [`BodyTooLarge`] once more than `left` bytes came.
struct Limited {
    /// `None` once handed to the drain task.
    inner: Option<edge_plugin_api::Body>,
    left: u64,
    ended: bool,
}

impl Limited {
    fn new(inner: edge_plugin_api::Body, left: u64) -> Self {
        let ended = inner.is_end_stream();
        Limited { inner: Some(inner), left, ended }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (Some(mut body), Ok(rt)) = (self.inner.take(), tokio::runtime::Handle::try_current()) else { return };
        rt.spawn(async move {
            let drain = async {
                let mut seen = 0u64;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(d) = frame.data_ref() {
                        seen += d.remaining() as u64;
                        if seen > DRAIN_MAX {
                            return;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
    }
}

impl HttpBody for Limited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.left {
                        this.left = 0;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    this.left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}
