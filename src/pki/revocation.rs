//! Revocation by serial or by identity, and the in-memory revoked set the
//! handshake path checks.
//!
//! Every revocation bumps one ledger-wide revision. A server polls
//! [`revocation_revision`] (one indexed read) every few hundred milliseconds
//! and reloads its [`RevokedSet`] only when the number moved, so `edge ca
//! revoke` in another process takes effect within a poll, with no reload and
//! no I/O on the handshake path.

use super::error::PkiError;
use super::ledger::{Ledger, RevokeOutcome};
use super::{normalize_serial, serial_bytes, LedgerError, Reason};
use std::collections::HashSet;
use time::OffsetDateTime;

/// Revokes one certificate of `ca`. Ok(true) if it was revoked now,
/// Ok(false) if it already was.
pub fn revoke_serial(
    ledger: &dyn Ledger,
    ca: &str,
    serial: &str,
    reason: Reason,
    now: OffsetDateTime,
) -> Result<bool, PkiError> {
    let serial_n = normalize_serial(serial)?;
    match ledger.revoke_serial(ca, &serial_n, reason.as_str(), now)? {
        RevokeOutcome::Revoked => Ok(true),
        RevokeOutcome::AlreadyRevoked => Ok(false),
        RevokeOutcome::Unknown => Err(PkiError::UnknownSerial { ca: ca.into(), serial: serial.into() }),
    }
}

/// Disables the identity `cn` of `ca` (it can no longer enroll or renew) and
/// revokes every unexpired certificate it has, superseded ones included.
/// Returns how many certificates were revoked now.
pub fn revoke_cn(
    ledger: &dyn Ledger,
    ca: &str,
    cn: &str,
    reason: Reason,
    now: OffsetDateTime,
) -> Result<usize, PkiError> {
    ledger
        .revoke_identity(ca, cn, reason.as_str(), now)?
        .ok_or_else(|| PkiError::UnknownIdentity { ca: ca.into(), cn: cn.into() })
}

/// The current revocation revision: poll it, and reload the
/// [`RevokedSet`] when it differs from the set's.
pub fn revocation_revision(ledger: &dyn Ledger) -> Result<i64, LedgerError> {
    ledger.revocation_revision()
}

/// The serials of a CA's revoked, unexpired certificates, for a lookup per
/// handshake: O(1) and allocation-free.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokedSet {
    revision: i64,
    serials: HashSet<Box<[u8]>>,
}

impl RevokedSet {
    /// The revision this set was read at.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Whether the serial (its DER INTEGER content bytes, as
    /// `x509_parser`'s `raw_serial()` gives them, leading zero byte or not)
    /// is revoked.
    pub fn contains(&self, serial: &[u8]) -> bool {
        let start = serial.iter().take_while(|b| **b == 0).count();
        self.serials.contains(&serial[start..])
    }

    /// How many serials it holds.
    pub fn len(&self) -> usize {
        self.serials.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }

    /// The serials, as minimal big-endian bytes, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.serials.iter().map(|s| &**s)
    }
}

/// Reads `ca`'s revoked set, consistent with the revision it carries.
/// Certificates already expired at `now` are left out: they fail anyway.
pub fn revoked_set(ledger: &dyn Ledger, ca: &str, now: OffsetDateTime) -> Result<RevokedSet, LedgerError> {
    let (revision, hex_serials) = ledger.revoked(ca, now)?;
    let mut serials = HashSet::with_capacity(hex_serials.len());
    for s in &hex_serials {
        let bytes = serial_bytes(s).ok_or_else(|| LedgerError::Corrupt(format!("serial {s:?} is not hex")))?;
        let start = bytes.iter().take_while(|b| **b == 0).count();
        serials.insert(bytes[start..].into());
    }
    Ok(RevokedSet { revision, serials })
}
