//! Model -> immutable [`Snapshot`]: everything a connection needs, built once.
//!
//! Files named by the Edgefile are read here (certificates, keys, CRLs, trust
//! bundles), plugins build their handlers here, and every problem is reported
//! at the span that named it. A Snapshot that exists is complete and valid.

use crate::config::{
    self, ClientAuthModel, Diagnostic, GlobalLimits, Mode, Model, Pattern, SiteLimits, SiteName, Source, TlsModel,
    TrustModel,
};
use crate::policy::{RouteTable, SiteIndex};
use crate::tls::{self, SiteVerifier};
use edge_plugin_api::{BuildContext, BuildError, Handler, Kind, Registry, Span};
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

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
}

/// One compiled site.
pub struct Site {
    /// Its first name, for logs and placeholders.
    pub name: Arc<str>,
    /// Every name.
    pub names: Vec<SiteName>,
    /// Its TLS configuration, client verifier included.
    pub tls: Arc<rustls::ServerConfig>,
    /// The same for QUIC (HTTP/3): see [`crate::quic::quic_config`].
    pub quic_tls: Arc<rustls::ServerConfig>,
    /// Its client-auth mode.
    pub mode: Mode,
    /// Routes, and the table that finds them.
    pub routes: Vec<Route>,
    /// Route lookup.
    pub table: RouteTable,
    /// Limits.
    pub limits: SiteLimits,
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

/// Reads, parses and compiles the Edgefile at `path`.
pub fn load(path: &Path, registry: &Registry) -> Result<Snapshot, Vec<Diagnostic>> {
    let source = Source::read(path).map_err(|d| vec![d])?;
    let names: Vec<&str> = registry.names().collect();
    let (model, mut diags) = config::parse_partial(&source, &names)?;
    match compile(&model, &source, registry) {
        Ok(snap) if diags.is_empty() => Ok(snap),
        Ok(_) => Err(diags),
        Err(more) => {
            diags.extend(more);
            Err(diags)
        }
    }
}

/// Compiles a parsed Edgefile.
pub fn compile(model: &Model, source: &Source, registry: &Registry) -> Result<Snapshot, Vec<Diagnostic>> {
    let mut c = Compiler { src: source, diags: Vec::new() };
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
            });
            // One socket serves every site listening on it: HTTP/3 is off
            // only if every site says so.
            spec.http3 |= l.http3;
            for n in &site.names {
                spec.index.insert(&n.value, i);
            }
        }
    }
    if c.diags.is_empty() {
        Ok(Snapshot { sites, listeners, global: model.global.clone(), admin: model.admin })
    } else {
        Err(c.diags)
    }
}

struct Compiler<'a> {
    src: &'a Source,
    diags: Vec<Diagnostic>,
}

const NO_CA_YET: &str =
    "the built-in CA (`tls internal`, `trust ca=`, `enrollment`) is not available in this build yet";

impl Compiler<'_> {
    fn err(&mut self, at: Span, message: impl Into<String>, hint: Option<String>) {
        self.diags.push(self.src.diag(at, message, hint));
    }

    fn build_err(&mut self, e: BuildError) {
        self.diags.push(self.src.diag(e.span, e.message, e.hint));
    }

    fn site(&mut self, site: &config::SiteModel, registry: &Registry, bcx: &BuildContext) -> Option<Site> {
        let before = self.diags.len();
        let verifier = self.verifier(&site.client_auth);
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
                self.err(ca.span, NO_CA_YET, Some("use `tls cert=\"...\" key=\"...\"` for now".into()));
                None
            }
            None => None,
        };
        if let Some(e) = &site.enrollment {
            self.err(e.span, NO_CA_YET, None);
        }
        let mut routes = Vec::new();
        for r in &site.routes {
            if let Some(route) = self.route(r, site, registry, bcx) {
                routes.push(route);
            }
        }
        if self.diags.len() > before {
            return None;
        }
        let (certs, key) = certified?;
        let verifier = verifier?;
        let cfg = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| self.err(site.span, format!("TLS setup failed: {e}"), None))
            .ok()?;
        let cfg = match verifier {
            Some(v) => cfg.with_client_cert_verifier(v),
            None => cfg.with_no_client_auth(),
        };
        let mut cfg = cfg
            .with_single_cert(certs, key)
            .map_err(|e| self.err(site.span, format!("TLS setup failed: {e}"), None))
            .ok()?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let table = RouteTable::new(routes.iter().map(|r: &Route| &r.pattern));
        Some(Site {
            name: Arc::from(site.label()),
            names: site.names.iter().map(|n| n.value.clone()).collect(),
            quic_tls: crate::quic::quic_config(&cfg),
            tls: Arc::new(cfg),
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
    ) -> Option<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>> {
        if ca.mode.value == Mode::Off {
            return Some(None);
        }
        let before = self.diags.len();
        let mut roots = RootCertStore::empty();
        for t in &ca.trust {
            match t {
                TrustModel::File(f) => match tls::load_certs(&f.value) {
                    Ok(certs) => {
                        for c in certs {
                            let c: CertificateDer<'static> = c;
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
                TrustModel::Ca(c) => self.err(c.span, NO_CA_YET, Some("use `trust file=\"ca.pem\"` for now".into())),
            }
        }
        let mut crls = Vec::new();
        for f in &ca.crls {
            match tls::load_crl(&f.value) {
                Ok(c) => crls.push(c),
                Err(e) => self.err(f.span, e, Some("crl file= names a CRL, PEM or DER".into())),
            }
        }
        if self.diags.len() > before {
            return None;
        }
        match SiteVerifier::new(ca.mode.value, roots, crls, ca.allow.clone()) {
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
