//! The EST endpoints (RFC 7030, plus `crl` and `renewal-info`) of a site with
//! `enrollment ca="NAME"`, under `/.well-known/est/`.
//!
//! The identity of an issued certificate comes from the enrollment token or
//! from the verified certificate the client presents, never from the CSR,
//! whose signature only proves possession of the new key.

use crate::authority::Authority;
use crate::metrics;
use crate::pki::{self, Ledger, PkiError, TokenError};
use base64::Engine;
use bytes::Bytes;
use edge_plugin_api::{
    error_response, full, is_body_too_large, BoxFuture, Handler, Next, Request, RequestContext, Response,
};
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// The path prefix of the EST endpoints.
pub const PREFIX: &str = "/.well-known/est";

/// EST request bodies above this are refused with 413.
pub const MAX_BODY: u64 = 64 * 1024;

/// The EST endpoints of one CA.
pub struct Est {
    authority: Arc<Authority>,
    cert_lifetime: Duration,
}

impl Est {
    /// EST for `authority`, issuing certificates of `cert_lifetime`.
    pub fn new(authority: Arc<Authority>, cert_lifetime: Duration) -> Self {
        Est { authority, cert_lifetime }
    }

    fn reject(&self, status: StatusCode, reason: &'static str, message: &str) -> Response {
        metrics::global().pki_rejected.with_label_values(&[self.authority.name(), reason]).inc();
        tracing::info!(ca = self.authority.name(), reason, message, "EST request refused");
        error_response(status, message)
    }

    async fn serve(&self, req: Request, cx: &RequestContext) -> Response {
        let op = cx.path.strip_prefix(PREFIX).unwrap_or("").trim_start_matches('/');
        let method = req.method().clone();
        match (op, &method) {
            ("cacerts", &Method::GET) => {
                let pem = self.authority.ca.cert_pem().to_string();
                certs_response(&req, vec![self.authority.ca.cert_der().to_vec()], pem)
            }
            ("crl", &Method::GET) => self.crl(&req).await,
            ("renewal-info", &Method::GET) => self.renewal_info(cx).await,
            ("simpleenroll", &Method::POST) => self.enroll(req, cx).await,
            ("simplereenroll", &Method::POST) => self.reenroll(req, cx).await,
            ("cacerts" | "crl" | "renewal-info", _) => method_not_allowed("GET"),
            ("simpleenroll" | "simplereenroll", _) => method_not_allowed("POST"),
            _ => error_response(
                StatusCode::NOT_FOUND,
                "no such EST operation: use cacerts, simpleenroll, simplereenroll, crl or renewal-info",
            ),
        }
    }

    async fn crl(&self, req: &Request) -> Response {
        let a = self.authority.clone();
        let crl = tokio::task::spawn_blocking(move || a.ca.crl(a.ledger.as_ref(), OffsetDateTime::now_utc())).await;
        match crl {
            Ok(Ok(der)) => {
                if accepts(req, "application/x-pem-file") || accepts(req, "application/pem") {
                    typed(StatusCode::OK, "application/x-pem-file", pki::pem("X509 CRL", &der))
                } else {
                    typed(StatusCode::OK, "application/pkix-crl", der)
                }
            }
            Ok(Err(e)) => internal(&e),
            Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &format!("CRL task failed: {e}")),
        }
    }

    /// The presented certificate's row, if this CA issued it.
    // A refusal is already the response to send, whatever its size.
    #[allow(clippy::result_large_err)]
    async fn presented(
        &self,
        cx: &RequestContext,
    ) -> Result<(Arc<edge_plugin_api::ClientIdentity>, pki::CertRecord), Response> {
        let Some(id) = cx.client.clone() else {
            return Err(self.reject(
                StatusCode::UNAUTHORIZED,
                "no_certificate",
                "present your current client certificate (curl --cert --key)",
            ));
        };
        // The ledger may wait on another process's write: not on an async thread.
        let (a, serial) = (self.authority.clone(), id.serial.clone());
        let row = tokio::task::spawn_blocking(move || a.ledger.certificate(a.name(), &serial)).await;
        let row = match row {
            Ok(r) => r,
            Err(e) => return Err(internal(&e)),
        };
        match row {
            Ok(Some(row)) if format!("sha256:{}", row.fingerprint) == id.fingerprint => Ok((id, row)),
            Ok(_) => Err(self.reject(
                StatusCode::FORBIDDEN,
                "not_issued_here",
                &format!("the presented certificate was not issued by CA {:?}", self.authority.name()),
            )),
            Err(e) => Err(internal(&e)),
        }
    }

    async fn renewal_info(&self, cx: &RequestContext) -> Response {
        let (_, row) = match self.presented(cx).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        // From the issue time, not notBefore (set back 5 minutes for clock
        // skew), so short lifetimes are not renewed at once.
        let (from, to) = (row.issued_at.unix_timestamp(), row.not_after.unix_timestamp());
        let life = to - from;
        let after = from + life * 2 / 3;
        let before = to - life / 10;
        let fmt = |t: i64| {
            OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                .unwrap_or_default()
        };
        let body = format!(
            "{{\"not_after\":\"{}\",\"renew_after\":\"{}\",\"renew_before\":\"{}\"}}\n",
            fmt(to),
            fmt(after),
            fmt(before)
        );
        typed(StatusCode::OK, "application/json", body)
    }

    #[allow(clippy::result_large_err)]
    async fn body(&self, req: Request) -> Result<(http::request::Parts, Bytes), Response> {
        let (parts, mut body) = req.into_parts();
        let mut buf = Vec::new();
        loop {
            match body.frame().await {
                None => return Ok((parts, Bytes::from(buf))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                        if buf.len() as u64 > MAX_BODY {
                            return Err(self.too_large());
                        }
                    }
                }
                Some(Err(e)) => {
                    return Err(if is_body_too_large(&*e) {
                        self.too_large()
                    } else {
                        error_response(StatusCode::BAD_REQUEST, &format!("cannot read the request body: {e}"))
                    })
                }
            }
        }
    }

    fn too_large(&self) -> Response {
        self.reject(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "the request body is over 64 KiB")
    }

    /// 429 once `cx`'s address spent its budget.
    fn limited(&self, cx: &RequestContext) -> Option<Response> {
        (!self.authority.admit(cx.remote.ip())).then(|| {
            self.reject(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests; try again in a minute")
        })
    }

    async fn enroll(&self, req: Request, cx: &RequestContext) -> Response {
        if let Some(r) = self.limited(cx) {
            return r;
        }
        let Some(token) = bearer_or_basic(&req) else {
            return self.reject(
                StatusCode::UNAUTHORIZED,
                "no_token",
                "an enrollment token is required: Authorization: Bearer TOKEN (or HTTP Basic with the token as password)",
            );
        };
        self.issue(req, "enroll", move |a, csr, lifetime| {
            a.ca.enroll_with_token(a.ledger.as_ref(), &token, csr, lifetime, OffsetDateTime::now_utc())
        })
        .await
    }

    async fn reenroll(&self, req: Request, cx: &RequestContext) -> Response {
        if let Some(r) = self.limited(cx) {
            return r;
        }
        let (id, _) = match self.presented(cx).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        self.issue(req, "renew", move |a, csr, lifetime| {
            a.ca.renew(a.ledger.as_ref(), &id.der, csr, lifetime, OffsetDateTime::now_utc())
        })
        .await
    }

    /// Reads and checks the CSR, then issues with `f` off the async threads.
    async fn issue<F>(&self, req: Request, kind: &'static str, f: F) -> Response
    where
        F: FnOnce(&Authority, &pki::Csr, Duration) -> Result<pki::Issued, PkiError> + Send + 'static,
    {
        let (parts, body) = match self.body(req).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let csr = match pki::parse_csr(&body) {
            Ok(c) => c,
            Err(e) => return self.reject(StatusCode::BAD_REQUEST, "bad_csr", &e.to_string()),
        };
        let asks = csr.asks_for_identity();
        let (a, lifetime) = (self.authority.clone(), self.cert_lifetime);
        let issued = tokio::task::spawn_blocking(move || f(&a, &csr, lifetime)).await;
        self.answer(&parts, issued, kind, asks)
    }

    fn answer(
        &self,
        parts: &http::request::Parts,
        issued: Result<Result<pki::Issued, PkiError>, tokio::task::JoinError>,
        kind: &'static str,
        csr_asked_for_identity: bool,
    ) -> Response {
        let issued = match issued {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => return self.refusal(&e),
            Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, &format!("issuing failed: {e}")),
        };
        metrics::global().pki_issued.with_label_values(&[self.authority.name(), kind]).inc();
        tracing::info!(
            ca = self.authority.name(),
            kind,
            serial = %issued.serial,
            csr_names_ignored = csr_asked_for_identity,
            "certificate issued"
        );
        let req = http::Request::from_parts(parts.clone(), ());
        let chain_pem = format!("{}{}", issued.pem, self.authority.ca.cert_pem());
        certs_response(&req, vec![issued.der, self.authority.ca.cert_der().to_vec()], chain_pem)
    }

    fn refusal(&self, e: &PkiError) -> Response {
        let msg = e.to_string();
        match e {
            PkiError::Csr(_) | PkiError::BadPublicKey(_) => self.reject(StatusCode::BAD_REQUEST, "bad_csr", &msg),
            PkiError::KeyReused { .. } => self.reject(StatusCode::BAD_REQUEST, "key_reused", &msg),
            PkiError::Token(TokenError::Unknown) => self.reject(StatusCode::UNAUTHORIZED, "bad_token", &msg),
            PkiError::Token(TokenError::Expired { .. }) => self.reject(StatusCode::FORBIDDEN, "token_expired", &msg),
            PkiError::Token(TokenError::AlreadyUsed { .. }) => self.reject(StatusCode::FORBIDDEN, "token_used", &msg),
            PkiError::Token(TokenError::IdentityDisabled { .. }) | PkiError::IdentityDisabled { .. } => {
                self.reject(StatusCode::FORBIDDEN, "identity_disabled", &msg)
            }
            PkiError::CertRevoked { .. } => self.reject(StatusCode::FORBIDDEN, "revoked", &msg),
            PkiError::CertExpired { .. } => self.reject(StatusCode::FORBIDDEN, "expired", &msg),
            PkiError::NotIssuedHere { .. } => self.reject(StatusCode::FORBIDDEN, "not_issued_here", &msg),
            PkiError::BadIdentity(_) => self.reject(StatusCode::BAD_REQUEST, "bad_identity", &msg),
            other => internal(other),
        }
    }
}

impl Handler for Est {
    fn handle<'a>(&'a self, req: Request, cx: &'a RequestContext, _next: Next<'a>) -> BoxFuture<'a, Response> {
        Box::pin(self.serve(req, cx))
    }
}

fn internal(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "EST request failed");
    error_response(StatusCode::INTERNAL_SERVER_ERROR, "the CA could not complete the request; see the server log")
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = error_response(StatusCode::METHOD_NOT_ALLOWED, &format!("use {allow}"));
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn typed(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut r = http::Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn accepts<B>(req: &http::Request<B>, mime: &str) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|m| m.trim().split(';').next().unwrap_or("").eq_ignore_ascii_case(mime)))
}

/// EST's answer: base64 PKCS#7 certs-only, or the PEM chain when asked.
fn certs_response<B>(req: &http::Request<B>, ders: Vec<Vec<u8>>, chain_pem: String) -> Response {
    if accepts(req, "application/pem-certificate-chain") {
        return typed(StatusCode::OK, "application/pem-certificate-chain", chain_pem);
    }
    let refs: Vec<&[u8]> = ders.iter().map(Vec::as_slice).collect();
    let der = pki::pkcs7_certs_only(&refs);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut body = String::with_capacity(b64.len() + b64.len() / 64 + 1);
    for chunk in b64.as_bytes().chunks(64) {
        body.push_str(std::str::from_utf8(chunk).unwrap_or(""));
        body.push('\n');
    }
    let mut r = typed(StatusCode::OK, "application/pkcs7-mime; smime-type=certs-only", body);
    r.headers_mut().insert("content-transfer-encoding", HeaderValue::from_static("base64"));
    r
}

/// The token of `Authorization: Bearer TOKEN` or of HTTP Basic (any user,
/// the token as password).
fn bearer_or_basic(req: &Request) -> Option<String> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (_, password) = text.split_once(':')?;
        return (!password.is_empty()).then(|| password.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: &str) -> Request {
        http::Request::builder().header(header::AUTHORIZATION, auth).body(edge_plugin_api::empty()).unwrap()
    }

    #[test]
    fn tokens_from_bearer_and_basic() {
        assert_eq!(bearer_or_basic(&req("Bearer abc")).as_deref(), Some("abc"));
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:tok");
        assert_eq!(bearer_or_basic(&req(&format!("Basic {basic}"))).as_deref(), Some("tok"));
        let empty = base64::engine::general_purpose::STANDARD.encode("anyone:");
        assert_eq!(bearer_or_basic(&req(&format!("Basic {empty}"))), None);
        assert_eq!(bearer_or_basic(&req("Digest x")), None);
    }

    #[test]
    fn accept_matching() {
        let r = http::Request::builder()
            .header(header::ACCEPT, "text/plain, application/pem-certificate-chain;q=0.9")
            .body(())
            .unwrap();
        assert!(accepts(&r, "application/pem-certificate-chain"));
        assert!(!accepts(&r, "application/x-pem-file"));
    }
}
