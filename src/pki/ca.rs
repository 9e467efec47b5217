//! One certificate authority: its root on disk and everything it signs.

use super::der::{self, oids};
use super::error::PkiError;
use super::ledger::{CertRecord, Ledger, RecordOutcome};
use super::token::token_hash;
use super::{check_token, hex, pkcs7_certs_only, serial_bytes, sha256_hex, Csr, Identity, Kind, Reason};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, RevokedCertParams, SerialNumber, SigningKey,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

/// The lifetime of a new root: ten years.
pub const CA_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 3600);
/// How far in the past a leaf's notBefore is put, for clients whose clock is behind.
const BACKDATE: time::Duration = time::Duration::minutes(5);
/// How long a CRL is fresh (its nextUpdate).
const CRL_VALIDITY: time::Duration = time::Duration::days(1);

/// A PEM private key: printing it with `{:?}` shows nothing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKeyPem(String);

impl SecretKeyPem {
    /// The PEM text, to be written to a file of mode 0600 and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretKeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKeyPem([elided])")
    }
}

/// A certificate this CA issued, committed to the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The leaf, DER.
    pub der: Vec<u8>,
    /// The leaf, PEM.
    pub pem: String,
    /// The leaf then the root, PEM: what a client presents and stores.
    pub chain_pem: String,
    /// Lowercase hex serial.
    pub serial: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// `sha256:` + lowercase hex of the DER leaf (the `allow fingerprint=` form).
    pub fingerprint: String,
    /// How it was issued.
    pub kind: Kind,
}

/// A server certificate for `tls internal`, with the key edge made for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCert {
    /// The certificate, committed to the ledger.
    pub issued: Issued,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: SecretKeyPem,
}

/// One name in a subjectAltName.
#[derive(Debug, Clone, PartialEq, Eq)]
enum San {
    Dns(String),
    Uri(String),
    Ip(IpAddr),
}

impl San {
    fn text(&self) -> String {
        match self {
            San::Dns(d) | San::Uri(d) => d.clone(),
            San::Ip(ip) => ip.to_string(),
        }
    }

    fn der(&self) -> Vec<u8> {
        match self {
            San::Dns(d) => der::tlv(0x82, d.as_bytes()),
            San::Uri(u) => der::tlv(0x86, u.as_bytes()),
            San::Ip(IpAddr::V4(a)) => der::tlv(0x87, &a.octets()),
            San::Ip(IpAddr::V6(a)) => der::tlv(0x87, &a.octets()),
        }
    }
}

/// What a leaf says, before it has a serial and a validity.
struct Leaf<'a> {
    /// The ledger identity (client certificates only).
    identity: Option<&'a str>,
    cn: &'a str,
    ous: &'a [String],
    sans: Vec<San>,
    spki: &'a [u8],
    eku: &'static [u64],
    kind: Kind,
}

/// A certificate authority: its root certificate and signing key.
pub struct Ca {
    name: String,
    dir: PathBuf,
    cert_der: Vec<u8>,
    cert_pem: String,
    key: KeyPair,
    /// The root's subject Name, DER: the leaves' issuer, byte for byte.
    subject_der: Vec<u8>,
    /// The root's subjectKeyIdentifier: the leaves' authorityKeyIdentifier.
    key_id: Vec<u8>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("name", &self.name).field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadCaName(name.to_string()))
    }
}

fn read_if_exists(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::io(path, &e)),
    }
}

/// 128 random bits, as a positive INTEGER's magnitude.
fn random_serial() -> Result<[u8; 16], PkiError> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| PkiError::Crypto("the system random generator failed".into()))?;
    if serial.iter().all(|b| *b == 0) {
        serial[15] = 1;
    }
    Ok(serial)
}

/// The ledger's serial text for magnitude bytes.
fn serial_text(magnitude: &[u8]) -> String {
    let start = magnitude.iter().take_while(|b| **b == 0).count();
    if start == magnitude.len() {
        "00".into()
    } else {
        hex(&magnitude[start..])
    }
}

/// PEM armour, 64 characters a line (`CERTIFICATE`, `X509 CRL`, ...).
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

fn valid_dns_name(d: &str) -> bool {
    Identity { cn: "x".into(), san_dns: vec![d.to_string()], ..Default::default() }.validate().is_ok()
}

impl Ca {
    /// Opens the CA `name` under `storage_dir/ca/NAME/`, creating it (an
    /// ECDSA P-256 root valid for [`CA_LIFETIME`] from `now`) if it does not
    /// exist.
    ///
    /// Creation is atomic and safe against another process doing the same
    /// at the same time: the key and certificate are written (and synced) in
    /// a fresh hidden folder, which is then renamed to `NAME`. Whoever renames
    /// second fails, throws its own away and reads the winner's; a crash
    /// leaves at most a stray hidden folder, never half a CA.
    pub fn open_or_create(storage_dir: &Path, name: &str, now: OffsetDateTime) -> Result<Ca, PkiError> {
        check_name(name)?;
        let parent = storage_dir.join("ca");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(|e| PkiError::io(&parent, &e))?;
        let dir = parent.join(name);
        if !dir.join("ca.key").exists() && !dir.join("ca.crt").exists() {
            create_into(&parent, &dir, name, now)?;
        }
        Ca::load(&dir, name)
    }

    fn load(dir: &Path, name: &str) -> Result<Ca, PkiError> {
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.crt");
        let bad = |reason: &str| PkiError::BadCaFiles { path: dir.display().to_string(), reason: reason.into() };
        let (key_pem, cert_pem) = match (read_if_exists(&key_path)?, read_if_exists(&cert_path)?) {
            (Some(k), Some(c)) => (k, c),
            (Some(_), None) => return Err(bad("ca.key is there but ca.crt is missing; restore ca.crt from a backup")),
            (None, Some(_)) => {
                return Err(bad("ca.crt is there but ca.key is missing; restore ca.key from a backup, or move the \
                                folder away to start a new CA (clients must then trust the new root)"))
            }
            (None, None) => return Err(bad("ca.key and ca.crt are missing")),
        };
        let mode = std::fs::metadata(&key_path).map_err(|e| PkiError::io(&key_path, &e))?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| PkiError::io(&key_path, &e))?;
            tracing::warn!(path = %key_path.display(), "the CA key was readable by others; its mode is now 0600");
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&format!("ca.key is not a PEM private key: {e}")))?;
        Ca::from_parts(name, dir.to_path_buf(), key, cert_pem)
    }

    fn from_parts(name: &str, dir: PathBuf, key: KeyPair, cert_pem: String) -> Result<Ca, PkiError> {
        let bad = |reason: String| PkiError::BadCaFiles { path: dir.display().to_string(), reason };
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(bad("ca.key is not an ECDSA P-256 key".into()));
        }
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| bad("ca.crt holds no PEM certificate".into()))?
            .to_vec();
        let (_, cert) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| bad(format!("ca.crt does not parse: {e}")))?;
        if !cert.is_ca() {
            return Err(bad("ca.crt is not a CA certificate".into()));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad("ca.crt and ca.key do not belong together".into()));
        }
        let key_id = cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .unwrap_or_else(|| key_identifier(cert.public_key().raw));
        Ok(Ca {
            name: name.to_string(),
            subject_der: cert.subject().as_raw().to_vec(),
            not_after: cert.validity().not_after.to_datetime(),
            key_id,
            cert_pem: pem("CERTIFICATE", &cert_der),
            cert_der,
            key,
            dir,
        })
    }

    /// The CA's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA's folder (`STORAGE/ca/NAME`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The root certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The root certificate, PEM (`edge ca root`, EST `cacerts` as PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root's end of validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// EST `cacerts`: the root as a PKCS#7 certs-only message (DER).
    pub fn cacerts_pkcs7(&self) -> Vec<u8> {
        pkcs7_certs_only(&[&self.cert_der])
    }

    /// Issues a client certificate for `identity` over `public_key_der` (a
    /// DER SubjectPublicKeyInfo), and commits it to the ledger before
    /// returning it. Refuses a disabled identity and a public key this CA
    /// certified before. With [`Kind::Renew`], the identity's earlier
    /// certificates become superseded.
    pub fn issue_client(
        &self,
        ledger: &dyn Ledger,
        identity: &Identity,
        public_key_der: &[u8],
        lifetime: Duration,
        kind: Kind,
        now: OffsetDateTime,
    ) -> Result<Issued, PkiError> {
        if kind == Kind::Server {
            return Err(PkiError::BadIdentity("server certificates are made by issue_server".into()));
        }
        self.issue_identity(ledger, identity, public_key_der, lifetime, kind, None, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn issue_identity(
        &self,
        ledger: &dyn Ledger,
        identity: &Identity,
        spki: &[u8],
        lifetime: Duration,
        kind: Kind,
        token_hash: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Issued, PkiError> {
        identity.validate()?;
        let sans = identity
            .san_dns
            .iter()
            .map(|d| San::Dns(d.clone()))
            .chain(identity.san_uri.iter().map(|u| San::Uri(u.clone())))
            .collect();
        let leaf = Leaf {
            identity: Some(&identity.cn),
            cn: &identity.cn,
            ous: &identity.ous,
            sans,
            spki,
            eku: oids::CLIENT_AUTH,
            kind,
        };
        self.issue(ledger, &leaf, lifetime, token_hash, now)
    }

    /// EST `simpleenroll`: issues a certificate for the identity the token
    /// names over the CSR's key. The token is used up in the transaction
    /// that commits the certificate, so any refusal (reused key, disabled
    /// identity, a concurrent use of the same token) leaves it as it was.
    pub fn enroll_with_token(
        &self,
        ledger: &dyn Ledger,
        token: &str,
        csr: &Csr,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, PkiError> {
        let identity = check_token(ledger, &self.name, token, now)?;
        let hash = token_hash(token);
        self.issue_identity(ledger, &identity, &csr.public_key_der, lifetime, Kind::Enroll, Some(&hash), now)
    }

    /// EST `simplereenroll`: issues a certificate with the identity of
    /// `presented` (the client's current certificate, DER, already verified
    /// by the TLS layer) over the CSR's new key. `presented` must be in this
    /// CA's ledger, unrevoked and unexpired; it becomes superseded.
    pub fn renew(
        &self,
        ledger: &dyn Ledger,
        presented: &[u8],
        csr: &Csr,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, PkiError> {
        let not_here = |reason: &str| PkiError::NotIssuedHere { ca: self.name.clone(), reason: reason.into() };
        let id = crate::policy::identity_from_der(presented).map_err(|e| not_here(&e.to_string()))?;
        let row =
            ledger.certificate(&self.name, &id.serial)?.ok_or_else(|| not_here("its serial is not in the ledger"))?;
        if format!("sha256:{}", row.fingerprint) != id.fingerprint {
            return Err(not_here("its fingerprint differs from the ledger's"));
        }
        if row.revoked_at.is_some() {
            return Err(PkiError::CertRevoked { serial: row.serial });
        }
        if row.not_after <= now {
            return Err(PkiError::CertExpired { serial: row.serial, not_after: row.not_after });
        }
        let Some(cn) = row.identity else {
            return Err(not_here("it is a server certificate, not a client identity"));
        };
        let identity = Identity { cn, ous: row.ous, san_dns: id.san_dns, san_uri: id.san_uri };
        self.issue_identity(ledger, &identity, &csr.public_key_der, lifetime, Kind::Renew, None, now)
    }

    /// `edge ca issue`: makes an ECDSA P-256 key and a client certificate for
    /// `identity`; returns both.
    pub fn issue_manual(
        &self,
        ledger: &dyn Ledger,
        identity: &Identity,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<(Issued, SecretKeyPem), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let issued =
            self.issue_identity(ledger, identity, &key.subject_public_key_info(), lifetime, Kind::Manual, None, now)?;
        Ok((issued, SecretKeyPem(key.serialize_pem())))
    }

    /// `tls internal`: makes an ECDSA P-256 key and a server certificate
    /// (extKeyUsage serverAuth) whose SANs are `names`: DNS names, wildcards
    /// (`*.app.localhost`) and IP addresses. The CA's earlier server
    /// certificates for exactly these names become superseded.
    pub fn issue_server<S: AsRef<str>>(
        &self,
        ledger: &dyn Ledger,
        names: &[S],
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<ServerCert, PkiError> {
        let mut sans = Vec::with_capacity(names.len());
        for n in names {
            let n = n.as_ref();
            if let Ok(ip) = n.parse::<IpAddr>() {
                sans.push(San::Ip(ip));
            } else if valid_dns_name(n) {
                sans.push(San::Dns(n.to_ascii_lowercase()));
            } else {
                return Err(PkiError::BadServerName(n.to_string()));
            }
        }
        let Some(first) = sans.first() else {
            return Err(PkiError::BadServerName(String::new()));
        };
        let cn = first.text();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let spki = key.subject_public_key_info();
        let leaf =
            Leaf { identity: None, cn: &cn, ous: &[], sans, spki: &spki, eku: oids::SERVER_AUTH, kind: Kind::Server };
        let issued = self.issue(ledger, &leaf, lifetime, None, now)?;
        Ok(ServerCert { issued, key_pem: SecretKeyPem(key.serialize_pem()) })
    }

    /// The validity of a leaf issued at `now`.
    fn validity(&self, lifetime: Duration, now: OffsetDateTime) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
        let now = seconds(now);
        if now >= self.not_after {
            return Err(PkiError::CaExpired { ca: self.name.clone(), not_after: self.not_after });
        }
        if lifetime < Duration::from_secs(1) {
            return Err(PkiError::BadLifetime("a certificate lifetime must be at least 1s".into()));
        }
        let not_after = time::Duration::try_from(lifetime)
            .ok()
            .and_then(|l| now.checked_add(l))
            .map_or(self.not_after, |t| seconds(t).min(self.not_after));
        let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
        Ok((not_before, not_after))
    }

    fn issue(
        &self,
        ledger: &dyn Ledger,
        leaf: &Leaf<'_>,
        lifetime: Duration,
        token_hash: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Issued, PkiError> {
        let (not_before, not_after) = self.validity(lifetime, now)?;
        let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(leaf.spki)
            .map_err(|e| PkiError::BadPublicKey(e.to_string()))?;
        if !rest.is_empty() {
            return Err(PkiError::BadPublicKey(format!("{} bytes follow it", rest.len())));
        }
        let reused = || PkiError::KeyReused { ca: self.name.clone() };
        if spki.subject_public_key.data.as_ref() == self.key.public_key_raw() {
            return Err(reused());
        }
        let public_key_hash = sha256_hex(leaf.spki);
        // Cheap refusals before signing; the ledger checks them again,
        // atomically, when it commits.
        if let Some(cn) = leaf.identity {
            if ledger.identity(&self.name, cn)?.is_some_and(|r| r.disabled_at.is_some()) {
                return Err(PkiError::IdentityDisabled { ca: self.name.clone(), cn: cn.to_string() });
            }
        }
        if ledger.key_in_use(&self.name, &public_key_hash)? {
            return Err(reused());
        }
        for _ in 0..3 {
            let serial = random_serial()?;
            let der = self.sign_leaf(&serial, not_before, not_after, leaf)?;
            let fingerprint = sha256_hex(&der);
            let rec = CertRecord {
                serial: serial_text(&serial),
                ca: self.name.clone(),
                identity: leaf.identity.map(str::to_string),
                cn: leaf.cn.to_string(),
                ous: leaf.ous.to_vec(),
                sans: leaf.sans.iter().map(San::text).collect(),
                kind: leaf.kind,
                not_before,
                not_after,
                issued_at: now,
                fingerprint: fingerprint.clone(),
                public_key_hash: public_key_hash.clone(),
                revoked_at: None,
                revocation_reason: None,
                superseded_at: None,
                superseded_by: None,
            };
            match ledger.record(&rec, token_hash, now)? {
                RecordOutcome::Recorded => {
                    let leaf_pem = pem("CERTIFICATE", &der);
                    return Ok(Issued {
                        chain_pem: format!("{leaf_pem}{}", self.cert_pem),
                        pem: leaf_pem,
                        der,
                        serial: rec.serial,
                        not_after,
                        fingerprint: format!("sha256:{fingerprint}"),
                        kind: leaf.kind,
                    });
                }
                RecordOutcome::IdentityDisabled => {
                    return Err(PkiError::IdentityDisabled {
                        ca: self.name.clone(),
                        cn: leaf.identity.unwrap_or_default().to_string(),
                    })
                }
                RecordOutcome::KeyReused => return Err(reused()),
                RecordOutcome::Token(refusal) => return Err(PkiError::Token(refusal.into())),
                RecordOutcome::SerialTaken => continue,
            }
        }
        Err(PkiError::Crypto("three random serials in a row were taken; the random generator is broken".into()))
    }

    /// The DER certificate for `leaf`, signed by the root (ECDSA P-256, SHA-256).
    fn sign_leaf(
        &self,
        serial: &[u8],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        leaf: &Leaf<'_>,
    ) -> Result<Vec<u8>, PkiError> {
        let rdn = |id: &[u64], value: &str| der::cons(der::SET, &[&der::seq(&[&der::oid(id), &der::utf8(value)])]);
        let mut subject = Vec::new();
        for ou in leaf.ous {
            subject.extend(rdn(oids::OU, ou));
        }
        subject.extend(rdn(oids::CN, leaf.cn));
        let subject = der::tlv(der::SEQUENCE, &subject);

        // keyUsage digitalSignature: one byte, seven unused bits.
        let key_usage = der::tlv(0x03, &[0x07, 0x80]);
        let mut extensions = vec![
            der::extension(oids::BASIC_CONSTRAINTS, true, &der::seq(&[])),
            der::extension(oids::KEY_USAGE, true, &key_usage),
            der::extension(oids::EXT_KEY_USAGE, false, &der::seq(&[&der::oid(leaf.eku)])),
            der::extension(oids::SUBJECT_KEY_ID, false, &der::octets(&key_identifier(leaf.spki))),
            der::extension(oids::AUTHORITY_KEY_ID, false, &der::seq(&[&der::tlv(0x80, &self.key_id)])),
        ];
        if !leaf.sans.is_empty() {
            let names: Vec<u8> = leaf.sans.iter().flat_map(San::der).collect();
            extensions.push(der::extension(oids::SUBJECT_ALT_NAME, false, &der::tlv(der::SEQUENCE, &names)));
        }
        let extensions = der::tlv(der::SEQUENCE, &extensions.concat());

        let algorithm = der::seq(&[&der::oid(oids::ECDSA_SHA256)]);
        let tbs = der::seq(&[
            &der::tlv(0xa0, &der::uint(&[2])),
            &der::uint(serial),
            &algorithm,
            &self.subject_der,
            &der::seq(&[&der::time(not_before), &der::time(not_after)]),
            &subject,
            leaf.spki,
            &der::tlv(0xa3, &extensions),
        ]);
        let signature = self.key.sign(&tbs)?;
        Ok(der::seq(&[&tbs, &algorithm, &der::bits(&signature)]))
    }

    /// The CA's CRL at `now` (DER, signed, nextUpdate a day later): every
    /// revoked certificate that has not expired yet. The CRL number is
    /// `now` in milliseconds, so it grows with each CRL made.
    pub fn crl(&self, ledger: &dyn Ledger, now: OffsetDateTime) -> Result<Vec<u8>, PkiError> {
        let now = seconds(now);
        let mut revoked_certs = Vec::new();
        for c in ledger.certificates(Some(&self.name))? {
            let Some(revoked_at) = c.revoked_at else { continue };
            if c.not_after <= now {
                continue;
            }
            let bytes = serial_bytes(&c.serial)
                .ok_or_else(|| PkiError::Ledger(super::LedgerError::Corrupt(format!("serial {:?}", c.serial))))?;
            let reason = c.revocation_reason.as_deref().and_then(|r| r.parse::<Reason>().ok()).unwrap_or_default();
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: revoked_at,
                // RFC 5280 5.3.1: leave the reason out rather than say "unspecified".
                reason_code: (reason != Reason::Unspecified).then(|| reason.to_rcgen()),
                invalidity_date: None,
            });
        }
        let number = (now.unix_timestamp_nanos() / 1_000_000).max(1) as u64;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + CRL_VALIDITY,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::PreSpecified(self.key_id.clone()),
        };
        let cert = CertificateDer::from(self.cert_der.as_slice());
        let issuer = Issuer::from_ca_cert_der(&cert, &self.key)?;
        Ok(params.signed_by(&issuer)?.der().to_vec())
    }
}

/// A key identifier: the first 160 bits of the SHA-256 of the DER
/// SubjectPublicKeyInfo (what rcgen writes into the root).
fn key_identifier(spki: &[u8]) -> Vec<u8> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki);
    digest.as_ref()[..20].to_vec()
}

/// Makes a new CA in a hidden folder next to `dir`, then renames it to `dir`.
/// Losing the race to another process is not an error.
fn create_into(parent: &Path, dir: &Path, name: &str, now: OffsetDateTime) -> Result<(), PkiError> {
    let mut tag = [0u8; 8];
    aws_lc_rs::rand::fill(&mut tag).map_err(|_| PkiError::Crypto("the system random generator failed".into()))?;
    let tmp = parent.join(format!(".{name}.new-{}-{}", std::process::id(), hex(&tag)));
    std::fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(|e| PkiError::io(&tmp, &e))?;
    let result = (|| {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let key_path = tmp.join("ca.key");
        crate::util::write_atomic(&key_path, key.serialize_pem().as_bytes(), Some(0o600))
            .map_err(|e| PkiError::io(&key_path, &e))?;
        let cert_path = tmp.join("ca.crt");
        crate::util::write_atomic(&cert_path, make_root(name, &key, now)?.as_bytes(), Some(0o644))
            .map_err(|e| PkiError::io(&cert_path, &e))?;
        match std::fs::rename(&tmp, dir) {
            Ok(()) => {
                if let Ok(d) = std::fs::File::open(parent) {
                    let _ = d.sync_all();
                }
                Ok(())
            }
            // Another process made it first: theirs is the CA.
            Err(_) if dir.join("ca.key").exists() => Ok(()),
            Err(e) if dir.exists() => Err(PkiError::BadCaFiles {
                path: dir.display().to_string(),
                reason: format!(
                    "the folder exists without ca.key and ca.crt ({}); empty it or move it away",
                    crate::util::io_reason(&e)
                ),
            }),
            Err(e) => Err(PkiError::io(dir, &e)),
        }
    })();
    // Gone after a successful rename; ours to clean up after a lost race.
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// The self-signed root, PEM.
fn make_root(name: &str, key: &KeyPair, now: OffsetDateTime) -> Result<String, PkiError> {
    let now = seconds(now);
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "edge");
    dn.push(DnType::CommonName, format!("{name} CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::try_from(CA_LIFETIME).map_err(|e| PkiError::Crypto(e.to_string()))?;
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(&key.subject_public_key_info()));
    Ok(params.self_signed(key)?.pem())
}
