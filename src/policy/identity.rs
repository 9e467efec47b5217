//! The identity a verified certificate names, read once per connection.

use bytes::Bytes;
use edge_plugin_api::ClientIdentity;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A certificate that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot parse the certificate: {0}")]
pub struct IdentityError(String);

/// Reads the identity of a DER certificate (CN, OUs, SANs, serial,
/// fingerprint, not-after) in the contract's formats.
pub fn identity_from_der(der: &[u8]) -> Result<ClientIdentity, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError(e.to_string()))?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next().and_then(|a| a.as_str().ok()).map(str::to_string);
    let ous = subject.iter_organizational_unit().filter_map(|a| a.as_str().ok()).map(str::to_string).collect();
    let mut san_dns = Vec::new();
    let mut san_uri = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => san_dns.push(d.to_string()),
                GeneralName::URI(u) => san_uri.push(u.to_string()),
                _ => {}
            }
        }
    }
    let serial = hex(cert.raw_serial());
    let serial = serial.trim_start_matches("00");
    let serial = if serial.is_empty() { "00".to_string() } else { serial.to_string() };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let not_after = cert
        .validity()
        .not_after
        .to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| IdentityError(e.to_string()))?;
    Ok(ClientIdentity {
        cn,
        ous,
        serial,
        fingerprint: format!("sha256:{}", hex(digest.as_ref())),
        san_dns,
        san_uri,
        not_after,
        der: Bytes::copy_from_slice(der),
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
