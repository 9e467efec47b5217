//! `edge agent`: keeps a client certificate fresh over EST. It renews when
//! two thirds of the lifetime have passed (or inside the server's
//! `renewal-info` window), with jitter and exponential backoff, generates a
//! new key every time, replaces key and certificate atomically (temp file,
//! fsync, rename; key mode 0600), and runs `--exec` after each renewal.

use crate::cli::AgentArgs;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tracing::{info, warn};

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The server refuses for good (revoked, expired, disabled, bad request).
    #[error("{0}")]
    Refused(String),
    /// A local problem (files, URL).
    #[error("{0}")]
    Local(String),
    /// A renewal that could not be done now (network, 5xx, 429); retried by the loop.
    #[error("{0}")]
    Transient(String),
}

struct Endpoint {
    host: String,
    addr: SocketAddr,
    base: String,
}

/// Runs the agent until it fails for good (or, with `--once`, after one renewal).
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    let ep = endpoint(&args.url).await?;
    let mut backoff = Duration::from_secs(1);
    loop {
        let (not_before, not_after, _) = current(&args.cert)?;
        let now = OffsetDateTime::now_utc();
        if not_after <= now {
            return Err(AgentError::Refused(format!(
                "{} expired at {}; enroll again with a new token (`edge ca token`)",
                args.cert.display(),
                rfc3339(not_after)
            )));
        }
        if !args.once {
            let life = (not_after - not_before).whole_seconds().max(1);
            let mut at = not_before + time::Duration::seconds(life * 2 / 3);
            match renewal_info(&ep, &args).await {
                Ok(Some(after)) => at = after,
                Ok(None) => {}
                Err(AgentError::Refused(msg)) => return Err(AgentError::Refused(msg)),
                Err(e) => warn!(error = %e, "renewal-info unavailable; renewing at 2/3 of the lifetime"),
            }
            // Jitter: spread a fleet's renewals over a quarter of the time
            // left before expiry, at most 10 minutes.
            let left_ms = (not_after - at).whole_milliseconds().max(0) as u64;
            at += time::Duration::milliseconds(random_below((left_ms / 4).min(600_000)) as i64);
            let wait = (at - OffsetDateTime::now_utc()).whole_milliseconds().max(0) as u64;
            if wait > 0 {
                info!(renew_at = %rfc3339(at), "waiting to renew");
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
        match renew(&ep, &args).await {
            Ok(serial) => {
                info!(serial, cert = %args.cert.display(), "certificate renewed");
                if let Some(cmd) = &args.exec {
                    match tokio::process::Command::new("sh").arg("-c").arg(cmd).status().await {
                        Ok(s) if s.success() => {}
                        Ok(s) => warn!(command = cmd, status = %s, "--exec command failed"),
                        Err(e) => warn!(command = cmd, error = %e, "--exec command could not start"),
                    }
                }
                backoff = Duration::from_secs(1);
                if args.once {
                    return Ok(());
                }
            }
            Err(AgentError::Transient(msg)) if !args.once => {
                let wait = backoff + Duration::from_millis(random_below(backoff.as_millis() as u64 / 2 + 1));
                warn!(error = msg, retry_in_s = wait.as_secs(), "renewal failed; retrying");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
            Err(e) => return Err(e),
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    if n == 0 {
        0
    } else {
        u64::from_le_bytes(b) % n
    }
}

/// (not-before, not-after, CN) of the certificate file.
fn current(path: &Path) -> Result<(OffsetDateTime, OffsetDateTime, String), AgentError> {
    let local = |e: String| AgentError::Local(format!("{}: {e}", path.display()));
    let pem = std::fs::read(path).map_err(|e| local(crate::util::io_reason(&e)))?;
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| local("no PEM certificate in it".into()))?
        .map_err(|e| local(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| local(e.to_string()))?;
    let v = cert.validity();
    let ts = |t: i64| OffsetDateTime::from_unix_timestamp(t).map_err(|e| local(e.to_string()));
    let cn = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or("edge-agent").to_string();
    Ok((ts(v.not_before.timestamp())?, ts(v.not_after.timestamp())?, cn))
}

async fn endpoint(url: &str) -> Result<Endpoint, AgentError> {
    let bad = |why: &str| AgentError::Local(format!("--url {url:?}: {why}; write https://HOST[:PORT]"));
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("the scheme must be https"));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?.trim_matches(|c| c == '[' || c == ']').to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(443);
    let base = uri.path().trim_end_matches('/').to_string();
    // Like curl, `localhost` and `*.localhost` are loopback (RFC 6761).
    let addr = if host == "localhost" || host.ends_with(".localhost") {
        SocketAddr::from(([127, 0, 0, 1], port))
    } else if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        SocketAddr::new(ip, port)
    } else {
        tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| AgentError::Transient(format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| AgentError::Transient(format!("{host} has no address")))?
    };
    Ok(Endpoint { host, addr, base })
}

fn tls_config(args: &AgentArgs) -> Result<Arc<rustls::ClientConfig>, AgentError> {
    let local = |p: &Path, e: String| AgentError::Local(format!("{}: {e}", p.display()));
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&args.ca_file).map_err(|e| local(&args.ca_file, e.to_string()))? {
        roots
            .add(c.map_err(|e| local(&args.ca_file, e.to_string()))?)
            .map_err(|e| local(&args.ca_file, e.to_string()))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&args.cert)
        .map_err(|e| local(&args.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| local(&args.cert, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&args.key).map_err(|e| local(&args.key, e.to_string()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Local(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| local(&args.key, format!("does not fit the certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// One request over a fresh mTLS connection: (status, body).
async fn request(
    ep: &Endpoint,
    args: &AgentArgs,
    method: http::Method,
    op: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(u16, Bytes), AgentError> {
    let cfg = tls_config(args)?;
    let name =
        ServerName::try_from(ep.host.clone()).map_err(|_| AgentError::Local(format!("bad host {:?}", ep.host)))?;
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(ep.addr)
            .await
            .map_err(|e| AgentError::Transient(format!("cannot connect to {}: {e}", ep.addr)))?;
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| classify(&e))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(|e| classify(&e))?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}/.well-known/est/{op}", ep.base))
            .header(http::header::HOST, &ep.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).map_err(|e| AgentError::Local(e.to_string()))?;
        let resp = send.send_request(req).await.map_err(|e| classify(&e))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| classify(&e))?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| Err(AgentError::Transient("the server did not answer within 30 s".into())))
}

/// A connection error: a refusal of our certificate is final, the rest transient.
fn classify(e: &(dyn std::error::Error + 'static)) -> AgentError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(rustls::Error::AlertReceived(alert)) = err.downcast_ref::<rustls::Error>() {
            use rustls::AlertDescription as A;
            let why = match alert {
                A::CertificateRevoked => "the server refused the certificate: it is revoked",
                A::CertificateExpired => "the server refused the certificate: it is expired",
                A::UnknownCA => "the server does not trust the certificate's CA",
                A::AccessDenied => "the server refused the certificate: not allowed",
                A::CertificateRequired | A::BadCertificate => "the server refused the certificate",
                _ => "",
            };
            if !why.is_empty() {
                return AgentError::Refused(format!("{why}; enroll again with a new token (`edge ca token`)"));
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                return classify(inner);
            }
        }
        cur = err.source();
    }
    AgentError::Transient(e.to_string())
}

fn status_error(status: u16, body: &[u8]) -> AgentError {
    let reason = String::from_utf8_lossy(body).lines().next().unwrap_or("").to_string();
    let msg = format!("the server answered {status}: {reason}");
    if status == 429 || status >= 500 {
        AgentError::Transient(msg)
    } else {
        AgentError::Refused(msg)
    }
}

async fn renewal_info(ep: &Endpoint, args: &AgentArgs) -> Result<Option<OffsetDateTime>, AgentError> {
    let (status, body) = request(ep, args, http::Method::GET, "renewal-info", &[], Bytes::new()).await?;
    if status != 200 {
        return Err(status_error(status, &body));
    }
    let text = String::from_utf8_lossy(&body);
    let field = text.split("\"renew_after\":\"").nth(1).and_then(|r| r.split('"').next());
    Ok(field.and_then(|f| OffsetDateTime::parse(f, &time::format_description::well_known::Rfc3339).ok()))
}

/// One renewal: a new key, a CSR, `simplereenroll`, the files replaced.
async fn renew(ep: &Endpoint, args: &AgentArgs) -> Result<String, AgentError> {
    let (_, _, cn) = current(&args.cert)?;
    let key = rcgen::KeyPair::generate().map_err(|e| AgentError::Local(format!("key generation: {e}")))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| AgentError::Local(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let csr = params.serialize_request(&key).map_err(|e| AgentError::Local(format!("CSR: {e}")))?;
    let csr_pem = csr.pem().map_err(|e| AgentError::Local(format!("CSR: {e}")))?;
    let (status, body) = request(
        ep,
        args,
        http::Method::POST,
        "simplereenroll",
        &[("content-type", "application/pkcs10"), ("accept", "application/pem-certificate-chain")],
        Bytes::from(csr_pem),
    )
    .await?;
    if status != 200 {
        return Err(status_error(status, &body));
    }
    let chain = String::from_utf8(body.to_vec()).map_err(|_| AgentError::Transient("the answer is not PEM".into()))?;
    let leaf = CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| AgentError::Transient("the answer holds no certificate".into()))?;
    let id = crate::policy::identity_from_der(&leaf).map_err(|e| AgentError::Transient(e.to_string()))?;
    // Each file is replaced atomically, key first; a reader between the two
    // renames sees the new key with the old certificate, so --exec runs
    // only after both.
    let write = |p: &Path, text: &str, mode: u32| {
        crate::util::write_atomic(p, text.as_bytes(), Some(mode))
            .map_err(|e| AgentError::Local(format!("cannot write {}: {}", p.display(), crate::util::io_reason(&e))))
    };
    write(&args.key, &key.serialize_pem(), 0o600)?;
    write(&args.cert, &chain, 0o644)?;
    Ok(id.serial)
}
