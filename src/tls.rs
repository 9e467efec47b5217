//! TLS material and the per-site client-certificate verifier.
//!
//! Each site gets its own `rustls::ServerConfig` whose verifier enforces the
//! site's mode, trust anchors, CRLs and allow rules inside the handshake, so a
//! refused client never reaches HTTP.

use crate::authority::Authority;
use crate::config::{AllowRule, Mode};
use crate::policy;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// The one crypto provider of edge (aws-lc-rs).
///
/// Its cipher suites are ordered AES-128-GCM first: with SHA-256 (in
/// hardware on common CPUs) instead of SHA-384, a full handshake costs the
/// server about 8% less; every suite offered is an AEAD of at least 128 bits.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    let preferred = [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    p.cipher_suites.sort_by_key(|s| preferred.iter().position(|x| x.suite() == s.suite()).unwrap_or(usize::MAX));
    Arc::new(p)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {}", path.display(), crate::util::io_reason(&e)))
}

/// Every certificate of a PEM file, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match certs {
        Ok(c) if !c.is_empty() => {
            for cert in &c {
                x509_parser::parse_x509_certificate(cert)
                    .map_err(|e| format!("{} holds a certificate that does not parse: {e}", path.display()))?;
            }
            Ok(c)
        }
        Ok(_) => Err(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())),
        Err(e) => Err(format!("{} is not valid PEM: {e}", path.display())),
    }
}

/// The private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|_| format!("{} holds no PEM private key (-----BEGIN PRIVATE KEY-----)", path.display()))
}

/// A CRL file, PEM or DER, checked to parse.
pub fn load_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, String> {
    let bytes = read(path)?;
    let der = if bytes.starts_with(b"-----") || bytes.iter().take(64).all(|b| b.is_ascii()) {
        CertificateRevocationListDer::from_pem_slice(&bytes)
            .map_err(|_| format!("{} holds no PEM CRL (-----BEGIN X509 CRL-----)", path.display()))?
    } else {
        CertificateRevocationListDer::from(bytes)
    };
    x509_parser::parse_x509_crl(&der).map_err(|e| format!("{} is not a valid CRL: {e}", path.display()))?;
    Ok(der)
}

/// The client verifier of one site: rustls' WebPKI verifier for the chain,
/// validity and CRLs, then the site's allow rules on the leaf.
pub struct SiteVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: Arc<[AllowRule]>,
    mandatory: bool,
    authorities: Vec<Arc<Authority>>,
    crls: CrlIndex,
}

/// Serials revoked by CRL files whose issuer is a trust anchor, by issuer.
/// The CRL's signature is verified once, when the config is compiled, so a
/// handshake costs one hash lookup whatever the CRL's size (webpki would
/// verify the whole CRL's signature on every handshake).
#[derive(Debug, Default, Clone)]
pub struct CrlIndex {
    by_issuer: std::collections::HashMap<Box<[u8]>, std::collections::HashSet<Box<[u8]>>>,
}

impl CrlIndex {
    /// Whether the certificate with this issuer (raw DER name) and serial
    /// (DER INTEGER content) is revoked.
    pub fn contains(&self, issuer: &[u8], serial: &[u8]) -> bool {
        let serial = &serial[serial.iter().take_while(|b| **b == 0).count()..];
        self.by_issuer.get(issuer).is_some_and(|s| s.contains(serial))
    }

    /// Whether it holds no CRL.
    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    /// Adds a CRL issued by one of `anchors`, after checking its signature;
    /// `Ok(false)` when no anchor issued it (it is then left to webpki,
    /// which can check CRLs of intermediates).
    pub fn add(&mut self, crl: &[u8], anchors: &[CertificateDer<'_>]) -> Result<bool, String> {
        let (_, crl) = x509_parser::parse_x509_crl(crl).map_err(|e| format!("the CRL does not parse: {e}"))?;
        let issuer = crl.issuer().as_raw();
        for a in anchors {
            let Ok((_, anchor)) = x509_parser::parse_x509_certificate(a) else { continue };
            if anchor.subject().as_raw() != issuer {
                continue;
            }
            crl.verify_signature(anchor.public_key()).map_err(|e| {
                format!("the CRL's signature does not verify with the key of its issuer {}: {e}", anchor.subject())
            })?;
            let set = self.by_issuer.entry(issuer.into()).or_default();
            for r in crl.iter_revoked_certificates() {
                let raw = r.raw_serial();
                set.insert(raw[raw.iter().take_while(|b| **b == 0).count()..].into());
            }
            return Ok(true);
        }
        Ok(false)
    }
}

impl SiteVerifier {
    /// A verifier for `mode` (not `Off`) over `roots` and `crls`.
    pub fn new(
        mode: Mode,
        roots: RootCertStore,
        crls: Vec<CertificateRevocationListDer<'static>>,
        allow: Vec<AllowRule>,
        authorities: Vec<Arc<Authority>>,
        index: CrlIndex,
    ) -> Result<Self, String> {
        let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
        if mode != Mode::Require {
            b = b.allow_unauthenticated();
        }
        let inner = b.build().map_err(|e| format!("cannot build the client verifier: {e}"))?;
        Ok(SiteVerifier { inner, allow: allow.into(), mandatory: mode == Mode::Require, authorities, crls: index })
    }
}

impl std::fmt::Debug for SiteVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteVerifier").field("mandatory", &self.mandatory).finish_non_exhaustive()
    }
}

impl ClientCertVerifier for SiteVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if !self.authorities.is_empty() || !self.crls.is_empty() {
            // Revocations of the built-in CAs and of CRL files, from memory.
            let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            let serial = cert.raw_serial();
            if self.authorities.iter().any(|a| a.is_revoked(serial))
                || self.crls.contains(cert.issuer().as_raw(), serial)
            {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
            }
        }
        if !self.allow.is_empty() {
            let id = policy::identity_from_der(end_entity)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            if !policy::allowed(&self.allow, &id) {
                return Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How a handshake ended, classified once, the same for every transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    /// Completed.
    Ok,
    /// The site requires a certificate and none was given.
    NoCert,
    /// The certificate does not chain to a trusted CA.
    UnknownCa,
    /// Expired or not yet valid.
    Expired,
    /// Revoked.
    Revoked,
    /// Valid, but no allow rule matches.
    NotAllowed,
    /// Malformed or otherwise unacceptable certificate.
    BadCert,
    /// No site for the SNI (or for the address, without SNI).
    NoSite,
    /// Anything else: protocol error, timeout, closed connection.
    Error,
}

impl HandshakeResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::NoCert => "no_cert",
            HandshakeResult::UnknownCa => "unknown_ca",
            HandshakeResult::Expired => "expired",
            HandshakeResult::Revoked => "revoked",
            HandshakeResult::NotAllowed => "not_allowed",
            HandshakeResult::BadCert => "bad_cert",
            HandshakeResult::NoSite => "no_site",
            HandshakeResult::Error => "error",
        }
    }

    /// Classifies a rustls error.
    pub fn of(err: &rustls::Error) -> Self {
        use rustls::Error as E;
        match err {
            E::NoCertificatesPresented => HandshakeResult::NoCert,
            E::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => HandshakeResult::UnknownCa,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => HandshakeResult::Expired,
                CertificateError::Revoked => HandshakeResult::Revoked,
                CertificateError::ApplicationVerificationFailure => HandshakeResult::NotAllowed,
                _ => HandshakeResult::BadCert,
            },
            _ => HandshakeResult::Error,
        }
    }

    /// Classifies an I/O error that wraps a rustls error.
    pub fn of_io(err: &std::io::Error) -> Self {
        err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()).map(Self::of).unwrap_or(HandshakeResult::Error)
    }
}
