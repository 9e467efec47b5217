//! Read-only views of the ledger: `edge ca list` and the expiry gauge.

use super::error::LedgerError;
use super::ledger::Ledger;
use super::{Kind, Status};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// One line of `edge ca list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRow {
    /// The issuing CA.
    pub ca: String,
    /// Lowercase hex serial.
    pub serial: String,
    /// Subject CN.
    pub cn: String,
    /// Subject OUs.
    pub ous: Vec<String>,
    /// How it was issued.
    pub kind: Kind,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// State at the time asked.
    pub status: Status,
}

impl CertRow {
    /// The OUs as the contract prints them: joined with `,`.
    pub fn ou(&self) -> String {
        self.ous.join(",")
    }
}

/// Every certificate of `ca` (of every CA with `None`), oldest first, with
/// its status at `now`.
pub fn list(ledger: &dyn Ledger, ca: Option<&str>, now: OffsetDateTime) -> Result<Vec<CertRow>, LedgerError> {
    Ok(ledger
        .certificates(ca)?
        .into_iter()
        .map(|c| CertRow {
            status: Status::of(&c, now),
            ca: c.ca,
            serial: c.serial,
            cn: c.cn,
            ous: c.ous,
            kind: c.kind,
            not_after: c.not_after,
        })
        .collect())
}

/// The newest usable certificate of one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityExpiry {
    /// The CA.
    pub ca: String,
    /// The identity (CN).
    pub cn: String,
    /// The latest notAfter among its certificates that are neither revoked
    /// nor expired at the time asked.
    pub not_after: OffsetDateTime,
}

/// For each identity with at least one usable (valid or superseded)
/// certificate at `now`, the latest notAfter: the
/// `edge_pki_identity_cert_expiry_timestamp_seconds` gauge. Server
/// certificates are not identities and are left out.
pub fn identity_expiry(
    ledger: &dyn Ledger,
    ca: Option<&str>,
    now: OffsetDateTime,
) -> Result<Vec<IdentityExpiry>, LedgerError> {
    let mut newest: BTreeMap<(String, String), OffsetDateTime> = BTreeMap::new();
    for c in ledger.certificates(ca)? {
        let Some(cn) = c.identity else { continue };
        if c.revoked_at.is_some() || c.not_after <= now {
            continue;
        }
        let e = newest.entry((c.ca, cn)).or_insert(c.not_after);
        if c.not_after > *e {
            *e = c.not_after;
        }
    }
    Ok(newest.into_iter().map(|((ca, cn), not_after)| IdentityExpiry { ca, cn, not_after }).collect())
}
