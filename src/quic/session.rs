//! The crypto config and session that let the ClientHello choose the site.
//!
//! quinn asks its `crypto::ServerConfig` for a session as soon as a client's
//! first Initial packet is accepted, before any handshake byte is read. This
//! config hands out a [`SniSession`] that starts in the `Hello` state: it
//! buffers the CRYPTO stream until the ClientHello is complete (a post-quantum
//! key share makes it span two Initial packets), reads the server name, asks
//! the [`SiteSelector`] for that site's `rustls::ServerConfig` and only then
//! creates the rustls QUIC server connection, replaying the buffered bytes into
//! it. From then on every call goes to rustls, exactly as quinn's own
//! `TlsSession` does; what differs is that a rustls error is recorded in the
//! close reason (see [`super::classify`]).
//!
//! Before the site is chosen nothing is available: no bytes to send, no keys,
//! no transport parameters, no handshake data. That is also what quinn expects
//! of a session still waiting for the rest of a ClientHello.

use super::hello::{self, HelloError, Progress};
use super::{HandshakeInfo, SiteSelector};
use crate::tls::HandshakeResult;
use quinn_proto::crypto::{self, ExportKeyingMaterialError, KeyPair, Keys, UnsupportedVersion};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::{ConnectionId, Side, TransportError, TransportErrorCode};
use rustls::pki_types::CertificateDer;
use rustls::quic::{KeyChange, Secrets, Suite, Version};
use std::any::Any;
use std::sync::Arc;

/// Marks a close reason written by this module; [`super::classify`] trusts it
/// only on a locally raised error, never on one the peer sent.
pub(crate) const REASON_TAG: &str = "edge/";

/// The most CRYPTO-stream bytes buffered before the ClientHello is complete:
/// its 4-byte header plus the largest body rustls accepts.
const MAX_BUFFERED: usize = 4 + hello::MAX_BODY;

/// The `quinn::crypto::ServerConfig` of an endpoint whose sites differ in TLS.
pub(crate) struct SniServerConfig {
    selector: Arc<dyn SiteSelector>,
    /// The suite that protects Initial packets (TLS_AES_128_GCM_SHA256), the
    /// same for every site.
    initial: Suite,
}

impl SniServerConfig {
    /// `None` if `provider` lacks TLS_AES_128_GCM_SHA256 for QUIC.
    pub(crate) fn new(selector: Arc<dyn SiteSelector>, provider: &rustls::crypto::CryptoProvider) -> Option<Self> {
        let initial = provider.cipher_suites.iter().find_map(|cs| match (cs.suite(), cs.tls13()) {
            (rustls::CipherSuite::TLS13_AES_128_GCM_SHA256, Some(suite)) => suite.quic_suite(),
            _ => None,
        })?;
        Some(SniServerConfig { selector, initial })
    }
}

impl crypto::ServerConfig for SniServerConfig {
    fn initial_keys(&self, version: u32, dst_cid: &ConnectionId) -> Result<Keys, UnsupportedVersion> {
        let version = interpret_version(version)?;
        Ok(initial_keys(&self.initial, version, dst_cid, Side::Server))
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        // quinn never asks for a version `initial_keys` refused; V1 is a
        // harmless answer should it ever do so.
        let version = interpret_version(version).unwrap_or(Version::V1);
        let mut pseudo = Vec::with_capacity(1 + orig_dst_cid.len() + packet.len());
        pseudo.push(orig_dst_cid.len() as u8);
        pseudo.extend_from_slice(orig_dst_cid);
        pseudo.extend_from_slice(packet);
        retry_seal(version, &pseudo).unwrap_or([0; 16])
    }

    fn start_session(self: Arc<Self>, version: u32, params: &TransportParameters) -> Box<dyn crypto::Session> {
        // As in `retry_tag`: only versions `initial_keys` accepted reach here.
        let version = interpret_version(version).unwrap_or(Version::V1);
        let mut encoded = Vec::new();
        params.write(&mut encoded);
        Box::new(SniSession {
            config: self,
            version,
            params: encoded,
            state: State::Hello(Vec::new()),
            got_handshake_data: false,
            next_secrets: None,
        })
    }
}

/// Where a session is.
enum State {
    /// Waiting for the rest of the ClientHello: the CRYPTO bytes so far.
    Hello(Vec<u8>),
    /// The site's rustls session runs the handshake.
    Tls {
        /// Always the `Server` variant; the enum is what carries the exporter.
        conn: Box<rustls::quic::Connection>,
        config: Arc<rustls::ServerConfig>,
    },
    /// Refused before a site was chosen; the connection is closing.
    Refused,
}

/// One connection's TLS, site chosen by its ClientHello.
pub(crate) struct SniSession {
    config: Arc<SniServerConfig>,
    version: Version,
    /// Our transport parameters, encoded for the rustls session.
    params: Vec<u8>,
    state: State,
    got_handshake_data: bool,
    next_secrets: Option<Secrets>,
}

impl SniSession {
    /// Chooses the site for a complete ClientHello and starts its session.
    fn start(&mut self, sni: Option<String>) -> Result<(), TransportError> {
        let Some(config) = self.config.selector.select(sni.as_deref()) else {
            self.config.selector.refused(None, HandshakeResult::NoSite);
            let reason = match &sni {
                Some(name) => format!("no site for server name {name:?}"),
                None => "no server name and no site for this address".to_string(),
            };
            return Err(refusal(
                TransportErrorCode::crypto(rustls::AlertDescription::UnrecognisedName.into()),
                HandshakeResult::NoSite,
                &reason,
            ));
        };
        let conn =
            rustls::quic::ServerConnection::new(config.clone(), self.version, self.params.clone()).map_err(|e| {
                // The selector handed over a config QUIC cannot use (no TLS 1.3,
                // a max_early_data_size other than 0 or u32::MAX): ours to fix.
                tracing::warn!(error = %e, "site TLS configuration unusable for QUIC; see edge::quic::quic_config");
                refusal(
                    TransportErrorCode::crypto(rustls::AlertDescription::InternalError.into()),
                    HandshakeResult::Error,
                    &format!("site TLS configuration unusable for QUIC: {e}"),
                )
            })?;
        self.state = State::Tls { conn: Box::new(rustls::quic::Connection::Server(conn)), config };
        Ok(())
    }

    /// Hands CRYPTO bytes to the running rustls session.
    fn read_tls(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let selector = self.config.clone();
        let State::Tls { conn, config } = &mut self.state else {
            return Err(TransportError {
                code: TransportErrorCode::INTERNAL_ERROR,
                frame: None,
                reason: "no TLS session".into(),
            });
        };
        if let Err(e) = conn.read_hs(buf) {
            let code = match conn.alert() {
                Some(alert) => TransportErrorCode::crypto(alert.into()),
                None => TransportErrorCode::PROTOCOL_VIOLATION,
            };
            let class = HandshakeResult::of(&e);
            selector.selector.refused(Some(config), class);
            return Err(refusal(code, class, &e.to_string()));
        }
        // As quinn's own session: rustls gives no explicit signal that the
        // ClientHello was processed; a name or a protocol shows it was.
        if !self.got_handshake_data
            && (conn.alpn_protocol().is_some() || server_name(conn).is_some() || !conn.is_handshaking())
        {
            self.got_handshake_data = true;
            return Ok(true);
        }
        Ok(false)
    }

    fn conn(&self) -> Option<&rustls::quic::Connection> {
        match &self.state {
            State::Tls { conn, .. } => Some(conn),
            _ => None,
        }
    }
}

impl crypto::Session for SniSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        initial_keys(&self.config.initial, self.version, dst_cid, side)
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        if !self.got_handshake_data {
            return None;
        }
        let State::Tls { conn, config } = &self.state else { return None };
        Some(Box::new(HandshakeInfo {
            server_name: server_name(conn).map(str::to_string),
            protocol: conn.alpn_protocol().map(<[u8]>::to_vec),
            config: config.clone(),
        }))
    }

    /// `Vec<CertificateDer<'static>>`, leaf first, as quinn's rustls session.
    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        let certs = self.conn()?.peer_certificates()?;
        Some(Box::new(certs.iter().map(|c| c.clone().into_owned()).collect::<Vec<CertificateDer<'static>>>()))
    }

    fn early_crypto(&self) -> Option<(Box<dyn crypto::HeaderKey>, Box<dyn crypto::PacketKey>)> {
        let keys = self.conn()?.zero_rtt_keys()?;
        Some((Box::new(keys.header), Box::new(keys.packet)))
    }

    fn early_data_accepted(&self) -> Option<bool> {
        // A client-side question.
        None
    }

    fn is_handshaking(&self) -> bool {
        self.conn().is_none_or(|c| c.is_handshaking())
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let pending = match &mut self.state {
            State::Tls { .. } => return self.read_tls(buf),
            State::Refused => {
                return Err(TransportError {
                    code: TransportErrorCode::PROTOCOL_VIOLATION,
                    frame: None,
                    reason: "handshake already refused".into(),
                })
            }
            State::Hello(pending) => pending,
        };
        if pending.len().saturating_add(buf.len()) > MAX_BUFFERED {
            self.state = State::Refused;
            let e = HelloError::TooLarge;
            self.config.selector.refused(None, HandshakeResult::Error);
            return Err(refusal(TransportErrorCode::crypto(e.alert().into()), HandshakeResult::Error, &e.to_string()));
        }
        pending.extend_from_slice(buf);
        let sni = match hello::parse(pending) {
            Ok(Progress::NeedMore) => return Ok(false),
            Ok(Progress::Complete(sni)) => sni,
            Err(e) => {
                self.state = State::Refused;
                self.config.selector.refused(None, HandshakeResult::Error);
                return Err(refusal(
                    TransportErrorCode::crypto(e.alert().into()),
                    HandshakeResult::Error,
                    &e.to_string(),
                ));
            }
        };
        let bytes = std::mem::take(pending);
        if let Err(e) = self.start(sni) {
            self.state = State::Refused;
            return Err(e);
        }
        self.read_tls(&bytes)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        let Some(mut raw) = self.conn().and_then(|c| c.quic_transport_parameters()) else { return Ok(None) };
        Ok(Some(TransportParameters::read(Side::Server, &mut raw)?))
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let State::Tls { conn, .. } = &mut self.state else { return None };
        let keys = match conn.write_hs(buf)? {
            KeyChange::Handshake { keys } => keys,
            KeyChange::OneRtt { keys, next } => {
                self.next_secrets = Some(next);
                keys
            }
        };
        Some(to_keys(keys))
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn crypto::PacketKey>>> {
        let keys = self.next_secrets.as_mut()?.next_packet_keys();
        Some(KeyPair { local: Box::new(keys.local), remote: Box::new(keys.remote) })
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        // Only clients receive Retry packets; answered for completeness.
        let Some(tag_start) = payload.len().checked_sub(16) else { return false };
        let mut pseudo = Vec::with_capacity(1 + orig_dst_cid.len() + header.len() + tag_start);
        pseudo.push(orig_dst_cid.len() as u8);
        pseudo.extend_from_slice(orig_dst_cid);
        pseudo.extend_from_slice(header);
        pseudo.extend_from_slice(&payload[..tag_start]);
        match retry_seal(self.version, &pseudo) {
            Some(tag) => aws_lc_rs::constant_time::verify_slices_are_equal(&tag, &payload[tag_start..]).is_ok(),
            None => false,
        }
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        let conn = self.conn().ok_or(ExportKeyingMaterialError)?;
        conn.export_keying_material(output, label, Some(context)).map_err(|_| ExportKeyingMaterialError)?;
        Ok(())
    }
}

fn server_name(conn: &rustls::quic::Connection) -> Option<&str> {
    match conn {
        rustls::quic::Connection::Server(s) => s.server_name(),
        rustls::quic::Connection::Client(_) => None,
    }
}

/// A refusal whose reason [`super::classify`] can read back.
fn refusal(code: TransportErrorCode, class: HandshakeResult, detail: &str) -> TransportError {
    TransportError { code, frame: None, reason: format!("{REASON_TAG}{}: {detail}", class.as_str()) }
}

/// The QUIC versions quinn's rustls config speaks (quinn-proto `interpret_version`).
fn interpret_version(version: u32) -> Result<Version, UnsupportedVersion> {
    match version {
        0xff00_001d..=0xff00_0020 => Ok(Version::V1Draft),
        0x0000_0001 | 0xff00_0021..=0xff00_0022 => Ok(Version::V1),
        _ => Err(UnsupportedVersion),
    }
}

fn initial_keys(suite: &Suite, version: Version, dst_cid: &ConnectionId, side: Side) -> Keys {
    let side = match side {
        Side::Client => rustls::Side::Client,
        Side::Server => rustls::Side::Server,
    };
    to_keys(suite.keys(dst_cid, side, version))
}

fn to_keys(keys: rustls::quic::Keys) -> Keys {
    Keys {
        header: KeyPair { local: Box::new(keys.local.header), remote: Box::new(keys.remote.header) },
        packet: KeyPair { local: Box::new(keys.local.packet), remote: Box::new(keys.remote.packet) },
    }
}

/// RFC 9001 §5.8 (and the draft-29 constants): the Retry integrity key and nonce.
const RETRY_KEY_V1: [u8; 16] =
    [0xbe, 0x0c, 0x69, 0x0b, 0x9f, 0x66, 0x57, 0x5a, 0x1d, 0x76, 0x6b, 0x54, 0xe3, 0x68, 0xc8, 0x4e];
const RETRY_NONCE_V1: [u8; 12] = [0x46, 0x15, 0x99, 0xd3, 0x5d, 0x63, 0x2b, 0xf2, 0x23, 0x98, 0x25, 0xbb];
const RETRY_KEY_DRAFT: [u8; 16] =
    [0xcc, 0xce, 0x18, 0x7e, 0xd0, 0x9a, 0x09, 0xd0, 0x57, 0x28, 0x15, 0x5a, 0x6c, 0xb9, 0x6b, 0xe1];
const RETRY_NONCE_DRAFT: [u8; 12] = [0xe5, 0x49, 0x30, 0xf9, 0x7f, 0x21, 0x36, 0xf0, 0x53, 0x0a, 0x8c, 0x1c];

/// The Retry integrity tag over a Retry pseudo-packet; `None` only if
/// aws-lc-rs refuses a fixed 16-byte AES-128 key, which it does not.
fn retry_seal(version: Version, pseudo_packet: &[u8]) -> Option<[u8; 16]> {
    use aws_lc_rs::aead;
    let (key, nonce) = match version {
        Version::V1Draft => (RETRY_KEY_DRAFT, RETRY_NONCE_DRAFT),
        _ => (RETRY_KEY_V1, RETRY_NONCE_V1),
    };
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &key).ok()?);
    let tag = key
        .seal_in_place_separate_tag(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::from(pseudo_packet), &mut [])
        .ok()?;
    tag.as_ref().try_into().ok()
}
