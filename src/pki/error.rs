//! The errors of the PKI core, one enum per concern: the ledger's storage,
//! enrollment tokens, CSRs, and the CA operations that use all three.
//!
//! Messages are one line, say what went wrong and, where the user can act,
//! how to fix it. None of them ever holds key material or a token.

use time::OffsetDateTime;

/// The ledger's storage failed (not a refusal: a refusal is an answer).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database file cannot be opened or created.
    #[error("cannot open the ledger {path}: {reason}; check that the storage folder exists and is writable")]
    Open {
        /// The database file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file was written by a newer edge whose schema this one does not know.
    #[error("the ledger {path} has schema version {found}, newer than {supported} known to this edge; upgrade edge")]
    SchemaTooNew {
        /// The database file.
        path: String,
        /// The version found in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// Another process held the database locked for longer than the busy timeout.
    #[error("the ledger is busy (locked by another edge process for over 5 s); try again")]
    Busy,
    /// A row holds a value this build cannot read back.
    #[error("the ledger holds an unreadable value: {0}")]
    Corrupt(String),
    /// Any other SQLite failure.
    #[error("ledger error: {0}")]
    Sql(String),
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => LedgerError::Busy,
            _ => match e {
                rusqlite::Error::FromSqlConversionFailure(_, _, inner) => LedgerError::Corrupt(inner.to_string()),
                rusqlite::Error::InvalidColumnType(i, name, ty) => {
                    LedgerError::Corrupt(format!("column {i} ({name}) has type {ty}"))
                }
                other => LedgerError::Sql(other.to_string()),
            },
        }
    }
}

/// An enrollment token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No such token for this CA (mistyped, made for another CA, or never issued).
    #[error("unknown enrollment token; ask for a new one with `edge ca token`")]
    Unknown,
    /// The token's lifetime is over.
    #[error("the enrollment token expired at {}; ask for a new one with `edge ca token`", rfc3339(.expired_at))]
    Expired {
        /// When it expired.
        expired_at: OffsetDateTime,
    },
    /// The token was already used for an enrollment.
    #[error("the enrollment token was already used at {}; a token enrolls once, ask for a new one", rfc3339(.used_at))]
    AlreadyUsed {
        /// When it was used.
        used_at: OffsetDateTime,
    },
    /// The identity the token names was disabled (revoked by CN) after the token was made.
    #[error("identity {cn:?} is disabled (revoked); it cannot enroll")]
    IdentityDisabled {
        /// The identity.
        cn: String,
    },
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A PKCS#10 certificate signing request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    /// The body is empty.
    #[error("the CSR is empty; send a PKCS#10 request (PEM, base64 DER or DER)")]
    Empty,
    /// The body is neither PEM, base64 nor DER.
    #[error("the body is not a CSR: expected PEM (-----BEGIN CERTIFICATE REQUEST-----), base64 DER or DER")]
    NotACsr,
    /// PEM armour or base64 text that does not decode.
    #[error("the CSR's base64 does not decode: {0}")]
    BadBase64(String),
    /// The DER ends before its outer length says it should.
    #[error("the CSR is truncated: {have} bytes where its header announces {want}; send the whole request")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes announced.
        want: usize,
    },
    /// The DER is complete but is not a well-formed PKCS#10 request.
    #[error("the CSR is malformed: {0}")]
    Malformed(String),
    /// The key or signature algorithm is not one edge accepts.
    #[error("the CSR uses {0}, which edge does not accept; use ECDSA P-256/P-384, RSA (2048 bits or more) or Ed25519")]
    UnsupportedAlgorithm(String),
    /// An RSA key shorter than 2048 bits.
    #[error("the CSR's RSA key has {0} bits; use at least 2048")]
    WeakKey(usize),
    /// The self-signature does not verify: no proof that the sender holds the key.
    #[error("the CSR's signature does not verify against its own public key (no proof of possession); sign it with the key it names")]
    BadSignature,
}

/// A CA operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a CA file failed.
    #[error("{path}: {reason}")]
    Io {
        /// The file or folder.
        path: String,
        /// Why, with what to do when it is clear.
        reason: String,
    },
    /// The CA's files are present but unusable.
    #[error("the CA files in {path} are unusable: {reason}")]
    BadCaFiles {
        /// The CA's folder.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A CA name that cannot be a folder name.
    #[error("invalid CA name {0:?}: use letters, digits, '-', '_' and '.' (not starting with '.')")]
    BadCaName(String),
    /// The CA's own certificate is no longer valid.
    #[error("CA {ca:?} expired at {}; it cannot issue anything more", rfc3339(.not_after))]
    CaExpired {
        /// The CA.
        ca: String,
        /// Its end of validity.
        not_after: OffsetDateTime,
    },
    /// An identity (CN, OU or SAN) that cannot go into a certificate.
    #[error("invalid identity: {0}")]
    BadIdentity(String),
    /// A lifetime of zero, or one that does not fit a certificate.
    #[error("invalid lifetime: {0}")]
    BadLifetime(String),
    /// The identity was disabled by `edge ca revoke --cn`.
    #[error("identity {cn:?} of CA {ca:?} is disabled (revoked); it cannot get certificates")]
    IdentityDisabled {
        /// The CA.
        ca: String,
        /// The identity.
        cn: String,
    },
    /// The public key was already certified by this CA.
    #[error("this public key was already certified by CA {ca:?}; generate a new key for every request")]
    KeyReused {
        /// The CA.
        ca: String,
    },
    /// No certificate with this serial in this CA's ledger.
    #[error("no certificate with serial {serial} in CA {ca:?}; `edge ca list` shows the serials")]
    UnknownSerial {
        /// The CA.
        ca: String,
        /// The serial as given.
        serial: String,
    },
    /// No identity with this CN in this CA's ledger.
    #[error("no identity {cn:?} in CA {ca:?}; `edge ca list` shows the identities")]
    UnknownIdentity {
        /// The CA.
        ca: String,
        /// The CN.
        cn: String,
    },
    /// A serial number that is not hexadecimal.
    #[error("invalid serial {0:?}: give it in hexadecimal, as `edge ca list` prints it")]
    BadSerial(String),
    /// A revocation reason edge does not know.
    #[error("unknown revocation reason {0:?}: use one of unspecified, key-compromise, affiliation-changed, superseded, cessation-of-operation, privilege-withdrawn")]
    BadReason(String),
    /// A presented certificate (for renewal) that this CA did not issue or cannot read.
    #[error("the presented certificate was not issued by CA {ca:?}: {reason}")]
    NotIssuedHere {
        /// The CA.
        ca: String,
        /// Why it is not recognised.
        reason: String,
    },
    /// A presented certificate (for renewal) that was revoked.
    #[error("the presented certificate {serial} is revoked; enroll again with a new token")]
    CertRevoked {
        /// Its serial.
        serial: String,
    },
    /// A presented certificate (for renewal) that is expired.
    #[error("the presented certificate {serial} expired at {}; enroll again with a new token", rfc3339(.not_after))]
    CertExpired {
        /// Its serial.
        serial: String,
        /// Its end of validity.
        not_after: OffsetDateTime,
    },
    /// A public key (SubjectPublicKeyInfo) that does not parse.
    #[error("the public key does not parse as a SubjectPublicKeyInfo: {0}")]
    BadPublicKey(String),
    /// Server certificate names that cannot be certified.
    #[error("invalid server name {0:?}: use DNS names, wildcards (*.example) or IP addresses")]
    BadServerName(String),
    /// The CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The enrollment token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Key generation or signing failed (should not happen with a healthy key).
    #[error("cryptographic operation failed: {0}")]
    Crypto(String),
}

impl PkiError {
    pub(crate) fn io(path: &std::path::Path, e: &std::io::Error) -> Self {
        PkiError::Io { path: path.display().to_string(), reason: crate::util::io_reason(e) }
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::Crypto(e.to_string())
    }
}

pub(crate) fn rfc3339(t: &OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}
