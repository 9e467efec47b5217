//! The running server: the current [`Snapshot`] behind one atomic pointer,
//! TCP listeners, connections, graceful shutdown.
//!
//! Every connection takes the `Arc<Snapshot>` current when it was accepted and
//! keeps it to the end, so swapping the pointer never disturbs it.

use crate::compile::{self, Snapshot};
use crate::config::Diagnostic;
use crate::http::{self, ConnInfo};
use crate::metrics::{self, ConnectionGuard, Transport};
use crate::policy;
use crate::tls::HandshakeResult;
use crate::workers::Workers;
use arc_swap::ArcSwap;
use edge_plugin_api::Registry;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
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
    /// The worker threads could not start.
    #[error("cannot start the worker threads: {0}")]
    Workers(String),
    /// Signal handling could not be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(String),
}

/// State shared by listeners and connections.
pub(crate) struct Shared {
    pub(crate) current: ArcSwap<Snapshot>,
    conns: Arc<Semaphore>,
    max_conns: std::sync::atomic::AtomicU32,
    shutdown: watch::Receiver<bool>,
    /// Where accepted TCP connections are served.
    workers: Workers,
}

struct RunningListener {
    bound: SocketAddr,
    stop: watch::Sender<bool>,
    /// The HTTP/3 endpoint on the same address and port, if on.
    quic: Option<quinn::Endpoint>,
    /// `Alt-Svc` for this address's h1/h2 answers, while `quic` is on.
    alt_svc: Arc<ArcSwap<Option<::http::HeaderValue>>>,
}

/// The running server: its config, its listeners, and the one way to reload.
pub struct Server {
    path: PathBuf,
    registry: Arc<Registry>,
    pub(crate) shared: Arc<Shared>,
    /// Running listeners by configured address; the lock also serialises reloads.
    listeners: tokio::sync::Mutex<BTreeMap<SocketAddr, RunningListener>>,
    generation: AtomicU64,
    watched: watch::Sender<Vec<PathBuf>>,
}

impl Server {
    /// The generation being served: 1 after start, +1 per successful reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The snapshot new connections get.
    pub fn current(&self) -> Arc<Snapshot> {
        self.shared.current.load_full()
    }

    /// Bound addresses by configured address.
    pub async fn bound(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.listeners.lock().await.iter().map(|(k, v)| (*k, v.bound)).collect()
    }

    /// Loads the Edgefile again and, if it is valid and its new listeners
    /// bind, swaps it in; otherwise logs every problem and keeps serving the
    /// old config unchanged. SIGHUP, the file watch, `POST /reload` and
    /// `edge reload` all come here.
    pub async fn reload(&self, why: &str) -> Result<u64, Vec<Diagnostic>> {
        let started = Instant::now();
        let mut listeners = self.listeners.lock().await;
        let m = metrics::global();
        let result = self.apply(&mut listeners).await;
        match &result {
            Ok(generation) => {
                m.reloads.with_label_values(&["success"]).inc();
                info!(why, generation, took_ms = started.elapsed().as_millis() as u64, "config reloaded");
            }
            Err(diags) => {
                m.reloads.with_label_values(&["failure"]).inc();
                for d in diags {
                    warn!("{d}");
                }
                warn!(why, problems = diags.len(), "reload failed; still serving the previous config");
            }
        }
        result
    }

    async fn apply(&self, listeners: &mut BTreeMap<SocketAddr, RunningListener>) -> Result<u64, Vec<Diagnostic>> {
        let snap = {
            let path = self.path.clone();
            let registry = self.registry.clone();
            // Reading and compiling does file I/O and crypto: keep it off the
            // threads that serve connections.
            tokio::task::spawn_blocking(move || compile::load(&path, &registry))
                .await
                .map_err(|e| vec![self.diag(format!("the reload task failed: {e}"), (1, 1))])??
        };
        // Bind what is new before anything changes; on a failure, what was
        // bound here is dropped (unbound) again.
        let mut fresh = Vec::new();
        for spec in snap.listeners.values().filter(|s| !listeners.contains_key(&s.addr)) {
            match bind_pair(spec.addr, spec.http3).await {
                Ok(pair) => fresh.push((spec.addr, pair)),
                Err(e) => return Err(vec![self.diag(e.to_string(), spec.at)]),
            }
        }
        // HTTP/3 turned on or off on a listener that stays.
        let mut udp_on = Vec::new();
        for (addr, l) in listeners.iter() {
            let Some(spec) = snap.listeners.get(addr) else { continue };
            if spec.http3 && l.quic.is_none() {
                match std::net::UdpSocket::bind(l.bound) {
                    Ok(u) => udp_on.push((*addr, u)),
                    Err(e) => {
                        let reason = format!("cannot listen on {} (udp): {}", l.bound, crate::util::io_reason(&e));
                        return Err(vec![self.diag(reason, spec.at)]);
                    }
                }
            }
        }
        let old_max = self.shared.max_conns.load(Ordering::Relaxed);
        let new_max = conn_cap(&snap);
        let removed: Vec<SocketAddr> = listeners.keys().filter(|k| !snap.listeners.contains_key(k)).copied().collect();
        for addr in &removed {
            if let Some(l) = listeners.remove(addr) {
                let _ = l.stop.send(true);
                if let Some(q) = &l.quic {
                    // Refuse new QUIC connections; open ones drain.
                    q.set_server_config(None);
                }
                info!(listen = %addr, bound = %l.bound, "listener removed; its open connections drain");
            }
        }
        for (addr, l) in listeners.iter_mut() {
            if snap.listeners.get(addr).is_some_and(|s| !s.http3) {
                if let Some(q) = l.quic.take() {
                    q.set_server_config(None);
                    l.alt_svc.store(Arc::new(None));
                    info!(listen = %addr, "HTTP/3 turned off");
                }
            }
        }
        let m = metrics::global();
        for site in &snap.sites {
            m.server_cert_expiry.with_label_values(&[&site.name]).set(site.cert_not_after);
        }
        let _ = self.watched.send(snap.watched.clone());
        self.shared.current.store(Arc::new(snap));
        for (addr, (listener, udp)) in fresh {
            let bound = listener.local_addr().unwrap_or(addr);
            info!(listen = %addr, bound = %bound, transport = "tcp", "listening");
            let (stop, stop_rx) = watch::channel(false);
            let alt_svc = Arc::new(ArcSwap::from_pointee(None));
            tokio::spawn(accept_loop(listener, addr, self.shared.clone(), stop_rx.clone(), alt_svc.clone()));
            let mut running = RunningListener { bound, stop, quic: None, alt_svc };
            if let Some(udp) = udp {
                self.start_quic(addr, &mut running, udp, stop_rx);
            }
            listeners.insert(addr, running);
        }
        for (addr, udp) in udp_on {
            if let Some(l) = listeners.get_mut(&addr) {
                let rx = l.stop.subscribe();
                self.start_quic(addr, l, udp, rx);
            }
        }
        if new_max > old_max {
            self.shared.conns.add_permits((new_max - old_max) as usize);
        } else if new_max < old_max {
            // Permits held by open connections are taken back as they close.
            let sem = self.shared.conns.clone();
            let n = old_max - new_max;
            tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many(n).await {
                    p.forget();
                }
            });
        }
        self.shared.max_conns.store(new_max, Ordering::Relaxed);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        m.generation.set(generation as i64);
        m.last_reload.set(unix_now());
        Ok(generation)
    }

    /// Starts HTTP/3 on `udp` (bound to the listener's address and port).
    fn start_quic(
        &self,
        key: SocketAddr,
        l: &mut RunningListener,
        udp: std::net::UdpSocket,
        stop: watch::Receiver<bool>,
    ) {
        let selector = Arc::new(EndpointSites { shared: self.shared.clone(), key, local: l.bound.ip() });
        let config = crate::quic::server_config(selector);
        let endpoint = match quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            udp,
            Arc::new(quinn::TokioRuntime),
        ) {
            Ok(e) => e,
            Err(e) => {
                warn!(listen = %key, error = %e, "cannot start HTTP/3; serving HTTP/1.1 and HTTP/2 only");
                return;
            }
        };
        info!(listen = %key, bound = %l.bound, transport = "udp", "HTTP/3 listening");
        l.alt_svc.store(Arc::new(::http::HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", l.bound.port())).ok()));
        tokio::spawn(quic_accept_loop(endpoint.clone(), key, self.shared.clone(), stop));
        l.quic = Some(endpoint);
    }

    fn diag(&self, message: String, (line, column): (usize, usize)) -> Diagnostic {
        Diagnostic { file: self.path.clone(), line, column, message, hint: None }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn conn_cap(snap: &Snapshot) -> u32 {
    u32::try_from(snap.global.max_connections).unwrap_or(u32::MAX).min(Semaphore::MAX_PERMITS as u32)
}

/// Options of `edge run`.
pub struct RunOptions {
    /// The Edgefile.
    pub config: PathBuf,
    /// Reload when the Edgefile or a file it names changes.
    pub watch: bool,
    /// Worker threads serving TCP connections, each a single-threaded
    /// runtime; 0 serves them on the calling runtime (see [`Workers`]).
    pub workers: usize,
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions, registry: Arc<Registry>) -> Result<(), RunError> {
    let path = std::path::absolute(&opts.config).unwrap_or(opts.config.clone());
    let first = compile::load(&path, &registry).map_err(RunError::Config)?;
    let shutdown_timeout = first.global.shutdown_timeout;
    let admin_addr = first.admin;
    let storage = first.model.storage.clone();
    let workers = Workers::start(opts.workers).map_err(|e| RunError::Workers(e.to_string()))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (watched_tx, watched_rx) = watch::channel(Vec::new());
    let server = Arc::new(Server {
        path: path.clone(),
        registry,
        shared: Arc::new(Shared {
            current: ArcSwap::from_pointee(first),
            conns: Arc::new(Semaphore::new(0)),
            max_conns: std::sync::atomic::AtomicU32::new(0),
            shutdown: stop_rx,
            workers,
        }),
        listeners: tokio::sync::Mutex::new(BTreeMap::new()),
        generation: AtomicU64::new(0),
        watched: watched_tx,
    });
    // The first load goes through the same path as every reload.
    if let Err(diags) = server.apply(&mut *server.listeners.lock().await).await {
        return Err(RunError::Config(diags));
    }
    metrics::global().reloads.with_label_values(&["success"]).reset();
    if let Some(addr) = admin_addr {
        let listener = bind_tcp(addr).await?;
        let bound = listener.local_addr().unwrap_or(addr);
        info!(admin = %bound, "admin API listening");
        if addr.port() == 0 {
            crate::admin::record_address(&storage, bound);
        }
        tokio::spawn(crate::admin::serve(listener, server.clone()));
    }
    if opts.watch {
        tokio::spawn(watch_files(server.clone(), watched_rx));
    }
    tokio::spawn(crate::authority::keep_fresh());
    tokio::spawn(renew_server_certs(server.clone()));
    let snap = server.current();
    info!(
        config = %path.display(),
        sites = snap.sites.len(),
        generation = server.generation(),
        workers = server.shared.workers.len(),
        "edge is ready"
    );
    drop(snap);

    wait_for_stop(&server).await?;
    info!("shutting down: no new connections; open ones get {:?} to finish", shutdown_timeout);
    let _ = stop_tx.send(true);
    let max = server.shared.max_conns.load(Ordering::Relaxed);
    let all = server.shared.conns.acquire_many(max);
    match tokio::time::timeout(shutdown_timeout, all).await {
        Ok(_) => info!("all connections closed"),
        Err(_) => warn!("shutdown timeout: closing the connections still open"),
    }
    Ok(())
}

/// Reloads when a `tls internal` server certificate is due for renewal: the
/// reload issues the new one, new connections get it, open ones keep theirs.
async fn renew_server_certs(server: Arc<Server>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let due = server.current().sites.iter().filter_map(|s| s.renew_at).min();
        if due.is_some_and(|t| t <= unix_now()) {
            let _ = server.reload("server certificate renewal").await;
        }
    }
}

async fn wait_for_stop(server: &Server) -> Result<(), RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let sig = |k| signal(k).map_err(|e| RunError::Signals(e.to_string()));
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut hup = sig(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM received"); return Ok(()) }
            _ = int.recv() => { info!("SIGINT received"); return Ok(()) }
            _ = hup.recv() => { let _ = server.reload("SIGHUP").await; }
        }
    }
}

/// Reloads when the Edgefile or a file it names changes, however the editor
/// saves (in place, write-and-rename, delete-and-create): the folders are
/// watched, events for the named files are debounced, then one reload runs.
async fn watch_files(server: Arc<Server>, mut files: watch::Receiver<Vec<PathBuf>>) {
    use notify::{RecursiveMode, Watcher};
    use std::collections::HashSet;
    const DEBOUNCE: Duration = Duration::from_millis(250);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !ev.kind.is_access() {
                let _ = tx.send(ev.paths);
            }
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch files; reload with SIGHUP or `edge reload`");
            return;
        }
    };
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    loop {
        let wanted: Vec<PathBuf> = files.borrow_and_update().clone();
        let names: HashSet<PathBuf> = wanted.iter().cloned().collect();
        {
            let want_dirs: HashSet<PathBuf> = wanted.iter().filter_map(|f| f.parent().map(PathBuf::from)).collect();
            for d in dirs.difference(&want_dirs) {
                let _ = watcher.unwatch(d);
            }
            for d in want_dirs.difference(&dirs) {
                if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                    warn!(dir = %d.display(), error = %e, "cannot watch folder");
                }
            }
            dirs = want_dirs;
        }
        tokio::select! {
            changed = files.changed() => if changed.is_err() { return },
            ev = rx.recv() => {
                let Some(paths) = ev else { return };
                if !paths.iter().any(|p| names.contains(p)) {
                    continue;
                }
                // Let the editor finish: wait until no event came for DEBOUNCE.
                while let Ok(Some(_)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                debug!("watched file changed");
                let _ = server.reload("file change").await;
            }
        }
    }
}

/// Binds TCP and, for HTTP/3, UDP on the same address and port (with port
/// 0, on a port free for both).
async fn bind_pair(addr: SocketAddr, http3: bool) -> Result<(TcpListener, Option<std::net::UdpSocket>), RunError> {
    let mut attempts = 0;
    loop {
        let tcp = bind_tcp(addr).await?;
        if !http3 {
            return Ok((tcp, None));
        }
        let bound = tcp.local_addr().map_err(|e| RunError::Bind { addr, reason: e.to_string() })?;
        match std::net::UdpSocket::bind(bound) {
            Ok(udp) => return Ok((tcp, Some(udp))),
            Err(_) if addr.port() == 0 && attempts < 16 => attempts += 1,
            Err(e) => return Err(RunError::Bind { addr, reason: format!("udp: {}", crate::util::io_reason(&e)) }),
        }
    }
}

/// Chooses the site of a QUIC handshake from the current snapshot, and counts
/// the refusals.
struct EndpointSites {
    shared: Arc<Shared>,
    key: SocketAddr,
    local: std::net::IpAddr,
}

impl crate::quic::SiteSelector for EndpointSites {
    fn select(&self, sni: Option<&str>) -> Option<Arc<rustls::ServerConfig>> {
        let snap = self.shared.current.load();
        let spec = snap.listener(&self.key)?;
        let site = match sni {
            Some(name) => spec.index.lookup(name),
            None => spec.index.lookup_ip(self.local),
        }?;
        Some(snap.sites[site].quic_tls.clone())
    }

    fn refused(&self, config: Option<&Arc<rustls::ServerConfig>>, class: HandshakeResult) {
        let snap = self.shared.current.load();
        match config.and_then(|c| snap.sites.iter().find(|s| Arc::ptr_eq(&s.quic_tls, c))) {
            Some(site) => site.metrics.handshake(Transport::Quic, class),
            None => metrics::global().unsited(Transport::Quic, class),
        }
        debug!(result = class.as_str(), transport = "quic", "handshake refused");
    }
}

async fn quic_accept_loop(
    endpoint: quinn::Endpoint,
    key: SocketAddr,
    shared: Arc<Shared>,
    mut removed: watch::Receiver<bool>,
) {
    let mut stop = shared.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            _ = stop.changed() => { endpoint.set_server_config(None); return }
            _ = removed.changed() => return,
        };
        let Ok(permit) = shared.conns.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let stop = shared.shutdown.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    let snap = shared.current.load_full();
                    let info = crate::quic::handshake_info(&conn);
                    let site =
                        info.as_ref().and_then(|i| snap.sites.iter().find(|s| Arc::ptr_eq(&s.quic_tls, &i.config)));
                    if let Some(site) = site {
                        site.metrics.handshake(Transport::Quic, HandshakeResult::Ok);
                    }
                    metrics::global()
                        .handshake_seconds
                        .with_label_values(&["quic"])
                        .observe(started.elapsed().as_secs_f64());
                    let local = SocketAddr::new(conn.local_ip().unwrap_or(key.ip()), key.port());
                    crate::h3::serve_connection(conn, snap, info, key, local, stop).await;
                }
                Err(e) => {
                    // Refusals by this endpoint were counted when they happened;
                    // anything else (the client gave up, timed out) is an error
                    // before a site could be told.
                    if crate::quic::classify(&e) == HandshakeResult::Error && !crate::quic::is_local_refusal(&e) {
                        metrics::global().unsited(Transport::Quic, HandshakeResult::Error);
                    }
                    debug!(%remote, error = %e, "QUIC handshake failed");
                }
            }
            drop(permit);
        });
    }
}

async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, RunError> {
    let err = |e: io::Error| RunError::Bind { addr, reason: crate::util::io_reason(&e) };
    let sock =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.map_err(err)?;
    sock.set_reuseaddr(true).map_err(err)?;
    sock.bind(addr).map_err(err)?;
    sock.listen(1024).map_err(err)
}

async fn accept_loop(
    listener: TcpListener,
    key: SocketAddr,
    shared: Arc<Shared>,
    mut removed: watch::Receiver<bool>,
    alt_svc: Arc<ArcSwap<Option<::http::HeaderValue>>>,
) {
    let mut stop = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
            _ = removed.changed() => return,
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
        let alt_svc = Option::clone(&alt_svc.load());
        let serving = shared.clone();
        shared.workers.serve(stream, move |stream| async move {
            serve_tcp(stream, remote, key, &serving, alt_svc).await;
            drop(permit);
        });
    }
}

async fn serve_tcp(
    stream: TcpStream,
    remote: SocketAddr,
    key: SocketAddr,
    shared: &Shared,
    alt_svc: Option<::http::HeaderValue>,
) {
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
    let started = Instant::now();
    let m = metrics::global();
    let count = |site: Option<usize>, result: HandshakeResult| match site {
        Some(i) => snap.sites[i].metrics.handshake(Transport::Tcp, result),
        None => m.unsited(Transport::Tcp, result),
    };
    let (site, sni, tls) = match tokio::time::timeout(snap.global.handshake_timeout, handshake).await {
        Ok(Ok(x)) => x,
        Ok(Err((result, site, reason))) => {
            count(site, result);
            let site = site.map(|i| snap.sites[i].name.to_string()).unwrap_or_default();
            debug!(%remote, site, result = result.as_str(), reason, "handshake refused");
            return;
        }
        Err(_) => {
            debug!(%remote, "handshake timed out");
            return;
        }
    };
    m.handshake_seconds.with_label_values(&["tcp"]).observe(started.elapsed().as_secs_f64());
    count(Some(site), HandshakeResult::Ok);

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
    // A resumed session skips the verifier: check revocation again here.
    if client.as_deref().is_some_and(|id| snap.sites[site].revoked(id)) {
        snap.sites[site].metrics.handshake(Transport::Tcp, HandshakeResult::Revoked);
        debug!(%remote, "resumed session of a revoked certificate; closing");
        return;
    }
    let limits = snap.sites[site].limits.clone();
    let h2 = conn.alpn_protocol() == Some(b"h2");
    let _open = ConnectionGuard::open(if h2 { 1 } else { 0 });
    let info = Arc::new(ConnInfo {
        snap: snap.clone(),
        listener: key,
        site,
        remote,
        local,
        tls_version,
        client,
        sni,
        alt_svc,
    });
    drop(snap);

    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Activity { inner: tls, shared: activity.clone(), count: 0 });
    let svc = service_fn(move |req| {
        let info = info.clone();
        async move { Ok::<_, Infallible>(http::handle(req, &info).await) }
    });
    let stop = shared.shutdown.clone();
    // The protocol is the one ALPN settled (HTTP/2 over TLS needs ALPN, RFC
    // 9113 3.2): no sniffing of the first bytes.
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_size.min(u32::MAX as u64) as u32)
            .max_concurrent_streams(250)
            .serve_connection(io, svc);
        let shutdown = hyper::server::conn::http2::Connection::graceful_shutdown;
        drive(conn, shutdown, remote, stop, &activity, limits.idle_timeout).await;
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .max_buf_size(limits.max_header_size.clamp(8192, 16 << 20) as usize)
            .max_headers(limits.max_headers)
            .header_read_timeout(limits.idle_timeout)
            // One buffer per response: rustls makes one record of it either
            // way, and skips gathering the slices (about 800 fewer
            // instructions per request, measured with callgrind).
            .writev(false)
            .serve_connection(io, svc);
        let shutdown = hyper::server::conn::http1::Connection::graceful_shutdown;
        drive(conn, shutdown, remote, stop, &activity, limits.idle_timeout).await;
    }
}

/// Runs a connection to its end: closed gracefully on shutdown, or after the
/// idle timeout without a byte moved.
async fn drive<C: Future<Output = Result<(), hyper::Error>>>(
    conn: C,
    graceful_shutdown: fn(Pin<&mut C>),
    remote: SocketAddr,
    mut stop: watch::Receiver<bool>,
    activity: &AtomicU64,
    idle_timeout: Duration,
) {
    tokio::pin!(conn);
    // Idle: no byte read or written for four ticks of a quarter of the
    // idle timeout (so closed between 1 and 1.25 times it). No clock is read
    // on the I/O path.
    const QUIET_TICKS: u32 = 4;
    let period = (idle_timeout / QUIET_TICKS).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let (mut seen, mut quiet) = (0u64, 0u32);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                match r {
                    // HTTP/1.1's header read timeout, which is the idle
                    // timeout: no complete request in that time.
                    Err(e) if e.is_timeout() => debug!(%remote, "idle timeout (no complete request head)"),
                    Err(e) => debug!(%remote, error = %e, "connection ended with an error"),
                    Ok(()) => {}
                }
                return;
            }
            _ = stop.changed(), if !closing => {
                closing = true;
                graceful_shutdown(conn.as_mut());
            }
            _ = tick.tick(), if !closing => {
                let now = activity.load(Ordering::Relaxed);
                if now == seen {
                    quiet += 1;
                } else {
                    (seen, quiet) = (now, 0);
                }
                if quiet >= QUIET_TICKS {
                    debug!(%remote, "idle timeout");
                    closing = true;
                    graceful_shutdown(conn.as_mut());
                }
            }
        }
    }
}

/// Counts reads and writes that moved bytes, for the idle timeout.
struct Activity<T> {
    inner: T,
    shared: Arc<AtomicU64>,
    count: u64,
}

impl<T> Activity<T> {
    fn touch(&mut self) {
        self.count = self.count.wrapping_add(1);
        self.shared.store(self.count, Ordering::Relaxed);
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
