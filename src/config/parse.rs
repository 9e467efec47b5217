//! KDL nodes -> [`Model`], collecting every problem.

use super::model::*;
use super::{Diagnostic, Source};
use edge_plugin_api::{parse_duration, parse_size, Arg, Directive, Prop, Span, Value};
use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOP: &[&str] = &["admin", "storage", "ca", "site", "max-connections", "handshake-timeout", "shutdown-timeout"];
const SITE: &[&str] = &[
    "listen",
    "tls",
    "client-auth",
    "route",
    "enrollment",
    "max-header-size",
    "max-headers",
    "max-body",
    "idle-timeout",
];
const ROUTE: &[&str] = &["client-auth", "max-body"];

/// Parses the KDL syntax only.
pub(crate) fn parse_kdl(source: &Source) -> Result<KdlDocument, Vec<Diagnostic>> {
    KdlDocument::parse_v2(&source.text).map_err(|e| {
        let mut out: Vec<Diagnostic> = e
            .diagnostics
            .iter()
            .map(|d| {
                let msg = d.message.clone().unwrap_or_else(|| "KDL syntax error".into());
                let hint = d.help.clone().or_else(|| Some("the Edgefile is KDL 2.0: https://kdl.dev".into()));
                source.diag(span(d.span), format!("syntax: {msg}"), hint)
            })
            .collect();
        if out.is_empty() {
            out.push(source.diag(Span::default(), "syntax: the file is not valid KDL 2.0", None));
        }
        out
    })
}

/// Parses an Edgefile into a [`Model`]. `handlers` are the directive names the
/// plugin registry knows; they may stand in a `route` (or directly in a site,
/// which makes an implicit `route "/*"`).
pub fn parse(source: &Source, handlers: &[&str]) -> Result<Model, Vec<Diagnostic>> {
    let (model, diags) = parse_partial(source, handlers)?;
    if diags.is_empty() {
        Ok(model)
    } else {
        Err(diags)
    }
}

/// Like [`parse`], but past the KDL syntax it always answers a model (leaving
/// out what was wrong) with the diagnostics, so that later stages can report
/// their problems in the same pass.
pub fn parse_partial(source: &Source, handlers: &[&str]) -> Result<(Model, Vec<Diagnostic>), Vec<Diagnostic>> {
    let doc = parse_kdl(source)?;
    let base_dir = match source.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut p = Parser { src: source, diags: Vec::new(), handlers, base_dir: base_dir.clone() };
    let model = p.document(&doc, base_dir);
    Ok((model, p.diags))
}

pub(crate) fn span(s: miette::SourceSpan) -> Span {
    Span { offset: s.offset(), len: s.len() }
}

struct Parser<'a> {
    src: &'a Source,
    diags: Vec<Diagnostic>,
    handlers: &'a [&'a str],
    base_dir: PathBuf,
}

fn value(v: &KdlValue) -> Value {
    match v {
        KdlValue::String(s) => Value::String(s.clone()),
        KdlValue::Integer(i) => Value::Integer(*i),
        KdlValue::Float(f) => Value::Float(*f),
        KdlValue::Bool(b) => Value::Bool(*b),
        KdlValue::Null => Value::Null,
    }
}

fn type_name(v: &KdlValue) -> &'static str {
    value(v).type_name()
}

fn args(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_none())
}

fn props(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_some())
}

fn prop_name(e: &KdlEntry) -> &str {
    e.name().map(|n| n.value()).unwrap_or("")
}

/// The closest of `known` to `word`, if close enough to be a likely typo.
fn did_you_mean<'k>(word: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    known
        .into_iter()
        .map(|k| (levenshtein(word, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Parser<'_> {
    fn err(&mut self, at: Span, message: impl Into<String>, hint: Option<String>) {
        self.diags.push(self.src.diag(at, message, hint));
    }

    fn unknown_node(&mut self, node: &KdlNode, inside: &str, known: &[&str]) {
        let name = node.name().value();
        let all: Vec<&str> = known.to_vec();
        let hint = match did_you_mean(name, all.iter().copied()) {
            Some(k) => format!("did you mean `{k}`?"),
            None => format!("{inside} takes: {}", all.join(", ")),
        };
        self.err(span(node.name().span()), format!("unknown node `{name}` in {inside}"), Some(hint));
    }

    /// Checks argument count, allowed properties and whether a block is allowed.
    fn shape(&mut self, node: &KdlNode, min: usize, max: usize, allowed_props: &[&str], block: bool) -> bool {
        let name = node.name().value().to_string();
        let mut ok = true;
        let n = args(node).count();
        if n < min {
            ok = false;
            let want = if min == max { format!("{min}") } else { format!("at least {min}") };
            self.err(span(node.span()), format!("`{name}` takes {want} argument(s), found {n}"), None);
        }
        for e in args(node).skip(max) {
            ok = false;
            let want = if max == 0 { "no arguments".to_string() } else { format!("at most {max} argument(s)") };
            self.err(span(e.span()), format!("`{name}` takes {want}"), None);
        }
        for e in props(node) {
            let p = prop_name(e);
            if !allowed_props.contains(&p) {
                ok = false;
                let hint = match did_you_mean(p, allowed_props.iter().copied()) {
                    Some(k) => Some(format!("did you mean `{k}=`?")),
                    None if allowed_props.is_empty() => Some(format!("`{name}` takes no properties")),
                    None => Some(format!("`{name}` takes: {}", allowed_props.join(", "))),
                };
                self.err(span(e.span()), format!("unknown property `{p}` on `{name}`"), hint);
            }
        }
        if !block {
            if let Some(c) = node.children() {
                ok = false;
                self.err(span(c.span()), format!("`{name}` takes no {{ ... }} block"), None);
            }
        }
        ok
    }

    fn str_of(&mut self, e: &KdlEntry, what: &str) -> Option<Spanned<String>> {
        match e.value() {
            KdlValue::String(s) => Some(Spanned::new(s.clone(), span(e.span()))),
            v => {
                self.err(
                    span(e.span()),
                    format!("{what} must be a string, found {}", type_name(v)),
                    Some("quote it: \"...\"".into()),
                );
                None
            }
        }
    }

    fn str_arg(&mut self, node: &KdlNode, i: usize) -> Option<Spanned<String>> {
        let e = args(node).nth(i)?;
        let what = format!("argument {} of `{}`", i + 1, node.name().value());
        self.str_of(e, &what)
    }

    fn str_prop(&mut self, node: &KdlNode, name: &str) -> Option<Spanned<String>> {
        let e = props(node).filter(|e| prop_name(e) == name).last()?;
        self.str_of(e, &format!("`{name}`"))
    }

    fn path_of(&self, s: &str) -> PathBuf {
        let p = Path::new(s);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn duration_arg(&mut self, node: &KdlNode) -> Option<Duration> {
        let s = self.str_arg(node, 0)?;
        match parse_duration(&s.value) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(s.span, e, Some("durations look like 90s, 15m, 24h, 30d".into()));
                None
            }
        }
    }

    fn size_arg(&mut self, node: &KdlNode) -> Option<u64> {
        let e = args(node).next()?;
        let r = match e.value() {
            KdlValue::Integer(i) if *i >= 0 => u64::try_from(*i).map_err(|_| "too large".to_string()),
            KdlValue::String(s) => parse_size(s),
            v => Err(format!("a size must be a string like \"10MiB\", found {}", type_name(v))),
        };
        match r {
            Ok(n) => Some(n),
            Err(msg) => {
                self.err(span(e.span()), msg, Some("sizes look like 64KiB, 10MiB, 1GiB".into()));
                None
            }
        }
    }

    fn count_arg(&mut self, node: &KdlNode) -> Option<usize> {
        let e = args(node).next()?;
        match e.value() {
            KdlValue::Integer(i) if *i > 0 => usize::try_from(*i).ok(),
            v => {
                let found = match v {
                    KdlValue::Integer(i) => i.to_string(),
                    other => type_name(other).to_string(),
                };
                self.err(span(e.span()), format!("expected a positive integer, found {found}"), None);
                None
            }
        }
    }

    fn once(&mut self, seen: &mut HashMap<String, Span>, node: &KdlNode) -> bool {
        let name = node.name().value().to_string();
        let here = span(node.span());
        if let Some(first) = seen.get(&name) {
            let (l, c) = self.src.line_col(first.offset);
            self.err(here, format!("`{name}` is given twice"), Some(format!("the first is at line {l}, column {c}")));
            false
        } else {
            seen.insert(name, here);
            true
        }
    }

    fn document(&mut self, doc: &KdlDocument, base_dir: PathBuf) -> Model {
        let mut model = Model {
            path: self.src.path.clone(),
            base_dir: base_dir.clone(),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 2019))),
            storage: base_dir.join("edge-data"),
            cas: vec![],
            sites: vec![],
            global: GlobalLimits::default(),
        };
        let mut seen = HashMap::new();
        for node in doc.nodes() {
            match node.name().value() {
                "admin" => {
                    if self.once(&mut seen, node) && self.shape(node, 1, 1, &[], false) {
                        if let Some(s) = self.str_arg(node, 0) {
                            model.admin = if s.value == "off" { None } else { self.socket_addr(&s) };
                        }
                    }
                }
                "storage" => {
                    if self.once(&mut seen, node) && self.shape(node, 1, 1, &[], false) {
                        if let Some(s) = self.str_arg(node, 0) {
                            model.storage = self.path_of(&s.value);
                        }
                    }
                }
                "max-connections" => {
                    if self.once(&mut seen, node) && self.shape(node, 1, 1, &[], false) {
                        if let Some(n) = self.count_arg(node) {
                            model.global.max_connections = n;
                        }
                    }
                }
                "handshake-timeout" | "shutdown-timeout" => {
                    if self.once(&mut seen, node) && self.shape(node, 1, 1, &[], false) {
                        if let Some(d) = self.duration_arg(node) {
                            if node.name().value() == "handshake-timeout" {
                                model.global.handshake_timeout = d;
                            } else {
                                model.global.shutdown_timeout = d;
                            }
                        }
                    }
                }
                "ca" => {
                    if let Some(ca) = self.ca(node) {
                        if let Some(prev) = model.cas.iter().find(|c| c.name.value == ca.name.value) {
                            let (l, c) = self.src.line_col(prev.name.span.offset);
                            self.err(
                                ca.name.span,
                                format!("ca `{}` is declared twice", ca.name.value),
                                Some(format!("the first is at line {l}, column {c}")),
                            );
                        } else {
                            model.cas.push(ca);
                        }
                    }
                }
                "site" => {
                    if let Some(site) = self.site(node) {
                        model.sites.push(site);
                    }
                }
                _ => self.unknown_node(node, "the Edgefile", TOP),
            }
        }
        self.cross_checks(&model);
        model
    }

    fn socket_addr(&mut self, s: &Spanned<String>) -> Option<SocketAddr> {
        let text = s.value.trim();
        let parsed = if let Some(port) = text.strip_prefix(':') {
            port.parse::<u16>().ok().map(|p| SocketAddr::from((Ipv4Addr::UNSPECIFIED, p)))
        } else {
            text.parse::<SocketAddr>().ok()
        };
        if parsed.is_none() {
            self.err(
                s.span,
                format!("bad address {:?}", s.value),
                Some("write IP:PORT, like \"127.0.0.1:8443\", \"[::1]:8443\" or \":8443\" for every interface".into()),
            );
        }
        parsed
    }

    fn ca(&mut self, node: &KdlNode) -> Option<CaModel> {
        self.shape(node, 1, 1, &[], true);
        let name = self.str_arg(node, 0)?;
        if name.value.is_empty() {
            self.err(name.span, "a CA needs a name", None);
        }
        let mut ca =
            CaModel { name, cert_lifetime: Duration::from_secs(24 * 3600), token_lifetime: Duration::from_secs(3600) };
        let mut seen = HashMap::new();
        for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
            match child.name().value() {
                "cert-lifetime" | "token-lifetime" => {
                    if self.once(&mut seen, child) && self.shape(child, 1, 1, &[], false) {
                        if let Some(d) = self.duration_arg(child) {
                            if d.is_zero() {
                                self.err(span(child.span()), "a lifetime must be longer than zero", None);
                            } else if child.name().value() == "cert-lifetime" {
                                ca.cert_lifetime = d;
                            } else {
                                ca.token_lifetime = d;
                            }
                        }
                    }
                }
                _ => self.unknown_node(child, "`ca`", &["cert-lifetime", "token-lifetime"]),
            }
        }
        Some(ca)
    }

    fn site_name(&mut self, s: &Spanned<String>) -> Option<SiteName> {
        let raw = s.value.trim().trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = raw.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Some(SiteName::Ip(ip));
        }
        let (wild, host) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            let hint = if host.contains('*') {
                "a wildcard covers one whole label on the left: \"*.app.example\""
            } else if host.contains(':') || host.contains('/') {
                "a site name is a host name or IP address, without scheme or port; ports go in `listen`"
            } else {
                "a site name is a DNS name (\"app.example\"), a wildcard (\"*.app.example\") or an IP address"
            };
            self.err(s.span, format!("bad site name {:?}", s.value), Some(hint.into()));
            return None;
        }
        Some(if wild { SiteName::Wildcard(host.to_string()) } else { SiteName::Exact(host.to_string()) })
    }

    fn site(&mut self, node: &KdlNode) -> Option<SiteModel> {
        self.shape(node, 1, usize::MAX, &[], true);
        let mut site = SiteModel {
            names: vec![],
            listens: vec![],
            tls: None,
            client_auth: ClientAuthModel::off(),
            routes: vec![],
            limits: SiteLimits::default(),
            enrollment: None,
            span: span(node.span()),
        };
        for i in 0..args(node).count() {
            if let Some(s) = self.str_arg(node, i) {
                if let Some(n) = self.site_name(&s) {
                    if site.names.iter().any(|x| x.value == n) {
                        self.err(s.span, format!("site name `{n}` is listed twice"), None);
                    } else {
                        site.names.push(Spanned::new(n, s.span));
                    }
                }
            }
        }
        let mut implicit: Vec<Directive> = Vec::new();
        let mut implicit_span = None;
        let mut seen = HashMap::new();
        for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
            let name = child.name().value();
            match name {
                "listen" => {
                    if let Some(l) = self.listen(child) {
                        if site.listens.iter().any(|x| x.addr.value == l.addr.value) {
                            self.err(l.addr.span, format!("`listen {}` is given twice", l.addr.value), None);
                        } else {
                            site.listens.push(l);
                        }
                    }
                }
                "tls" => {
                    if self.once(&mut seen, child) {
                        site.tls = self.tls(child);
                    }
                }
                "client-auth" => {
                    if self.once(&mut seen, child) {
                        if let Some(ca) = self.client_auth(child, false) {
                            site.client_auth = ca;
                        }
                    }
                }
                "route" => {
                    if let Some(r) = self.route(child) {
                        site.routes.push(r);
                    }
                }
                "enrollment" => {
                    if self.once(&mut seen, child) && self.shape(child, 0, 0, &["ca"], false) {
                        match self.str_prop(child, "ca") {
                            Some(ca) => site.enrollment = Some(ca),
                            None => self.err(
                                span(child.span()),
                                "`enrollment` needs ca=\"NAME\"",
                                Some("enrollment ca=\"newsroom\"".into()),
                            ),
                        }
                    }
                }
                "max-header-size" => {
                    if self.once(&mut seen, child) && self.shape(child, 1, 1, &[], false) {
                        if let Some(n) = self.size_arg(child) {
                            site.limits.max_header_size = n;
                        }
                    }
                }
                "max-headers" => {
                    if self.once(&mut seen, child) && self.shape(child, 1, 1, &[], false) {
                        if let Some(n) = self.count_arg(child) {
                            site.limits.max_headers = n;
                        }
                    }
                }
                "max-body" => {
                    if self.once(&mut seen, child) && self.shape(child, 1, 1, &[], false) {
                        if let Some(n) = self.size_arg(child) {
                            site.limits.max_body = n;
                        }
                    }
                }
                "idle-timeout" => {
                    if self.once(&mut seen, child) && self.shape(child, 1, 1, &[], false) {
                        if let Some(d) = self.duration_arg(child) {
                            site.limits.idle_timeout = d;
                        }
                    }
                }
                _ if self.handlers.contains(&name) => {
                    implicit_span.get_or_insert(span(child.span()));
                    implicit.push(self.directive(child));
                }
                _ => {
                    let mut known: Vec<&str> = SITE.to_vec();
                    known.extend(self.handlers.iter().copied());
                    self.unknown_node(child, "a site", &known);
                }
            }
        }
        if let Some(at) = implicit_span {
            if site.routes.iter().any(|r| r.pattern.value == Pattern::Prefix(String::new())) {
                self.err(
                    at,
                    "handlers written directly in a site make an implicit `route \"/*\"`, and this site has one already",
                    Some("move these handlers into the `route \"/*\"` block".into()),
                );
            } else {
                site.routes.push(RouteModel {
                    pattern: Spanned::new(Pattern::Prefix(String::new()), at),
                    client_auth: None,
                    max_body: None,
                    handlers: implicit,
                    span: at,
                });
            }
        }
        if site.names.is_empty() {
            return None;
        }
        if site.listens.is_empty() {
            self.err(
                site.names[0].span,
                format!("site `{}` has no `listen`", site.label()),
                Some("add `listen \"127.0.0.1:8443\"` inside the site".into()),
            );
        }
        if site.tls.is_none() {
            self.err(
                site.names[0].span,
                format!("site `{}` has no `tls`", site.label()),
                Some("add `tls cert=\"site.crt\" key=\"site.key\"` or `tls internal ca=\"NAME\"`".into()),
            );
        }
        Some(site)
    }

    fn listen(&mut self, node: &KdlNode) -> Option<ListenModel> {
        self.shape(node, 1, 1, &["http3"], false);
        let s = self.str_arg(node, 0)?;
        let addr = self.socket_addr(&s)?;
        let mut http3 = true;
        if let Some(e) = props(node).filter(|e| prop_name(e) == "http3").last() {
            match e.value() {
                KdlValue::Bool(b) => http3 = *b,
                v => self.err(
                    span(e.span()),
                    format!("`http3` must be #true or #false, found {}", type_name(v)),
                    Some("listen \"127.0.0.1:8443\" http3=#false".into()),
                ),
            }
        }
        Some(ListenModel { addr: Spanned::new(addr, s.span), http3 })
    }

    fn tls(&mut self, node: &KdlNode) -> Option<TlsModel> {
        let internal = args(node).next().map(|e| e.value() == &KdlValue::String("internal".into())).unwrap_or(false);
        if internal {
            if !self.shape(node, 1, 1, &["ca"], false) {
                return None;
            }
            return match self.str_prop(node, "ca") {
                Some(ca) => Some(TlsModel::Internal { ca }),
                None => {
                    self.err(
                        span(node.span()),
                        "`tls internal` needs ca=\"NAME\"",
                        Some("tls internal ca=\"newsroom\"".into()),
                    );
                    None
                }
            };
        }
        if let Some(e) = args(node).next() {
            self.err(
                span(e.span()),
                "`tls` takes cert= and key=, or the word internal",
                Some("tls cert=\"site.crt\" key=\"site.key\"  or  tls internal ca=\"NAME\"".into()),
            );
            return None;
        }
        if !self.shape(node, 0, 0, &["cert", "key"], false) {
            return None;
        }
        let cert = self.str_prop(node, "cert");
        let key = self.str_prop(node, "key");
        match (cert, key) {
            (Some(c), Some(k)) => Some(TlsModel::Files {
                cert: Spanned::new(self.path_of(&c.value), c.span),
                key: Spanned::new(self.path_of(&k.value), k.span),
            }),
            _ => {
                self.err(
                    span(node.span()),
                    "`tls` needs both cert= and key=",
                    Some("tls cert=\"site.crt\" key=\"site.key\"".into()),
                );
                None
            }
        }
    }

    fn client_auth(&mut self, node: &KdlNode, in_route: bool) -> Option<ClientAuthModel> {
        self.shape(node, 1, 1, &[], true);
        let m = self.str_arg(node, 0)?;
        let mode = match m.value.as_str() {
            "off" => Mode::Off,
            "optional" => Mode::Optional,
            "require" => Mode::Require,
            other => {
                self.err(
                    m.span,
                    format!("unknown client-auth mode {other:?}"),
                    Some("client-auth is off, optional or require".into()),
                );
                return None;
            }
        };
        let mut ca = ClientAuthModel { mode: Spanned::new(mode, m.span), trust: vec![], crls: vec![], allow: vec![] };
        for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
            match child.name().value() {
                "trust" if !in_route => {
                    if !self.shape(child, 0, 0, &["file", "ca"], false) {
                        continue;
                    }
                    match (self.str_prop(child, "file"), self.str_prop(child, "ca")) {
                        (Some(f), None) => {
                            ca.trust.push(TrustModel::File(Spanned::new(self.path_of(&f.value), f.span)))
                        }
                        (None, Some(c)) => ca.trust.push(TrustModel::Ca(c)),
                        _ => self.err(
                            span(child.span()),
                            "`trust` takes exactly one of file= or ca=",
                            Some("trust file=\"partners-root.pem\"  or  trust ca=\"newsroom\"".into()),
                        ),
                    }
                }
                "crl" if !in_route => {
                    if self.shape(child, 0, 0, &["file"], false) {
                        match self.str_prop(child, "file") {
                            Some(f) => ca.crls.push(Spanned::new(self.path_of(&f.value), f.span)),
                            None => self.err(
                                span(child.span()),
                                "`crl` needs file=",
                                Some("crl file=\"partners.crl\"".into()),
                            ),
                        }
                    }
                }
                "trust" | "crl" => self.err(
                    span(child.name().span()),
                    format!("a route's client-auth cannot take `{}`", child.name().value()),
                    Some("trust and CRLs belong to the site's client-auth; a route can only add allow rules".into()),
                ),
                "allow" => {
                    let known = ["cn", "ou", "san-dns", "san-uri", "fingerprint"];
                    if !self.shape(child, 0, 0, &known, false) {
                        continue;
                    }
                    let mut rule = AllowRule { all: vec![] };
                    for e in props(child) {
                        let Some(v) = self.str_of(e, &format!("`{}`", prop_name(e))) else { continue };
                        let m = match prop_name(e) {
                            "cn" => Matcher::Cn(v.value),
                            "ou" => Matcher::Ou(v.value),
                            "san-dns" => Matcher::SanDns(v.value.to_ascii_lowercase()),
                            "san-uri" => Matcher::SanUri(v.value),
                            _ => match normalise_fingerprint(&v.value) {
                                Some(f) => Matcher::Fingerprint(f),
                                None => {
                                    self.err(
                                        v.span,
                                        format!("bad fingerprint {:?}", v.value),
                                        Some("write sha256: followed by the 64 hex digits of the SHA-256 of the DER certificate (`openssl x509 -noout -fingerprint -sha256`)".into()),
                                    );
                                    continue;
                                }
                            },
                        };
                        rule.all.push(m);
                    }
                    if props(child).next().is_none() {
                        self.err(
                            span(child.span()),
                            "`allow` needs at least one of cn=, ou=, san-dns=, san-uri=, fingerprint=",
                            None,
                        );
                    } else if !rule.all.is_empty() {
                        ca.allow.push(rule);
                    }
                }
                _ => {
                    let known: &[&str] = if in_route { &["allow"] } else { &["trust", "crl", "allow"] };
                    self.unknown_node(child, "`client-auth`", known);
                }
            }
        }
        if !in_route && mode != Mode::Off && ca.trust.is_empty() {
            self.err(
                m.span,
                format!("client-auth {} needs at least one `trust`", mode.as_str()),
                Some("add `trust file=\"clients-ca.pem\"` or `trust ca=\"NAME\"` inside the block".into()),
            );
        }
        if mode == Mode::Off && (!ca.trust.is_empty() || !ca.allow.is_empty() || !ca.crls.is_empty()) {
            self.err(
                m.span,
                "client-auth off asks for no certificate, so its trust, crl and allow rules would never apply",
                Some("use `optional` or `require`, or remove the block".into()),
            );
        }
        Some(ca)
    }

    fn route(&mut self, node: &KdlNode) -> Option<RouteModel> {
        self.shape(node, 1, 1, &[], true);
        let p = self.str_arg(node, 0)?;
        let pattern = match parse_pattern(&p.value) {
            Ok(pat) => pat,
            Err(hint) => {
                self.err(p.span, format!("bad route pattern {:?}", p.value), Some(hint.into()));
                return None;
            }
        };
        let mut route = RouteModel {
            pattern: Spanned::new(pattern, p.span),
            client_auth: None,
            max_body: None,
            handlers: vec![],
            span: span(node.span()),
        };
        let mut seen = HashMap::new();
        for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
            let name = child.name().value();
            match name {
                "client-auth" => {
                    if self.once(&mut seen, child) {
                        route.client_auth = self.client_auth(child, true);
                    }
                }
                "max-body" => {
                    if self.once(&mut seen, child) && self.shape(child, 1, 1, &[], false) {
                        route.max_body = self.size_arg(child);
                    }
                }
                _ if self.handlers.contains(&name) => route.handlers.push(self.directive(child)),
                _ => {
                    let mut known: Vec<&str> = ROUTE.to_vec();
                    known.extend(self.handlers.iter().copied());
                    self.unknown_node(child, "a route", &known);
                }
            }
        }
        Some(route)
    }

    fn directive(&mut self, node: &KdlNode) -> Directive {
        Directive {
            name: node.name().value().to_string(),
            args: args(node).map(|e| Arg { value: value(e.value()), span: span(e.span()) }).collect(),
            props: props(node)
                .map(|e| Prop { name: prop_name(e).to_string(), value: value(e.value()), span: span(e.span()) })
                .collect(),
            span: span(node.span()),
            has_children: node.children().is_some(),
        }
    }

    /// Checks across sites: names claimed twice on one listener, CAs named but
    /// not declared, routes declared twice.
    fn cross_checks(&mut self, model: &Model) {
        let mut claimed: HashMap<(SocketAddr, &SiteName), Span> = HashMap::new();
        for site in &model.sites {
            for l in &site.listens {
                for n in &site.names {
                    if let Some(first) = claimed.get(&(l.addr.value, &n.value)) {
                        let (line, col) = self.src.line_col(first.offset);
                        self.err(
                            n.span,
                            format!("two sites claim `{}` on {}", n.value, l.addr.value),
                            Some(format!("the other claim is at line {line}, column {col}; a name belongs to one site per listener")),
                        );
                    } else {
                        claimed.insert((l.addr.value, &n.value), n.span);
                    }
                }
            }
            let mut patterns: HashMap<&Pattern, Span> = HashMap::new();
            for r in &site.routes {
                if let Some(first) = patterns.get(&r.pattern.value) {
                    let (line, col) = self.src.line_col(first.offset);
                    self.err(
                        r.pattern.span,
                        format!("route `{}` is declared twice in this site", r.pattern.value),
                        Some(format!("the first is at line {line}, column {col}")),
                    );
                } else {
                    patterns.insert(&r.pattern.value, r.pattern.span);
                }
            }
            let ca_refs = site
                .client_auth
                .trust
                .iter()
                .filter_map(|t| match t {
                    TrustModel::Ca(c) => Some(c),
                    TrustModel::File(_) => None,
                })
                .chain(match &site.tls {
                    Some(TlsModel::Internal { ca }) => Some(ca),
                    _ => None,
                })
                .chain(site.enrollment.as_ref());
            for c in ca_refs {
                if !model.cas.iter().any(|x| x.name.value == c.value) {
                    let hint = match did_you_mean(&c.value, model.cas.iter().map(|x| x.name.value.as_str())) {
                        Some(k) => format!("did you mean {k:?}?"),
                        None => format!("declare it at the top level: ca {:?} {{ }}", c.value),
                    };
                    self.err(c.span, format!("no `ca` named {:?}", c.value), Some(hint));
                }
            }
        }
    }
}

/// `sha256:HEX` (colons allowed, any case) -> `sha256:` + lowercase hex.
fn normalise_fingerprint(s: &str) -> Option<String> {
    let hex = s.strip_prefix("sha256:").or_else(|| s.strip_prefix("SHA256:"))?;
    let hex: String = hex.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256:{hex}"))
}

/// `/exact`, `/prefix/*` or `/*`.
pub(crate) fn parse_pattern(s: &str) -> Result<Pattern, &'static str> {
    if !s.starts_with('/') {
        return Err("a route pattern starts with `/`: \"/admin/*\", \"/health\", \"/*\"");
    }
    let (base, glob) = match s.strip_suffix("/*") {
        Some(b) => (b, true),
        None => (s, false),
    };
    if base.contains('*') {
        return Err("`*` may only end a pattern, after a slash: \"/admin/*\"");
    }
    if base.split('/').any(|seg| seg == "." || seg == "..") || base.contains("//") {
        return Err("a pattern is a normalised path: no `.`, `..` or `//` segments");
    }
    if glob {
        Ok(Pattern::Prefix(base.to_string()))
    } else {
        Ok(Pattern::Exact(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDLERS: &[&str] = &["respond", "header", "reverse-proxy", "file-server", "redirect"];

    fn parse_str(text: &str) -> Result<Model, Vec<Diagnostic>> {
        parse(&Source::new("/etc/edge/Edgefile", text.to_string()), HANDLERS)
    }

    fn errors(text: &str) -> Vec<String> {
        parse_str(text).unwrap_err().iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn a_full_site_parses() {
        let m = parse_str(
            r#"
admin "off"
storage "data"
ca "newsroom" { cert-lifetime "12h" }
site "app.localhost" "*.app.localhost" "127.0.0.1" {
    listen "127.0.0.1:8443"
    listen ":9443" http3=#false
    tls cert="certs/app.crt" key="/abs/app.key"
    client-auth require {
        trust file="ca.pem"
        trust ca="newsroom"
        crl file="ca.crl"
        allow ou="editors"
        allow cn="alice" san-dns="Ingest.Example"
        allow fingerprint="SHA256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"
    }
    max-body "1MiB"
    route "/admin/*" {
        client-auth require { allow ou="ops" }
        max-body 100
        reverse-proxy "http://127.0.0.1:9000"
    }
    route "/*" {
        header "Cache-Control" "no-store"
        respond "hello {client.cn}" status=200
    }
}
"#,
        )
        .unwrap();
        assert_eq!(m.admin, None);
        assert_eq!(m.storage, PathBuf::from("/etc/edge/data"));
        assert_eq!(m.cas[0].cert_lifetime, Duration::from_secs(12 * 3600));
        let s = &m.sites[0];
        assert_eq!(s.names[1].value, SiteName::Wildcard("app.localhost".into()));
        assert_eq!(s.names[2].value, SiteName::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(s.listens[1].addr.value, "0.0.0.0:9443".parse().unwrap());
        assert!(!s.listens[1].http3);
        assert_eq!(
            s.tls,
            Some(TlsModel::Files {
                cert: Spanned::new(PathBuf::from("/etc/edge/certs/app.crt"), s.tls_span_cert()),
                key: Spanned::new(PathBuf::from("/abs/app.key"), s.tls_span_key()),
            })
        );
        assert_eq!(s.client_auth.mode.value, Mode::Require);
        assert_eq!(s.client_auth.allow.len(), 3);
        assert_eq!(
            s.client_auth.allow[1].all,
            vec![Matcher::Cn("alice".into()), Matcher::SanDns("ingest.example".into())]
        );
        assert!(matches!(&s.client_auth.allow[2].all[0], Matcher::Fingerprint(f) if f.starts_with("sha256:9f86")));
        assert_eq!(s.limits.max_body, 1 << 20);
        assert_eq!(s.routes[0].pattern.value, Pattern::Prefix("/admin".into()));
        assert_eq!(s.routes[0].max_body, Some(100));
        assert_eq!(s.routes[1].handlers.len(), 2);
    }

    impl SiteModel {
        fn tls_span_cert(&self) -> Span {
            match &self.tls {
                Some(TlsModel::Files { cert, .. }) => cert.span,
                _ => Span::default(),
            }
        }
        fn tls_span_key(&self) -> Span {
            match &self.tls {
                Some(TlsModel::Files { key, .. }) => key.span,
                _ => Span::default(),
            }
        }
    }

    #[test]
    fn every_problem_is_reported_in_one_pass_with_line_and_column() {
        let errs = errors(
            r#"site "a.localhost" {
    lisen "127.0.0.1:8443"
    listen "127.0.0.1:99999"
    tls cert="a.crt"
    client-auth sometimes
    route "admin" { respond "x" }
    idle-timeout "10 minutes"
}
site "a.localhost" {
    listen "127.0.0.1:8443"
    tls cert="a.crt" key="a.key"
}
bogus 1
"#,
        );
        let joined = errors_joined(&errs);
        assert!(
            joined.contains(
                "/etc/edge/Edgefile:2:5: error: unknown node `lisen` in a site (hint: did you mean `listen`?)"
            ),
            "{joined}"
        );
        assert!(joined.contains("/etc/edge/Edgefile:3:12: error: bad address \"127.0.0.1:99999\""), "{joined}");
        assert!(joined.contains("/etc/edge/Edgefile:4:5: error: `tls` needs both cert= and key="), "{joined}");
        assert!(joined.contains("/etc/edge/Edgefile:5:17: error: unknown client-auth mode \"sometimes\""), "{joined}");
        assert!(joined.contains("/etc/edge/Edgefile:6:11: error: bad route pattern \"admin\""), "{joined}");
        assert!(joined.contains("/etc/edge/Edgefile:7:18: error: bad duration"), "{joined}");
        assert!(joined.contains("/etc/edge/Edgefile:13:1: error: unknown node `bogus` in the Edgefile"), "{joined}");
    }

    fn errors_joined(errs: &[String]) -> String {
        errs.join("\n")
    }

    #[test]
    fn wrong_types_and_unknown_properties() {
        let joined = errors_joined(&errors(
            r#"site "a.localhost" {
    listen "127.0.0.1:8443" http3="no" tcp=#true
    tls cert=1 key="k"
    max-headers -3
}
"#,
        ));
        assert!(joined.contains("2:29: error: `http3` must be #true or #false, found a string"), "{joined}");
        assert!(joined.contains("2:40: error: unknown property `tcp` on `listen`"), "{joined}");
        assert!(joined.contains("3:9: error: `cert` must be a string, found an integer"), "{joined}");
        assert!(joined.contains("4:17: error: expected a positive integer, found -3"), "{joined}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let errs = errors("site \"a\" {\n  listen \"x\n}\n");
        assert!(errs[0].starts_with("/etc/edge/Edgefile:"), "{errs:?}");
        assert!(errs[0].contains("syntax"), "{errs:?}");
    }

    #[test]
    fn two_sites_claiming_one_name_on_one_listener() {
        let joined = errors_joined(&errors(
            r#"site "a.localhost" "b.localhost" { listen "127.0.0.1:8443"; tls cert="c" key="k"; }
site "B.localhost" { listen "127.0.0.1:8443"; tls cert="c" key="k"; }"#,
        ));
        assert!(joined.contains("2:6: error: two sites claim `b.localhost` on 127.0.0.1:8443 (hint: the other claim is at line 1, column 20"), "{joined}");
    }

    #[test]
    fn same_name_on_two_listeners_is_fine_and_missing_ca_is_named() {
        let ok = parse_str(
            r#"site "a.localhost" { listen "127.0.0.1:1"; tls cert="c" key="k"; }
site "a.localhost" { listen "127.0.0.2:1"; tls cert="c" key="k"; }"#,
        );
        assert!(ok.is_ok(), "{ok:?}");
        let joined = errors_joined(&errors(
            r#"ca "newsroom"
site "a.localhost" { listen "127.0.0.1:1"; tls internal ca="newsrom"; }"#,
        ));
        assert!(joined.contains("no `ca` named \"newsrom\" (hint: did you mean \"newsroom\"?)"), "{joined}");
    }

    #[test]
    fn client_auth_rules() {
        let joined = errors_joined(&errors(
            r#"site "a.localhost" {
    listen "127.0.0.1:1"
    tls cert="c" key="k"
    client-auth require { allow cn="x" }
    route "/a/*" { client-auth require { trust file="x.pem" }; respond "a" }
    route "/b" { client-auth optional { allow fingerprint="md5:00" }; respond "b" }
}"#,
        ));
        assert!(joined.contains("4:17: error: client-auth require needs at least one `trust`"), "{joined}");
        assert!(joined.contains("5:42: error: a route's client-auth cannot take `trust`"), "{joined}");
        assert!(joined.contains("6:47: error: bad fingerprint"), "{joined}");
    }

    #[test]
    fn handlers_in_a_site_make_an_implicit_catch_all_route() {
        let m =
            parse_str(r#"site "a.localhost" { listen "127.0.0.1:1"; tls cert="c" key="k"; respond "hi"; }"#).unwrap();
        assert_eq!(m.sites[0].routes[0].pattern.value, Pattern::Prefix(String::new()));
        assert_eq!(m.sites[0].routes[0].handlers[0].name, "respond");
    }

    #[test]
    fn patterns() {
        assert_eq!(parse_pattern("/*"), Ok(Pattern::Prefix(String::new())));
        assert_eq!(parse_pattern("/admin/*"), Ok(Pattern::Prefix("/admin".into())));
        assert_eq!(parse_pattern("/health"), Ok(Pattern::Exact("/health".into())));
        for bad in ["admin", "/a*", "/a/*/b", "/../x", "//x"] {
            assert!(parse_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn typo_suggestions() {
        assert_eq!(did_you_mean("lisen", ["listen", "tls"]), Some("listen"));
        assert_eq!(did_you_mean("zzzzzz", ["listen", "tls"]), None);
    }
}
