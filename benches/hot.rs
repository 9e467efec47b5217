//! Micro-benchmarks of edge's hot pieces, with a small timing harness (no
//! criterion): `cargo bench --bench hot [-- FILTER...]`.
//!
//! * a full mutual-TLS handshake in memory (rustls client <-> the server
//!   config `edge::compile::load` builds from an Edgefile), no resumption;
//! * the client-auth policy decision (`edge::policy::allowed`) and the
//!   identity read from the leaf (`edge::policy::identity_from_der`);
//! * revocation: edge's `tls::CrlIndex` lookup and a whole handshake with a
//!   CRL of 0 and of 100 000 revoked serials, measured in alternation (and,
//!   for reference, rustls' WebPKI verifier given the same CRLs);
//! * placeholder rendering (`edge_plugin_api::Template::render`);
//! * routing (`edge::policy::RouteTable::lookup`, `edge::policy::normalise_path`).
//!
//! Each figure is the median of several batches (min-max in brackets), in
//! nanoseconds per operation; pairs are measured in alternating batches. The
//! PKI is minted with rcgen at start; the whole run takes well under a
//! minute. `BENCH_SCALE=0.2` shortens every batch (a smoke run),
//! `BENCH_SCALE=3` lengthens it.

use edge::config::{AllowRule, Matcher, Pattern};
use edge::policy::{self, RouteTable};
use edge::tls::CrlIndex;
use edge_plugin_api::{ClientIdentity, Proto, RequestContext, Template};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Batches per figure; the median is reported.
const SAMPLES: usize = 7;
/// Revoked serials in the large CRL.
const REVOKED: usize = 100_000;

fn main() {
    // `cargo bench` passes `--bench`; anything else not starting with `-` filters by name.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let scale: f64 = std::env::var("BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let h = Harness { filters, batch: Duration::from_secs_f64(0.12 * scale) };
    let started = Instant::now();

    println!("edge micro-benchmarks: median ns/op over {SAMPLES} batches (min-max)");
    let pki = Pki::mint();
    let dir = tempfile::Builder::new().prefix("edge-bench").tempdir().expect("temp dir");
    let sites = pki.compile(dir.path());

    // (a) handshakes.
    h.section("full TLS 1.3 handshake in memory (client + server, one thread, no resumption)");
    let client_auth = pki.client_config(true);
    let client_anon = pki.client_config(false);
    h.run("handshake, client-auth off", || handshake(&client_anon, &sites.open, "open.bench"));
    h.run("handshake, client-auth require (mTLS)", || handshake(&client_auth, &sites.mtls, "mtls.bench"));
    h.run("handshake, mTLS + 2 allow rules", || handshake(&client_auth, &sites.allow, "allow.bench"));
    // The server's calls alone (edge's side of the work), per handshake.
    for (label, client, site, name) in [
        ("server's part, client-auth off", &client_anon, &sites.open, "open.bench"),
        ("server's part, client-auth require (mTLS)", &client_auth, &sites.mtls, "mtls.bench"),
    ] {
        if h.wanted(label) {
            let n = ((h.batch.as_secs_f64() * SAMPLES as f64 / 2.0 / 300e-6) as usize).max(10);
            let mut ns: Vec<f64> = (0..n).map(|_| handshake(client, site, name).as_nanos() as f64).collect();
            Harness::report(&format!("{label} ({n} handshakes)"), &mut ns);
        }
    }

    // (b) the policy decision and the identity it reads.
    h.section("client-auth policy");
    let id = policy::identity_from_der(&pki.client_der).expect("the client certificate parses");
    let rules = allow_rules(&id);
    let deny = &rules[..rules.len() - 1];
    h.run("identity_from_der (leaf -> ClientIdentity)", || policy::identity_from_der(black_box(&pki.client_der)));
    h.run("policy::allowed, 5 rules, last one matches", || policy::allowed(black_box(&rules), black_box(&id)));
    h.run("policy::allowed, 4 rules, none matches", || policy::allowed(black_box(deny), black_box(&id)));

    // (c) revocation.
    h.section(&format!("revocation: CRL with 0 vs {REVOKED} revoked serials (pairs measured in alternation)"));
    let leaf = x509_parser::parse_x509_certificate(&pki.client_der).expect("the client certificate parses").1;
    let (issuer, serial) = (leaf.issuer().as_raw(), leaf.raw_serial());
    let index0 = pki.crl_index(&pki.empty_crl);
    let index100k = pki.crl_index(&pki.big_crl);
    let lookup = h.paired(
        ("CrlIndex::contains, 0 serials (not revoked)", &mut || {
            assert!(!index0.contains(black_box(issuer), black_box(serial)))
        }),
        (&format!("CrlIndex::contains, {REVOKED} serials (not revoked)"), &mut || {
            assert!(!index100k.contains(black_box(issuer), black_box(serial)))
        }),
    );
    h.run(&format!("CrlIndex::contains, {REVOKED} serials (revoked)"), || {
        assert!(index100k.contains(black_box(issuer), black_box(&pki.revoked_serial)))
    });
    let hs = h.paired(
        ("handshake, mTLS + CRL 0 serials", &mut || handshake(&client_auth, &sites.crl0, "crl0.bench")),
        (&format!("handshake, mTLS + CRL {REVOKED} serials"), &mut || {
            handshake(&client_auth, &sites.crl100k, "crl100k.bench")
        }),
    );
    if let (Some((l_a, l_b, _)), Some((hs_a, _, hs_ratio))) = (lookup, hs) {
        println!(
            "  => {REVOKED} revoked serials: {:+.1} ns per lookup = {:+.4}% of a handshake; whole handshake \
             {:+.2}% (median ratio of adjacent batches; target: at most +3%)",
            l_b - l_a,
            100.0 * (l_b - l_a) / hs_a,
            100.0 * (hs_ratio - 1.0),
        );
    }
    // For reference: the same CRL checked by rustls' WebPKI verifier, which
    // verifies the whole CRL's signature again on every handshake.
    let webpki0 = pki.webpki_verifier(Vec::new());
    let webpki100k = pki.webpki_verifier(vec![pki.big_crl.clone()]);
    let leaf_der = CertificateDer::from(pki.client_der.clone());
    h.paired(
        ("reference: rustls WebPKI verifier, CRL 0 serials", &mut || verify(&webpki0, &leaf_der)),
        (&format!("reference: rustls WebPKI verifier, CRL {REVOKED} serials"), &mut || verify(&webpki100k, &leaf_der)),
    );

    // (d) placeholders.
    h.section("placeholder rendering");
    let cx = request_context(id.clone());
    let dynamic = Template::parse("hello {client.cn} ({client.ou}) over {proto}\n").expect("template");
    let path_host = Template::parse("{method} https://{host}{path} from {remote}\n").expect("template");
    h.run("Template::render \"hello {client.cn} ({client.ou}) over {proto}\"", || dynamic.render(black_box(&cx)));
    h.run("Template::render \"{method} https://{host}{path} from {remote}\"", || path_host.render(black_box(&cx)));

    // (e) routing.
    h.section("routing");
    let patterns = [
        Pattern::Prefix(String::new()),
        Pattern::Prefix("/admin".into()),
        Pattern::Prefix("/api".into()),
        Pattern::Prefix("/api/v1/internal".into()),
        Pattern::Exact("/health".into()),
        Pattern::Exact("/admin/open".into()),
        Pattern::Prefix("/files".into()),
    ];
    let table = RouteTable::new(&patterns);
    for path in ["/", "/health", "/api/v1/items/42", "/administrator"] {
        h.run(&format!("RouteTable::lookup {path:?} (7 routes)"), || table.lookup(black_box(path)));
    }
    for raw in ["/", "/api/v1/items/42", "//x/../%61dmin/./reports/2024/"] {
        h.run(&format!("normalise_path {raw:?}"), || policy::normalise_path(black_box(raw)));
    }

    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
}

/// The timing harness: batches of a calibrated number of iterations.
struct Harness {
    filters: Vec<String>,
    batch: Duration,
}

impl Harness {
    fn wanted(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()))
    }

    fn section(&self, title: &str) {
        println!("\n{title}");
    }

    /// Iterations of `f` that take about one batch.
    fn calibrate<T>(&self, f: &mut dyn FnMut() -> T) -> u64 {
        let mut n = 0u64;
        let start = Instant::now();
        // Warm up for a tenth of a batch (at least one call).
        while n == 0 || start.elapsed() < self.batch / 10 {
            black_box(f());
            n += 1;
        }
        let per = start.elapsed().as_secs_f64() / n as f64;
        ((self.batch.as_secs_f64() / per) as u64).max(1)
    }

    /// Nanoseconds per call of one batch of `iters` calls.
    fn sample<T>(iters: u64, f: &mut dyn FnMut() -> T) -> f64 {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(f());
        }
        start.elapsed().as_nanos() as f64 / iters as f64
    }

    fn report(name: &str, ns: &mut [f64]) -> f64 {
        ns.sort_by(f64::total_cmp);
        let median = ns[ns.len() / 2];
        println!("  {name:<66} {:>12} ns/op  ({}-{})", fmt(median), fmt(ns[0]), fmt(ns[ns.len() - 1]));
        median
    }

    /// Times `f`; prints and answers the median ns/op (None when filtered out).
    fn run<T>(&self, name: &str, mut f: impl FnMut() -> T) -> Option<f64> {
        if !self.wanted(name) {
            return None;
        }
        let iters = self.calibrate(&mut f);
        let mut ns: Vec<f64> = (0..SAMPLES).map(|_| Self::sample(iters, &mut f)).collect();
        Some(Self::report(name, &mut ns))
    }

    /// Times two variants in alternating batches, so that drift (other
    /// processes, frequency) hits both alike; answers both medians and the
    /// median of the ratios b/a of adjacent batches, the steadiest estimate
    /// of their difference.
    fn paired<A, B>(
        &self,
        (name_a, fa): (&str, &mut dyn FnMut() -> A),
        (name_b, fb): (&str, &mut dyn FnMut() -> B),
    ) -> Option<(f64, f64, f64)> {
        if !self.wanted(name_a) && !self.wanted(name_b) {
            return None;
        }
        let iters = self.calibrate(fa).min(self.calibrate(fb));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..2 * SAMPLES + 1 {
            a.push(Self::sample(iters, fa));
            b.push(Self::sample(iters, fb));
        }
        let mut ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| y / x).collect();
        ratios.sort_by(f64::total_cmp);
        let ma = Self::report(name_a, &mut a);
        let mb = Self::report(name_b, &mut b);
        Some((ma, mb, ratios[ratios.len() / 2]))
    }
}

fn fmt(ns: f64) -> String {
    if ns >= 100.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.1}")
    }
}

/// One full handshake between a fresh client and a fresh server connection;
/// answers the time spent in the server's calls.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, name: &'static str) -> Duration {
    let name = ServerName::try_from(name).expect("a DNS name");
    let mut c = Connection::Client(ClientConnection::new(client.clone(), name).expect("client connection"));
    let t = Instant::now();
    let mut s = Connection::Server(ServerConnection::new(server.clone()).expect("server connection"));
    let mut in_server = t.elapsed();
    let mut buf = Vec::with_capacity(8192);
    // Each flight in full; a handshake takes a few round trips.
    for _ in 0..16 {
        pump(&mut c, &mut s, &mut buf, (Duration::ZERO, &mut in_server));
        pump(&mut s, &mut c, &mut buf, (&mut in_server, Duration::ZERO));
        if !c.is_handshaking() && !s.is_handshaking() {
            // Deliver the server's last records (session tickets) too.
            pump(&mut s, &mut c, &mut buf, (&mut in_server, Duration::ZERO));
            return in_server;
        }
    }
    panic!("the handshake did not complete");
}

/// Where the time of a `pump` is added: to the sender's, to the receiver's.
trait Clock {
    fn add(&mut self, d: Duration);
}

impl Clock for Duration {
    fn add(&mut self, _: Duration) {}
}

impl Clock for &mut Duration {
    fn add(&mut self, d: Duration) {
        **self += d;
    }
}

/// Moves every pending TLS record from `from` to `to` and processes it,
/// adding the time of each side's calls to its clock.
fn pump(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>, mut clocks: (impl Clock, impl Clock)) {
    buf.clear();
    let t = Instant::now();
    while from.wants_write() {
        from.write_tls(buf).expect("write_tls to memory");
    }
    clocks.0.add(t.elapsed());
    let t = Instant::now();
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read_tls from memory");
        if let Err(e) = to.process_new_packets() {
            panic!("handshake failed: {e}");
        }
    }
    clocks.1.add(t.elapsed());
}

fn verify(v: &Arc<dyn ClientCertVerifier>, leaf: &CertificateDer<'_>) {
    v.verify_client_cert(black_box(leaf), &[], UnixTime::now()).expect("the client certificate verifies");
}

/// The servers' configs, as `edge::compile::load` builds them.
struct Sites {
    open: Arc<ServerConfig>,
    mtls: Arc<ServerConfig>,
    allow: Arc<ServerConfig>,
    crl0: Arc<ServerConfig>,
    crl100k: Arc<ServerConfig>,
}

/// A CA, a server certificate for `*.bench`, a client (CN=alice, OU=editors)
/// and a CRL revoking [`REVOKED`] other serials.
struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server_pem: (String, String),
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
    client_der: Vec<u8>,
    empty_crl: CertificateRevocationListDer<'static>,
    big_crl: CertificateRevocationListDer<'static>,
    /// One of the big CRL's serials (DER INTEGER content).
    revoked_serial: Vec<u8>,
}

impl Pki {
    fn mint() -> Pki {
        let now = OffsetDateTime::now_utc();
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.distinguished_name.push(DnType::CommonName, "edge bench CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        ca.not_before = now - time::Duration::days(1);
        ca.not_after = now + time::Duration::days(30);
        let ca_key = KeyPair::generate().expect("key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let issuer = Issuer::from_params(&ca, &ca_key);

        let leaf = |names: Vec<String>, eku: ExtendedKeyUsagePurpose| {
            let mut p = CertificateParams::new(names).expect("params");
            p.extended_key_usages = vec![eku];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.use_authority_key_identifier_extension = true;
            p.not_before = now - time::Duration::hours(1);
            p.not_after = now + time::Duration::days(7);
            p
        };
        let names = ["open.bench", "mtls.bench", "allow.bench", "crl0.bench", "crl100k.bench"];
        let mut server = leaf(names.iter().map(|s| s.to_string()).collect(), ExtendedKeyUsagePurpose::ServerAuth);
        server.distinguished_name.push(DnType::CommonName, "mtls.bench");
        let server_key = KeyPair::generate().expect("key");
        let server_cert = server.signed_by(&server_key, &issuer).expect("server cert");

        let mut client = leaf(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth);
        client.distinguished_name.push(DnType::CommonName, "alice");
        client.distinguished_name.push(DnType::OrganizationalUnitName, "editors");
        let client_key = KeyPair::generate().expect("key");
        let client_cert = client.signed_by(&client_key, &issuer).expect("client cert");

        let crl = |n: usize| -> (CertificateRevocationListDer<'static>, Vec<u8>) {
            // 16-byte pseudo-random serials, like the ones CAs hand out.
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = || {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            };
            let revoked_certs: Vec<RevokedCertParams> = (0..n)
                .map(|_| {
                    let mut serial = [0u8; 16];
                    serial[..8].copy_from_slice(&next().to_be_bytes());
                    serial[8..].copy_from_slice(&next().to_be_bytes());
                    serial[0] &= 0x7f; // positive
                    serial[0] |= 0x01; // no leading zero byte
                    RevokedCertParams {
                        serial_number: SerialNumber::from_slice(&serial),
                        revocation_time: now - time::Duration::minutes(5),
                        reason_code: None,
                        invalidity_date: None,
                    }
                })
                .collect();
            let first = revoked_certs.first().map(|r| r.serial_number.to_bytes()).unwrap_or_default();
            let params = CertificateRevocationListParams {
                this_update: now - time::Duration::hours(1),
                next_update: now + time::Duration::days(7),
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs,
                key_identifier_method: KeyIdMethod::Sha256,
            };
            (params.signed_by(&issuer).expect("CRL").der().clone(), first)
        };
        let (empty_crl, _) = crl(0);
        let (big_crl, revoked_serial) = crl(REVOKED);

        Pki {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server_pem: (server_cert.pem(), server_key.serialize_pem()),
            client_chain: vec![client_cert.der().clone()],
            client_key: PrivateKeyDer::try_from(client_key.serialize_der()).expect("key DER"),
            client_der: client_cert.der().to_vec(),
            empty_crl,
            big_crl,
            revoked_serial,
        }
    }

    /// Writes the PKI and an Edgefile with one site per case into `dir`,
    /// then loads it the way `edge run` does.
    fn compile(&self, dir: &std::path::Path) -> Sites {
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).expect("write to the temp dir");
        write("ca.pem", self.ca_pem.as_bytes());
        write("server.crt", self.server_pem.0.as_bytes());
        write("server.key", self.server_pem.1.as_bytes());
        write("crl0.der", self.empty_crl.as_ref());
        write("crl100k.der", self.big_crl.as_ref());
        let site = |name: &str, client_auth: &str| {
            format!(
                "site \"{name}\" {{\n    listen \"127.0.0.1:0\"\n    \
                 tls cert=\"server.crt\" key=\"server.key\"\n    {client_auth}\n    respond \"hello\"\n}}\n"
            )
        };
        let edgefile = [
            "admin \"off\"\n".to_string(),
            site("open.bench", "client-auth off"),
            site("mtls.bench", "client-auth require {\n        trust file=\"ca.pem\"\n    }"),
            site(
                "allow.bench",
                "client-auth require {\n        trust file=\"ca.pem\"\n        \
                 allow cn=\"bob\" ou=\"ops\"\n        allow ou=\"editors\"\n    }",
            ),
            site(
                "crl0.bench",
                "client-auth require {\n        trust file=\"ca.pem\"\n        crl file=\"crl0.der\"\n    }",
            ),
            site(
                "crl100k.bench",
                "client-auth require {\n        trust file=\"ca.pem\"\n        crl file=\"crl100k.der\"\n    }",
            ),
        ]
        .concat();
        write("Edgefile", edgefile.as_bytes());
        let snapshot = match edge::compile::load(&dir.join("Edgefile"), &edge::plugins::registry()) {
            Ok(s) => s,
            Err(diags) => panic!("the bench Edgefile does not compile:\n{}", edge::config::render(&diags)),
        };
        let tls = |name: &str| {
            let site = snapshot.sites.iter().find(|s| &*s.name == name).expect("site compiled");
            site.tls.clone()
        };
        Sites {
            open: tls("open.bench"),
            mtls: tls("mtls.bench"),
            allow: tls("allow.bench"),
            crl0: tls("crl0.bench"),
            crl100k: tls("crl100k.bench"),
        }
    }

    /// A client that trusts the CA, presents alice's certificate when
    /// `with_cert`, and never resumes (every handshake is a full one).
    fn client_config(&self, with_cert: bool) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA as a root");
        let b = ClientConfig::builder_with_provider(edge::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let mut cfg = if with_cert {
            b.with_client_auth_cert(self.client_chain.clone(), self.client_key.clone_key()).expect("client cert")
        } else {
            b.with_no_client_auth()
        };
        cfg.resumption = Resumption::disabled();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    }

    /// edge's index of revoked serials over one CRL of the CA.
    fn crl_index(&self, crl: &CertificateRevocationListDer<'_>) -> CrlIndex {
        let mut index = CrlIndex::default();
        let added = index.add(crl, std::slice::from_ref(&self.ca_der)).expect("the CRL verifies");
        assert!(added, "the CRL's issuer is the CA");
        index
    }

    /// rustls' WebPKI client verifier over the CA and `crls`, end entity
    /// only, unknown status allowed: how edge checked CRLs before CrlIndex.
    fn webpki_verifier(&self, crls: Vec<CertificateRevocationListDer<'static>>) -> Arc<dyn ClientCertVerifier> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA as a root");
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), edge::tls::provider())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .expect("verifier")
    }
}

/// Five rules; only the last matches `id`.
fn allow_rules(id: &ClientIdentity) -> Vec<AllowRule> {
    let rule = |all: Vec<Matcher>| AllowRule { all };
    vec![
        rule(vec![Matcher::Cn("bob".into()), Matcher::Ou("ops".into())]),
        rule(vec![Matcher::SanDns("ingest.newsroom.internal".into())]),
        rule(vec![Matcher::SanUri("spiffe://newsroom/ingest".into())]),
        rule(vec![Matcher::Fingerprint(format!("sha256:{}", "0".repeat(64)))]),
        rule(vec![Matcher::Cn(id.cn.clone().unwrap_or_default()), Matcher::Ou("editors".into())]),
    ]
}

fn request_context(id: ClientIdentity) -> RequestContext {
    RequestContext {
        site: Arc::from("app.localhost"),
        host: "app.localhost".into(),
        path: "/api/v1/items/42".into(),
        query: None,
        method: http::Method::GET,
        proto: Proto::H2,
        tls_version: "TLSv1.3",
        remote: "127.0.0.1:54321".parse().expect("address"),
        local: "127.0.0.1:8443".parse().expect("address"),
        client: Some(Arc::new(id)),
    }
}
