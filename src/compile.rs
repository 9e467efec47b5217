//! Model -> immutable [`Snapshot`]: everything a connection needs, built once.
//!
//! Files named by the Edgefile are read here (certificates, keys, CRLs, trust
//! bundles), plugins build their handlers here, and every problem is reported
//! at the span that named it. A Snapshot that exists is complete and valid.

use crate::authority::{self, Authority};
use crate::config::{
    self, ClientAuthModel, Diagnostic, GlobalLimits, Mode, Model, Pattern, SiteLimits, SiteName, Source, TlsModel,
    TrustModel,
};
use crate::est::{self, Est};
use crate::metrics::SiteMetrics;
use crate::policy::{RouteTable, SiteIndex};
use crate::tls::{self, SiteVerifier};
use edge_plugin_api::ClientIdentity;
use edge_plugin_api::{BuildContext, BuildError, Handler, Kind, Registry, Span};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::RootCertStore;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A compiled Edgefile.
pub struct Snapshot {
    /// Sites in Edgefile order.
    pub sites: Vec<Arc<Site>>,
    /// Listeners by configured address.
    pub listeners: BTreeMap<SocketAddr, ListenerSpec>,
    /// Process-wide limits.
    pub global: GlobalLimits,
    /// The admin API address, if on.
    pub admin: Option<SocketAddr>,
    /// Every file the Edgefile names that a change to should reload (the
    /// Edgefile itself, certificates, keys, CRLs, trust bundles).
    pub watched: Vec<PathBuf>,
    /// The model it was compiled from (for `GET /config`).
    pub model: Model,
}

impl Snapshot {
    /// The listener configured as `addr`.
    pub fn listener(&self, addr: &SocketAddr) -> Option<&ListenerSpec> {
        self.listeners.get(addr)
    }
}

/// One listening address and the sites reachable on it.
pub struct ListenerSpec {
    /// As configured (port 0 binds an ephemeral port).
    pub addr: SocketAddr,
    /// Serve HTTP/3 on UDP too.
    pub http3: bool,
    /// Site indexes (into [`Snapshot::sites`]) by name.
    pub index: SiteIndex,
    /// Line and column of its first `listen`, for diagnostics.
    pub at: (usize, usize),
}

/// One compiled site.
pub struct Site {
    /// Its first name, for logs and placeholders.
    pub name: Arc<str>,
    /// Every name.
    pub names: Vec<SiteName>,
    /// Its TLS configuration for TCP, client verifier included.
    pub tls: Arc<rustls::ServerConfig>,
    /// The same for QUIC: ALPN h3, no 0-RTT (see [`crate::quic::quic_config`]).
    pub quic_tls: Arc<rustls::ServerConfig>,
    /// Its client-auth mode.
    pub mode: Mode,
    /// Routes, and the table that finds them.
    pub routes: Vec<Route>,
    /// Route lookup.
    pub table: RouteTable,
    /// Limits.
    pub limits: SiteLimits,
    /// Its metric series.
    pub metrics: SiteMetrics,
    /// Unix time its server certificate expires.
    pub cert_not_after: i64,
    /// Built-in CAs it trusts: their revocations are checked on every
    /// connection, resumed ones included.
    pub authorities: Vec<Arc<Authority>>,
    /// `tls internal`: Unix time its server certificate is due for renewal.
    pub renew_at: Option<i64>,
}

impl Site {
    /// Whether a client certificate is revoked by one of the built-in CAs
    /// the site trusts (in memory).
    pub fn revoked(&self, id: &ClientIdentity) -> bool {
        if self.authorities.is_empty() {
            return false;
        }
        let Some(serial) = crate::pki::serial_bytes(&id.serial) else { return false };
        self.authorities.iter().any(|a| a.is_revoked(&serial))
    }
}

/// A throwaway self-signed certificate for `names` (checking only).
fn ephemeral(names: &[String]) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec()).ok()?;
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).ok()?;
    Some((vec![ck.cert.der().clone()], key))
}

/// A throwaway CA certificate (checking only).
fn ephemeral_ca() -> Vec<u8> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::KeyPair::generate().and_then(|k| p.self_signed(&k)).map(|c| c.der().to_vec()).unwrap_or_default()
}

/// A route's own, stricter client-auth, checked per request.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    /// `require`: no certificate -> 403.
    pub mode: Mode,
    /// The certificate must match one of these (403 otherwise).
    pub allow: Vec<config::AllowRule>,
}

/// One compiled route.
pub struct Route {
    /// Its pattern.
    pub pattern: Pattern,
    /// A stricter client-auth, if any.
    pub policy: Option<RoutePolicy>,
    /// Request body limit, bytes.
    pub max_body: u64,
    /// Middleware in order, then the terminal handler.
    pub chain: Vec<Box<dyn Handler>>,
}

/// What compiling may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileMode {
    /// For serving: built-in CAs are opened (created on first use), `tls
    /// internal` certificates issued when due.
    Serve,
    /// For `edge validate`: nothing is created or written; `tls internal`
    /// and not-yet-created CAs use throwaway in-memory certificates.
    Check,
}

/// Reads, parses and compiles the Edgefile at `path` for serving.
pub fn load(path: &Path, registry: &Registry) -> Result<Snapshot, Vec<Diagnostic>> {
    load_with(path, registry, CompileMode::Serve)
}

/// Reads, parses and compiles the Edgefile at `path`.
pub fn load_with(path: &Path, registry: &Registry, mode: CompileMode) -> Result<Snapshot, Vec<Diagnostic>> {
    let source = Source::read(path).map_err(|d| vec![d])?;
    let names: Vec<&str> = registry.names().collect();
    let (model, mut diags) = config::parse_partial(&source, &names)?;
    match compile(&model, &source, registry, mode) {
        Ok(snap) if diags.is_empty() => Ok(snap),
        Ok(_) => Err(diags),
        Err(more) => {
            diags.extend(more);
            Err(diags)
        }
    }
}

/// Compiles a parsed Edgefile.
pub fn compile(
    model: &Model,
    source: &Source,
    registry: &Registry,
    mode: CompileMode,
) -> Result<Snapshot, Vec<Diagnostic>> {
    let mut c = Compiler { src: source, diags: Vec::new(), model, mode };
    let bcx = BuildContext { base_dir: model.base_dir.clone() };
    let mut sites = Vec::new();
    for site in &model.sites {
        if let Some(s) = c.site(site, registry, &bcx) {
            sites.push(Arc::new(s));
        }
    }
    let mut listeners: BTreeMap<SocketAddr, ListenerSpec> = BTreeMap::new();
    for (i, site) in model.sites.iter().enumerate() {
        for l in &site.listens {
            let spec = listeners.entry(l.addr.value).or_insert_with(|| ListenerSpec {
                addr: l.addr.value,
                http3: l.http3,
                index: SiteIndex::default(),
                at: source.line_col(l.addr.span.offset),
            });
            // One socket serves every site listening on it: HTTP/3 is off
            // only if every site says so.
            spec.http3 |= l.http3;
            for n in &site.names {
                spec.index.insert(&n.value, i);
            }
        }
    }
    let mut watched = vec![model.path.clone()];
    for site in &model.sites {
        if let Some(TlsModel::Files { cert, key }) = &site.tls {
            watched.push(cert.value.clone());
            watched.push(key.value.clone());
        }
        for t in &site.client_auth.trust {
            if let TrustModel::File(f) = t {
                watched.push(f.value.clone());
            }
        }
        watched.extend(site.client_auth.crls.iter().map(|c| c.value.clone()));
    }
    watched.sort();
    watched.dedup();
    if c.diags.is_empty() {
        Ok(Snapshot {
            sites,
            listeners,
            global: model.global.clone(),
            admin: model.admin,
            watched,
            model: model.clone(),
        })
    } else {
        Err(c.diags)
    }
}

struct Compiler<'a> {
    src: &'a Source,
    diags: Vec<Diagnostic>,
    model: &'a Model,
    mode: CompileMode,
}

impl Compiler<'_> {
    fn err(&mut self, at: Span, message: impl Into<String>, hint: Option<String>) {
        self.diags.push(self.src.diag(at, message, hint));
    }

    fn build_err(&mut self, e: BuildError) {
        self.diags.push(self.src.diag(e.span, e.message, e.hint));
    }

    /// The built-in CA `name` (serving only; `None` when checking or on error).
    fn authority(&mut self, name: &config::Spanned<String>) -> Option<Arc<Authority>> {
        if self.mode == CompileMode::Check {
            return None;
        }
        match authority::open(&self.model.storage, &name.value) {
            Ok(a) => Some(a),
            Err(e) => {
                self.err(
                    name.span,
                    format!("CA {:?}: {e}", name.value),
                    Some(format!("storage is {}", self.model.storage.display())),
                );
                None
            }
        }
    }

    fn ca_model(&self, name: &str) -> Option<&config::CaModel> {
        self.model.cas.iter().find(|c| c.name.value == name)
    }

    fn site(&mut self, site: &config::SiteModel, registry: &Registry, bcx: &BuildContext) -> Option<Site> {
        let before = self.diags.len();
        let mut authorities = Vec::new();
        let verifier = self.verifier(&site.client_auth, &mut authorities);
        let mut renew_at = None;
        let certified = match &site.tls {
            Some(TlsModel::Files { cert, key }) => {
                let certs = tls::load_certs(&cert.value)
                    .map_err(|e| self.err(cert.span, e, Some("cert= names a PEM certificate chain, leaf first".into())))
                    .ok();
                let pkey = tls::load_key(&key.value).map_err(|e| self.err(key.span, e, None)).ok();
                match (certs, pkey) {
                    (Some(certs), Some(pkey)) => {
                        match rustls::sign::CertifiedKey::from_der(certs.clone(), pkey.clone_key(), &tls::provider()) {
                            Ok(_) => Some((certs, pkey)),
                            Err(e) => {
                                let msg = match e {
                                    rustls::Error::InconsistentKeys(_) => format!(
                                        "the key {} does not match the certificate {}",
                                        key.value.display(),
                                        cert.value.display()
                                    ),
                                    other => format!("the key {} cannot be used: {other}", key.value.display()),
                                };
                                self.err(
                                    key.span,
                                    msg,
                                    Some("key= must be the private key of cert='s first certificate".into()),
                                );
                                None
                            }
                        }
                    }
                    _ => None,
                }
            }
            Some(TlsModel::Internal { ca }) => {
                let names: Vec<String> = site.names.iter().map(|n| n.value.to_string()).collect();
                match self.authority(ca) {
                    Some(a) => match a.server_cert(&site.label(), &names) {
                        Ok((chain, key, not_after)) => {
                            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(chain.as_bytes()).collect();
                            let key = PrivateKeyDer::from_pem_slice(key.as_bytes());
                            match (certs, key) {
                                (Ok(c), Ok(k)) => {
                                    let (from, to) = (
                                        not_after.unix_timestamp() - authority::SERVER_CERT_LIFETIME.as_secs() as i64,
                                        not_after.unix_timestamp(),
                                    );
                                    renew_at = Some(from + (to - from) * 2 / 3);
                                    Some((c, k))
                                }
                                _ => {
                                    self.err(ca.span, "the issued server certificate does not parse", None);
                                    None
                                }
                            }
                        }
                        Err(e) => {
                            self.err(ca.span, format!("cannot issue the server certificate: {e}"), None);
                            None
                        }
                    },
                    None if self.mode == CompileMode::Check => ephemeral(&names),
                    None => None,
                }
            }
            None => None,
        };
        let mut routes = Vec::new();
        if let Some(e) = &site.enrollment {
            if site.routes.iter().any(|r| r.pattern.value == Pattern::Prefix(est::PREFIX.into())) {
                self.err(
                    e.span,
                    format!("`enrollment` serves {}/*, and this site has a route of its own there", est::PREFIX),
                    None,
                );
            }
            let lifetime = self.ca_model(&e.value).map(|c| c.cert_lifetime).unwrap_or(Duration::from_secs(86_400));
            if let Some(a) = self.authority(e) {
                routes.push(Route {
                    pattern: Pattern::Prefix(est::PREFIX.into()),
                    policy: None,
                    max_body: est::MAX_BODY,
                    chain: vec![Box::new(Est::new(a, lifetime))],
                });
            }
        }
        for r in &site.routes {
            if let Some(route) = self.route(r, site, registry, bcx) {
                routes.push(route);
            }
        }
        if self.diags.len() > before {
            return None;
        }
        let (certs, key) = certified?;
        let cert_not_after = x509_parser::parse_x509_certificate(&certs[0])
            .map(|(_, c)| c.validity().not_after.timestamp())
            .unwrap_or(0);
        let verifier = verifier?;
        // The TCP config (TLS 1.2 and 1.3, h2 and http/1.1); QUIC's is
        // derived from it (same certificate and verifier, h3, see quic_config).
        let built = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .and_then(|b| {
                let b = match verifier {
                    Some(v) => b.with_client_cert_verifier(v),
                    None => b.with_no_client_auth(),
                };
                b.with_single_cert(certs, key)
            });
        let mut cfg = match built {
            Ok(c) => c,
            Err(e) => {
                self.err(site.span, format!("TLS setup failed: {e}"), None);
                return None;
            }
        };
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // The server's cipher order (see tls::provider), and one session
        // ticket rather than two: each costs an encryption and a write.
        cfg.ignore_client_order = true;
        cfg.send_tls13_tickets = 1;
        let quic_tls = crate::quic::quic_config(&cfg);
        let cfg = Arc::new(cfg);
        let table = RouteTable::new(routes.iter().map(|r: &Route| &r.pattern));
        Some(Site {
            authorities,
            renew_at,
            metrics: SiteMetrics::new(&site.label()),
            cert_not_after,
            name: Arc::from(site.label()),
            names: site.names.iter().map(|n| n.value.clone()).collect(),
            tls: cfg,
            quic_tls,
            mode: site.client_auth.mode.value,
            routes,
            table,
            limits: site.limits.clone(),
        })
    }

    /// `Some(None)`: no client auth; `Some(Some(v))`: a verifier; `None`: errors.
    fn verifier(
        &mut self,
        ca: &ClientAuthModel,
        authorities: &mut Vec<Arc<Authority>>,
    ) -> Option<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>> {
        if ca.mode.value == Mode::Off {
            return Some(None);
        }
        let before = self.diags.len();
        let mut roots = RootCertStore::empty();
        let mut roots_der: Vec<CertificateDer<'static>> = Vec::new();
        for t in &ca.trust {
            match t {
                TrustModel::File(f) => match tls::load_certs(&f.value) {
                    Ok(certs) => {
                        for c in certs {
                            let c: CertificateDer<'static> = c;
                            roots_der.push(c.clone());
                            if let Err(e) = roots.add(c) {
                                self.err(
                                    f.span,
                                    format!(
                                        "{} holds a certificate that cannot be a trust anchor: {e}",
                                        f.value.display()
                                    ),
                                    None,
                                );
                            }
                        }
                    }
                    Err(e) => self.err(f.span, e, Some("trust file= names a PEM file of CA certificates".into())),
                },
                TrustModel::Ca(c) => {
                    let der = match self.authority(c) {
                        Some(a) => {
                            let der = a.ca.cert_der().to_vec();
                            authorities.push(a);
                            der
                        }
                        // Checking: the CA's root if it exists, else a stand-in.
                        None if self.mode == CompileMode::Check => {
                            let pem = self.model.storage.join("ca").join(&c.value).join("ca.crt");
                            match tls::load_certs(&pem) {
                                Ok(mut certs) => certs.remove(0).to_vec(),
                                Err(_) => ephemeral_ca(),
                            }
                        }
                        None => continue,
                    };
                    roots_der.push(CertificateDer::from(der.clone()));
                    if let Err(e) = roots.add(CertificateDer::from(der)) {
                        self.err(c.span, format!("CA {:?} cannot be a trust anchor: {e}", c.value), None);
                    }
                }
            }
        }
        let anchors: Vec<CertificateDer<'static>> = roots_der;
        let mut crls = Vec::new();
        let mut index = tls::CrlIndex::default();
        for f in &ca.crls {
            match tls::load_crl(&f.value) {
                Ok(c) => match index.add(&c, &anchors) {
                    Ok(true) => {}
                    Ok(false) => crls.push(c),
                    Err(e) => self.err(f.span, format!("{}: {e}", f.value.display()), None),
                },
                Err(e) => self.err(f.span, e, Some("crl file= names a CRL, PEM or DER".into())),
            }
        }
        if self.diags.len() > before {
            return None;
        }
        match SiteVerifier::new(ca.mode.value, roots, crls, ca.allow.clone(), authorities.clone(), index) {
            Ok(v) => Some(Some(Arc::new(v))),
            Err(e) => {
                self.err(ca.mode.span, e, None);
                None
            }
        }
    }

    fn route(
        &mut self,
        r: &config::RouteModel,
        site: &config::SiteModel,
        registry: &Registry,
        bcx: &BuildContext,
    ) -> Option<Route> {
        let before = self.diags.len();
        let policy = r.client_auth.as_ref().map(|ca| {
            let site_mode = site.client_auth.mode.value;
            if site_mode == Mode::Off && !(ca.mode.value == Mode::Off && ca.allow.is_empty()) {
                self.err(
                    ca.mode.span,
                    "this route checks client certificates, but its site never asks for one (client-auth off)",
                    Some("set the site's client-auth to optional (or require) with a trust anchor".into()),
                );
            } else if ca.mode.value < site_mode {
                self.err(
                    ca.mode.span,
                    format!(
                        "a route can only tighten client-auth: the site says {}, this route says {}",
                        site_mode.as_str(),
                        ca.mode.value.as_str()
                    ),
                    Some(format!("use client-auth {} (or stricter) here", site_mode.as_str())),
                );
            }
            RoutePolicy { mode: ca.mode.value, allow: ca.allow.clone() }
        });
        let mut middleware = Vec::new();
        let mut terminal: Option<(Box<dyn Handler>, Span)> = None;
        for d in &r.handlers {
            let Some(plugin) = registry.get(&d.name) else {
                // The parser only lets registered names through.
                self.err(d.span, format!("no handler named `{}`", d.name), None);
                continue;
            };
            match plugin.build(d, bcx) {
                Ok(h) => match plugin.kind() {
                    Kind::Middleware => middleware.push(h),
                    Kind::Terminal => {
                        if let Some((_, first)) = &terminal {
                            let (l, c) = self.src.line_col(first.offset);
                            self.err(
                                d.span,
                                format!("this route already has a terminal handler (line {l}, column {c})"),
                                Some("a route answers with one of respond, reverse-proxy, file-server or redirect; split it into two routes".into()),
                            );
                        } else {
                            terminal = Some((h, d.span));
                        }
                    }
                },
                Err(errs) => errs.into_iter().for_each(|e| self.build_err(e)),
            }
        }
        if terminal.is_none() && self.diags.len() == before {
            self.err(
                r.pattern.span,
                format!("route `{}` has no terminal handler", r.pattern.value),
                Some("add one of: respond, reverse-proxy, file-server, redirect".into()),
            );
        }
        if self.diags.len() > before {
            return None;
        }
        let (t, _) = terminal?;
        middleware.push(t);
        Some(Route {
            pattern: r.pattern.value.clone(),
            policy,
            max_body: r.max_body.unwrap_or(site.limits.max_body),
            chain: middleware,
        })
    }
}
