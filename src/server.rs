//! The running server: the current [`Snapshot`] behind one atomic pointer,
//! TCP listeners, connections, graceful shutdown.
//!
//! Every connection takes the `Arc<Snapshot>` current when it was accepted and
//! keeps it to the end, so swapping the pointer never disturbs it.

use crate::compile::{self, Snapshot};
use crate::config::Diagnostic;
use crate::http::{self, ConnInfo};
use crate::policy;
use crate::tls::HandshakeResult;
use arc_swap::ArcSwap;
use edge_plugin_api::Registry;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::LazyConfigAcceptor;
use tracing::{debug, info, warn};

/// Why `edge run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The Edgefile has problems.
    #[error("{}", crate::config::render(.0).trim_end())]
    Config(Vec<Diagnostic>),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// Signal handling could not be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(String),
}

/// State shared by listeners and connections.
struct Shared {
    current: ArcSwap<Snapshot>,
    conns: Arc<Semaphore>,
    max_conns: u32,
    shutdown: watch::Receiver<bool>,
}

/// Runs the server on the Edgefile at `path` until SIGINT or SIGTERM.
pub async fn run(path: PathBuf, registry: Arc<Registry>) -> Result<(), RunError> {
    let snap = compile::load(&path, &registry).map_err(RunError::Config)?;
    let max_conns = u32::try_from(snap.global.max_connections).unwrap_or(u32::MAX).min(Semaphore::MAX_PERMITS as u32);
    let shutdown_timeout = snap.global.shutdown_timeout;
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        current: ArcSwap::from_pointee(snap),
        conns: Arc::new(Semaphore::new(max_conns as usize)),
        max_conns,
        shutdown: stop_rx,
    });

    let snap = shared.current.load_full();
    let mut bound = Vec::new();
    for spec in snap.listeners.values() {
        let listener = bind_tcp(spec.addr).await?;
        let local = listener.local_addr().map_err(|e| RunError::Bind { addr: spec.addr, reason: e.to_string() })?;
        info!(listen = %spec.addr, bound = %local, transport = "tcp", "listening");
        bound.push((spec.addr, listener));
    }
    for (key, listener) in bound {
        tokio::spawn(accept_loop(listener, key, shared.clone()));
    }
    info!(config = %path.display(), sites = snap.sites.len(), "edge is ready");
    drop(snap);

    wait_for_stop().await?;
    info!("shutting down: no new connections; open ones get {:?} to finish", shutdown_timeout);
    let _ = stop_tx.send(true);
    let all = shared.conns.acquire_many(shared.max_conns);
    match tokio::time::timeout(shutdown_timeout, all).await {
        Ok(_) => info!("all connections closed"),
        Err(_) => warn!("shutdown timeout: closing the connections still open"),
    }
    Ok(())
}

async fn wait_for_stop() -> Result<(), RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| RunError::Signals(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| RunError::Signals(e.to_string()))?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}

async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, RunError> {
    let err = |e: io::Error| RunError::Bind { addr, reason: crate::util::io_reason(&e) };
    let sock =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.map_err(err)?;
    sock.set_reuseaddr(true).map_err(err)?;
    sock.bind(addr).map_err(err)?;
    sock.listen(1024).map_err(err)
}

async fn accept_loop(listener: TcpListener, key: SocketAddr, shared: Arc<Shared>) {
    let mut stop = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(listen = %key, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = shared.conns.clone().try_acquire_owned() else {
            debug!(%remote, "connection limit reached; closing");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_tcp(stream, remote, key, &shared).await;
            drop(permit);
        });
    }
}

async fn serve_tcp(stream: TcpStream, remote: SocketAddr, key: SocketAddr, shared: &Shared) {
    let snap = shared.current.load_full();
    let Some(listener) = snap.listener(&key) else { return };
    let Ok(local) = stream.local_addr() else { return };
    let _ = stream.set_nodelay(true);

    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
            .await
            .map_err(|e| (HandshakeResult::Error, None, e.to_string()))?;
        let sni = start.client_hello().server_name().map(str::to_string);
        let site = match &sni {
            Some(name) => listener.index.lookup(name),
            None => listener.index.lookup_ip(local.ip()),
        };
        let Some(site) = site else {
            return Err((HandshakeResult::NoSite, None, format!("no site for {:?}", sni.as_deref().unwrap_or(""))));
        };
        let config = snap.sites[site].tls.clone();
        match start.into_stream(config).await {
            Ok(tls) => Ok((site, sni, tls)),
            Err(e) => Err((HandshakeResult::of_io(&e), Some(site), e.to_string())),
        }
    };
    let (site, sni, tls) = match tokio::time::timeout(snap.global.handshake_timeout, handshake).await {
        Ok(Ok(x)) => x,
        Ok(Err((result, site, reason))) => {
            let site = site.map(|i| snap.sites[i].name.to_string()).unwrap_or_default();
            debug!(%remote, site, result = result.as_str(), reason, "handshake refused");
            return;
        }
        Err(_) => {
            debug!(%remote, "handshake timed out");
            return;
        }
    };

    let (_, conn) = tls.get_ref();
    let tls_version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLSv1.3",
    };
    let client = match conn.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => match policy::identity_from_der(leaf) {
            Ok(id) => Some(Arc::new(id)),
            Err(e) => {
                debug!(%remote, error = %e, "client certificate unreadable");
                return;
            }
        },
        None => None,
    };
    let limits = snap.sites[site].limits.clone();
    let info = Arc::new(ConnInfo { snap: snap.clone(), listener: key, site, remote, local, tls_version, client, sni });
    drop(snap);

    let activity = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let io = TokioIo::new(Activity { inner: tls, last: activity.clone(), epoch });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(limits.max_header_size.clamp(8192, 16 << 20) as usize)
        .max_headers(limits.max_headers)
        .header_read_timeout(limits.idle_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_size.min(u32::MAX as u64) as u32)
        .max_concurrent_streams(250);
    let svc = service_fn(move |req| {
        let info = info.clone();
        async move { Ok::<_, Infallible>(http::handle(req, &info).await) }
    });
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut stop = shared.shutdown.clone();
    let idle = limits.idle_timeout;
    let mut closing = false;
    loop {
        let last = Duration::from_millis(activity.load(Ordering::Relaxed));
        let deadline = tokio::time::Instant::from_std(epoch + last + idle);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(deadline), if !closing => {
                let now = epoch.elapsed();
                if now >= Duration::from_millis(activity.load(Ordering::Relaxed)) + idle {
                    debug!(%remote, "idle timeout");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Records the time of the last byte read or written, for the idle timeout.
struct Activity<T> {
    inner: T,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<T> Activity<T> {
    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.touch();
            }
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.touch();
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
