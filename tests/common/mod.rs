//! Helpers for driving the real `edge` binary with real clients: a test PKI
//! minted at test time, the server process with its bound ports, curl.
#![allow(dead_code)]

pub mod h3c;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// The edge binary under test.
pub fn edge_bin() -> &'static str {
    env!("CARGO_BIN_EXE_edge")
}

/// A certificate authority for tests.
pub struct TestCa {
    pub name: String,
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

/// Options for a client certificate.
#[derive(Default, Clone)]
pub struct ClientOpts {
    pub ous: Vec<String>,
    pub san_dns: Vec<String>,
    pub san_uri: Vec<String>,
    pub expired: bool,
    pub serial: Option<u64>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(30);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { name: name.into(), params, key, pem }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// A server certificate for `names`: (cert PEM, key PEM).
    pub fn server(&self, names: &[&str]) -> (String, String) {
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(30);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate for `cn`: (cert PEM, key PEM, DER).
    pub fn client(&self, cn: &str, opts: &ClientOpts) -> (String, String, Vec<u8>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for ou in &opts.ous {
            params.distinguished_name.push(DnType::OrganizationalUnitName, ou.as_str());
        }
        for d in &opts.san_dns {
            params.subject_alt_names.push(SanType::DnsName(d.clone().try_into().unwrap()));
        }
        for u in &opts.san_uri {
            params.subject_alt_names.push(SanType::URI(u.clone().try_into().unwrap()));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        if let Some(s) = opts.serial {
            params.serial_number = Some(SerialNumber::from_slice(&s.to_be_bytes()));
        }
        let now = OffsetDateTime::now_utc();
        if opts.expired {
            params.not_before = now - time::Duration::days(10);
            params.not_after = now - time::Duration::days(1);
        } else {
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// A CRL (PEM) revoking `serials`.
    pub fn crl(&self, serials: &[u64]) -> String {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&s.to_be_bytes()),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer()).unwrap().pem().unwrap()
    }
}

/// A folder for one test, removed at the end.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("edge-test").tempdir().unwrap()
}

/// Writes `text` to `dir/name`, creating folders.
pub fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// The usual test PKI, written into a folder:
/// - `ca.pem` (trusted), `other-ca.pem` (not trusted)
/// - `server.crt/key` for `names`
/// - clients `alice` (ou editors), `carol` (ou ops), `mallory` (trusted CA but
///   not allowed), `expired`, `revoked` (serial 0x0bad in `crl.pem`),
///   `stranger` (signed by the other CA): each `NAME.crt` + `NAME.key`.
pub struct Pki {
    pub ca: TestCa,
    pub other: TestCa,
    pub dir: PathBuf,
    pub ders: HashMap<String, Vec<u8>>,
}

pub const REVOKED_SERIAL: u64 = 0x0bad;

impl Pki {
    pub fn new(dir: &Path, names: &[&str]) -> Pki {
        let ca = TestCa::new("Test Root CA");
        let other = TestCa::new("Untrusted CA");
        write(dir, "ca.pem", &ca.pem);
        write(dir, "other-ca.pem", &other.pem);
        let (c, k) = ca.server(names);
        write(dir, "server.crt", c);
        write(dir, "server.key", k);
        let mut pki = Pki { ca, other, dir: dir.to_path_buf(), ders: HashMap::new() };
        let editors = ClientOpts { ous: vec!["editors".into()], ..Default::default() };
        pki.add_client("alice", &editors);
        pki.add_client("carol", &ClientOpts { ous: vec!["ops".into()], ..Default::default() });
        pki.add_client("mallory", &editors);
        pki.add_client("expired", &ClientOpts { expired: true, ..editors.clone() });
        pki.add_client("revoked", &ClientOpts { serial: Some(REVOKED_SERIAL), ..editors.clone() });
        let (c, k, der) = pki.other.client("stranger", &editors);
        write(dir, "stranger.crt", c);
        write(dir, "stranger.key", k);
        pki.ders.insert("stranger".into(), der);
        write(dir, "crl.pem", pki.ca.crl(&[REVOKED_SERIAL]));
        pki
    }

    pub fn add_client(&mut self, cn: &str, opts: &ClientOpts) {
        let (c, k, der) = self.ca.client(cn, opts);
        write(&self.dir, &format!("{cn}.crt"), c);
        write(&self.dir, &format!("{cn}.key"), k);
        self.ders.insert(cn.into(), der);
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A running `edge run`, killed on drop.
pub struct Edge {
    child: Child,
    log: Arc<(Mutex<String>, Condvar)>,
    /// Configured listen address -> bound address.
    pub bound: HashMap<String, SocketAddr>,
    /// The admin API's bound address, if on.
    pub admin: Option<SocketAddr>,
    pub config: PathBuf,
}

impl Edge {
    /// Writes `edgefile` to `dir/Edgefile` and starts edge on it; waits until
    /// it says it is ready.
    pub fn start(dir: &Path, edgefile: &str) -> Edge {
        let config = write(dir, "Edgefile", edgefile);
        Self::start_file(&config)
    }

    pub fn start_file(config: &Path) -> Edge {
        Self::start_opts(config, false)
    }

    /// Starts edge watching its files (no `--no-watch`).
    pub fn start_watching(dir: &Path, edgefile: &str) -> Edge {
        let config = write(dir, "Edgefile", edgefile);
        Self::start_opts(&config, true)
    }

    /// Starts edge allowed on one CPU only (`taskset -c 0`), as on a
    /// one-core machine.
    pub fn start_on_one_core(dir: &Path, edgefile: &str) -> Edge {
        let config = write(dir, "Edgefile", edgefile);
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0", edge_bin()]);
        Self::start_cmd(cmd, &config, false)
    }

    fn start_opts(config: &Path, watch: bool) -> Edge {
        Self::start_cmd(Command::new(edge_bin()), config, watch)
    }

    fn start_cmd(mut cmd: Command, config: &Path, watch: bool) -> Edge {
        let args: &[&str] = if watch { &["run", "--config"] } else { &["run", "--no-watch", "--config"] };
        let mut child = cmd
            .args(args)
            .arg(config)
            .env("EDGE_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start edge");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (m, cv) = &*log2;
                let mut s = m.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
                cv.notify_all();
            }
            let (m, cv) = &*log2;
            m.lock().unwrap().push_str("<<exit>>\n");
            cv.notify_all();
        });
        let mut edge = Edge { child, log, bound: HashMap::new(), admin: None, config: config.to_path_buf() };
        edge.wait_log("edge is ready", Duration::from_secs(20));
        edge.refresh_bound();
        edge
    }

    /// Reads the bound addresses from the log again (after a reload).
    pub fn refresh_bound(&mut self) {
        let text = self.log();
        self.bound.clear();
        for line in text.lines().filter(|l| l.contains(" listening ") || l.contains("listener removed")) {
            let field = |name: &str| {
                line.split_whitespace().find_map(|w| w.strip_prefix(name)).map(|v| v.trim_matches('"').to_string())
            };
            if let Some(admin) = field("admin=") {
                self.admin = Some(admin.parse().unwrap());
            }
            if let (Some(listen), Some(bound)) = (field("listen="), field("bound=")) {
                if line.contains("listener removed") {
                    self.bound.remove(&listen);
                } else {
                    self.bound.insert(listen, bound.parse().unwrap());
                }
            }
        }
    }

    /// The admin API's address.
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("edge was started with an admin API")
    }

    /// A plain-HTTP request to the admin API: (status, body).
    pub fn admin_request(&self, method: &str, path: &str) -> (u16, String) {
        http_plain(self.admin(), method, path)
    }

    /// Starts edge expecting it to fail; returns its exit code and stderr.
    pub fn start_failing(dir: &Path, edgefile: &str) -> (i32, String) {
        let config = write(dir, "Edgefile", edgefile);
        let out = Command::new(edge_bin()).args(["run", "--no-watch", "--config"]).arg(&config).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// The bound port of the only (or first configured) listener.
    pub fn port(&self) -> u16 {
        assert_eq!(self.bound.len(), 1, "several listeners: use port_of");
        self.bound.values().next().unwrap().port()
    }

    pub fn port_of(&self, listen: &str) -> u16 {
        self.bound[listen].port()
    }

    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` (panics with the log after `max`).
    pub fn wait_log(&self, needle: &str, max: Duration) {
        let deadline = Instant::now() + max;
        let (m, cv) = &*self.log;
        let mut s = m.lock().unwrap();
        while !s.contains(needle) {
            let now = Instant::now();
            if now >= deadline || s.contains("<<exit>>") {
                panic!("edge log never showed {needle:?}:\n{s}");
            }
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    /// Waits until the log holds more than `n` occurrences of `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize, max: Duration) {
        let deadline = Instant::now() + max;
        let (m, cv) = &*self.log;
        let mut s = m.lock().unwrap();
        while s.matches(needle).count() <= n {
            let now = Instant::now();
            if now >= deadline || s.contains("<<exit>>") {
                panic!("edge log never showed {needle:?} more than {n} times:\n{s}");
            }
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    /// Counts occurrences of `needle` in the log.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal and waits for exit (bounded).
    pub fn signal_and_wait(&mut self, sig: &str, max: Duration) -> Option<i32> {
        Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + max;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What curl saw.
#[derive(Debug)]
pub struct CurlOut {
    pub exit: i32,
    /// 0 when no HTTP answer came.
    pub status: u16,
    /// `1.1`, `2`, ...
    pub version: String,
    pub body: String,
    pub headers: String,
    pub stderr: String,
}

impl CurlOut {
    /// The connection was refused before any HTTP answer.
    pub fn refused(&self) -> bool {
        self.status == 0 && self.exit != 0
    }
    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim().to_ascii_lowercase() == name).then(|| v.trim().to_string())
        })
    }
}

/// Runs curl against `https://HOST:PORT{path}` resolved to 127.0.0.1, trusting
/// `ca`, with extra `args`.
pub fn curl(host: &str, port: u16, path: &str, ca: &str, args: &[&str]) -> CurlOut {
    let url = format!("https://{host}:{port}{path}");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert", ca, "-D", "-", "-w", "\n@@%{http_code} %{http_version}"]);
    if host.parse::<std::net::IpAddr>().is_err() {
        cmd.args(["--resolve", &format!("{host}:{port}:127.0.0.1")]);
    }
    cmd.args(args).arg(url);
    parse_curl(cmd.output().expect("run curl"))
}

fn parse_curl(out: Output) -> CurlOut {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, tail) = stdout.rsplit_once("\n@@").unwrap_or((&stdout, "000 0"));
    let mut tail = tail.split_whitespace();
    let status = tail.next().unwrap_or("0").parse().unwrap_or(0);
    let version = tail.next().unwrap_or("0").to_string();
    // Headers then body; with several header blocks (1xx), take the last.
    let (headers, body) = match rest.rfind("\r\n\r\n") {
        Some(_) => {
            let mut headers = String::new();
            let mut body = rest;
            while let Some(i) = body.find("\r\n\r\n") {
                if !body.starts_with("HTTP/") {
                    break;
                }
                headers = body[..i].to_string();
                body = &body[i + 4..];
            }
            (headers, body.to_string())
        }
        None => (String::new(), rest.to_string()),
    };
    CurlOut {
        exit: out.status.code().unwrap_or(-1),
        status,
        version,
        body,
        headers,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One plain HTTP/1.1 request (Connection: close): (status, body).
pub fn http_plain(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("0").parse().unwrap_or(0);
    (status, body.to_string())
}

/// Runs `edge` with `args`; returns (exit code, stdout, stderr).
pub fn edge_cmd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(edge_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A checksum of a body, the same on both sides of a transfer.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter()
        .enumerate()
        .fold(0xcbf29ce484222325u64, |h, (i, b)| (h ^ (*b as u64 ^ i as u64)).wrapping_mul(0x100000001b3))
}

/// A plain HTTP/1.1 upstream on 127.0.0.1 (port 0), one thread per
/// connection, `Connection: close`: it reads the request head and its
/// Content-Length body, and answers 200 with `answer(head, body)`.
fn upstream(answer: fn(&str, &[u8]) -> String) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                let end = loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p;
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = head
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
                    .unwrap_or(0);
                let mut body = buf[end + 4..].to_vec();
                while body.len() < len {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = answer(&head, &body);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = conn.write_all(resp.as_bytes());
            });
        }
    });
    addr
}

/// An upstream that answers `len=N sum=CHECKSUM` of the request body.
pub struct SinkUpstream {
    pub addr: SocketAddr,
}

impl SinkUpstream {
    pub fn start() -> SinkUpstream {
        SinkUpstream { addr: upstream(|_, body| format!("len={} sum={:x}", body.len(), checksum(body))) }
    }
}

/// An upstream that answers with the request line and headers it received.
pub struct EchoUpstream {
    pub addr: SocketAddr,
}

impl EchoUpstream {
    pub fn start() -> EchoUpstream {
        EchoUpstream { addr: upstream(|head, _| head.to_string()) }
    }
}
