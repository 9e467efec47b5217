//! One-time enrollment tokens.
//!
//! A token is 256 random bits in URL-safe base64 (43 characters, fit for a
//! Bearer header or an HTTP Basic password). The ledger keeps only its
//! SHA-256, so reading the ledger does not let anyone enroll. A token is used
//! up in the same transaction that records the certificate it paid for
//! ([`super::Ca::enroll_with_token`]); a request refused before that leaves
//! it usable.

use super::error::{PkiError, TokenError};
use super::ledger::{Ledger, TokenRecord, TokenRefusal};
use super::{sha256_hex, Identity};
use base64::Engine;
use std::time::Duration;
use time::OffsetDateTime;

impl From<TokenRefusal> for TokenError {
    fn from(r: TokenRefusal) -> Self {
        match r {
            TokenRefusal::Unknown => TokenError::Unknown,
            TokenRefusal::Expired(expired_at) => TokenError::Expired { expired_at },
            TokenRefusal::Used(used_at) => TokenError::AlreadyUsed { used_at },
        }
    }
}

/// The ledger key of a token's text. Whitespace around the token (a pasted
/// newline) is ignored.
pub(crate) fn token_hash(token: &str) -> String {
    sha256_hex(token.trim().as_bytes())
}

/// Makes a token that enrolls `identity` with `ca` once, until `now + ttl`.
/// Refuses an invalid or disabled identity.
pub fn create_token(
    ledger: &dyn Ledger,
    ca: &str,
    identity: &Identity,
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<String, PkiError> {
    identity.validate()?;
    if ttl.is_zero() {
        return Err(PkiError::BadLifetime("a token lifetime must be longer than 0s".into()));
    }
    let ttl = time::Duration::try_from(ttl).map_err(|e| PkiError::BadLifetime(e.to_string()))?;
    let expires_at =
        now.checked_add(ttl).ok_or_else(|| PkiError::BadLifetime("the token lifetime is too long".into()))?;
    if let Some(rec) = ledger.identity(ca, &identity.cn)? {
        if rec.disabled_at.is_some() {
            return Err(PkiError::IdentityDisabled { ca: ca.into(), cn: identity.cn.clone() });
        }
    }
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| PkiError::Crypto("the system random generator failed".into()))?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    ledger.insert_token(&TokenRecord {
        hash: token_hash(&token),
        ca: ca.into(),
        identity: identity.clone(),
        created_at: now,
        expires_at,
        used_at: None,
        used_by: None,
    })?;
    Ok(token)
}

/// The identity a token would enroll, without using it up.
pub fn check_token(ledger: &dyn Ledger, ca: &str, token: &str, now: OffsetDateTime) -> Result<Identity, TokenError> {
    let rec = ledger.token(ca, &token_hash(token))?;
    match rec {
        None => Err(TokenError::Unknown),
        Some(TokenRecord { used_at: Some(used_at), .. }) => Err(TokenError::AlreadyUsed { used_at }),
        Some(t) if t.expires_at <= now => Err(TokenError::Expired { expired_at: t.expires_at }),
        Some(t) => {
            refuse_disabled(ledger, ca, &t.identity.cn)?;
            Ok(t.identity)
        }
    }
}

fn refuse_disabled(ledger: &dyn Ledger, ca: &str, cn: &str) -> Result<(), TokenError> {
    match ledger.identity(ca, cn)? {
        Some(rec) if rec.disabled_at.is_some() => Err(TokenError::IdentityDisabled { cn: cn.to_string() }),
        _ => Ok(()),
    }
}

/// Uses a token up and returns its identity (for callers that do not issue a
/// certificate in the same step; enrollment uses [`super::Ca::enroll_with_token`]).
pub fn redeem_token(ledger: &dyn Ledger, ca: &str, token: &str, now: OffsetDateTime) -> Result<Identity, TokenError> {
    check_token(ledger, ca, token, now)?;
    match ledger.use_token(ca, &token_hash(token), now)? {
        Ok(rec) => Ok(rec.identity),
        Err(refusal) => Err(refusal.into()),
    }
}
