//! The typed Edgefile: what the operator wrote, checked for shape, with the
//! source span of everything a later stage may need to point at.

use edge_plugin_api::{Directive, Span};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A value with the place it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub span: Span,
}

impl<T> Spanned<T> {
    /// Pairs a value with its span.
    pub fn new(value: T, span: Span) -> Self {
        Spanned { value, span }
    }
}

/// The whole Edgefile.
#[derive(Debug, Clone)]
pub struct Model {
    /// The Edgefile's path, as given.
    pub path: PathBuf,
    /// The Edgefile's folder: relative paths resolve against it.
    pub base_dir: PathBuf,
    /// Where the admin API listens; `None` when `admin "off"`.
    pub admin: Option<SocketAddr>,
    /// CA keys and the ledger.
    pub storage: PathBuf,
    /// Built-in certificate authorities.
    pub cas: Vec<CaModel>,
    /// Virtual hosts.
    pub sites: Vec<SiteModel>,
    /// Process-wide limits.
    pub global: GlobalLimits,
}

/// Limits that apply to the whole process.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalLimits {
    /// Open client connections at most; past it, new ones are closed at once.
    pub max_connections: usize,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time open connections get to finish on SIGINT/SIGTERM.
    pub shutdown_timeout: Duration,
}

impl Default for GlobalLimits {
    fn default() -> Self {
        GlobalLimits {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// `ca "NAME" { ... }`.
#[derive(Debug, Clone)]
pub struct CaModel {
    /// Its name, as `tls internal ca=` and `trust ca=` refer to it.
    pub name: Spanned<String>,
    /// Lifetime of the client certificates it issues.
    pub cert_lifetime: Duration,
    /// Lifetime of enrollment tokens.
    pub token_lifetime: Duration,
}

/// A name a site answers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SiteName {
    /// `app.localhost`
    Exact(String),
    /// `*.app.localhost`, stored as `app.localhost`: one label to its left.
    Wildcard(String),
    /// `127.0.0.1`: a connection without SNI arriving on this address.
    Ip(IpAddr),
}

impl std::fmt::Display for SiteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SiteName::Exact(n) => f.write_str(n),
            SiteName::Wildcard(n) => write!(f, "*.{n}"),
            SiteName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// `listen "ADDR" http3=#false`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenModel {
    /// The address as configured (port 0 binds an ephemeral port).
    pub addr: Spanned<SocketAddr>,
    /// Whether HTTP/3 is served on the same address over UDP.
    pub http3: bool,
}

/// Where a site's server certificate comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsModel {
    /// `tls cert="..." key="..."`
    Files {
        /// The certificate chain (PEM), leaf first.
        cert: Spanned<PathBuf>,
        /// The private key (PEM).
        key: Spanned<PathBuf>,
    },
    /// `tls internal ca="NAME"`
    Internal {
        /// The built-in CA that issues it.
        ca: Spanned<String>,
    },
}

/// `client-auth off|optional|require`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Never ask for a certificate.
    Off,
    /// Ask; verify one if given.
    Optional,
    /// Refuse the handshake without a valid, allowed certificate.
    Require,
}

impl Mode {
    /// The Edgefile spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Optional => "optional",
            Mode::Require => "require",
        }
    }
}

/// `trust file="..."` or `trust ca="NAME"`.
#[derive(Debug, Clone, PartialEq)]
pub enum TrustModel {
    /// CA certificates from a PEM file.
    File(Spanned<PathBuf>),
    /// A built-in CA.
    Ca(Spanned<String>),
}

/// One property of an `allow` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// The subject CN equals this.
    Cn(String),
    /// One of the subject's OUs equals this.
    Ou(String),
    /// One DNS SAN equals this.
    SanDns(String),
    /// One URI SAN equals this.
    SanUri(String),
    /// `sha256:` + lowercase hex of the DER leaf.
    Fingerprint(String),
}

/// `allow ...`: every property of one rule must match; the certificate must
/// match at least one rule when any is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// The properties, all of which must match.
    pub all: Vec<Matcher>,
}

/// A `client-auth` block.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientAuthModel {
    /// The mode.
    pub mode: Spanned<Mode>,
    /// Trust anchors.
    pub trust: Vec<TrustModel>,
    /// CRL files for file-trusted CAs.
    pub crls: Vec<Spanned<PathBuf>>,
    /// Allow rules.
    pub allow: Vec<AllowRule>,
}

impl ClientAuthModel {
    /// `client-auth off`.
    pub fn off() -> Self {
        ClientAuthModel { mode: Spanned::new(Mode::Off, Span::default()), trust: vec![], crls: vec![], allow: vec![] }
    }
}

/// A route's path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `/exact`
    Exact(String),
    /// `/admin/*`, stored as `/admin`; `/*` is stored as the empty string.
    Prefix(String),
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(p) => f.write_str(p),
            Pattern::Prefix(p) => write!(f, "{p}/*"),
        }
    }
}

/// `route "PATTERN" { ... }` (or the handlers written directly in a site).
#[derive(Debug, Clone)]
pub struct RouteModel {
    /// The pattern.
    pub pattern: Spanned<Pattern>,
    /// A stricter client-auth for this route, checked per request.
    pub client_auth: Option<ClientAuthModel>,
    /// Request body limit for this route.
    pub max_body: Option<u64>,
    /// Handler directives in order, for the plugin registry.
    pub handlers: Vec<Directive>,
    /// The route node.
    pub span: Span,
}

/// Per-site limits.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteLimits {
    /// All request headers together, bytes (431 past it).
    pub max_header_size: u64,
    /// Request headers, count (431 past it).
    pub max_headers: usize,
    /// Request body default for the site's routes (413 past it).
    pub max_body: u64,
    /// An idle connection is closed after this.
    pub idle_timeout: Duration,
}

impl Default for SiteLimits {
    fn default() -> Self {
        SiteLimits {
            max_header_size: 64 * 1024,
            max_headers: 100,
            max_body: 10 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// `site "NAME"... { ... }`.
#[derive(Debug, Clone)]
pub struct SiteModel {
    /// The names, each with its span.
    pub names: Vec<Spanned<SiteName>>,
    /// Addresses it listens on.
    pub listens: Vec<ListenModel>,
    /// Its server certificate.
    pub tls: Option<TlsModel>,
    /// Its client-certificate policy.
    pub client_auth: ClientAuthModel,
    /// Routes.
    pub routes: Vec<RouteModel>,
    /// Limits.
    pub limits: SiteLimits,
    /// `enrollment ca="NAME"`.
    pub enrollment: Option<Spanned<String>>,
    /// The site node.
    pub span: Span,
}

impl SiteModel {
    /// The site's first name, which names it in logs and metrics.
    pub fn label(&self) -> String {
        self.names.first().map(|n| n.value.to_string()).unwrap_or_default()
    }
}
