//! Real quinn endpoints on 127.0.0.1 (port 0), a test PKI minted here, two
//! sites with different client-auth: the site is chosen by SNI and its policy
//! refuses inside the QUIC handshake. Plus the session driven in memory, byte
//! by byte, to pin down the ClientHello buffering.

use super::session::SniServerConfig;
use super::*;
use crate::config::{AllowRule, Matcher, Mode};
use crate::tls::SiteVerifier;
use quinn::crypto::rustls::QuicClientConfig;
use quinn_proto::crypto::ServerConfig as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;
use std::net::SocketAddr;
use time::OffsetDateTime;

const OPEN: &str = "open.test";
const MTLS: &str = "mtls.test";
const REVOKED_SERIAL: u64 = 0x0bad;
const LIMIT: Duration = Duration::from_secs(10);

type Chain = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(30);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap().der().clone();
        Ca { params, key, cert }
    }

    fn sign(&self, mut params: CertificateParams) -> Chain {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &Issuer::from_params(&self.params, &self.key)).unwrap();
        (vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
    }

    fn server(&self, names: &[&str]) -> Chain {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    fn client(&self, cn: &str, ou: Option<&str>, expired: bool, serial: Option<u64>) -> Chain {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(ou) = ou {
            params.distinguished_name.push(DnType::OrganizationalUnitName, ou);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = serial.map(|s| SerialNumber::from_slice(&s.to_be_bytes()));
        let now = OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = if expired {
            (now - time::Duration::days(10), now - time::Duration::days(1))
        } else {
            (now - time::Duration::hours(1), now + time::Duration::days(1))
        };
        self.sign(params)
    }

    fn crl(&self, serials: &[u64]) -> CertificateRevocationListDer<'static> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&s.to_be_bytes()),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&Issuer::from_params(&self.params, &self.key)).unwrap().der().clone()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        roots
    }
}

/// The PKI and the two sites' QUIC configs.
struct World {
    ca: Ca,
    other: Ca,
    open: Arc<rustls::ServerConfig>,
    mtls: Arc<rustls::ServerConfig>,
}

/// A site config as compile builds it for TCP (TLS 1.2 + 1.3, h2 + http/1.1),
/// then derived for QUIC.
fn site(
    server: &Chain,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Arc<rustls::ServerConfig> {
    let b = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap();
    let b = match verifier {
        Some(v) => b.with_client_cert_verifier(v),
        None => b.with_no_client_auth(),
    };
    let mut tcp = b.with_single_cert(server.0.clone(), server.1.clone_key()).unwrap();
    tcp.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    quic_config(&tcp)
}

fn world() -> World {
    let ca = Ca::new("Test Root CA");
    let other = Ca::new("Untrusted CA");
    let server = ca.server(&[OPEN, MTLS, "127.0.0.1"]);
    let allow = vec![AllowRule { all: vec![Matcher::Ou("editors".into())] }];
    let verifier = SiteVerifier::new(
        Mode::Require,
        ca.roots(),
        vec![ca.crl(&[REVOKED_SERIAL])],
        allow,
        vec![],
        Default::default(),
    )
    .unwrap();
    let open = site(&server, None);
    let mtls = site(&server, Some(Arc::new(verifier)));
    World { ca, other, open, mtls }
}

impl World {
    /// Names to sites; without SNI, the open site when `by_address`.
    fn selector(&self, by_address: bool) -> Arc<dyn SiteSelector> {
        let (open, mtls) = (self.open.clone(), self.mtls.clone());
        Arc::new(move |sni: Option<&str>| match sni {
            Some(OPEN) => Some(open.clone()),
            Some(MTLS) => Some(mtls.clone()),
            Some(_) => None,
            None if by_address => Some(open.clone()),
            None => None,
        })
    }

    fn client_tls(&self, cert: Option<Chain>, post_quantum: bool) -> rustls::ClientConfig {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if post_quantum {
            use rustls::crypto::aws_lc_rs::kx_group;
            provider.kx_groups = vec![kx_group::X25519MLKEM768, kx_group::X25519];
        }
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(self.ca.roots());
        let mut c = match cert {
            Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
            None => b.with_no_client_auth(),
        };
        c.alpn_protocols = vec![b"h3".to_vec()];
        c
    }

    fn client(&self, cert: Option<Chain>, post_quantum: bool) -> quinn::ClientConfig {
        let tls = QuicClientConfig::try_from(self.client_tls(cert, post_quantum)).unwrap();
        quinn::ClientConfig::new(Arc::new(tls))
    }

    fn valid(&self) -> Option<Chain> {
        Some(self.ca.client("alice", Some("editors"), false, None))
    }
}

fn server(selector: Arc<dyn SiteSelector>) -> (quinn::Endpoint, SocketAddr) {
    let ep = quinn::Endpoint::server(server_config(selector), "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    (ep, addr)
}

/// What each side saw of one connection attempt.
struct Outcome {
    client: Result<quinn::Connection, ConnectionError>,
    server: Result<quinn::Connection, ConnectionError>,
}

/// One connection attempt, bounded in time. A refusal may reach the client
/// after its side of the handshake finished (TLS 1.3: the server judges the
/// client certificate last), so a client that connected waits to see whether
/// the server closes the connection.
async fn attempt(server: &quinn::Endpoint, to: SocketAddr, name: &str, client: quinn::ClientConfig) -> Outcome {
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = ep.connect_with(client, to, name).unwrap();
    let server_side = async {
        let incoming = server.accept().await.expect("endpoint open");
        incoming.await
    };
    let (client, server) = tokio::time::timeout(LIMIT, async { tokio::join!(connecting, server_side) })
        .await
        .expect("handshake finished in time");
    let client = match (client, &server) {
        (Ok(conn), Err(_)) => match tokio::time::timeout(LIMIT, conn.closed()).await {
            Ok(e) => Err(e),
            Err(_) => panic!("the server refused but the client never learned it"),
        },
        (c, _) => c,
    };
    Outcome { client, server }
}

#[tokio::test]
async fn open_site_without_a_certificate_connects_and_the_server_reads_sni() {
    let w = world();
    let (ep, addr) = server(w.selector(false));
    let out = attempt(&ep, addr, OPEN, w.client(None, false)).await;
    let conn = out.server.expect("server side connected");
    out.client.expect("client side connected");
    let info = handshake_info(&conn).expect("handshake info");
    assert_eq!(info.server_name.as_deref(), Some(OPEN));
    assert_eq!(info.protocol.as_deref(), Some(&b"h3"[..]));
    assert!(Arc::ptr_eq(&info.config, &w.open));
    assert!(peer_certificates(&conn).is_none());
}

#[tokio::test]
async fn mtls_site_with_a_valid_certificate_connects_and_the_server_reads_it() {
    let w = world();
    let (ep, addr) = server(w.selector(false));
    let alice = w.valid().unwrap();
    let out = attempt(&ep, addr, MTLS, w.client(Some((alice.0.clone(), alice.1.clone_key())), false)).await;
    let conn = out.server.expect("server side connected");
    let client = out.client.expect("client side connected");
    let info = handshake_info(&conn).expect("handshake info");
    assert_eq!(info.server_name.as_deref(), Some(MTLS));
    assert!(Arc::ptr_eq(&info.config, &w.mtls));
    let chain = peer_certificates(&conn).expect("client chain");
    assert_eq!(chain[0], alice.0[0]);
    let id = crate::policy::identity_from_der(&chain[0]).unwrap();
    assert_eq!(id.cn.as_deref(), Some("alice"));

    // The connection is usable: one stream each way.
    let (mut send, _recv) = client.open_bi().await.unwrap();
    send.write_all(b"ping").await.unwrap();
    send.finish().unwrap();
    let (_s, mut recv) = tokio::time::timeout(LIMIT, conn.accept_bi()).await.unwrap().unwrap();
    assert_eq!(recv.read_to_end(64).await.unwrap(), b"ping");
}

/// The client on the mTLS site is refused inside the handshake, and both the
/// server's error and the client's close say why.
async fn refused(w: &World, cert: Option<Chain>, expected: HandshakeResult) {
    let (ep, addr) = server(w.selector(false));
    let out = attempt(&ep, addr, MTLS, w.client(cert, false)).await;
    let err = out.server.expect_err("server refused");
    assert_eq!(classify(&err), expected, "server error: {err}");
    match out.client.expect_err("client refused") {
        ConnectionError::ConnectionClosed(close) => {
            assert!((0x100..0x200).contains(&u64::from(close.error_code)), "a TLS alert: {close}");
        }
        other => panic!("client saw {other}"),
    }
}

#[tokio::test]
async fn mtls_site_without_a_certificate_is_refused_no_cert() {
    refused(&world(), None, HandshakeResult::NoCert).await;
}

#[tokio::test]
async fn mtls_site_with_another_ca_is_refused_unknown_ca() {
    let w = world();
    refused(&w, Some(w.other.client("stranger", Some("editors"), false, None)), HandshakeResult::UnknownCa).await;
}

#[tokio::test]
async fn mtls_site_with_an_expired_certificate_is_refused_expired() {
    let w = world();
    refused(&w, Some(w.ca.client("old", Some("editors"), true, None)), HandshakeResult::Expired).await;
}

#[tokio::test]
async fn mtls_site_with_a_revoked_certificate_is_refused_revoked() {
    let w = world();
    refused(&w, Some(w.ca.client("gone", Some("editors"), false, Some(REVOKED_SERIAL))), HandshakeResult::Revoked)
        .await;
}

#[tokio::test]
async fn mtls_site_with_a_certificate_no_rule_allows_is_refused_not_allowed() {
    let w = world();
    refused(&w, Some(w.ca.client("mallory", Some("sales"), false, None)), HandshakeResult::NotAllowed).await;
}

#[tokio::test]
async fn unknown_name_is_refused_no_site() {
    let w = world();
    let (ep, addr) = server(w.selector(true));
    let out = attempt(&ep, addr, "nowhere.test", w.client(w.valid(), false)).await;
    let err = out.server.expect_err("server refused");
    assert_eq!(classify(&err), HandshakeResult::NoSite, "server error: {err}");
    match out.client.expect_err("client refused") {
        ConnectionError::ConnectionClosed(close) => {
            assert_eq!(close.error_code, quinn::TransportErrorCode::crypto(AlertDescription::UnrecognisedName.into()));
        }
        other => panic!("client saw {other}"),
    }
}

#[tokio::test]
async fn without_sni_the_address_decides() {
    // A client that connects to an IP address sends no server name.
    let w = world();
    let (ep, addr) = server(w.selector(true));
    let out = attempt(&ep, addr, "127.0.0.1", w.client(None, false)).await;
    let conn = out.server.expect("server side connected");
    let info = handshake_info(&conn).unwrap();
    assert_eq!(info.server_name, None);
    assert!(Arc::ptr_eq(&info.config, &w.open));

    let (ep, addr) = server(w.selector(false));
    let out = attempt(&ep, addr, "127.0.0.1", w.client(None, false)).await;
    assert_eq!(classify(&out.server.expect_err("no site")), HandshakeResult::NoSite);
}

#[tokio::test]
async fn a_post_quantum_client_hello_spanning_two_packets_is_buffered() {
    let w = world();
    // The hybrid key share alone is 1216 bytes: the ClientHello cannot fit
    // in one 1200-byte Initial packet.
    assert!(client_hello(&w.client_tls(w.valid(), true), MTLS).len() > 1300);

    let (ep, addr) = server(w.selector(false));
    let out = attempt(&ep, addr, MTLS, w.client(w.valid(), true)).await;
    let conn = out.server.expect("server side connected");
    assert_eq!(handshake_info(&conn).unwrap().server_name.as_deref(), Some(MTLS));
    assert!(peer_certificates(&conn).is_some());
    // Initial CRYPTO frames: two for the ClientHello, then Handshake ones.
    assert!(conn.stats().frame_rx.crypto >= 3, "{:?}", conn.stats().frame_rx);

    let out = attempt(&ep, addr, MTLS, w.client(None, true)).await;
    assert_eq!(classify(&out.server.expect_err("refused")), HandshakeResult::NoCert);
}

#[tokio::test]
async fn a_hello_retry_request_goes_to_the_chosen_site() {
    // The client's only key share (ML-KEM-1024) is not one edge accepts, so
    // the site's session asks for another (HelloRetryRequest); the second
    // ClientHello must reach the same rustls session, not a new selection.
    let w = world();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups =
        vec![rustls::crypto::aws_lc_rs::kx_group::MLKEM1024, rustls::crypto::aws_lc_rs::kx_group::X25519];
    let (chain, key) = w.valid().unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(w.ca.roots())
        .with_client_auth_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"h3".to_vec()];

    // In memory: the site's answer to this ClientHello is a HelloRetryRequest.
    const HRR_RANDOM: [u8; 8] = [0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11];
    let mut s = session(w.selector(false));
    assert_eq!(s.read_handshake(&client_hello(&tls, MTLS)), Ok(true));
    let mut out = Vec::new();
    assert!(s.write_handshake(&mut out).is_none(), "no new keys after a HelloRetryRequest");
    assert_eq!(out.get(6..14), Some(&HRR_RANDOM[..]));

    let client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let (ep, addr) = server(w.selector(false));
    let out = attempt(&ep, addr, MTLS, client).await;
    let conn = out.server.expect("server side connected");
    assert_eq!(handshake_info(&conn).unwrap().server_name.as_deref(), Some(MTLS));
    assert!(peer_certificates(&conn).is_some());
}

#[tokio::test]
async fn a_retry_token_round_trip_validates_our_retry_tag() {
    // The client checks the Retry integrity tag with quinn's own rustls code.
    let w = world();
    let (ep, addr) = server(w.selector(false));
    let client_ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = client_ep.connect_with(w.client(None, false), addr, OPEN).unwrap();
    let server_side = async {
        let first = ep.accept().await.expect("endpoint open");
        assert!(!first.remote_address_validated());
        first.retry().expect("retry sent");
        let second = ep.accept().await.expect("endpoint open");
        assert!(second.remote_address_validated());
        second.await
    };
    let (client, server) = tokio::time::timeout(LIMIT, async { tokio::join!(connecting, server_side) }).await.unwrap();
    client.expect("client side connected");
    let conn = server.expect("server side connected");
    assert_eq!(handshake_info(&conn).unwrap().server_name.as_deref(), Some(OPEN));
}

/// The ClientHello a rustls QUIC client sends for `name`.
fn client_hello(tls: &rustls::ClientConfig, name: &str) -> Vec<u8> {
    let mut client = rustls::quic::ClientConnection::new(
        Arc::new(tls.clone()),
        rustls::quic::Version::V1,
        rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
        Vec::new(),
    )
    .unwrap();
    let mut hello = Vec::new();
    client.write_hs(&mut hello);
    hello
}

/// A server session of the endpoint config, outside quinn.
fn session(selector: Arc<dyn SiteSelector>) -> Box<dyn quinn_proto::crypto::Session> {
    let config = Arc::new(SniServerConfig::new(selector, &crate::tls::provider()).unwrap());
    let params = quinn_proto::transport_parameters::TransportParameters::read(quinn::Side::Server, &mut &[][..])
        .expect("empty client parameters");
    config.start_session(1, &params)
}

#[test]
fn the_client_hello_fed_byte_by_byte_starts_the_site_session_once_complete() {
    let w = world();
    let hello = client_hello(&w.client_tls(w.valid(), true), MTLS);
    let mut s = session(w.selector(false));
    let mut out = Vec::new();
    for (i, b) in hello.iter().enumerate() {
        let ready = s.read_handshake(std::slice::from_ref(b)).expect("accepted");
        let last = i + 1 == hello.len();
        assert_eq!(ready, last, "handshake data ready only after byte {}", hello.len());
        if !last {
            // Nothing is available before the site is chosen.
            assert!(s.write_handshake(&mut out).is_none() && out.is_empty());
            assert!(s.handshake_data().is_none() && s.peer_identity().is_none());
            assert!(s.transport_parameters().unwrap().is_none());
            assert!(s.early_crypto().is_none());
            assert!(s.is_handshaking());
            assert!(s.export_keying_material(&mut [0; 8], b"l", b"c").is_err());
        }
    }
    // The site's session answered with a ServerHello and handshake keys.
    assert!(s.write_handshake(&mut out).is_some());
    assert_eq!(out.first(), Some(&2), "ServerHello");
    let info = s.handshake_data().unwrap().downcast::<HandshakeInfo>().unwrap();
    assert_eq!(info.server_name.as_deref(), Some(MTLS));
}

#[test]
fn garbage_and_oversized_hellos_fail_with_an_alert() {
    let w = world();
    let mut s = session(w.selector(false));
    let e = s.read_handshake(&[22, 3, 1, 0, 5]).unwrap_err();
    assert_eq!(e.code, quinn::TransportErrorCode::crypto(AlertDescription::UnexpectedMessage.into()));
    assert!(s.read_handshake(&[1]).is_err(), "stays refused");

    let mut s = session(w.selector(false));
    let mut big = vec![1, 0, 0xff, 0xff];
    big.resize(2000, 0);
    assert_eq!(s.read_handshake(&big), Ok(false));
    let chunk = vec![0; 1200];
    let mut result = Ok(false);
    for _ in 0..60 {
        result = s.read_handshake(&chunk);
        if result.is_err() {
            break;
        }
    }
    let e = result.expect_err("a ClientHello of 64 KiB of zeros is refused");
    assert_eq!(e.code, quinn::TransportErrorCode::crypto(AlertDescription::DecodeError.into()));
    assert_eq!(classify(&ConnectionError::TransportError(e)), HandshakeResult::Error);
}

#[test]
fn classify_trusts_only_local_records_and_falls_back_to_alerts() {
    use quinn_proto::TransportError;
    let local = |code: u8, reason: &str| {
        ConnectionError::TransportError(TransportError {
            code: quinn::TransportErrorCode::crypto(code),
            frame: None,
            reason: reason.into(),
        })
    };
    assert_eq!(classify(&local(42, "edge/revoked: invalid peer certificate: Revoked")), HandshakeResult::Revoked);
    assert_eq!(classify(&local(116, "")), HandshakeResult::NoCert);
    assert_eq!(classify(&local(48, "")), HandshakeResult::UnknownCa);
    assert_eq!(classify(&local(45, "")), HandshakeResult::Expired);
    assert_eq!(classify(&local(44, "")), HandshakeResult::Revoked);
    assert_eq!(classify(&local(49, "")), HandshakeResult::NotAllowed);
    assert_eq!(classify(&local(42, "")), HandshakeResult::BadCert);
    assert_eq!(classify(&local(112, "")), HandshakeResult::NoSite);
    assert_eq!(classify(&local(40, "edge/nonsense: x")), HandshakeResult::Error);
    assert_eq!(classify(&ConnectionError::TimedOut), HandshakeResult::Error);
    // The client's own refusal of our certificate is not a class of its certificate.
    let remote = ConnectionError::ConnectionClosed(quinn::ConnectionClose {
        error_code: quinn::TransportErrorCode::crypto(48),
        frame_type: None,
        reason: bytes::Bytes::from_static(b"edge/unknown_ca: forged"),
    });
    assert_eq!(classify(&remote), HandshakeResult::Error);
}
