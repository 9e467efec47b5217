//! Tests of the PKI core, driven by a fake clock: CA files, issuance profiles
//! checked with x509-parser and rustls' verifiers, tokens, revocation, CRL,
//! the ledger shared between handles and between processes, CSR parsing and
//! PKCS#7.

use super::*;
use rcgen::{CertificateParams, KeyPair, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// The fake clock's start: 2030-03-17T17:46:40Z.
fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()
}

fn at(offset: Duration) -> OffsetDateTime {
    t0() + offset
}

struct Fixture {
    dir: tempfile::TempDir,
    ca: Ca,
    ledger: SqliteLedger,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::open_or_create(dir.path(), "newsroom", t0()).unwrap();
    let ledger = SqliteLedger::open(&ledger_path(dir.path())).unwrap();
    Fixture { dir, ca, ledger }
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

/// A CSR that asks for `cn` and a SAN (which must both be ignored).
fn csr_der(key: &KeyPair, cn: &str) -> Vec<u8> {
    let mut params = CertificateParams::new(vec![format!("{cn}.evil.example")]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.serialize_request(key).unwrap().der().to_vec()
}

fn csr(key: &KeyPair) -> Csr {
    parse_csr(&csr_der(key, "mallory")).unwrap()
}

fn alice() -> Identity {
    Identity {
        cn: "alice".into(),
        ous: vec!["editors".into(), "ops".into()],
        san_dns: vec!["alice.newsroom.internal".into()],
        san_uri: vec!["spiffe://newsroom/alice".into()],
    }
}

fn unix(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(t.unix_timestamp() as u64))
}

fn client_verifier(ca: &Ca, crls: Vec<Vec<u8>>) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.cert_der().to_vec())).unwrap();
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
        .with_crls(crls.into_iter().map(CertificateRevocationListDer::from))
        .only_check_end_entity_revocation()
        .build()
        .unwrap()
}

fn verify_client(ca: &Ca, crls: Vec<Vec<u8>>, leaf: &[u8], now: OffsetDateTime) -> Result<(), rustls::Error> {
    client_verifier(ca, crls).verify_client_cert(&CertificateDer::from(leaf.to_vec()), &[], unix(now)).map(|_| ())
}

fn parse(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

fn ski_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<u8> {
    cert.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .expect("a subjectKeyIdentifier")
}

// ---- the CA on disk ----

#[test]
fn ca_creation_is_idempotent_private_and_a_p256_root() {
    let f = fixture();
    let again = Ca::open_or_create(f.dir.path(), "newsroom", at(DAY)).unwrap();
    assert_eq!(f.ca.cert_der(), again.cert_der());
    let folder = f.dir.path().join("ca/newsroom");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&folder.join("ca.key")), 0o600);
    assert_eq!(mode(&folder), 0o700);
    assert_eq!(mode(&ledger_path(f.dir.path())), 0o600);
    assert!(std::fs::read_to_string(folder.join("ca.crt")).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(!format!("{:?}", f.ca).contains("PRIVATE"));

    let root = parse(f.ca.cert_der());
    assert!(root.is_ca());
    let bc = root.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    let ku = root.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign() && !ku.value.digital_signature());
    assert_eq!(root.public_key().algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1");
    assert_eq!(
        root.public_key().algorithm.parameters.as_ref().unwrap().as_oid().unwrap().to_id_string(),
        "1.2.840.10045.3.1.7"
    );
    let lifetime = root.validity().not_after.to_datetime() - t0();
    assert!(lifetime >= time::Duration::days(3649) && lifetime <= time::Duration::days(3651));
    assert!(root.raw_serial().len() >= 16);
    // Another CA in the same storage is another root.
    let other = Ca::open_or_create(f.dir.path(), "partners", t0()).unwrap();
    assert_ne!(other.cert_der(), f.ca.cert_der());
}

#[test]
fn ca_names_cannot_escape_the_storage_folder() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "../x", "a/b", ".hidden", "a b"] {
        assert!(matches!(Ca::open_or_create(dir.path(), bad, t0()), Err(PkiError::BadCaName(_))), "{bad:?}");
    }
}

#[test]
fn half_a_ca_is_refused_with_a_way_out() {
    let f = fixture();
    let folder = f.dir.path().join("ca/newsroom");
    let cert = std::fs::read(folder.join("ca.crt")).unwrap();
    std::fs::remove_file(folder.join("ca.crt")).unwrap();
    let err = Ca::open_or_create(f.dir.path(), "newsroom", t0()).unwrap_err();
    assert!(err.to_string().contains("restore ca.crt"), "{err}");
    std::fs::write(folder.join("ca.crt"), cert).unwrap();
    std::fs::remove_file(folder.join("ca.key")).unwrap();
    let err = Ca::open_or_create(f.dir.path(), "newsroom", t0()).unwrap_err();
    assert!(matches!(err, PkiError::BadCaFiles { .. }), "{err}");
    assert!(err.to_string().contains("restore ca.key"), "{err}");
    // A folder in the way that holds something else.
    std::fs::create_dir_all(f.dir.path().join("ca/other")).unwrap();
    std::fs::write(f.dir.path().join("ca/other/notes.txt"), "x").unwrap();
    let err = Ca::open_or_create(f.dir.path(), "other", t0()).unwrap_err();
    assert!(err.to_string().contains("move it away"), "{err}");
    // An empty one is fine, and no temporary folder is left behind.
    std::fs::create_dir_all(f.dir.path().join("ca/empty")).unwrap();
    Ca::open_or_create(f.dir.path(), "empty", t0()).unwrap();
    let names: Vec<_> = std::fs::read_dir(f.dir.path().join("ca")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn a_key_readable_by_others_is_made_private() {
    let f = fixture();
    let key = f.dir.path().join("ca/newsroom/ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    Ca::open_or_create(f.dir.path(), "newsroom", t0()).unwrap();
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn concurrent_creation_makes_one_ca() {
    let dir = tempfile::tempdir().unwrap();
    let roots: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| Ca::open_or_create(dir.path(), "newsroom", t0()).unwrap().cert_der().to_vec()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(roots.windows(2).all(|w| w[0] == w[1]));
    let entries = std::fs::read_dir(dir.path().join("ca")).unwrap().count();
    assert_eq!(entries, 1, "the losers cleaned up");
}

// ---- issuance ----

#[test]
fn a_client_certificate_verifies_and_has_the_client_profile() {
    let f = fixture();
    let key = p256();
    let issued =
        f.ca.issue_client(&f.ledger, &alice(), &key.subject_public_key_info(), DAY, Kind::Manual, t0()).unwrap();
    verify_client(&f.ca, vec![], &issued.der, at(HOUR)).unwrap();
    assert!(matches!(
        verify_client(&f.ca, vec![], &issued.der, at(DAY + Duration::from_secs(1))),
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. }))
    ));

    let cert = parse(&issued.der);
    let root = parse(f.ca.cert_der());
    assert_eq!(cert.issuer().as_raw(), root.subject().as_raw());
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any);
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    assert_eq!(ski_of(&cert).len(), 20);
    let aki = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => None,
        })
        .unwrap();
    assert_eq!(aki, ski_of(&root));
    // 128 random bits, positive: at least 9 significant bytes but for a 1-in-2^56 draw.
    let serial = cert.raw_serial();
    assert!(serial.len() <= 17 && cert.serial.bits() > 64, "{serial:02x?}");
    assert_eq!(cert.validity().not_before.to_datetime(), t0() - time::Duration::minutes(5));
    assert_eq!(cert.validity().not_after.to_datetime(), at(DAY));
    assert_eq!(issued.not_after, at(DAY));

    // What the policy layer reads is what was asked for, in the contract's formats.
    let id = crate::policy::identity_from_der(&issued.der).unwrap();
    assert_eq!(id.cn.as_deref(), Some("alice"));
    assert_eq!(id.ous, vec!["editors", "ops"]);
    assert_eq!(id.san_dns, vec!["alice.newsroom.internal"]);
    assert_eq!(id.san_uri, vec!["spiffe://newsroom/alice"]);
    assert_eq!(id.serial, issued.serial);
    assert_eq!(id.fingerprint, issued.fingerprint);
    assert!(issued.chain_pem.starts_with(&issued.pem) && issued.chain_pem.ends_with(f.ca.cert_pem()));

    let rows = list(&f.ledger, Some("newsroom"), at(HOUR)).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].serial.as_str(), rows[0].cn.as_str(), rows[0].ou().as_str()),
        (issued.serial.as_str(), "alice", "editors,ops")
    );
    assert_eq!(rows[0].status, Status::Valid);
    assert_eq!(list(&f.ledger, None, at(DAY)).unwrap()[0].status, Status::Expired);
}

#[test]
fn lifetimes_are_clamped_to_the_root_and_zero_is_refused() {
    let f = fixture();
    let spki = p256().subject_public_key_info();
    let err = f.ca.issue_client(&f.ledger, &alice(), &spki, Duration::ZERO, Kind::Manual, t0()).unwrap_err();
    assert!(matches!(err, PkiError::BadLifetime(_)));
    let long = f.ca.issue_client(&f.ledger, &alice(), &spki, 20 * 365 * DAY, Kind::Manual, t0()).unwrap();
    assert_eq!(long.not_after, f.ca.not_after());
    let err = f.ca.issue_manual(&f.ledger, &alice(), DAY, f.ca.not_after() + time::Duration::seconds(1)).unwrap_err();
    assert!(matches!(err, PkiError::CaExpired { .. }), "{err}");
}

#[test]
fn identities_that_cannot_go_into_a_certificate_are_refused() {
    let f = fixture();
    let cases = [
        Identity::new(""),
        Identity::new("a\nb"),
        Identity::new("x".repeat(65)),
        Identity { ous: vec!["a,b".into()], ..Identity::new("alice") },
        Identity { san_dns: vec!["not a host".into()], ..Identity::new("alice") },
        Identity { san_uri: vec!["no-scheme".into()], ..Identity::new("alice") },
    ];
    for id in cases {
        let err = f.ca.issue_manual(&f.ledger, &id, DAY, t0()).unwrap_err();
        assert!(matches!(err, PkiError::BadIdentity(_)), "{id:?}: {err}");
        assert!(create_token(&f.ledger, "newsroom", &id, HOUR, t0()).is_err());
    }
    assert!(list(&f.ledger, None, t0()).unwrap().is_empty());
}

#[test]
fn a_reused_public_key_is_refused() {
    let f = fixture();
    let spki = p256().subject_public_key_info();
    f.ca.issue_client(&f.ledger, &alice(), &spki, DAY, Kind::Manual, t0()).unwrap();
    let err = f.ca.issue_client(&f.ledger, &Identity::new("bob"), &spki, DAY, Kind::Manual, t0()).unwrap_err();
    assert!(matches!(err, PkiError::KeyReused { .. }), "{err}");
    // Nor may anyone get the CA's own key certified.
    let root_spki = parse(f.ca.cert_der()).public_key().raw.to_vec();
    let err = f.ca.issue_client(&f.ledger, &alice(), &root_spki, DAY, Kind::Manual, t0()).unwrap_err();
    assert!(matches!(err, PkiError::KeyReused { .. }), "{err}");
    let err = f.ca.issue_client(&f.ledger, &alice(), b"\x30\x03\x02\x01\x00", DAY, Kind::Manual, t0()).unwrap_err();
    assert!(matches!(err, PkiError::BadPublicKey(_)), "{err}");
    assert_eq!(list(&f.ledger, None, t0()).unwrap().len(), 1);
}

#[test]
fn manual_issue_returns_a_matching_private_key() {
    let f = fixture();
    let (issued, key) = f.ca.issue_manual(&f.ledger, &alice(), DAY, t0()).unwrap();
    assert!(!format!("{key:?}").contains("PRIVATE"));
    let pair = KeyPair::from_pem(key.expose()).unwrap();
    assert_eq!(parse(&issued.der).public_key().subject_public_key.data.as_ref(), pair.public_key_raw());
    assert_eq!(issued.kind, Kind::Manual);
}

#[test]
fn server_certificates_name_the_sites_and_verify_as_servers() {
    let f = fixture();
    let names = ["app.localhost", "*.app.localhost", "127.0.0.1", "::1"];
    let server = f.ca.issue_server(&f.ledger, &names, 30 * DAY, t0()).unwrap();
    let cert = parse(&server.issued.der);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::IPAddress(ip) => format!("ip:{ip:02x?}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(sans[..2], ["app.localhost", "*.app.localhost"]);
    assert_eq!(sans[2], "ip:[7f, 00, 00, 01]");
    KeyPair::from_pem(server.key_pem.expose()).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(f.ca.cert_der().to_vec())).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
        .build()
        .unwrap();
    use rustls::client::danger::ServerCertVerifier;
    let leaf = CertificateDer::from(server.issued.der.clone());
    for name in ["app.localhost", "news.app.localhost", "127.0.0.1", "::1"] {
        let sn = ServerName::try_from(name).unwrap();
        verifier.verify_server_cert(&leaf, &[], &sn, &[], unix(at(HOUR))).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let other = ServerName::try_from("other.localhost").unwrap();
    assert!(verifier.verify_server_cert(&leaf, &[], &other, &[], unix(at(HOUR))).is_err());
    // A client verifier refuses it: wrong EKU.
    assert!(verify_client(&f.ca, vec![], &server.issued.der, at(HOUR)).is_err());

    // A new one for the same names supersedes the old one; other names do not.
    let again = f.ca.issue_server(&f.ledger, &names, 30 * DAY, at(HOUR)).unwrap();
    f.ca.issue_server(&f.ledger, &["pki.localhost"], 30 * DAY, at(HOUR)).unwrap();
    let rows = list(&f.ledger, None, at(HOUR)).unwrap();
    let status = |serial: &str| rows.iter().find(|r| r.serial == serial).unwrap().status;
    assert_eq!(status(&server.issued.serial), Status::Superseded);
    assert_eq!(status(&again.issued.serial), Status::Valid);
    assert_eq!(rows.iter().filter(|r| r.status == Status::Valid).count(), 2);
    assert!(identity_expiry(&f.ledger, None, at(HOUR)).unwrap().is_empty(), "server certificates are no identities");

    for bad in [&[][..], &["bad name"][..], &["-x.example"][..]] {
        assert!(matches!(f.ca.issue_server(&f.ledger, bad, DAY, t0()), Err(PkiError::BadServerName(_))));
    }
}

// ---- enrollment tokens ----

#[test]
fn enrollment_takes_the_identity_from_the_token_not_the_csr() {
    let f = fixture();
    let token = create_token(&f.ledger, "newsroom", &alice(), HOUR, t0()).unwrap();
    assert!(token.len() >= 43 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let request = csr(&p256());
    assert!(request.asks_for_identity());
    assert!(request.requested_subject.contains("mallory"));
    assert_eq!(request.requested_extensions, vec!["subjectAltName"]);
    let issued = f.ca.enroll_with_token(&f.ledger, &token, &request, DAY, t0()).unwrap();
    assert_eq!(issued.kind, Kind::Enroll);
    let id = crate::policy::identity_from_der(&issued.der).unwrap();
    assert_eq!(id.cn.as_deref(), Some("alice"));
    assert_eq!(id.ous, alice().ous);
    assert_eq!(id.san_dns, alice().san_dns);
    let text = String::from_utf8_lossy(&issued.der).to_string();
    assert!(!text.contains("mallory"));
    verify_client(&f.ca, vec![], &issued.der, at(HOUR)).unwrap();
}

#[test]
fn tokens_are_single_use_expiring_and_stored_hashed() {
    let f = fixture();
    let token = create_token(&f.ledger, "newsroom", &alice(), HOUR, t0()).unwrap();
    // The ledger file holds no token text.
    drop(std::fs::read(ledger_path(f.dir.path())).unwrap());
    let raw = rusqlite::Connection::open(ledger_path(f.dir.path())).unwrap();
    let stored: String = raw.query_row("SELECT hash FROM tokens", [], |r| r.get(0)).unwrap();
    assert_ne!(stored, token);
    assert_eq!(stored.len(), 64);

    assert!(matches!(check_token(&f.ledger, "newsroom", "nope", t0()), Err(TokenError::Unknown)));
    assert!(matches!(check_token(&f.ledger, "partners", &token, t0()), Err(TokenError::Unknown)));
    assert!(matches!(
        check_token(&f.ledger, "newsroom", &token, at(HOUR)),
        Err(TokenError::Expired { expired_at }) if expired_at == at(HOUR)
    ));
    assert_eq!(check_token(&f.ledger, "newsroom", &token, t0()).unwrap(), alice());
    assert_eq!(check_token(&f.ledger, "newsroom", &format!(" {token}\n"), t0()).unwrap(), alice());

    let used_at = at(Duration::from_secs(60));
    f.ca.enroll_with_token(&f.ledger, &token, &csr(&p256()), DAY, used_at).unwrap();
    let err = f.ca.enroll_with_token(&f.ledger, &token, &csr(&p256()), DAY, used_at).unwrap_err();
    assert!(matches!(err, PkiError::Token(TokenError::AlreadyUsed { used_at: u }) if u == used_at), "{err}");
    assert!(err.to_string().contains("already used"));

    let expired = create_token(&f.ledger, "newsroom", &Identity::new("bob"), HOUR, t0()).unwrap();
    let err = f.ca.enroll_with_token(&f.ledger, &expired, &csr(&p256()), DAY, at(2 * HOUR)).unwrap_err();
    assert!(matches!(err, PkiError::Token(TokenError::Expired { .. })), "{err}");
    let err = f.ca.enroll_with_token(&f.ledger, "unknown", &csr(&p256()), DAY, t0()).unwrap_err();
    assert!(matches!(err, PkiError::Token(TokenError::Unknown)), "{err}");
    assert_eq!(list(&f.ledger, None, t0()).unwrap().len(), 1);

    // redeem_token uses a token without a certificate.
    let other = create_token(&f.ledger, "newsroom", &Identity::new("carol"), HOUR, t0()).unwrap();
    assert_eq!(redeem_token(&f.ledger, "newsroom", &other, t0()).unwrap().cn, "carol");
    assert!(matches!(redeem_token(&f.ledger, "newsroom", &other, t0()), Err(TokenError::AlreadyUsed { .. })));
    assert!(create_token(&f.ledger, "newsroom", &alice(), Duration::ZERO, t0()).is_err());
}

#[test]
fn a_refused_request_does_not_use_up_its_token() {
    let f = fixture();
    let token = create_token(&f.ledger, "newsroom", &alice(), HOUR, t0()).unwrap();
    // A bad CSR never becomes a Csr, so it cannot reach the token.
    let mut bad = csr_der(&p256(), "x");
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(parse_csr(&bad), Err(CsrError::BadSignature));
    // A reused key is refused inside the transaction that would use the token.
    let key = p256();
    f.ca.issue_client(&f.ledger, &Identity::new("bob"), &key.subject_public_key_info(), DAY, Kind::Manual, t0())
        .unwrap();
    let err = f.ca.enroll_with_token(&f.ledger, &token, &csr(&key), DAY, t0()).unwrap_err();
    assert!(matches!(err, PkiError::KeyReused { .. }), "{err}");
    assert_eq!(check_token(&f.ledger, "newsroom", &token, t0()).unwrap(), alice());
    f.ca.enroll_with_token(&f.ledger, &token, &csr(&p256()), DAY, t0()).unwrap();
}

#[test]
fn one_token_raced_by_many_enrolls_once() {
    let f = fixture();
    let token = create_token(&f.ledger, "newsroom", &alice(), HOUR, t0()).unwrap();
    let second = SqliteLedger::open(&ledger_path(f.dir.path())).unwrap();
    let wins = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let ledger: &dyn Ledger = if i % 2 == 0 { &f.ledger } else { &second };
                let (ca, token) = (&f.ca, &token);
                s.spawn(move || ca.enroll_with_token(ledger, token, &csr(&p256()), DAY, t0()).is_ok())
            })
            .collect();
        handles.into_iter().filter(|_| true).map(|h| h.join().unwrap()).filter(|ok| *ok).count()
    });
    assert_eq!(wins, 1);
    assert_eq!(list(&f.ledger, None, t0()).unwrap().len(), 1);
}

// ---- renewal ----

#[test]
fn renewal_keeps_the_identity_supersedes_and_needs_a_new_key() {
    let f = fixture();
    let token = create_token(&f.ledger, "newsroom", &alice(), HOUR, t0()).unwrap();
    let first = f.ca.enroll_with_token(&f.ledger, &token, &csr(&p256()), DAY, t0()).unwrap();
    let later = at(16 * HOUR);
    let key = p256();
    let second = f.ca.renew(&f.ledger, &first.der, &csr(&key), DAY, later).unwrap();
    assert_eq!(second.kind, Kind::Renew);
    let (a, b) =
        (crate::policy::identity_from_der(&first.der).unwrap(), crate::policy::identity_from_der(&second.der).unwrap());
    assert_eq!((a.cn, a.ous, a.san_dns, a.san_uri), (b.cn, b.ous, b.san_dns, b.san_uri));
    let rows = list(&f.ledger, Some("newsroom"), later).unwrap();
    assert_eq!(rows.iter().map(|r| r.status).collect::<Vec<_>>(), vec![Status::Superseded, Status::Valid]);
    // A superseded certificate still works until it expires.
    verify_client(&f.ca, vec![], &first.der, later).unwrap();
    let expiry = identity_expiry(&f.ledger, Some("newsroom"), later).unwrap();
    assert_eq!(expiry, vec![IdentityExpiry { ca: "newsroom".into(), cn: "alice".into(), not_after: second.not_after }]);

    let err = f.ca.renew(&f.ledger, &second.der, &csr(&key), DAY, later).unwrap_err();
    assert!(matches!(err, PkiError::KeyReused { .. }), "{err}");
    let err = f.ca.renew(&f.ledger, &first.der, &csr(&p256()), DAY, at(DAY)).unwrap_err();
    assert!(matches!(err, PkiError::CertExpired { .. }), "{err}");
    // A certificate of another CA is not ours to renew, even with the same serial text.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Ca::open_or_create(other_dir.path(), "newsroom", t0()).unwrap();
    let other_ledger = SqliteLedger::open(&ledger_path(other_dir.path())).unwrap();
    let foreign = other.issue_manual(&other_ledger, &alice(), DAY, t0()).unwrap().0;
    let err = f.ca.renew(&f.ledger, &foreign.der, &csr(&p256()), DAY, later).unwrap_err();
    assert!(matches!(err, PkiError::NotIssuedHere { .. }), "{err}");
    let server = f.ca.issue_server(&f.ledger, &["app.localhost"], DAY, t0()).unwrap();
    let err = f.ca.renew(&f.ledger, &server.issued.der, &csr(&p256()), DAY, later).unwrap_err();
    assert!(matches!(err, PkiError::NotIssuedHere { .. }), "{err}");
}

// ---- revocation ----

#[test]
fn revoking_by_serial_reaches_the_set_the_crl_and_the_verifier() {
    let f = fixture();
    let (a, _) = f.ca.issue_manual(&f.ledger, &alice(), DAY, t0()).unwrap();
    let (b, _) = f.ca.issue_manual(&f.ledger, &Identity::new("bob"), DAY, t0()).unwrap();
    let r0 = revocation_revision(&f.ledger).unwrap();
    let set = revoked_set(&f.ledger, "newsroom", t0()).unwrap();
    assert!(set.is_empty() && set.revision() == r0);

    // Typed with colons, upper case and a leading zero byte, as openssl prints serials.
    let typed = format!("00:{}", a.serial.to_uppercase());
    assert!(revoke_serial(&f.ledger, "newsroom", &typed, Reason::KeyCompromise, at(HOUR)).unwrap());
    let r1 = revocation_revision(&f.ledger).unwrap();
    assert!(r1 > r0);
    assert!(!revoke_serial(&f.ledger, "newsroom", &a.serial, Reason::KeyCompromise, at(HOUR)).unwrap());
    assert_eq!(revocation_revision(&f.ledger).unwrap(), r1);
    assert!(matches!(
        revoke_serial(&f.ledger, "newsroom", "abcd", Reason::Unspecified, at(HOUR)),
        Err(PkiError::UnknownSerial { .. })
    ));
    assert!(matches!(
        revoke_serial(&f.ledger, "newsroom", "xyz", Reason::Unspecified, at(HOUR)),
        Err(PkiError::BadSerial(_))
    ));

    let set = revoked_set(&f.ledger, "newsroom", at(HOUR)).unwrap();
    assert_eq!(set.revision(), r1);
    let raw_a = parse(&a.der).raw_serial().to_vec();
    assert!(set.contains(&raw_a));
    let mut padded = vec![0u8];
    padded.extend(&raw_a);
    assert!(set.contains(&padded));
    assert!(!set.contains(parse(&b.der).raw_serial()));
    assert!(revoked_set(&f.ledger, "partners", at(HOUR)).unwrap().is_empty());

    let crl = f.ca.crl(&f.ledger, at(HOUR)).unwrap();
    let (_, parsed) = x509_parser::parse_x509_crl(&crl).unwrap();
    let listed: Vec<Vec<u8>> = parsed.iter_revoked_certificates().map(|r| r.raw_serial().to_vec()).collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].iter().skip_while(|b| **b == 0).copied().collect::<Vec<_>>(),
        raw_a.iter().skip_while(|b| **b == 0).copied().collect::<Vec<_>>()
    );
    let entry = parsed.iter_revoked_certificates().next().unwrap();
    assert_eq!(entry.revocation_date.to_datetime(), at(HOUR));
    assert_eq!(entry.reason_code().map(|r| r.1 .0), Some(1));
    assert_eq!(parsed.next_update().unwrap().to_datetime(), at(HOUR + DAY));
    assert_eq!(parsed.issuer().as_raw(), parse(f.ca.cert_der()).subject().as_raw());
    // rustls checks the CRL's signature and applies it.
    assert!(matches!(
        verify_client(&f.ca, vec![crl.clone()], &a.der, at(HOUR)),
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked))
    ));
    verify_client(&f.ca, vec![crl], &b.der, at(HOUR)).unwrap();
    let rows = list(&f.ledger, None, at(HOUR)).unwrap();
    assert_eq!(rows.iter().map(|r| r.status).collect::<Vec<_>>(), vec![Status::Revoked, Status::Valid]);

    // Once expired, a revoked certificate leaves the set and the CRL.
    assert!(revoked_set(&f.ledger, "newsroom", at(DAY)).unwrap().is_empty());
    let later = f.ca.crl(&f.ledger, at(DAY)).unwrap();
    assert_eq!(x509_parser::parse_x509_crl(&later).unwrap().1.iter_revoked_certificates().count(), 0);
}

#[test]
fn revoking_by_cn_revokes_everything_unexpired_and_disables_the_identity() {
    let f = fixture();
    let token = create_token(&f.ledger, "newsroom", &alice(), HOUR, t0()).unwrap();
    let first = f.ca.enroll_with_token(&f.ledger, &token, &csr(&p256()), DAY, t0()).unwrap();
    let second = f.ca.renew(&f.ledger, &first.der, &csr(&p256()), DAY, at(HOUR)).unwrap();
    let expired = f.ca.issue_manual(&f.ledger, &alice(), HOUR, t0()).unwrap().0;
    let bob = f.ca.issue_manual(&f.ledger, &Identity::new("bob"), DAY, t0()).unwrap().0;
    let pending = create_token(&f.ledger, "newsroom", &alice(), 3 * HOUR, at(HOUR)).unwrap();

    let now = at(2 * HOUR);
    let r0 = revocation_revision(&f.ledger).unwrap();
    assert_eq!(revoke_cn(&f.ledger, "newsroom", "alice", Reason::AffiliationChanged, now).unwrap(), 2);
    assert!(revocation_revision(&f.ledger).unwrap() > r0);
    let set = revoked_set(&f.ledger, "newsroom", now).unwrap();
    assert_eq!(set.len(), 2);
    for c in [&first, &second] {
        assert!(set.contains(parse(&c.der).raw_serial()));
    }
    assert!(!set.contains(parse(&expired.der).raw_serial()));
    assert!(!set.contains(parse(&bob.der).raw_serial()));
    assert_eq!(f.ledger.identity("newsroom", "alice").unwrap().unwrap().disabled_at, Some(now));

    // The identity can no longer get certificates, whatever the path.
    let err = f.ca.renew(&f.ledger, &second.der, &csr(&p256()), DAY, now).unwrap_err();
    assert!(matches!(err, PkiError::CertRevoked { .. }), "{err}");
    let key = p256().subject_public_key_info();
    let err = f.ca.issue_client(&f.ledger, &alice(), &key, DAY, Kind::Renew, now).unwrap_err();
    assert!(matches!(err, PkiError::IdentityDisabled { .. }), "{err}");
    let err = f.ca.enroll_with_token(&f.ledger, &pending, &csr(&p256()), DAY, now).unwrap_err();
    assert!(matches!(err, PkiError::Token(TokenError::IdentityDisabled { .. })), "{err}");
    assert!(matches!(create_token(&f.ledger, "newsroom", &alice(), HOUR, now), Err(PkiError::IdentityDisabled { .. })));
    assert!(matches!(f.ca.issue_manual(&f.ledger, &alice(), DAY, now), Err(PkiError::IdentityDisabled { .. })));
    assert!(matches!(
        revoke_cn(&f.ledger, "newsroom", "nobody", Reason::Unspecified, now),
        Err(PkiError::UnknownIdentity { .. })
    ));
    // An operator can let it back in.
    assert!(f.ledger.enable_identity("newsroom", "alice").unwrap());
    f.ca.issue_manual(&f.ledger, &alice(), DAY, now).unwrap();
}

#[test]
fn revocation_reasons_parse_in_both_spellings() {
    assert_eq!("key-compromise".parse::<Reason>().unwrap(), Reason::KeyCompromise);
    assert_eq!("keyCompromise".parse::<Reason>().unwrap(), Reason::KeyCompromise);
    assert_eq!("".parse::<Reason>().unwrap(), Reason::Unspecified);
    assert!(matches!("because".parse::<Reason>(), Err(PkiError::BadReason(_))));
    assert_eq!(normalize_serial("0x00FF").unwrap(), "ff");
    assert_eq!(normalize_serial("1:02").unwrap(), "0102");
    assert_eq!(normalize_serial("000").unwrap(), "00");
}

// ---- the ledger ----

#[test]
fn two_handles_on_one_file_see_each_others_commits() {
    let f = fixture();
    let other = SqliteLedger::open(&ledger_path(f.dir.path())).unwrap();
    let (a, _) = f.ca.issue_manual(&f.ledger, &alice(), DAY, t0()).unwrap();
    assert_eq!(list(&other, None, t0()).unwrap()[0].serial, a.serial);
    revoke_serial(&other, "newsroom", &a.serial, Reason::Unspecified, t0()).unwrap();
    assert!(revoked_set(&f.ledger, "newsroom", t0()).unwrap().contains(parse(&a.der).raw_serial()));
    assert_eq!(revocation_revision(&f.ledger).unwrap(), revocation_revision(&other).unwrap());

    // Writers on both handles at once: every row lands once.
    std::thread::scope(|s| {
        for ledger in [&f.ledger, &other] {
            let ca = &f.ca;
            s.spawn(move || {
                for i in 0..10 {
                    ca.issue_manual(ledger, &Identity::new(format!("user{i}")), DAY, t0()).unwrap();
                }
            });
        }
    });
    assert_eq!(list(&f.ledger, None, t0()).unwrap().len(), 21);
    assert_eq!(list(&other, None, t0()).unwrap().len(), 21);
}

#[test]
fn the_schema_is_versioned_and_a_newer_one_is_refused() {
    let f = fixture();
    let path = ledger_path(f.dir.path());
    let raw = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = raw.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = raw.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    // Reopening migrates nothing and keeps the data.
    f.ca.issue_manual(&f.ledger, &alice(), DAY, t0()).unwrap();
    assert_eq!(list(&SqliteLedger::open(&path).unwrap(), None, t0()).unwrap().len(), 1);
    raw.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    let err = SqliteLedger::open(&path).unwrap_err();
    assert!(matches!(err, LedgerError::SchemaTooNew { .. }), "{err}");
    assert!(err.to_string().contains("upgrade edge"));
}

/// Not a test on its own: the child process of
/// `killing_a_process_mid_issue_loses_no_handed_out_certificate`. Issues until
/// killed, printing each serial once `issue_manual` returned it.
#[test]
#[ignore = "run by killing_a_process_mid_issue_loses_no_handed_out_certificate"]
fn child_process_issues_until_killed() {
    let Ok(storage) = std::env::var("EDGE_PKI_TEST_STORAGE") else { return };
    let storage = std::path::Path::new(&storage);
    let ca = Ca::open_or_create(storage, "newsroom", t0()).unwrap();
    let ledger = SqliteLedger::open(&ledger_path(storage)).unwrap();
    for i in 0..100_000 {
        let (issued, _) = ca.issue_manual(&ledger, &Identity::new(format!("user{}", i % 7)), DAY, t0()).unwrap();
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "issued {}", issued.serial).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn killing_a_process_mid_issue_loses_no_handed_out_certificate() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "pki::tests::child_process_issues_until_killed", "--ignored", "--nocapture"])
        .env("EDGE_PKI_TEST_STORAGE", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut handed_out = Vec::new();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    while handed_out.len() < 25 {
        let line = lines.next().expect("the child issues").unwrap();
        if let Some(serial) = line.strip_prefix("issued ") {
            handed_out.push(serial.to_string());
        }
    }
    child.kill().unwrap(); // SIGKILL, wherever it is
    child.wait().unwrap();
    for line in lines.map_while(Result::ok) {
        if let Some(serial) = line.strip_prefix("issued ") {
            handed_out.push(serial.to_string());
        }
    }
    let raw = rusqlite::Connection::open(ledger_path(dir.path())).unwrap();
    let check: String = raw.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let ledger = SqliteLedger::open(&ledger_path(dir.path())).unwrap();
    let rows: std::collections::HashSet<String> =
        list(&ledger, None, t0()).unwrap().into_iter().map(|r| r.serial).collect();
    for serial in &handed_out {
        assert!(rows.contains(serial), "{serial} was handed out but is not in the ledger");
    }
    // And the ledger is still writable.
    let ca = Ca::open_or_create(dir.path(), "newsroom", t0()).unwrap();
    ca.issue_manual(&ledger, &Identity::new("after"), DAY, t0()).unwrap();
}

/// Not a test on its own: the child process of
/// `two_processes_share_the_ca_and_the_ledger`.
#[test]
#[ignore = "run by two_processes_share_the_ca_and_the_ledger"]
fn child_process_issues() {
    let Ok(storage) = std::env::var("EDGE_PKI_TEST_STORAGE") else { return };
    let tag = std::env::var("EDGE_PKI_TEST_TAG").unwrap();
    let storage = std::path::Path::new(&storage);
    let ca = Ca::open_or_create(storage, "newsroom", t0()).unwrap();
    let ledger = SqliteLedger::open(&ledger_path(storage)).unwrap();
    for i in 0..10 {
        let (issued, _) = ca.issue_manual(&ledger, &Identity::new(format!("{tag}-{i}")), DAY, t0()).unwrap();
        std::fs::write(storage.join(format!("{tag}-{i}.der")), &issued.der).unwrap();
    }
}

#[test]
fn two_processes_share_the_ca_and_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = ["p1", "p2"]
        .iter()
        .map(|tag| {
            std::process::Command::new(&exe)
                .args(["--exact", "pki::tests::child_process_issues", "--ignored", "--quiet", "--test-threads=1"])
                .env("EDGE_PKI_TEST_STORAGE", dir.path())
                .env("EDGE_PKI_TEST_TAG", tag)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let ca = Ca::open_or_create(dir.path(), "newsroom", t0()).unwrap();
    let ledger = SqliteLedger::open(&ledger_path(dir.path())).unwrap();
    let rows = list(&ledger, None, t0()).unwrap();
    assert_eq!(rows.len(), 20);
    for tag in ["p1", "p2"] {
        for i in 0..10 {
            let der = std::fs::read(dir.path().join(format!("{tag}-{i}.der"))).unwrap();
            verify_client(&ca, vec![], &der, at(HOUR)).unwrap();
        }
    }
}

// ---- CSRs ----

#[test]
fn csrs_parse_as_pem_base64_and_der() {
    let key = p256();
    let der = csr_der(&key, "x");
    let from_der = parse_csr(&der).unwrap();
    assert_eq!(from_der.public_key_der, key.subject_public_key_info());
    assert_eq!(from_der.key_algorithm, "ECDSA P-256");
    let pem_text = ca::pem("CERTIFICATE REQUEST", &der);
    assert_eq!(parse_csr(pem_text.as_bytes()).unwrap(), from_der);
    assert_eq!(parse_csr(format!("junk before\n{pem_text}").as_bytes()).unwrap(), from_der);
    // DER whose last bytes look like whitespace is not trimmed.
    for _ in 0..300 {
        let der = csr_der(&p256(), "x");
        assert_eq!(parse_csr(&der).unwrap().der, der);
    }
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    assert_eq!(parse_csr(b64.as_bytes()).unwrap(), from_der);
    // As EST clients send it: line breaks, CRLF, no padding.
    let wrapped: String = b64
        .trim_end_matches('=')
        .as_bytes()
        .chunks(64)
        .map(|c| format!("{}\r\n", String::from_utf8_lossy(c)))
        .collect();
    assert_eq!(parse_csr(wrapped.as_bytes()).unwrap(), from_der);
}

#[test]
fn csrs_with_other_key_types_verify() {
    for (alg, name) in [(&rcgen::PKCS_ECDSA_P384_SHA384, "ECDSA P-384"), (&rcgen::PKCS_ED25519, "Ed25519")] {
        let key = KeyPair::generate_for(alg).unwrap();
        let csr = parse_csr(&csr_der(&key, "x")).unwrap();
        assert_eq!(csr.key_algorithm, name);
    }
    let rsa = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    let csr = parse_csr(&csr_der(&rsa, "x")).unwrap();
    assert_eq!(csr.key_algorithm, "RSA 2048");
    // And the CA certifies any of them.
    let f = fixture();
    let issued = f.ca.issue_client(&f.ledger, &alice(), &csr.public_key_der, DAY, Kind::Manual, t0()).unwrap();
    verify_client(&f.ca, vec![], &issued.der, at(HOUR)).unwrap();
}

#[test]
fn bad_csrs_get_distinct_errors() {
    let der = csr_der(&p256(), "x");
    assert_eq!(parse_csr(b""), Err(CsrError::Empty));
    assert_eq!(parse_csr(b"  \n"), Err(CsrError::Empty));
    assert_eq!(parse_csr(b"\x01\x02\x03 binary garbage \xff"), Err(CsrError::NotACsr));
    assert!(matches!(parse_csr(b"hello world"), Err(CsrError::BadBase64(_))));
    assert_eq!(parse_csr(b"aGVsbG8gd29ybGQ="), Err(CsrError::NotACsr));
    assert!(matches!(parse_csr(&der[..der.len() - 10]), Err(CsrError::Truncated { .. })));
    assert!(matches!(parse_csr(&der[..3]), Err(CsrError::Truncated { .. })));
    let mut trailing = der.clone();
    trailing.extend_from_slice(b"\x00\x00");
    assert!(matches!(parse_csr(&trailing), Err(CsrError::Malformed(_))));
    let mut flipped = der.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    assert_eq!(parse_csr(&flipped), Err(CsrError::BadSignature));
    // A valid DER SEQUENCE that is not a CSR.
    assert!(matches!(parse_csr(b"\x30\x03\x02\x01\x00"), Err(CsrError::Malformed(_))));
    let cert_pem = ca::pem("CERTIFICATE", &der);
    assert!(matches!(parse_csr(cert_pem.as_bytes()), Err(CsrError::Malformed(m)) if m.contains("CERTIFICATE")));
    let cut = ca::pem("CERTIFICATE REQUEST", &der);
    assert!(matches!(parse_csr(&cut.as_bytes()[..cut.len() - 40]), Err(CsrError::BadBase64(_))));
    // Messages are one line.
    for e in [CsrError::BadSignature, CsrError::Truncated { have: 1, want: 2 }, CsrError::NotACsr] {
        assert!(!e.to_string().contains('\n'));
    }
}

// ---- PKCS#7 ----

#[test]
fn pkcs7_certs_only_reads_back_with_openssl() {
    let f = fixture();
    let (issued, _) = f.ca.issue_manual(&f.ledger, &alice(), DAY, t0()).unwrap();
    let p7 = pkcs7_certs_only(&[&issued.der, f.ca.cert_der()]);
    let path = f.dir.path().join("chain.p7");
    std::fs::write(&path, &p7).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["pkcs7", "-inform", "DER", "-print_certs", "-in"])
        .arg(&path)
        .output()
        .expect("openssl is installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), 2, "{text}");
    assert!(text.contains("CN=alice") || text.contains("CN = alice"), "{text}");
    assert!(text.contains("newsroom CA"), "{text}");
    // The PEM openssl prints is the same two certificates, in order.
    let certs: Vec<_> = CertificateDer::pem_slice_iter(text.as_bytes()).map(|c| c.unwrap().to_vec()).collect();
    assert_eq!(certs, vec![issued.der.clone(), f.ca.cert_der().to_vec()]);
    assert_eq!(f.ca.cacerts_pkcs7(), pkcs7_certs_only(&[f.ca.cert_der()]));
}
