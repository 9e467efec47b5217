//! HTTP/3's transport: QUIC with the site chosen by the ClientHello, so each
//! site's client-certificate policy is enforced inside the QUIC handshake,
//! exactly as over TCP.
//!
//! quinn fixes an endpoint's crypto configuration before any ClientHello is
//! read, and a rustls client verifier never sees the server name. So
//! [`server_config`] installs a crypto config of ours whose session buffers the
//! CRYPTO stream until the whole ClientHello has arrived, reads its server name,
//! asks a [`SiteSelector`] for that site's `rustls::ServerConfig` (built by
//! [`quic_config`]) and only then starts the rustls QUIC session, replaying the
//! buffered bytes into it. A client the site refuses (no certificate, wrong CA,
//! expired, revoked, not allowed) is refused with the site's TLS alert before
//! the handshake completes; an unknown name is refused with
//! `unrecognized_name`.
//!
//! After the handshake, on the server:
//! - [`handshake_info`] (a downcast of `Connection::handshake_data()`) gives
//!   the server name, the ALPN protocol and the exact `Arc<rustls::ServerConfig>`
//!   the selector returned, to find the site in the snapshot it came from;
//! - [`peer_certificates`] (a downcast of `Connection::peer_identity()`) gives
//!   the client chain, leaf first, as quinn's own rustls session does.
//!
//! A refused handshake surfaces as a `quinn::ConnectionError` on the server's
//! incoming connection; [`classify`] turns it into the same
//! [`HandshakeResult`] as TCP.

mod hello;
mod session;

use crate::tls::HandshakeResult;
use quinn::{ConnectionError, VarInt};
use rustls::pki_types::CertificateDer;
use rustls::AlertDescription;
use std::sync::Arc;
use std::time::Duration;

/// Chooses a site's TLS configuration by the ClientHello's server name.
///
/// An endpoint serves one listening address, so the caller builds one selector
/// per endpoint; `select` runs once per connection attempt, inside the QUIC
/// handshake, and may read the current snapshot (an `ArcSwap` load) so a
/// reload applies to new connections. It must not block.
///
/// Returned configs must be fit for QUIC (see [`quic_config`]); `None` refuses
/// the handshake with `unrecognized_name` ([`HandshakeResult::NoSite`]).
pub trait SiteSelector: Send + Sync + 'static {
    /// The site config for `sni` (lower-cased, as rustls reports it; `None`
    /// without a usable name: choose by the endpoint's address then).
    fn select(&self, sni: Option<&str>) -> Option<Arc<rustls::ServerConfig>>;

    /// Told once per handshake this endpoint refuses, with the config the
    /// selector chose (`None` before a site was chosen: no site, or a
    /// ClientHello that does not parse), so that refusals can be counted per
    /// site. Must not block.
    fn refused(&self, _config: Option<&Arc<rustls::ServerConfig>>, _class: HandshakeResult) {}
}

impl<F> SiteSelector for F
where
    F: Fn(Option<&str>) -> Option<Arc<rustls::ServerConfig>> + Send + Sync + 'static,
{
    fn select(&self, sni: Option<&str>) -> Option<Arc<rustls::ServerConfig>> {
        self(sni)
    }
}

/// A site's QUIC TLS configuration, derived from its TCP one at compile time.
///
/// A clone of `tcp` (same certificate resolver, same client verifier, same
/// provider, same session cache) with ALPN `h3` only and no 0-RTT
/// (`max_early_data_size` 0: early data would run a request before the client
/// certificate is checked, and QUIC allows only 0 or `u32::MAX` anyway).
/// The protocol versions cannot be changed on a clone (the field is private to
/// rustls) and need not be: a rustls QUIC session negotiates TLS 1.3 only and
/// refuses a client that offers less (`Tls13RequiredForQuic`), and refuses to
/// start on a config without TLS 1.3.
pub fn quic_config(tcp: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut cfg = tcp.clone();
    cfg.alpn_protocols = vec![b"h3".to_vec()];
    cfg.max_early_data_size = 0;
    Arc::new(cfg)
}

/// How long a QUIC connection may stay silent before it is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent request streams per connection.
pub const MAX_BIDI_STREAMS: u32 = 100;
/// Concurrent unidirectional streams per connection: HTTP/3 needs three per
/// side (control, QPACK encoder, QPACK decoder); a few spare.
pub const MAX_UNI_STREAMS: u32 = 8;

/// The quinn server configuration of one endpoint: the site is chosen per
/// connection by `selector`.
pub fn server_config(selector: Arc<dyn SiteSelector>) -> quinn::ServerConfig {
    // Invariant: aws-lc-rs's default provider carries TLS_AES_128_GCM_SHA256
    // with QUIC support (quinn's own config relies on the same).
    let crypto = session::SniServerConfig::new(selector, &crate::tls::provider())
        .expect("aws-lc-rs provides TLS_AES_128_GCM_SHA256 for QUIC");
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(quinn::IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT.as_millis() as u32))))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    config
}

/// What the handshake settled, from `Connection::handshake_data()`.
#[derive(Debug, Clone)]
pub struct HandshakeInfo {
    /// The ClientHello's server name, lower-cased; `None` without one.
    pub server_name: Option<String>,
    /// The ALPN protocol agreed (`h3` with [`quic_config`]).
    pub protocol: Option<Vec<u8>>,
    /// The configuration the selector chose: compare it (`Arc::ptr_eq`) with
    /// the sites of the snapshot being used, so a reload between the
    /// handshake and the first request cannot change which site applies.
    pub config: Arc<rustls::ServerConfig>,
}

/// The handshake's outcome on a connection accepted through [`server_config`].
pub fn handshake_info(conn: &quinn::Connection) -> Option<HandshakeInfo> {
    conn.handshake_data()?.downcast::<HandshakeInfo>().ok().map(|b| *b)
}

/// The client's certificate chain, leaf first, if it presented one.
pub fn peer_certificates(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok().map(|b| *b)
}

/// Classifies a failed QUIC handshake on the server side, the same way as TCP.
///
/// When this endpoint refused the client, the session recorded the rustls
/// error's class in the close reason (`edge/<class>: <rustls error>`), so the
/// answer is as exact as over TCP: `no_cert`, `unknown_ca`, `expired`,
/// `revoked`, `not_allowed`, `bad_cert`, `no_site`. A locally raised TLS
/// error without that record (a plain quinn rustls config) is classified by
/// its alert. A close sent by the client (it refused our certificate, went
/// away, timed out) is `error`: its alert speaks of our certificate, not of
/// the client's, and its reason text is the client's to write, so it is never
/// read for a record.
///
/// The record travels in `quinn::ConnectionError::TransportError`, which only
/// the local endpoint raises; quinn also sends the reason (truncated to fit)
/// in the CONNECTION_CLOSE frame, so the client learns the class it would
/// learn from the TLS alert over TCP, with rustls' wording.
pub fn classify(err: &ConnectionError) -> HandshakeResult {
    let ConnectionError::TransportError(e) = err else { return HandshakeResult::Error };
    if let Some(class) = e.reason.strip_prefix(session::REASON_TAG).and_then(|rest| rest.split(':').next()) {
        if let Some(known) = REFUSALS.iter().find(|r| r.as_str() == class) {
            return *known;
        }
    }
    let code = u64::from(e.code);
    if !(0x100..0x200).contains(&code) {
        return HandshakeResult::Error;
    }
    of_alert(AlertDescription::from((code & 0xff) as u8))
}

/// Whether this endpoint itself refused the handshake (and so already told
/// its [`SiteSelector::refused`]).
pub fn is_local_refusal(err: &ConnectionError) -> bool {
    matches!(err, ConnectionError::TransportError(e) if e.reason.starts_with(session::REASON_TAG))
}

/// The classes a refusal can record (never `ok`).
const REFUSALS: [HandshakeResult; 8] = [
    HandshakeResult::NoCert,
    HandshakeResult::UnknownCa,
    HandshakeResult::Expired,
    HandshakeResult::Revoked,
    HandshakeResult::NotAllowed,
    HandshakeResult::BadCert,
    HandshakeResult::NoSite,
    HandshakeResult::Error,
];

/// The alert rustls sends for each class, read backwards.
fn of_alert(alert: AlertDescription) -> HandshakeResult {
    match alert {
        AlertDescription::CertificateRequired => HandshakeResult::NoCert,
        AlertDescription::UnknownCA => HandshakeResult::UnknownCa,
        AlertDescription::CertificateExpired => HandshakeResult::Expired,
        AlertDescription::CertificateRevoked => HandshakeResult::Revoked,
        AlertDescription::AccessDenied => HandshakeResult::NotAllowed,
        AlertDescription::BadCertificate
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateUnknown => HandshakeResult::BadCert,
        AlertDescription::UnrecognisedName => HandshakeResult::NoSite,
        _ => HandshakeResult::Error,
    }
}

#[cfg(test)]
mod tests;
