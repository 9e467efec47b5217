//! The ledger: what every CA issued, to whom, and what was revoked.
//!
//! [`Ledger`] is the storage trait; [`SqliteLedger`] is the embedded default
//! (one file, WAL, shared safely by the server and `edge ca ...` running at the
//! same time). Every mutating method is one transaction that re-checks its own
//! preconditions, so two processes racing for the same token or the same key
//! cannot both win. Refusals found inside a transaction are returned as plain
//! outcomes ([`RecordOutcome`], [`RevokeOutcome`], [`TokenRefusal`]); only a
//! storage failure is an error.

use super::error::LedgerError;
use super::{Identity, Kind};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use time::OffsetDateTime;

/// One identity of one CA: the subject its certificates get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    /// The CA.
    pub ca: String,
    /// The identity's CN (its key within the CA).
    pub cn: String,
    /// The OUs its latest certificate carries.
    pub ous: Vec<String>,
    /// First certificate or token.
    pub created_at: OffsetDateTime,
    /// Set by a revocation by CN: the identity can no longer enroll or renew.
    pub disabled_at: Option<OffsetDateTime>,
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    /// Lowercase hex of the serial, without leading zero bytes.
    pub serial: String,
    /// The CA that issued it.
    pub ca: String,
    /// The identity's CN for client certificates; `None` for server certificates.
    pub identity: Option<String>,
    /// The subject CN.
    pub cn: String,
    /// The subject OUs.
    pub ous: Vec<String>,
    /// The subject alternative names (DNS names, URIs, IP addresses) as text.
    pub sans: Vec<String>,
    /// How it came to be.
    pub kind: Kind,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// When the row was written.
    pub issued_at: OffsetDateTime,
    /// Lowercase hex SHA-256 of the DER certificate.
    pub fingerprint: String,
    /// Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo.
    pub public_key_hash: String,
    /// When it was revoked.
    pub revoked_at: Option<OffsetDateTime>,
    /// Why (a [`super::Reason`] name).
    pub revocation_reason: Option<String>,
    /// When a renewal replaced it (it stays valid until it expires).
    pub superseded_at: Option<OffsetDateTime>,
    /// The serial of the certificate that replaced it.
    pub superseded_by: Option<String>,
}

/// One enrollment token, stored by the SHA-256 of its text only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Lowercase hex SHA-256 of the token text.
    pub hash: String,
    /// The CA it enrolls with.
    pub ca: String,
    /// The identity the certificate will carry.
    pub identity: Identity,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// When it was used.
    pub used_at: Option<OffsetDateTime>,
    /// The serial it was used for.
    pub used_by: Option<String>,
}

/// Why a token cannot be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No such token for this CA.
    Unknown,
    /// Its lifetime is over.
    Expired(OffsetDateTime),
    /// It was used.
    Used(OffsetDateTime),
}

/// What [`Ledger::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// The row is committed: the certificate may be handed out.
    Recorded,
    /// The identity is disabled; nothing was written.
    IdentityDisabled,
    /// The public key is already in a certificate of this CA; nothing was written.
    KeyReused,
    /// The token cannot be used; nothing was written.
    Token(TokenRefusal),
    /// The serial exists already (a 1-in-2^64 event); nothing was written.
    SerialTaken,
}

/// What [`Ledger::revoke_serial`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// Revoked now.
    Revoked,
    /// It was revoked before; nothing changed.
    AlreadyRevoked,
    /// No such serial in this CA.
    Unknown,
}

/// The storage behind the CAs. Implementations must make each method atomic
/// and durable before it returns, and safe to call from several processes.
pub trait Ledger: Send + Sync {
    /// The identity `cn` of `ca`.
    fn identity(&self, ca: &str, cn: &str) -> Result<Option<IdentityRecord>, LedgerError>;
    /// Every identity of `ca` (all CAs with `None`).
    fn identities(&self, ca: Option<&str>) -> Result<Vec<IdentityRecord>, LedgerError>;
    /// Whether a certificate of `ca` already carries this public key.
    fn key_in_use(&self, ca: &str, public_key_hash: &str) -> Result<bool, LedgerError>;
    /// The certificate `serial` (normalised hex) of `ca`.
    fn certificate(&self, ca: &str, serial: &str) -> Result<Option<CertRecord>, LedgerError>;
    /// Every certificate of `ca` (all CAs with `None`), oldest first.
    fn certificates(&self, ca: Option<&str>) -> Result<Vec<CertRecord>, LedgerError>;
    /// Commits a newly signed certificate, in one transaction: uses the token
    /// (if any, refusing an unknown, expired or used one), refuses a disabled
    /// identity or a reused key, creates or updates the identity, marks what
    /// the certificate replaces as superseded (a renewal: the identity's other
    /// valid certificates; a server certificate: the CA's other server
    /// certificates for the same names), and inserts the row.
    fn record(
        &self,
        cert: &CertRecord,
        token_hash: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<RecordOutcome, LedgerError>;
    /// Stores a new token.
    fn insert_token(&self, token: &TokenRecord) -> Result<(), LedgerError>;
    /// The token with this hash for `ca`, used or not.
    fn token(&self, ca: &str, hash: &str) -> Result<Option<TokenRecord>, LedgerError>;
    /// Uses the token now (without a certificate).
    fn use_token(
        &self,
        ca: &str,
        hash: &str,
        now: OffsetDateTime,
    ) -> Result<Result<TokenRecord, TokenRefusal>, LedgerError>;
    /// Revokes one certificate; bumps the revocation revision if it changed anything.
    fn revoke_serial(
        &self,
        ca: &str,
        serial: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<RevokeOutcome, LedgerError>;
    /// Disables the identity and revokes its unexpired certificates; `None` if
    /// there is no such identity, else how many certificates were revoked now.
    fn revoke_identity(
        &self,
        ca: &str,
        cn: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Option<usize>, LedgerError>;
    /// Lets a disabled identity get certificates again; false if unknown.
    fn enable_identity(&self, ca: &str, cn: &str) -> Result<bool, LedgerError>;
    /// The revision and the serials of `ca`'s revoked, unexpired certificates,
    /// read together.
    fn revoked(&self, ca: &str, now: OffsetDateTime) -> Result<(i64, Vec<String>), LedgerError>;
    /// A number that grows with every revocation, for cheap polling.
    fn revocation_revision(&self) -> Result<i64, LedgerError>;
}

/// The schema, one step per version: `PRAGMA user_version` says how many ran.
/// Append only; never edit a step that shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
    CREATE TABLE identities (
        ca           TEXT NOT NULL,
        cn           TEXT NOT NULL,
        ous          TEXT NOT NULL DEFAULT '',
        created_at   INTEGER NOT NULL,
        disabled_at  INTEGER,
        disabled_reason TEXT,
        PRIMARY KEY (ca, cn)
    ) WITHOUT ROWID;
    CREATE TABLE tokens (
        hash         TEXT PRIMARY KEY,
        ca           TEXT NOT NULL,
        cn           TEXT NOT NULL,
        ous          TEXT NOT NULL DEFAULT '',
        san_dns      TEXT NOT NULL DEFAULT '',
        san_uri      TEXT NOT NULL DEFAULT '',
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL,
        used_at      INTEGER,
        used_by      TEXT
    ) WITHOUT ROWID;
    CREATE TABLE certificates (
        serial       TEXT PRIMARY KEY,
        ca           TEXT NOT NULL,
        identity     TEXT,
        cn           TEXT NOT NULL,
        ous          TEXT NOT NULL DEFAULT '',
        sans         TEXT NOT NULL DEFAULT '',
        kind         TEXT NOT NULL CHECK (kind IN ('enroll', 'renew', 'manual', 'server')),
        not_before   INTEGER NOT NULL,
        not_after    INTEGER NOT NULL,
        issued_at    INTEGER NOT NULL,
        fingerprint  TEXT NOT NULL UNIQUE,
        public_key_hash TEXT NOT NULL,
        revoked_at   INTEGER,
        revocation_reason TEXT,
        superseded_at INTEGER,
        superseded_by TEXT,
        FOREIGN KEY (ca, identity) REFERENCES identities (ca, cn)
    );
    CREATE UNIQUE INDEX certificates_by_key ON certificates (ca, public_key_hash);
    CREATE INDEX certificates_by_identity ON certificates (ca, identity);
    CREATE TABLE revocation (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        revision     INTEGER NOT NULL
    );
    INSERT INTO revocation (id, revision) VALUES (1, 0);
    ",
];

/// The SQLite ledger: one file under `storage`, in WAL mode.
///
/// Each handle holds one connection behind a mutex; open one handle per
/// process and share it (`Arc`). Other processes open their own.
pub struct SqliteLedger {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLedger").field("path", &self.path).finish()
    }
}

/// How long a writer waits for another process's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The ledger's file in a storage folder.
pub fn ledger_path(storage_dir: &Path) -> PathBuf {
    storage_dir.join("ledger.sqlite3")
}

impl SqliteLedger {
    /// Opens (creating if missing, mode 0600, and its folder, mode 0700) the
    /// ledger at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteLedger, LedgerError> {
        let open_err = |reason: String| LedgerError::Open { path: path.display().to_string(), reason };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| open_err(crate::util::io_reason(&e)))?;
        }
        {
            // Create the file ourselves so that it (and the -wal/-shm files
            // SQLite derives from it) is private from the start.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| open_err(crate::util::io_reason(&e)))?;
        }
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| open_err(e.to_string()))?;
        // Two processes opening a fresh file at once may race to switch it to
        // WAL; the loser sees BUSY outside the busy handler. Retry briefly.
        let mut tries = 0;
        loop {
            match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
                Ok(mode) if mode.eq_ignore_ascii_case("wal") => break,
                Ok(mode) => return Err(open_err(format!("cannot switch to WAL mode (journal mode is {mode})"))),
                Err(e) if tries < 50 && e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(open_err(e.to_string())),
            }
        }
        // FULL: a commit is on disk when it returns, even across a power cut.
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| open_err(e.to_string()))?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(|e| open_err(e.to_string()))?;
        migrate(&conn, path)?;
        Ok(SqliteLedger { conn: Mutex::new(conn), path: path.to_path_buf() })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no open transaction (its drop
        // rolled it back), so the connection is still good.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

fn migrate(conn: &Connection, path: &Path) -> Result<(), LedgerError> {
    loop {
        // IMMEDIATE: two processes migrating at once take turns, and the
        // second sees the version the first committed.
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(LedgerError::SchemaTooNew {
                path: path.display().to_string(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version == SCHEMA_VERSION {
            tx.commit()?;
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[version as usize])?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
}

fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn from_ts(v: i64) -> Result<OffsetDateTime, LedgerError> {
    OffsetDateTime::from_unix_timestamp(v).map_err(|e| LedgerError::Corrupt(format!("timestamp {v}: {e}")))
}

fn from_opt_ts(v: Option<i64>) -> Result<Option<OffsetDateTime>, LedgerError> {
    v.map(from_ts).transpose()
}

fn join(list: &[String]) -> String {
    list.join("\n")
}

fn split(s: &str) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('\n').map(str::to_string).collect()
    }
}

const CERT_COLUMNS: &str = "serial, ca, identity, cn, ous, sans, kind, not_before, not_after, issued_at, \
     fingerprint, public_key_hash, revoked_at, revocation_reason, superseded_at, superseded_by";

type RawCert = (
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    String,
    String,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

fn raw_cert(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawCert> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
        r.get(14)?,
        r.get(15)?,
    ))
}

fn cert_of(raw: RawCert) -> Result<CertRecord, LedgerError> {
    let (serial, ca, identity, cn, ous, sans, kind, nb, na, ia, fingerprint, pkh, ra, rr, sa, sb) = raw;
    Ok(CertRecord {
        serial,
        ca,
        identity,
        cn,
        ous: split(&ous),
        sans: split(&sans),
        kind: kind.parse().map_err(LedgerError::Corrupt)?,
        not_before: from_ts(nb)?,
        not_after: from_ts(na)?,
        issued_at: from_ts(ia)?,
        fingerprint,
        public_key_hash: pkh,
        revoked_at: from_opt_ts(ra)?,
        revocation_reason: rr,
        superseded_at: from_opt_ts(sa)?,
        superseded_by: sb,
    })
}

type RawToken = (String, String, String, String, String, String, i64, i64, Option<i64>, Option<String>);

fn token_of(raw: RawToken) -> Result<TokenRecord, LedgerError> {
    let (hash, ca, cn, ous, san_dns, san_uri, created, expires, used, used_by) = raw;
    Ok(TokenRecord {
        hash,
        ca,
        identity: Identity { cn, ous: split(&ous), san_dns: split(&san_dns), san_uri: split(&san_uri) },
        created_at: from_ts(created)?,
        expires_at: from_ts(expires)?,
        used_at: from_opt_ts(used)?,
        used_by,
    })
}

fn read_token(conn: &Connection, ca: &str, hash: &str) -> Result<Option<TokenRecord>, LedgerError> {
    let raw = conn
        .query_row(
            "SELECT hash, ca, cn, ous, san_dns, san_uri, created_at, expires_at, used_at, used_by \
             FROM tokens WHERE hash = ?1 AND ca = ?2",
            params![hash, ca],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            },
        )
        .optional()?;
    raw.map(token_of).transpose()
}

fn token_state(token: Option<&TokenRecord>, now: OffsetDateTime) -> Result<(), TokenRefusal> {
    match token {
        None => Err(TokenRefusal::Unknown),
        Some(TokenRecord { used_at: Some(at), .. }) => Err(TokenRefusal::Used(*at)),
        Some(t) if t.expires_at <= now => Err(TokenRefusal::Expired(t.expires_at)),
        Some(_) => Ok(()),
    }
}

type RawIdentity = (String, String, String, i64, Option<i64>);

fn identity_of(raw: RawIdentity) -> Result<IdentityRecord, LedgerError> {
    let (ca, cn, ous, created, disabled) = raw;
    Ok(IdentityRecord { ca, cn, ous: split(&ous), created_at: from_ts(created)?, disabled_at: from_opt_ts(disabled)? })
}

fn read_identity(conn: &Connection, ca: &str, cn: &str) -> Result<Option<IdentityRecord>, LedgerError> {
    let raw = conn
        .query_row(
            "SELECT ca, cn, ous, created_at, disabled_at FROM identities WHERE ca = ?1 AND cn = ?2",
            params![ca, cn],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    raw.map(identity_of).transpose()
}

fn bump_revision(conn: &Connection) -> Result<(), LedgerError> {
    conn.execute("UPDATE revocation SET revision = revision + 1 WHERE id = 1", [])?;
    Ok(())
}

impl Ledger for SqliteLedger {
    fn identity(&self, ca: &str, cn: &str) -> Result<Option<IdentityRecord>, LedgerError> {
        read_identity(&self.conn(), ca, cn)
    }

    fn identities(&self, ca: Option<&str>) -> Result<Vec<IdentityRecord>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT ca, cn, ous, created_at, disabled_at FROM identities \
             WHERE ?1 IS NULL OR ca = ?1 ORDER BY ca, cn",
        )?;
        let rows = stmt.query_map(params![ca], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
        rows.map(|r| identity_of(r?)).collect()
    }

    fn key_in_use(&self, ca: &str, public_key_hash: &str) -> Result<bool, LedgerError> {
        let conn = self.conn();
        let found = conn
            .query_row(
                "SELECT 1 FROM certificates WHERE ca = ?1 AND public_key_hash = ?2",
                params![ca, public_key_hash],
                |_| Ok(()),
            )
            .optional()?;
        Ok(found.is_some())
    }

    fn certificate(&self, ca: &str, serial: &str) -> Result<Option<CertRecord>, LedgerError> {
        let conn = self.conn();
        let raw = conn
            .query_row(
                &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE ca = ?1 AND serial = ?2"),
                params![ca, serial],
                raw_cert,
            )
            .optional()?;
        raw.map(cert_of).transpose()
    }

    fn certificates(&self, ca: Option<&str>) -> Result<Vec<CertRecord>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE ?1 IS NULL OR ca = ?1 ORDER BY ca, issued_at, rowid"
        ))?;
        let rows = stmt.query_map(params![ca], raw_cert)?;
        rows.map(|r| cert_of(r?)).collect()
    }

    fn record(
        &self,
        cert: &CertRecord,
        token_hash: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<RecordOutcome, LedgerError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(hash) = token_hash {
            let token = read_token(&tx, &cert.ca, hash)?;
            if let Err(refusal) = token_state(token.as_ref(), now) {
                return Ok(RecordOutcome::Token(refusal));
            }
        }
        if let Some(cn) = &cert.identity {
            match read_identity(&tx, &cert.ca, cn)? {
                Some(IdentityRecord { disabled_at: Some(_), .. }) => return Ok(RecordOutcome::IdentityDisabled),
                Some(_) => {
                    tx.execute(
                        "UPDATE identities SET ous = ?3 WHERE ca = ?1 AND cn = ?2",
                        params![cert.ca, cn, join(&cert.ous)],
                    )?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO identities (ca, cn, ous, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![cert.ca, cn, join(&cert.ous), ts(now)],
                    )?;
                }
            }
        }
        let reused = tx
            .query_row(
                "SELECT 1 FROM certificates WHERE ca = ?1 AND public_key_hash = ?2",
                params![cert.ca, cert.public_key_hash],
                |_| Ok(()),
            )
            .optional()?;
        if reused.is_some() {
            return Ok(RecordOutcome::KeyReused);
        }
        let taken = tx
            .query_row("SELECT 1 FROM certificates WHERE serial = ?1", params![cert.serial], |_| Ok(()))
            .optional()?;
        if taken.is_some() {
            return Ok(RecordOutcome::SerialTaken);
        }
        match (&cert.kind, &cert.identity) {
            (Kind::Renew, Some(cn)) => {
                tx.execute(
                    "UPDATE certificates SET superseded_at = ?4, superseded_by = ?3 \
                     WHERE ca = ?1 AND identity = ?2 AND revoked_at IS NULL AND superseded_at IS NULL \
                     AND not_after > ?4",
                    params![cert.ca, cn, cert.serial, ts(now)],
                )?;
            }
            (Kind::Server, _) => {
                tx.execute(
                    "UPDATE certificates SET superseded_at = ?4, superseded_by = ?3 \
                     WHERE ca = ?1 AND kind = 'server' AND sans = ?2 AND revoked_at IS NULL \
                     AND superseded_at IS NULL AND not_after > ?4",
                    params![cert.ca, join(&cert.sans), cert.serial, ts(now)],
                )?;
            }
            _ => {}
        }
        tx.execute(
            &format!(
                "INSERT INTO certificates ({CERT_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL, NULL, NULL, NULL)"
            ),
            params![
                cert.serial,
                cert.ca,
                cert.identity,
                cert.cn,
                join(&cert.ous),
                join(&cert.sans),
                cert.kind.as_str(),
                ts(cert.not_before),
                ts(cert.not_after),
                ts(now),
                cert.fingerprint,
                cert.public_key_hash,
            ],
        )?;
        if let Some(hash) = token_hash {
            tx.execute(
                "UPDATE tokens SET used_at = ?3, used_by = ?4 WHERE hash = ?1 AND ca = ?2",
                params![hash, cert.ca, ts(now), cert.serial],
            )?;
        }
        tx.commit()?;
        Ok(RecordOutcome::Recorded)
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<(), LedgerError> {
        let conn = self.conn();
        let id = &token.identity;
        conn.execute(
            "INSERT INTO tokens (hash, ca, cn, ous, san_dns, san_uri, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                token.hash,
                token.ca,
                id.cn,
                join(&id.ous),
                join(&id.san_dns),
                join(&id.san_uri),
                ts(token.created_at),
                ts(token.expires_at),
            ],
        )?;
        Ok(())
    }

    fn token(&self, ca: &str, hash: &str) -> Result<Option<TokenRecord>, LedgerError> {
        read_token(&self.conn(), ca, hash)
    }

    fn use_token(
        &self,
        ca: &str,
        hash: &str,
        now: OffsetDateTime,
    ) -> Result<Result<TokenRecord, TokenRefusal>, LedgerError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let token = read_token(&tx, ca, hash)?;
        if let Err(refusal) = token_state(token.as_ref(), now) {
            return Ok(Err(refusal));
        }
        let Some(mut token) = token else { return Ok(Err(TokenRefusal::Unknown)) };
        tx.execute("UPDATE tokens SET used_at = ?3 WHERE hash = ?1 AND ca = ?2", params![hash, ca, ts(now)])?;
        tx.commit()?;
        token.used_at = Some(now);
        Ok(Ok(token))
    }

    fn revoke_serial(
        &self,
        ca: &str,
        serial: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<RevokeOutcome, LedgerError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revoked_at: Option<Option<i64>> = tx
            .query_row("SELECT revoked_at FROM certificates WHERE ca = ?1 AND serial = ?2", params![ca, serial], |r| {
                r.get(0)
            })
            .optional()?;
        let outcome = match revoked_at {
            None => RevokeOutcome::Unknown,
            Some(Some(_)) => RevokeOutcome::AlreadyRevoked,
            Some(None) => {
                tx.execute(
                    "UPDATE certificates SET revoked_at = ?3, revocation_reason = ?4 WHERE ca = ?1 AND serial = ?2",
                    params![ca, serial, ts(now), reason],
                )?;
                bump_revision(&tx)?;
                RevokeOutcome::Revoked
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn revoke_identity(
        &self,
        ca: &str,
        cn: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Option<usize>, LedgerError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if read_identity(&tx, ca, cn)?.is_none() {
            return Ok(None);
        }
        tx.execute(
            "UPDATE identities SET disabled_at = COALESCE(disabled_at, ?3), disabled_reason = ?4 \
             WHERE ca = ?1 AND cn = ?2",
            params![ca, cn, ts(now), reason],
        )?;
        // Superseded certificates are still valid until they expire, so they go too.
        let n = tx.execute(
            "UPDATE certificates SET revoked_at = ?3, revocation_reason = ?4 \
             WHERE ca = ?1 AND identity = ?2 AND revoked_at IS NULL AND not_after > ?3",
            params![ca, cn, ts(now), reason],
        )?;
        bump_revision(&tx)?;
        tx.commit()?;
        Ok(Some(n))
    }

    fn enable_identity(&self, ca: &str, cn: &str) -> Result<bool, LedgerError> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE identities SET disabled_at = NULL, disabled_reason = NULL WHERE ca = ?1 AND cn = ?2",
            params![ca, cn],
        )?;
        Ok(n > 0)
    }

    fn revoked(&self, ca: &str, now: OffsetDateTime) -> Result<(i64, Vec<String>), LedgerError> {
        let mut conn = self.conn();
        // One read transaction: the revision matches the list.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let revision: i64 = tx.query_row("SELECT revision FROM revocation WHERE id = 1", [], |r| r.get(0))?;
        let serials = {
            let mut stmt = tx.prepare(
                "SELECT serial FROM certificates WHERE ca = ?1 AND revoked_at IS NOT NULL AND not_after > ?2 \
                 ORDER BY serial",
            )?;
            let rows = stmt.query_map(params![ca, ts(now)], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok((revision, serials))
    }

    fn revocation_revision(&self) -> Result<i64, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT revision FROM revocation WHERE id = 1")?;
        Ok(stmt.query_row([], |r| r.get(0))?)
    }
}
