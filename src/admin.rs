//! The admin API (plain HTTP, loopback by default): `GET /metrics`,
//! `GET /healthz`, `POST /reload`, `GET /config`; and the client side of
//! `edge reload`.

use crate::config::{self, ClientAuthModel, Matcher, Pattern, TlsModel, TrustModel};
use crate::server::Server;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{debug, warn};

type Resp = http::Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = http::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// Serves the admin API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(route(req.method(), req.uri().path(), &server).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(%remote, error = %e, "admin connection ended with an error");
            }
        });
    }
}

async fn route(method: &Method, path: &str, server: &Server) -> Resp {
    match (method, path) {
        (&Method::GET, "/metrics") => {
            respond(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", crate::metrics::global().render())
        }
        (&Method::GET, "/healthz") => respond(StatusCode::OK, TEXT, "ok\n"),
        (&Method::POST, "/reload") => match server.reload("admin API").await {
            Ok(generation) => respond(StatusCode::OK, JSON, format!("{{\"generation\":{generation}}}\n")),
            Err(diags) => {
                let mut body = String::from(
                    "{\"error\":\"the Edgefile has problems; still serving the previous config\",\"diagnostics\":[",
                );
                for (i, d) in diags.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    json_str(&mut body, &d.to_string());
                }
                body.push_str("]}\n");
                respond(StatusCode::UNPROCESSABLE_ENTITY, JSON, body)
            }
        },
        (&Method::GET, "/config") => respond(StatusCode::OK, JSON, config_json(server).await),
        (_, "/metrics" | "/healthz" | "/config" | "/reload") => {
            let mut r = respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
            let allow = if path == "/reload" { "POST" } else { "GET" };
            r.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
            r
        }
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found: the admin API has /metrics /healthz /config /reload\n"),
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_list<T>(out: &mut String, items: impl IntoIterator<Item = T>, mut each: impl FnMut(&mut String, T)) {
    out.push('[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        each(out, item);
    }
    out.push(']');
}

/// The effective config as JSON. Nothing secret: no key material, no
/// handler arguments (a `header` value may hold a credential), only the
/// structure, the policies and the paths of public files.
async fn config_json(server: &Server) -> String {
    let snap = server.current();
    let model = &snap.model;
    let bound = server.bound().await;
    let mut o = String::from("{");
    let _ = write!(o, "\"generation\":{},\"edgefile\":", server.generation());
    json_str(&mut o, &model.path.display().to_string());
    o.push_str(",\"admin\":");
    match model.admin {
        Some(a) => json_str(&mut o, &a.to_string()),
        None => o.push_str("null"),
    }
    o.push_str(",\"listeners\":");
    json_list(&mut o, &bound, |o, (cfg, b)| {
        o.push_str("{\"listen\":");
        json_str(o, &cfg.to_string());
        o.push_str(",\"bound\":");
        json_str(o, &b.to_string());
        o.push('}');
    });
    let g = &model.global;
    let _ = write!(
        o,
        ",\"max_connections\":{},\"handshake_timeout_ms\":{},\"shutdown_timeout_ms\":{}",
        g.max_connections,
        g.handshake_timeout.as_millis(),
        g.shutdown_timeout.as_millis()
    );
    o.push_str(",\"cas\":");
    json_list(&mut o, &model.cas, |o, ca| {
        o.push_str("{\"name\":");
        json_str(o, &ca.name.value);
        let _ = write!(
            o,
            ",\"cert_lifetime_s\":{},\"token_lifetime_s\":{}}}",
            ca.cert_lifetime.as_secs(),
            ca.token_lifetime.as_secs()
        );
    });
    o.push_str(",\"sites\":");
    json_list(&mut o, &model.sites, |o, site| {
        o.push_str("{\"names\":");
        json_list(o, &site.names, |o, n| json_str(o, &n.value.to_string()));
        o.push_str(",\"listen\":");
        json_list(o, &site.listens, |o, l| {
            o.push_str("{\"addr\":");
            json_str(o, &l.addr.value.to_string());
            let _ = write!(o, ",\"http3\":{}}}", l.http3);
        });
        o.push_str(",\"tls\":");
        match &site.tls {
            Some(TlsModel::Files { cert, .. }) => {
                o.push_str("{\"cert\":");
                json_str(o, &cert.value.display().to_string());
                o.push('}');
            }
            Some(TlsModel::Internal { ca }) => {
                o.push_str("{\"internal_ca\":");
                json_str(o, &ca.value);
                o.push('}');
            }
            None => o.push_str("null"),
        }
        o.push_str(",\"client_auth\":");
        client_auth_json(o, &site.client_auth);
        let l = &site.limits;
        let _ = write!(
            o,
            ",\"limits\":{{\"max_header_size\":{},\"max_headers\":{},\"max_body\":{},\"idle_timeout_ms\":{}}}",
            l.max_header_size,
            l.max_headers,
            l.max_body,
            l.idle_timeout.as_millis()
        );
        o.push_str(",\"routes\":");
        json_list(o, &site.routes, |o, r| {
            o.push_str("{\"pattern\":");
            json_str(o, &r.pattern.value.to_string());
            let _ = write!(
                o,
                ",\"match\":\"{}\"",
                if matches!(r.pattern.value, Pattern::Exact(_)) { "exact" } else { "prefix" }
            );
            if let Some(ca) = &r.client_auth {
                o.push_str(",\"client_auth\":");
                client_auth_json(o, ca);
            }
            if let Some(b) = r.max_body {
                let _ = write!(o, ",\"max_body\":{b}");
            }
            o.push_str(",\"handlers\":");
            json_list(o, &r.handlers, |o, h| json_str(o, &h.name));
            o.push('}');
        });
        if let Some(e) = &site.enrollment {
            o.push_str(",\"enrollment_ca\":");
            json_str(o, &e.value);
        }
        o.push('}');
    });
    o.push_str("}\n");
    o
}

fn client_auth_json(o: &mut String, ca: &ClientAuthModel) {
    o.push_str("{\"mode\":");
    json_str(o, ca.mode.value.as_str());
    o.push_str(",\"trust\":");
    json_list(o, &ca.trust, |o, t| match t {
        TrustModel::File(f) => {
            o.push_str("{\"file\":");
            json_str(o, &f.value.display().to_string());
            o.push('}');
        }
        TrustModel::Ca(c) => {
            o.push_str("{\"ca\":");
            json_str(o, &c.value);
            o.push('}');
        }
    });
    o.push_str(",\"crls\":");
    json_list(o, &ca.crls, |o, c| json_str(o, &c.value.display().to_string()));
    o.push_str(",\"allow\":");
    json_list(o, &ca.allow, |o, rule| {
        o.push('{');
        for (i, m) in rule.all.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            let (k, v) = match m {
                Matcher::Cn(v) => ("cn", v),
                Matcher::Ou(v) => ("ou", v),
                Matcher::SanDns(v) => ("san-dns", v),
                Matcher::SanUri(v) => ("san-uri", v),
                Matcher::Fingerprint(v) => ("fingerprint", v),
            };
            json_str(o, k);
            o.push(':');
            json_str(o, v);
        }
        o.push('}');
    });
    o.push('}');
}

const ADDR_FILE: &str = "admin.addr";

/// With `admin "IP:0"`, records the bound address under `storage` so that
/// `edge reload` finds it.
pub fn record_address(storage: &Path, bound: SocketAddr) {
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(storage)?;
        crate::util::write_atomic(&storage.join(ADDR_FILE), format!("{bound}\n").as_bytes(), Some(0o644))
    };
    if let Err(e) = write() {
        warn!(error = %e, "cannot record the admin address; `edge reload` will not find it");
    }
}

/// Why `edge reload` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The Edgefile could not be read well enough to find the admin address.
    #[error("{0}")]
    Config(String),
    /// The admin API is off.
    #[error("the admin API is off in {0}; send SIGHUP to the edge process instead")]
    Off(String),
    /// Nothing answered.
    #[error("cannot reach the admin API at {addr}: {reason} (is edge running with this Edgefile?)")]
    Unreachable {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// edge refused the new config.
    #[error("{0}")]
    Refused(String),
}

/// `edge reload`: asks the running server (its admin API, found from the
/// Edgefile) to reload now; answers the new generation.
pub fn request_reload(config: &Path) -> Result<u64, ReloadError> {
    use std::io::{Read, Write};
    let source = config::Source::read(config).map_err(|d| ReloadError::Config(d.to_string()))?;
    let (model, diags) = match config::parse_partial(&source, &[]) {
        Ok(x) => x,
        Err(diags) => return Err(ReloadError::Config(config::render(&diags).trim_end().to_string())),
    };
    let Some(mut addr) = model.admin else {
        // A bad `admin` address also leaves it unset: say what is wrong.
        return Err(match diags.iter().find(|d| d.message.starts_with("bad address")) {
            Some(d) => ReloadError::Config(d.to_string()),
            None => ReloadError::Off(config.display().to_string()),
        });
    };
    if addr.port() == 0 {
        let recorded = std::fs::read_to_string(model.storage.join(ADDR_FILE)).map_err(|e| {
            ReloadError::Config(format!(
                "the admin API listens on port 0 and {} cannot be read: {}",
                model.storage.join(ADDR_FILE).display(),
                crate::util::io_reason(&e)
            ))
        })?;
        addr = recorded.trim().parse().map_err(|_| ReloadError::Config("bad admin address file".into()))?;
    }
    let unreachable = |e: std::io::Error| ReloadError::Unreachable { addr, reason: crate::util::io_reason(&e) };
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(120))).map_err(unreachable)?;
    write!(s, "POST /reload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .map_err(unreachable)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(unreachable)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("");
    match status {
        "200" => {
            let generation = body
                .split("\"generation\":")
                .nth(1)
                .and_then(|r| r.trim_start().split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Ok(generation)
        }
        "422" => {
            // The diagnostics, one per line, as `edge validate` prints them.
            let list = body.split("\"diagnostics\":").nth(1).unwrap_or("");
            Err(ReloadError::Refused(json_strings(list).join("\n")))
        }
        other => Err(ReloadError::Refused(format!("the admin API answered {other}: {}", body.trim()))),
    }
}

/// The strings of a JSON array of strings at the start of `s` (enough for
/// reading our own `/reload` answer).
fn json_strings(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars();
    let mut cur: Option<String> = None;
    while let Some(c) = chars.next() {
        match (&mut cur, c) {
            (None, '"') => cur = Some(String::new()),
            (None, ']') => break,
            (None, _) => {}
            (Some(_), '"') => out.extend(cur.take()),
            (Some(buf), '\\') => match chars.next() {
                Some('n') => buf.push('\n'),
                Some('t') => buf.push('\t'),
                Some('r') => buf.push('\r'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    buf.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
                }
                Some(other) => buf.push(other),
                None => break,
            },
            (Some(buf), c) => buf.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\u{1}");
        assert_eq!(s, r#""a\"b\\c\nd\u0001""#);
    }

    #[test]
    fn json_strings_round_trip() {
        let mut s = String::from("[");
        json_str(&mut s, "E:1:2: error: bad \"x\" (hint: \\)");
        s.push(',');
        json_str(&mut s, "two\u{1}");
        s.push_str("]}");
        assert_eq!(json_strings(&s), vec!["E:1:2: error: bad \"x\" (hint: \\)".to_string(), "two\u{1}".to_string()]);
    }
}
