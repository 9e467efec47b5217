//! The built-in CAs as the running server holds them: each CA opened once per
//! process with its ledger, its revoked set in memory (checked on every
//! handshake, refreshed from the ledger every 500 ms so `edge ca revoke`
//! applies within 2 s without a reload), the EST rate limits, and the server
//! certificates of `tls internal` sites.

use crate::metrics;
use crate::pki::{self, Ca, PkiError, RevokedSet, SqliteLedger};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Lifetime of the server certificates of `tls internal` sites; they are
/// renewed when two thirds of it has passed.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(7 * 86_400);

/// One CA, open.
pub struct Authority {
    /// The CA (its root and key).
    pub ca: Ca,
    /// The ledger shared by every CA of this storage.
    pub ledger: Arc<SqliteLedger>,
    revoked: ArcSwap<RevokedSet>,
    revision: AtomicI64,
    limiter: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

type Registry = Mutex<HashMap<(PathBuf, String), Arc<Authority>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

fn ledgers() -> &'static Mutex<HashMap<PathBuf, Arc<SqliteLedger>>> {
    static L: OnceLock<Mutex<HashMap<PathBuf, Arc<SqliteLedger>>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

/// Opens (creating on first use) the ledger of `storage`.
pub fn open_ledger(storage: &Path) -> Result<Arc<SqliteLedger>, PkiError> {
    let mut map = ledgers().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(l) = map.get(storage) {
        return Ok(l.clone());
    }
    std::fs::create_dir_all(storage).map_err(|e| PkiError::io(storage, &e))?;
    let ledger = Arc::new(SqliteLedger::open(&pki::ledger_path(storage))?);
    map.insert(storage.to_path_buf(), ledger.clone());
    Ok(ledger)
}

/// The CA `name` under `storage`, opened (and created) once per process.
pub fn open(storage: &Path, name: &str) -> Result<Arc<Authority>, PkiError> {
    let key = (storage.to_path_buf(), name.to_string());
    if let Some(a) = registry().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(a.clone());
    }
    let ledger = open_ledger(storage)?;
    let now = OffsetDateTime::now_utc();
    let ca = Ca::open_or_create(storage, name, now)?;
    let set = pki::revoked_set(ledger.as_ref(), name, now)?;
    let a = Arc::new(Authority {
        revision: AtomicI64::new(set.revision()),
        revoked: ArcSwap::from_pointee(set),
        ca,
        ledger,
        limiter: Mutex::new(HashMap::new()),
    });
    let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
    Ok(map.entry(key).or_insert(a).clone())
}

/// Every CA open in this process.
pub fn all() -> Vec<Arc<Authority>> {
    registry().lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
}

impl Authority {
    /// The CA's name.
    pub fn name(&self) -> &str {
        self.ca.name()
    }

    /// Whether a serial (DER INTEGER content bytes) is revoked. In memory,
    /// lock-free: called on every handshake.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked.load().contains(serial)
    }

    /// Re-reads the revoked set if the ledger's revocation revision moved
    /// (another process ran `edge ca revoke`). Blocking: call it off the
    /// async threads.
    pub fn refresh(&self) -> Result<(), PkiError> {
        let rev = pki::revocation_revision(self.ledger.as_ref())?;
        if rev != self.revision.load(Ordering::Relaxed) {
            let set = pki::revoked_set(self.ledger.as_ref(), self.name(), OffsetDateTime::now_utc())?;
            self.revision.store(set.revision(), Ordering::Relaxed);
            tracing::info!(ca = self.name(), revoked = set.len(), "revocations reloaded");
            self.revoked.store(Arc::new(set));
        }
        Ok(())
    }

    /// Publishes the CA's gauges: revoked certificates and the expiry of each
    /// identity's newest valid certificate.
    pub fn publish_gauges(&self) -> Result<(), PkiError> {
        let m = metrics::global();
        m.pki_revoked.with_label_values(&[self.name()]).set(self.revoked.load().len() as i64);
        for e in pki::identity_expiry(self.ledger.as_ref(), Some(self.name()), OffsetDateTime::now_utc())? {
            m.pki_identity_expiry.with_label_values(&[&e.ca, &e.cn]).set(e.not_after.unix_timestamp());
        }
        Ok(())
    }

    /// Takes one request from `ip`'s budget (20 requests, refilled at 20 per
    /// minute); `false` when it is spent.
    pub fn admit(&self, ip: IpAddr) -> bool {
        const BURST: f64 = 20.0;
        const PER_SEC: f64 = 20.0 / 60.0;
        let mut map = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() > 10_000 {
            // Forget full buckets so the table stays small.
            map.retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * PER_SEC < BURST);
        }
        let (tokens, at) = map.entry(ip).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * PER_SEC).min(BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The server certificate (chain PEM, key PEM, not-after) of a `tls
    /// internal` site: the one on disk while it covers `names` and is not
    /// due for renewal, otherwise a new one, issued and written first.
    pub fn server_cert(&self, label: &str, names: &[String]) -> Result<(String, String, OffsetDateTime), PkiError> {
        let dir = self.ca.dir().join("servers");
        let file = sanitize(label);
        let (crt, key) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
        let now = OffsetDateTime::now_utc();
        if let (Ok(c), Ok(k)) = (std::fs::read_to_string(&crt), std::fs::read_to_string(&key)) {
            if let Some(not_after) = usable(&c, names, now) {
                return Ok((c, k, not_after));
            }
        }
        let issued = self.ca.issue_server(self.ledger.as_ref(), names, SERVER_CERT_LIFETIME, now)?;
        metrics::global().pki_issued.with_label_values(&[self.name(), "server"]).inc();
        std::fs::create_dir_all(&dir).map_err(|e| PkiError::io(&dir, &e))?;
        crate::util::write_atomic(&key, issued.key_pem.expose().as_bytes(), Some(0o600))
            .map_err(|e| PkiError::io(&key, &e))?;
        crate::util::write_atomic(&crt, issued.issued.chain_pem.as_bytes(), Some(0o644))
            .map_err(|e| PkiError::io(&crt, &e))?;
        tracing::info!(ca = self.name(), site = label, serial = %issued.issued.serial, "server certificate issued");
        Ok((issued.issued.chain_pem, issued.key_pem.expose().to_string(), issued.issued.not_after))
    }
}

fn sanitize(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect()
}

/// The not-after of a stored server certificate if it names exactly `names`
/// and two thirds of its life have not passed.
fn usable(chain_pem: &str, names: &[String], now: OffsetDateTime) -> Option<OffsetDateTime> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes()).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).ok()?;
    let v = cert.validity();
    let (from, to) = (v.not_before.timestamp(), v.not_after.timestamp());
    if now.unix_timestamp() >= from + (to - from) * 2 / 3 {
        return None;
    }
    let mut have: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => have.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => have.push(IpAddr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string()),
                    16 => have.push(IpAddr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let mut want = names.to_vec();
    have.sort();
    want.sort();
    (have == want).then(|| OffsetDateTime::from_unix_timestamp(to).ok()).flatten()
}

/// Refreshes every open CA's revoked set every 500 ms, and its gauges every
/// 5 s, until the process ends.
pub async fn keep_fresh() {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let gauges = n.is_multiple_of(10);
        n += 1;
        let done = tokio::task::spawn_blocking(move || {
            for a in all() {
                if let Err(e) = a.refresh() {
                    tracing::warn!(ca = a.name(), error = %e, "cannot read revocations from the ledger");
                }
                if gauges {
                    if let Err(e) = a.publish_gauges() {
                        tracing::warn!(ca = a.name(), error = %e, "cannot read the ledger for metrics");
                    }
                }
            }
        });
        let _ = done.await;
    }
}
