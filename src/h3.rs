//! HTTP/3: an established QUIC connection (its site already chosen by SNI and
//! its client certificate already verified inside the handshake, see
//! [`crate::quic`]), the h3 request loop, and bodies bridged to the same
//! router as HTTP/1.1 and HTTP/2 ([`crate::http::handle`]).

use crate::compile::Snapshot;
use crate::config::Mode;
use crate::http::{self as edge_http, ConnInfo};
use crate::metrics::ConnectionGuard;
use crate::policy;
use bytes::{Buf, Bytes};
use edge_plugin_api::BoxError;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::watch;
use tracing::debug;

/// Serves HTTP/3 on an established connection until it closes (or, on
/// shutdown, until its requests are done).
pub(crate) async fn serve_connection(
    conn: quinn::Connection,
    snap: Arc<Snapshot>,
    handshake: Option<crate::quic::HandshakeInfo>,
    listener: SocketAddr,
    local: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let remote = conn.remote_address();
    let Some(spec) = snap.listener(&listener) else {
        conn.close(0u32.into(), b"listener removed");
        return;
    };
    let sni = handshake.as_ref().and_then(|h| h.server_name.clone());
    // The site whose config ran the handshake; after a reload in between,
    // the site of the same name in the current config.
    let site = handshake
        .as_ref()
        .and_then(|h| snap.sites.iter().position(|s| Arc::ptr_eq(&s.quic_tls, &h.config)))
        .or_else(|| match &sni {
            Some(name) => spec.index.lookup(name),
            None => spec.index.lookup_ip(local.ip()),
        });
    let Some(site) = site else {
        // The handshake chose a site of an older config that is gone now.
        conn.close(0u32.into(), b"no site");
        return;
    };
    let client = match crate::quic::peer_certificates(&conn)
        .and_then(|chain| chain.first().map(|leaf| policy::identity_from_der(leaf)))
    {
        Some(Ok(id)) => Some(Arc::new(id)),
        Some(Err(e)) => {
            debug!(%remote, error = %e, "client certificate unreadable");
            conn.close(0u32.into(), b"bad certificate");
            return;
        }
        None => None,
    };
    // The handshake ran under the config current then; should a reload have
    // tightened the site since, the stricter rule holds.
    if client.as_deref().is_some_and(|id| snap.sites[site].revoked(id)) {
        conn.close(0u32.into(), b"certificate revoked");
        return;
    }
    if snap.sites[site].mode == Mode::Require && client.is_none() {
        conn.close(0u32.into(), b"client certificate required");
        return;
    }
    let max_headers = snap.sites[site].limits.max_header_size;
    let info = Arc::new(ConnInfo {
        snap: snap.clone(),
        listener,
        site,
        remote,
        local,
        tls_version: "TLSv1.3",
        client,
        sni,
        alt_svc: None,
    });
    drop(snap);
    let _open = ConnectionGuard::open(2);
    let mut h3 = match h3::server::builder()
        .max_field_section_size(max_headers)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            debug!(%remote, error = %e, "h3 connection setup failed");
            return;
        }
    };
    let mut closing = false;
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let info = info.clone();
                    tokio::spawn(async move {
                        match resolver.resolve_request().await {
                            Ok((req, stream)) => serve_request(req, stream, &info).await,
                            Err(e) => debug!(error = %e, "h3 request unreadable"),
                        }
                    });
                }
                Ok(None) => return,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        debug!(%remote, error = %e, "h3 connection ended with an error");
                    }
                    return;
                }
            },
            _ = stop.changed(), if !closing => {
                closing = true;
                // GOAWAY: requests already accepted finish, no new ones.
                let _ = h3.shutdown(0).await;
            }
        }
    }
}

type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

async fn serve_request(req: http::Request<()>, stream: Stream, info: &ConnInfo) {
    let (mut send, recv) = stream.split();
    let req = req.map(|()| StreamBody::new(recv));
    let resp = edge_http::handle(req, info).await;
    let (parts, mut body) = resp.into_parts();
    if let Err(e) = send.send_response(http::Response::from_parts(parts, ())).await {
        debug!(error = %e, "h3 response headers not sent");
        return;
    }
    while let Some(frame) = body.frame().await {
        let sent = match frame {
            Ok(f) => match f.into_data() {
                Ok(data) => send.send_data(data).await,
                Err(f) => match f.into_trailers() {
                    Ok(t) => send.send_trailers(t).await,
                    Err(_) => Ok(()),
                },
            },
            Err(e) => {
                debug!(error = %e, "response body failed; resetting the stream");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        if let Err(e) = sent {
            debug!(error = %e, "h3 response body not sent");
            return;
        }
    }
    let _ = send.finish().await;
}

type RecvHalf = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// A request body read straight from the QUIC stream. The mutex only makes
/// it `Sync` like the TCP body; `poll_frame` has `&mut` and never locks.
struct StreamBody {
    recv: std::sync::Mutex<RecvHalf>,
    /// What was read when the body was made, not yet handed out.
    first: Option<Result<Bytes, BoxError>>,
    ended: bool,
}

impl StreamBody {
    /// Looks once, without waiting, whether the request already ended (a GET
    /// sends its HEADERS with FIN): then the body is known empty and nothing
    /// has to drain it.
    fn new(mut recv: RecvHalf) -> Self {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (first, ended) = match recv.poll_recv_data(&mut cx) {
            Poll::Ready(Ok(Some(mut buf))) => (Some(Ok(buf.copy_to_bytes(buf.remaining()))), false),
            Poll::Ready(Ok(None)) => (None, true),
            Poll::Ready(Err(e)) => (Some(Err(Box::new(e) as BoxError)), true),
            Poll::Pending => (None, false),
        };
        StreamBody { recv: std::sync::Mutex::new(recv), first, ended }
    }
}

impl HttpBody for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(first.map(Frame::data)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let recv = this.recv.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        match recv.poll_recv_data(cx) {
            Poll::Ready(Ok(Some(mut buf))) => Poll::Ready(Some(Ok(Frame::data(buf.copy_to_bytes(buf.remaining()))))),
            Poll::Ready(Ok(None)) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                this.ended = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.first.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
