//! PKCS#10 certificate signing requests, as EST clients and openssl send them.
//!
//! Only the public key and the proof of possession (the self-signature)
//! matter: the subject and extensions a CSR asks for are reported for logging
//! and otherwise ignored.

use super::der;
use super::error::CsrError;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::prelude::FromDer;

/// A parsed CSR whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csr {
    /// The whole request, DER.
    pub der: Vec<u8>,
    /// The SubjectPublicKeyInfo to certify, DER.
    pub public_key_der: Vec<u8>,
    /// The key, for humans: `ECDSA P-256`, `RSA 3072`, `Ed25519`.
    pub key_algorithm: String,
    /// The subject the CSR asks for (ignored), e.g. `CN=x`; empty if none.
    pub requested_subject: String,
    /// Short names of the extensions the CSR asks for (ignored), e.g. `subjectAltName`.
    pub requested_extensions: Vec<String>,
}

impl Csr {
    /// Whether the CSR asked for a subject or extensions that edge ignored
    /// (worth a log line: the client may expect them).
    pub fn asks_for_identity(&self) -> bool {
        !self.requested_subject.is_empty() || !self.requested_extensions.is_empty()
    }
}

const PEM_LABELS: &[&str] = &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];

fn b64() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

fn decode_b64(text: &[u8]) -> Result<Vec<u8>, CsrError> {
    let compact: Vec<u8> = text.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    b64().decode(&compact).map_err(|e| CsrError::BadBase64(e.to_string()))
}

fn from_pem(text: &[u8]) -> Result<Vec<u8>, CsrError> {
    let text = std::str::from_utf8(text).map_err(|_| CsrError::NotACsr)?;
    let begin = text.find("-----BEGIN ").ok_or(CsrError::NotACsr)?;
    let after = &text[begin + "-----BEGIN ".len()..];
    let label_end = after.find("-----").ok_or(CsrError::NotACsr)?;
    let label = &after[..label_end];
    if !PEM_LABELS.contains(&label) {
        return Err(CsrError::Malformed(format!("the PEM block is a {label}, not a CERTIFICATE REQUEST")));
    }
    let body = &after[label_end + 5..];
    let end_marker = format!("-----END {label}-----");
    let end = body
        .find(&end_marker)
        .ok_or_else(|| CsrError::BadBase64(format!("the PEM block has no {end_marker} line (truncated?)")))?;
    decode_b64(&body.as_bytes()[..end])
}

fn is_base64_text(body: &[u8]) -> bool {
    body.iter().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b) || b.is_ascii_whitespace())
}

/// Parses a CSR given as PEM, as base64 DER (whitespace allowed: the EST
/// wire form) or as raw DER, and verifies its self-signature with the key it
/// carries (ECDSA P-256/P-384 with SHA-256/384, RSA PKCS#1 v1.5 with
/// SHA-256/384/512 and at least 2048 bits, Ed25519).
pub fn parse_csr(body: &[u8]) -> Result<Csr, CsrError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(CsrError::Empty);
    }
    let der = if trimmed.starts_with(b"-----") || trimmed.windows(11).any(|w| w == b"-----BEGIN ") {
        from_pem(trimmed)?
    } else if is_base64_text(trimmed) {
        decode_b64(trimmed)?
    } else {
        // Raw DER is taken as is: its last byte may well be 0x0a or 0x20.
        body.to_vec()
    };
    if der.first() != Some(&der::SEQUENCE) {
        return Err(CsrError::NotACsr);
    }
    match der::announced_len(&der) {
        None if der.len() < 6 => return Err(CsrError::Truncated { have: der.len(), want: 6 }),
        None => return Err(CsrError::Malformed("the outer DER length is not definite".into())),
        Some(want) if want > der.len() => return Err(CsrError::Truncated { have: der.len(), want }),
        Some(want) if want < der.len() => {
            return Err(CsrError::Malformed(format!("{} bytes follow the request", der.len() - want)))
        }
        Some(_) => {}
    }
    let (_, req) = X509CertificationRequest::from_der(&der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    let info = &req.certification_request_info;
    let spki = &info.subject_pki;
    let (alg, key_algorithm) = verification_algorithm(&req)?;
    let key = UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref());
    key.verify(info.raw, req.signature_value.data.as_ref()).map_err(|_| CsrError::BadSignature)?;

    let mut requested_extensions = Vec::new();
    for attr in info.iter_attributes() {
        if let ParsedCriAttribute::ExtensionRequest(ext) = attr.parsed_attribute() {
            for e in &ext.extensions {
                let name = x509_parser::objects::oid2sn(&e.oid, x509_parser::objects::oid_registry())
                    .map(str::to_string)
                    .unwrap_or_else(|_| e.oid.to_id_string());
                requested_extensions.push(name);
            }
        }
    }
    Ok(Csr {
        public_key_der: spki.raw.to_vec(),
        key_algorithm,
        requested_subject: info.subject.to_string(),
        requested_extensions,
        der,
    })
}

const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";
const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const ED25519: &str = "1.3.101.112";
const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const RSA_SHA256: &str = "1.2.840.113549.1.1.11";
const RSA_SHA384: &str = "1.2.840.113549.1.1.12";
const RSA_SHA512: &str = "1.2.840.113549.1.1.13";

type Alg = &'static dyn VerificationAlgorithm;

/// The aws-lc-rs algorithm for this key and signature algorithm pair.
fn verification_algorithm(req: &X509CertificationRequest<'_>) -> Result<(Alg, String), CsrError> {
    let spki = &req.certification_request_info.subject_pki;
    let key_oid = spki.algorithm.algorithm.to_id_string();
    let sig_oid = req.signature_algorithm.algorithm.to_id_string();
    let unsupported = || CsrError::UnsupportedAlgorithm(format!("key {key_oid} with signature {sig_oid}"));
    match key_oid.as_str() {
        EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            let alg: Alg = match (curve.as_str(), sig_oid.as_str()) {
                (P256, ECDSA_SHA256) => &signature::ECDSA_P256_SHA256_ASN1,
                (P256, ECDSA_SHA384) => &signature::ECDSA_P256_SHA384_ASN1,
                (P384, ECDSA_SHA256) => &signature::ECDSA_P384_SHA256_ASN1,
                (P384, ECDSA_SHA384) => &signature::ECDSA_P384_SHA384_ASN1,
                (P256 | P384, _) => return Err(unsupported()),
                _ => return Err(CsrError::UnsupportedAlgorithm(format!("the elliptic curve {curve:?}"))),
            };
            Ok((alg, if curve == P256 { "ECDSA P-256" } else { "ECDSA P-384" }.into()))
        }
        RSA_ENCRYPTION => {
            let bits = rsa_bits(spki.subject_public_key.data.as_ref())
                .ok_or_else(|| CsrError::Malformed("the RSA public key does not parse".into()))?;
            if bits < 2048 {
                return Err(CsrError::WeakKey(bits));
            }
            let alg: Alg = match sig_oid.as_str() {
                RSA_SHA256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                RSA_SHA384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                RSA_SHA512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                _ => return Err(unsupported()),
            };
            Ok((alg, format!("RSA {bits}")))
        }
        ED25519 if sig_oid == ED25519 => Ok((&signature::ED25519, "Ed25519".into())),
        _ => Err(unsupported()),
    }
}

/// The modulus size of a PKCS#1 RSAPublicKey, in bits.
fn rsa_bits(key: &[u8]) -> Option<usize> {
    use x509_parser::public_key::RSAPublicKey;
    let (_, rsa) = RSAPublicKey::from_der(key).ok()?;
    let m = &rsa.modulus[rsa.modulus.iter().take_while(|b| **b == 0).count()..];
    let first = *m.first()?;
    Some(m.len() * 8 - first.leading_zeros() as usize)
}
