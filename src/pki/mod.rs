//! The built-in certificate authority: issue, renew, revoke, CRL, enrollment
//! tokens, and the ledger that remembers all of it.
//!
//! Everything here is plain functions over plain data: the time is always an
//! argument (`now`), nothing reads the clock, opens a socket or logs a secret.
//! The HTTP (EST) endpoints, the `edge ca ...` commands and the agent are thin
//! layers on top.
//!
//! # On disk
//! ```text
//! STORAGE/
//!   ledger.sqlite3 (+ -wal, -shm)   the ledger of every CA (mode 0600)
//!   ca/NAME/                        one folder per CA (mode 0700)
//!     ca.crt                        the root certificate (PEM)
//!     ca.key                        its private key (PKCS#8 PEM, mode 0600)
//!   ca/.NAME.new-*                  a CA being created (renamed to NAME when whole)
//! ```
//!
//! # Choices
//! - A CA is one ECDSA P-256 root (10 years, CA:TRUE with pathLen 0,
//!   keyCertSign + cRLSign) that signs leaves directly. An intermediate would
//!   sit on the same disk as the root and so protect nothing; a short chain is
//!   easier for clients, and revocation is only ever about end entities.
//! - Leaves (client and server) are written by [`Ca`] itself (see `der`), since
//!   rcgen keeps one value per subject attribute and identities may have
//!   several OUs. They carry: basicConstraints CA:FALSE, keyUsage
//!   digitalSignature, extKeyUsage clientAuth or serverAuth, SKI, AKI, SANs;
//!   a 128-bit random positive serial; notBefore five minutes in the past
//!   (clock skew), notAfter at most the root's.
//! - The identity (CN, OUs, SANs) never comes from a CSR: it comes from an
//!   enrollment token, from the certificate presented to renew, or from the
//!   operator. A CSR only proves possession of its key.
//! - A certificate is returned only after its ledger row is committed
//!   (SQLite WAL, `synchronous=FULL`). Every refusal is re-checked inside that
//!   same transaction, so concurrent requests (or processes) cannot both use
//!   one token or one key.
//! - A renewal marks the identity's earlier certificates *superseded*: they
//!   stay valid until they expire (a client may still be switching over), and
//!   `ca list` shows them as such. Revoking by CN revokes superseded ones too.
//! - Serials are written as lowercase hex without leading zero bytes, the
//!   form `{client.serial}` and `X-Client-Cert-Serial` use.

mod ca;
mod csr;
mod der;
mod error;
mod inventory;
mod ledger;
mod revocation;
mod token;

#[cfg(test)]
mod tests;

pub use ca::{pem, Ca, Issued, SecretKeyPem, ServerCert, CA_LIFETIME};
pub use csr::{parse_csr, Csr};
pub use der::pkcs7_certs_only;
pub use error::{CsrError, LedgerError, PkiError, TokenError};
pub use inventory::{identity_expiry, list, CertRow, IdentityExpiry};
pub use ledger::{
    ledger_path, CertRecord, IdentityRecord, Ledger, RecordOutcome, RevokeOutcome, SqliteLedger, TokenRecord,
    TokenRefusal, SCHEMA_VERSION,
};
pub use revocation::{revocation_revision, revoke_cn, revoke_serial, revoked_set, RevokedSet};
pub use token::{check_token, create_token, redeem_token};

/// Who a client certificate is for. Comes from a token, from a presented
/// certificate or from the operator; never from a CSR.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The subject CN; the identity's key within its CA.
    pub cn: String,
    /// Subject OUs, in order.
    pub ous: Vec<String>,
    /// DNS subject alternative names.
    pub san_dns: Vec<String>,
    /// URI subject alternative names (e.g. `spiffe://...`).
    pub san_uri: Vec<String>,
}

impl Identity {
    /// An identity with a CN only.
    pub fn new(cn: impl Into<String>) -> Self {
        Identity { cn: cn.into(), ..Default::default() }
    }

    /// Checks that every part can go into a certificate and survive the
    /// ledger and the `X-Client-Cert-*` formats unchanged.
    pub fn validate(&self) -> Result<(), PkiError> {
        let bad = |m: String| Err(PkiError::BadIdentity(m));
        let text_ok = |s: &str| !s.is_empty() && s.chars().count() <= 64 && !s.chars().any(char::is_control);
        if !text_ok(&self.cn) {
            return bad(format!("CN {:?} must be 1 to 64 characters without control characters", self.cn));
        }
        for ou in &self.ous {
            if !text_ok(ou) || ou.contains(',') {
                return bad(format!("OU {ou:?} must be 1 to 64 characters without ',' or control characters"));
            }
        }
        for d in &self.san_dns {
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            let body = d.strip_prefix("*.").unwrap_or(d);
            if d.len() > 253 || !body.split('.').all(label_ok) {
                return bad(format!("DNS name {d:?} is not a valid host name"));
            }
        }
        for u in &self.san_uri {
            let scheme_ok = u.split_once(':').is_some_and(|(s, rest)| {
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) && !rest.is_empty()
            });
            if !scheme_ok || !u.bytes().all(|b| b.is_ascii_graphic()) {
                return bad(format!("URI {u:?} must be an absolute URI in printable ASCII without spaces"));
            }
        }
        Ok(())
    }
}

/// How a certificate came to be (the `kind` label of `edge_pki_issued_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// EST `simpleenroll` with a token.
    Enroll,
    /// EST `simplereenroll` with a valid certificate.
    Renew,
    /// `edge ca issue`.
    Manual,
    /// A `tls internal` server certificate.
    Server,
}

impl Kind {
    /// The label value and the ledger's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Enroll => "enroll",
            Kind::Renew => "renew",
            Kind::Manual => "manual",
            Kind::Server => "server",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "enroll" => Kind::Enroll,
            "renew" => Kind::Renew,
            "manual" => Kind::Manual,
            "server" => Kind::Server,
            other => return Err(format!("unknown certificate kind {other:?}")),
        })
    }
}

/// A certificate's state at a given time, as `edge ca list` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Within its validity, not revoked, not replaced.
    Valid,
    /// Past its notAfter (and not revoked).
    Expired,
    /// Revoked.
    Revoked,
    /// Replaced by a renewal; still accepted until it expires.
    Superseded,
}

impl Status {
    /// `valid`, `expired`, `revoked` or `superseded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Valid => "valid",
            Status::Expired => "expired",
            Status::Revoked => "revoked",
            Status::Superseded => "superseded",
        }
    }

    /// The status of a ledger row at `now`: revoked wins over expired,
    /// expired over superseded.
    pub fn of(cert: &CertRecord, now: time::OffsetDateTime) -> Status {
        if cert.revoked_at.is_some() {
            Status::Revoked
        } else if cert.not_after <= now {
            Status::Expired
        } else if cert.superseded_at.is_some() {
            Status::Superseded
        } else {
            Status::Valid
        }
    }
}

/// Why a certificate was revoked (RFC 5280 reason codes that make sense for
/// a leaf; `certificateHold` is left out because edge never un-revokes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reason {
    /// No reason given.
    #[default]
    Unspecified,
    /// The private key leaked.
    KeyCompromise,
    /// The subject changed team or organisation.
    AffiliationChanged,
    /// Replaced by another certificate.
    Superseded,
    /// No longer needed.
    CessationOfOperation,
    /// The subject lost its rights.
    PrivilegeWithdrawn,
}

impl Reason {
    /// The kebab-case name, as stored in the ledger and typed on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "key-compromise",
            Reason::AffiliationChanged => "affiliation-changed",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessation-of-operation",
            Reason::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            Reason::Unspecified => rcgen::RevocationReason::Unspecified,
            Reason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            Reason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            Reason::Superseded => rcgen::RevocationReason::Superseded,
            Reason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            Reason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

impl std::str::FromStr for Reason {
    type Err = PkiError;

    /// Accepts the kebab-case name or RFC 5280's camelCase (`keyCompromise`).
    fn from_str(s: &str) -> Result<Self, PkiError> {
        let folded: String = s.chars().filter(|c| *c != '-' && *c != '_').collect::<String>().to_ascii_lowercase();
        Ok(match folded.as_str() {
            "" | "unspecified" => Reason::Unspecified,
            "keycompromise" => Reason::KeyCompromise,
            "affiliationchanged" => Reason::AffiliationChanged,
            "superseded" => Reason::Superseded,
            "cessationofoperation" => Reason::CessationOfOperation,
            "privilegewithdrawn" => Reason::PrivilegeWithdrawn,
            _ => return Err(PkiError::BadReason(s.to_string())),
        })
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Lowercase hex of the SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// A serial as typed (`0A:1b`, `0x0a1b`, `a1b`, with leading zeros or not)
/// in the ledger's form: lowercase hex of the minimal magnitude, even length.
pub fn normalize_serial(s: &str) -> Result<String, PkiError> {
    let t = s.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    let digits: String = t.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) || digits.len() > 64 {
        return Err(PkiError::BadSerial(s.to_string()));
    }
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok("00".into());
    }
    Ok(if digits.len() % 2 == 1 { format!("0{digits}") } else { digits.to_string() })
}

/// The bytes of a normalised hex serial.
/// The bytes of a lowercase hex serial (an even number of digits).
pub fn serial_bytes(hex_serial: &str) -> Option<Vec<u8>> {
    if !hex_serial.len().is_multiple_of(2) {
        return None;
    }
    (0..hex_serial.len()).step_by(2).map(|i| u8::from_str_radix(hex_serial.get(i..i + 2)?, 16).ok()).collect()
}
