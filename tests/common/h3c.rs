//! Two independent HTTP/3 clients for the tests: one in Rust (quinn + h3),
//! one in Python (aioquic, `tests/h3client.py`, in the venv scripts/test makes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What an HTTP/3 client saw.
#[derive(Debug, Clone, Default)]
pub struct H3Out {
    /// `None` when the connection was refused before an answer.
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub error: Option<String>,
}

impl H3Out {
    pub fn refused(&self) -> bool {
        self.status.is_none() && self.error.is_some()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One request.
#[derive(Debug, Clone, Default)]
pub struct H3Req<'a> {
    pub host: &'a str,
    pub port: u16,
    pub authority: Option<&'a str>,
    pub path: &'a str,
    pub method: &'a str,
    pub ca: &'a str,
    pub cert: Option<(&'a str, &'a str)>,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: Vec<u8>,
}

/// The request body the clients send for `n` bytes (the same in both).
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7) % 251) as u8).collect()
}

/// The Rust client: quinn + h3.
pub fn rust_h3(r: &H3Req) -> H3Out {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), rust_h3_inner(r)).await }) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => H3Out { error: Some(e), ..Default::default() },
        Err(_) => H3Out { error: Some("timeout".into()), ..Default::default() },
    }
}

async fn rust_h3_inner(r: &H3Req<'_>) -> Result<H3Out, String> {
    use bytes::Buf;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(r.ca).map_err(|e| e.to_string())? {
        roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut tls = match r.cert {
        Some((c, k)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(c)
                .map_err(|e| e.to_string())?
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_file(k).map_err(|e| e.to_string())?;
            b.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
        None => b.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint
        .connect(format!("127.0.0.1:{}", r.port).parse().unwrap(), r.host)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut driver, mut send) =
        h3::client::new(h3_quinn::Connection::new(conn.clone())).await.map_err(|e| format!("h3: {e}"))?;
    let drive = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let authority = r.authority.unwrap_or(r.host);
    let mut req = http::Request::builder()
        .method(if r.method.is_empty() { "GET" } else { r.method })
        .uri(format!("https://{authority}{}", if r.path.is_empty() { "/" } else { r.path }));
    for (k, v) in &r.headers {
        req = req.header(*k, *v);
    }
    if !r.body.is_empty() {
        req = req.header("content-length", r.body.len().to_string());
    }
    let req = req.body(()).map_err(|e| e.to_string())?;
    let mut stream = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    for chunk in r.body.chunks(64 * 1024) {
        stream.send_data(bytes::Bytes::copy_from_slice(chunk)).await.map_err(|e| format!("send body: {e}"))?;
    }
    stream.finish().await.map_err(|e| format!("finish: {e}"))?;
    let resp = stream.recv_response().await.map_err(|e| format!("response: {e}"))?;
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.map_err(|e| format!("body: {e}"))? {
        let n = chunk.remaining();
        body.extend_from_slice(&chunk.copy_to_bytes(n));
    }
    let headers =
        resp.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    drop(send);
    conn.close(0u32.into(), b"done");
    drive.abort();
    endpoint.wait_idle().await;
    Ok(H3Out { status: Some(resp.status().as_u16()), headers, body, error: None })
}

/// The Python interpreter of the test venv.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("EDGE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/test, which installs aioquic there", p.display());
    p
}

/// The aioquic client.
pub fn aioquic(r: &H3Req) -> H3Out {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/h3client.py");
    let mut cmd = std::process::Command::new(python());
    cmd.arg(script).args(["--host", r.host, "--port", &r.port.to_string(), "--ca", r.ca]);
    cmd.args(["--path", if r.path.is_empty() { "/" } else { r.path }]);
    if !r.method.is_empty() {
        cmd.args(["--method", r.method]);
    }
    if let Some(a) = r.authority {
        cmd.args(["--authority", a]);
    }
    if let Some((c, k)) = r.cert {
        cmd.args(["--cert", c, "--key", k]);
    }
    for (k, v) in &r.headers {
        cmd.args(["--header", &format!("{k}: {v}")]);
    }
    if !r.body.is_empty() {
        assert_eq!(r.body, pattern(r.body.len()), "aioquic sends pattern() bodies only");
        cmd.args(["--data-size", &r.body.len().to_string()]);
    }
    let out = cmd.output().expect("run the aioquic client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let v: Json = parse_json(line);
    if let Some(e) = v.get("error") {
        return H3Out { error: Some(e.to_string()), ..Default::default() };
    }
    let status = v.get("status").and_then(|s| s.parse().ok());
    if status.is_none() {
        return H3Out {
            error: Some(format!("no answer: {stdout} {}", String::from_utf8_lossy(&out.stderr))),
            ..Default::default()
        };
    }
    let len: usize = v.get("body_len").and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = v.get("body").unwrap_or_default().into_bytes();
    let headers = v.headers.clone();
    H3Out {
        status,
        headers,
        body: if body.len() == len {
            body
        } else {
            format!("sha256:{}", v.get("body_sha256").unwrap_or_default()).into_bytes()
        },
        error: None,
    }
}

/// Just enough JSON for the client's one line: top-level scalars as strings,
/// and the flat "headers" object.
#[derive(Default)]
struct Json {
    fields: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

impl Json {
    fn get(&self, k: &str) -> Option<String> {
        self.fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }
}

fn parse_json(s: &str) -> Json {
    let mut j = Json::default();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut depth = 0;
    let mut key: Option<String> = None;
    let read_str = |i: &mut usize| -> String {
        let mut out = String::new();
        *i += 1;
        while *i < chars.len() && chars[*i] != '"' {
            if chars[*i] == '\\' && *i + 1 < chars.len() {
                *i += 1;
                match chars[*i] {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'u' => {
                        let hex: String = chars[*i + 1..(*i + 5).min(chars.len())].iter().collect();
                        out.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
                        *i += 4;
                    }
                    c => out.push(c),
                }
            } else {
                out.push(chars[*i]);
            }
            *i += 1;
        }
        *i += 1;
        out
    };
    while i < chars.len() {
        match chars[i] {
            '{' => {
                depth += 1;
                i += 1;
                if depth == 2 {
                    key = None;
                }
            }
            '}' => {
                depth -= 1;
                i += 1;
                key = None;
            }
            '"' => {
                let s = read_str(&mut i);
                match key.take() {
                    None => key = Some(s),
                    Some(k) if depth == 1 => j.fields.push((k, s)),
                    Some(k) => j.headers.push((k, s)),
                }
            }
            ':' | ',' | ' ' => i += 1,
            _ => {
                let start = i;
                while i < chars.len() && !matches!(chars[i], ',' | '}') {
                    i += 1;
                }
                let v: String = chars[start..i].iter().collect();
                if let Some(k) = key.take() {
                    j.fields.push((k, v.trim().to_string()));
                }
            }
        }
    }
    j
}
