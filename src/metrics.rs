//! Prometheus metrics.
//!
//! Label values come only from configured names: a client cannot create a
//! series (an unknown SNI counts under `site=""`, `result="no_site"`). On the
//! hot paths nothing is looked up by label: every series a connection or a
//! request can touch is resolved when the config is compiled ([`SiteMetrics`])
//! or on its first use ([`OnceLock`]), then counted with one atomic add.

use crate::tls::HandshakeResult;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::{LazyLock, OnceLock};

/// Every metric of edge, registered once per process.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// `edge_tls_handshakes_total{site,transport,result}`
    pub handshakes: IntCounterVec,
    /// `edge_tls_handshake_duration_seconds{transport}`
    pub handshake_seconds: HistogramVec,
    /// `edge_http_requests_total{site,proto,code}`
    pub requests: IntCounterVec,
    /// `edge_http_request_duration_seconds{site,proto}`
    pub request_seconds: HistogramVec,
    /// `edge_connections_active{proto}`
    pub connections: IntGaugeVec,
    /// `edge_config_reloads_total{result}`
    pub reloads: IntCounterVec,
    /// `edge_config_generation`
    pub generation: IntGauge,
    /// `edge_config_last_reload_success_timestamp_seconds`
    pub last_reload: IntGauge,
    /// `edge_tls_server_cert_expiry_timestamp_seconds{site}`
    pub server_cert_expiry: IntGaugeVec,
    /// `edge_pki_issued_total{ca,kind}`
    pub pki_issued: IntCounterVec,
    /// `edge_pki_rejected_total{ca,reason}`
    pub pki_rejected: IntCounterVec,
    /// `edge_pki_revoked_certificates{ca}`
    pub pki_revoked: IntGaugeVec,
    /// `edge_pki_identity_cert_expiry_timestamp_seconds{ca,identity}`
    pub pki_identity_expiry: IntGaugeVec,
    /// `site=""` series by transport: no_site, then error.
    unsited: [[IntCounter; 2]; 2],
    open_connections: [IntGauge; 3],
}

/// The transports a handshake can arrive on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TLS over TCP.
    Tcp = 0,
    /// QUIC.
    Quic = 1,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }
}

/// Protocols as the request metrics name them.
pub const PROTOS: [&str; 3] = ["h1", "h2", "h3"];

const RESULTS: [HandshakeResult; 9] = [
    HandshakeResult::Ok,
    HandshakeResult::NoCert,
    HandshakeResult::UnknownCa,
    HandshakeResult::Expired,
    HandshakeResult::Revoked,
    HandshakeResult::NotAllowed,
    HandshakeResult::BadCert,
    HandshakeResult::NoSite,
    HandshakeResult::Error,
];

fn result_index(r: HandshakeResult) -> usize {
    RESULTS.iter().position(|x| *x == r).unwrap_or(RESULTS.len() - 1)
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

// Registration of a fixed set of distinct, well-formed names cannot fail; a
// failure here is a programming error caught by every test run.
fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone())).expect("metric names are distinct and valid");
    m
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let ok = "metric definitions are valid";
        let handshakes = reg(
            &r,
            IntCounterVec::new(
                Opts::new("edge_tls_handshakes_total", "TLS handshakes by site, transport and outcome."),
                &["site", "transport", "result"],
            )
            .expect(ok),
        );
        let handshake_seconds = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new("edge_tls_handshake_duration_seconds", "Time from accept to a finished handshake.")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                &["transport"],
            )
            .expect(ok),
        );
        let requests = reg(
            &r,
            IntCounterVec::new(
                Opts::new("edge_http_requests_total", "HTTP requests by site, protocol and status code."),
                &["site", "proto", "code"],
            )
            .expect(ok),
        );
        let request_seconds = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new("edge_http_request_duration_seconds", "Time from request to response headers.")
                    .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
                &["site", "proto"],
            )
            .expect(ok),
        );
        let connections = reg(
            &r,
            IntGaugeVec::new(Opts::new("edge_connections_active", "Open client connections by protocol."), &["proto"])
                .expect(ok),
        );
        let reloads = reg(
            &r,
            IntCounterVec::new(
                Opts::new("edge_config_reloads_total", "Config reloads by outcome (success|failure)."),
                &["result"],
            )
            .expect(ok),
        );
        let generation = reg(
            &r,
            IntGauge::new("edge_config_generation", "Generation of the config being served; rises with every reload.")
                .expect(ok),
        );
        let last_reload = reg(
            &r,
            IntGauge::new(
                "edge_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load.",
            )
            .expect(ok),
        );
        let server_cert_expiry = reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "edge_tls_server_cert_expiry_timestamp_seconds",
                    "Unix time the site's server certificate expires.",
                ),
                &["site"],
            )
            .expect(ok),
        );
        let pki_issued = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "edge_pki_issued_total",
                    "Certificates issued by the built-in CAs (enroll|renew|manual|server).",
                ),
                &["ca", "kind"],
            )
            .expect(ok),
        );
        let pki_rejected = reg(
            &r,
            IntCounterVec::new(
                Opts::new("edge_pki_rejected_total", "Enrollment and renewal requests refused, by reason."),
                &["ca", "reason"],
            )
            .expect(ok),
        );
        let pki_revoked = reg(
            &r,
            IntGaugeVec::new(
                Opts::new("edge_pki_revoked_certificates", "Revoked, unexpired certificates per CA."),
                &["ca"],
            )
            .expect(ok),
        );
        let pki_identity_expiry = reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "edge_pki_identity_cert_expiry_timestamp_seconds",
                    "Unix time the newest valid certificate of an enrolled identity expires.",
                ),
                &["ca", "identity"],
            )
            .expect(ok),
        );
        let open_connections = PROTOS.map(|p| connections.with_label_values(&[p]));
        for r in ["success", "failure"] {
            reloads.with_label_values(&[r]).reset();
        }
        let unsited = [Transport::Tcp, Transport::Quic]
            .map(|t| ["no_site", "error"].map(|r| handshakes.with_label_values(&["", t.as_str(), r])));
        Metrics {
            registry: r,
            handshakes,
            handshake_seconds,
            requests,
            request_seconds,
            connections,
            reloads,
            generation,
            last_reload,
            server_cert_expiry,
            pki_issued,
            pki_rejected,
            pki_revoked,
            pki_identity_expiry,
            unsited,
            open_connections,
        }
    }

    /// Counts a handshake that ended before a site was chosen: `no_site`
    /// when the name matched none, `error` for anything else (a ClientHello
    /// that does not parse or offers nothing we speak).
    pub fn unsited(&self, t: Transport, r: HandshakeResult) {
        let i = usize::from(r != HandshakeResult::NoSite);
        self.unsited[t as usize][i].inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A site's series, resolved when its config is compiled.
pub struct SiteMetrics {
    /// `[transport][result]`
    handshakes: [[IntCounter; RESULTS.len()]; 2],
    /// `[proto]`
    request_seconds: [Histogram; 3],
    /// `[proto][code - 100]`, created on first use.
    requests: Box<[[OnceLock<IntCounter>; 500]; 3]>,
    site: String,
}

impl SiteMetrics {
    /// Resolves the series of the site named `site`.
    pub fn new(site: &str) -> Self {
        let m = global();
        let hs = |t: Transport| RESULTS.map(|r| m.handshakes.with_label_values(&[site, t.as_str(), r.as_str()]));
        SiteMetrics {
            handshakes: [hs(Transport::Tcp), hs(Transport::Quic)],
            request_seconds: PROTOS.map(|p| m.request_seconds.with_label_values(&[site, p])),
            requests: Box::new(std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new()))),
            site: site.to_string(),
        }
    }

    /// Counts a handshake.
    pub fn handshake(&self, t: Transport, r: HandshakeResult) {
        self.handshakes[t as usize][result_index(r)].inc();
    }

    /// Counts a request answered with `code` after `seconds`.
    pub fn request(&self, proto: usize, code: u16, seconds: f64) {
        let proto = proto.min(2);
        self.request_seconds[proto].observe(seconds);
        let i = usize::from(code.clamp(100, 599) - 100);
        self.requests[proto][i]
            .get_or_init(|| global().requests.with_label_values(&[&self.site, PROTOS[proto], &code.to_string()]))
            .inc();
    }
}

/// Counts an open connection of a protocol while it lives.
pub struct ConnectionGuard(IntGauge);

impl ConnectionGuard {
    /// Counts one more open connection of `proto` (an index into [`PROTOS`]).
    pub fn open(proto: usize) -> Self {
        let g = global().open_connections[proto.min(2)].clone();
        g.inc();
        ConnectionGuard(g)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
