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
use std::collections::HashMap;
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
    /// `None` when WebPKI checks CRLs itself (CRLs of intermediates), whose
    /// answer a cache would skip.
    chains: Option<ChainCache>,
}

/// Chains the WebPKI verifier accepted, by their exact bytes (leaf, then
/// intermediates), with the validity window they share. A client that comes
/// back presents the same bytes: its chain's signatures are not verified
/// again (one ECDSA verification: a whole mTLS handshake in memory went
/// from 253 to 218 us, `cargo bench --bench hot`). Everything that can change is still checked on every handshake:
/// the validity window against the clock, revocation, the allow rules, and
/// the proof that the client holds the key (`verify_tls13_signature`). The
/// cache lives in one compiled config, so a reload that changes the trust
/// starts empty; only accepted chains enter, and it is emptied when full.
struct ChainCache {
    verified: std::sync::Mutex<HashMap<Box<[u8]>, Window>>,
}

/// Seconds since the epoch: from, until (both included).
type Window = (i64, i64);

/// Entries before the chain cache is emptied (about 600 bytes each).
const CHAIN_CACHE_MAX: usize = 1024;

impl ChainCache {
    fn key(end_entity: &[u8], intermediates: &[CertificateDer<'_>]) -> Box<[u8]> {
        let mut key =
            Vec::with_capacity(end_entity.len() + intermediates.iter().map(|c| c.len() + 4).sum::<usize>() + 4);
        for der in std::iter::once(end_entity).chain(intermediates.iter().map(|c| c.as_ref())) {
            key.extend_from_slice(&(der.len() as u32).to_be_bytes());
            key.extend_from_slice(der);
        }
        key.into_boxed_slice()
    }

    /// Whether this chain was accepted and `now` is inside its validity.
    fn holds(&self, key: &[u8], now: UnixTime) -> bool {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let map = self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(key).is_some_and(|(from, until)| *from <= now && now <= *until)
    }

    /// Records an accepted chain; skipped when a certificate does not parse
    /// here (it is then verified in full every time).
    fn insert(&self, key: Box<[u8]>, end_entity: &[u8], intermediates: &[CertificateDer<'_>]) {
        let (mut from, mut until) = (i64::MIN, i64::MAX);
        for der in std::iter::once(end_entity).chain(intermediates.iter().map(|c| c.as_ref())) {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return };
            from = from.max(cert.validity().not_before.timestamp());
            until = until.min(cert.validity().not_after.timestamp());
        }
        let mut map = self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= CHAIN_CACHE_MAX {
            map.clear();
        }
        map.insert(key, (from, until));
    }
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
        let chains = crls.is_empty().then(|| ChainCache { verified: Default::default() });
        let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
        if mode != Mode::Require {
            b = b.allow_unauthenticated();
        }
        let inner = b.build().map_err(|e| format!("cannot build the client verifier: {e}"))?;
        Ok(SiteVerifier {
            inner,
            allow: allow.into(),
            mandatory: mode == Mode::Require,
            authorities,
            crls: index,
            chains,
        })
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
        let verified = match &self.chains {
            Some(cache) => {
                let key = ChainCache::key(end_entity, intermediates);
                if cache.holds(&key, now) {
                    ClientCertVerified::assertion()
                } else {
                    let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
                    cache.insert(key, end_entity, intermediates);
                    verified
                }
            }
            None => self.inner.verify_client_cert(end_entity, intermediates, now)?,
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    use time::{Duration, OffsetDateTime};

    fn ca(name: &str) -> (CertificateParams, KeyPair, CertificateDer<'static>) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let der = p.self_signed(&key).unwrap().der().clone();
        (p, key, der)
    }

    fn client(
        ca: &(CertificateParams, KeyPair, CertificateDer<'static>),
        from: OffsetDateTime,
    ) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "alice");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = from;
        p.not_after = from + Duration::days(1);
        p.signed_by(&KeyPair::generate().unwrap(), &Issuer::from_params(&ca.0, &ca.1)).unwrap().der().clone()
    }

    fn at(t: OffsetDateTime) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.unix_timestamp() as u64))
    }

    /// A chain verified once is not verified again, but its validity is
    /// checked on every handshake, and other bytes are verified in full.
    #[test]
    fn the_chain_cache_still_checks_validity_and_other_chains() {
        let trusted = ca("trusted");
        let stranger = ca("trusted"); // same name, another key
        let mut roots = RootCertStore::empty();
        roots.add(trusted.2.clone()).unwrap();
        let v =
            SiteVerifier::new(Mode::Require, roots, Vec::new(), Vec::new(), Vec::new(), CrlIndex::default()).unwrap();
        let from = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - Duration::hours(1);
        let alice = client(&trusted, from);
        let cached = || v.chains.as_ref().unwrap().verified.lock().unwrap().len();

        assert!(v.verify_client_cert(&alice, &[], at(from + Duration::hours(2))).is_ok());
        assert_eq!(cached(), 1);
        assert!(v.verify_client_cert(&alice, &[], at(from + Duration::hours(3))).is_ok());
        assert_eq!(cached(), 1);
        // Expired, and not yet valid: refused although cached.
        let late = v.verify_client_cert(&alice, &[], at(from + Duration::days(1) + Duration::seconds(1)));
        assert!(format!("{late:?}").contains("Expired"), "{late:?}");
        let early = v.verify_client_cert(&alice, &[], at(from - Duration::seconds(1)));
        assert!(format!("{early:?}").contains("NotValidYet"), "{early:?}");
        // A look-alike from another CA is verified, and refused.
        let mallory = client(&stranger, from);
        assert!(v.verify_client_cert(&mallory, &[], at(from + Duration::hours(2))).is_err());
        assert_eq!(cached(), 1);
    }

    /// With CRLs left to WebPKI (of intermediates), nothing is cached.
    #[test]
    fn no_chain_cache_when_webpki_checks_crls() {
        let trusted = ca("trusted");
        let mut roots = RootCertStore::empty();
        roots.add(trusted.2.clone()).unwrap();
        let crl = rcgen::CertificateRevocationListParams {
            this_update: OffsetDateTime::now_utc() - Duration::hours(1),
            next_update: OffsetDateTime::now_utc() + Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&Issuer::from_params(&trusted.0, &trusted.1))
        .unwrap();
        let v = SiteVerifier::new(
            Mode::Require,
            roots,
            vec![crl.der().clone()],
            Vec::new(),
            Vec::new(),
            CrlIndex::default(),
        )
        .unwrap();
        assert!(v.chains.is_none());
    }
}
