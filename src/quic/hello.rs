//! Just enough of a TLS 1.3 ClientHello (RFC 8446 §4.1.2) to learn its server
//! name, read from the start of the QUIC CRYPTO stream.
//!
//! Every length is checked against what is left; nothing here can panic on
//! what a client sends. Names are judged exactly as rustls judges them (the
//! same `ServerName` parsing, lower-cased; an IP address counts as no name), so
//! the site chosen here is the one the TCP path would choose.

use rustls::pki_types::ServerName;

/// The largest handshake message rustls accepts (its `MAX_HANDSHAKE_SIZE`);
/// a ClientHello claiming more is refused before it is buffered.
pub(crate) const MAX_BODY: usize = 0xffff;

/// The handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The `server_name` extension (RFC 6066 §3).
const EXT_SERVER_NAME: u16 = 0;
/// The `host_name` entry of a `server_name` list.
const NAME_TYPE_HOST: u8 = 0;

/// How far the ClientHello has arrived.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Not all of it yet.
    NeedMore,
    /// All of it: the server name, lower-cased, if the client sent a usable one.
    Complete(Option<String>),
}

/// Why the bytes are not a ClientHello we can route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HelloError {
    /// The first handshake message is not a ClientHello.
    #[error("the first handshake message is not a ClientHello")]
    NotClientHello,
    /// The ClientHello claims to be larger than any accepted handshake message.
    #[error("the ClientHello is larger than {MAX_BODY} bytes")]
    TooLarge,
    /// A length runs past its enclosing structure.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The `server_name` extension holds no usable host name.
    #[error("the ClientHello's server_name is not a valid host name")]
    BadServerName,
}

impl HelloError {
    /// The TLS alert rustls would send for the same fault.
    pub(crate) fn alert(self) -> rustls::AlertDescription {
        match self {
            HelloError::NotClientHello => rustls::AlertDescription::UnexpectedMessage,
            HelloError::TooLarge | HelloError::Malformed(_) => rustls::AlertDescription::DecodeError,
            HelloError::BadServerName => rustls::AlertDescription::IllegalParameter,
        }
    }
}

/// Reads the CRYPTO stream received so far (`buf` starts at offset 0).
pub(crate) fn parse(buf: &[u8]) -> Result<Progress, HelloError> {
    let Some(&kind) = buf.first() else { return Ok(Progress::NeedMore) };
    if kind != CLIENT_HELLO {
        return Err(HelloError::NotClientHello);
    }
    let Some(header) = buf.get(..4) else { return Ok(Progress::NeedMore) };
    let len = usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    if len > MAX_BODY {
        return Err(HelloError::TooLarge);
    }
    let Some(body) = buf.get(4..4 + len) else { return Ok(Progress::NeedMore) };
    server_name(body).map(Progress::Complete)
}

/// The server name of a complete ClientHello body.
fn server_name(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader(body);
    r.take(2 + 32, "legacy_version and random")?;
    r.vec8("legacy_session_id")?;
    r.vec16("cipher_suites")?;
    r.vec8("legacy_compression_methods")?;
    if r.0.is_empty() {
        // No extensions at all: legal for TLS 1.2, and rustls will refuse it
        // for QUIC; as far as routing goes, there is no name.
        return Ok(None);
    }
    let mut exts = Reader(r.vec16("extensions")?);
    while !exts.0.is_empty() {
        let kind = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        if kind == EXT_SERVER_NAME {
            return host_name(data);
        }
    }
    Ok(None)
}

/// The host name of a `server_name` extension, judged as rustls does: one
/// `host_name` entry at most, parsing stops at an unknown name type, an IP
/// address literal counts as no name, anything else invalid is refused.
fn host_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut ext = Reader(data);
    let list = ext.vec16("server_name_list")?;
    if list.is_empty() {
        return Err(HelloError::Malformed("empty server_name_list"));
    }
    let mut list = Reader(list);
    let mut found: Option<Option<String>> = None;
    while !list.0.is_empty() {
        if list.u8("name_type")? != NAME_TYPE_HOST {
            // The length encoding of other types is unknown: stop here.
            break;
        }
        let raw = list.vec16("host_name")?;
        if raw.is_empty() {
            return Err(HelloError::Malformed("empty host_name"));
        }
        if found.is_some() {
            return Err(HelloError::BadServerName);
        }
        found = Some(match ServerName::try_from(raw) {
            Ok(ServerName::DnsName(name)) => Some(name.to_lowercase_owned().as_ref().to_string()),
            Ok(ServerName::IpAddress(_)) => None,
            Ok(_) | Err(_) => return Err(HelloError::BadServerName),
        });
    }
    found.ok_or(HelloError::BadServerName)
}

/// A cursor over a byte slice that never reads past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if n > self.0.len() {
            return Err(HelloError::Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello handshake message with these extensions.
    fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0]); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        let mut e = Vec::new();
        for (kind, data) in exts {
            e.extend_from_slice(&kind.to_be_bytes());
            e.extend_from_slice(&(data.len() as u16).to_be_bytes());
            e.extend_from_slice(data);
        }
        body.extend_from_slice(&(e.len() as u16).to_be_bytes());
        body.extend_from_slice(&e);
        let mut msg = vec![CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    fn sni(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (t, name) in entries {
            list.push(*t);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        data
    }

    #[test]
    fn finds_the_name_lower_cased_after_other_extensions() {
        let msg =
            hello(&[(0x2b, vec![2, 3, 4]), (0, sni(&[(0, b"Mtls.Example.TEST")])), (0x10, vec![0, 3, 2, b'h', b'3'])]);
        assert_eq!(parse(&msg), Ok(Progress::Complete(Some("mtls.example.test".into()))));
    }

    #[test]
    fn waits_for_every_byte() {
        let msg = hello(&[(0, sni(&[(0, b"a.test")]))]);
        for cut in 0..msg.len() {
            assert_eq!(parse(&msg[..cut]), Ok(Progress::NeedMore), "cut at {cut}");
        }
        assert_eq!(parse(&msg), Ok(Progress::Complete(Some("a.test".into()))));
    }

    #[test]
    fn no_extension_or_an_ip_literal_is_no_name() {
        assert_eq!(parse(&hello(&[(0x2b, vec![2, 3, 4])])), Ok(Progress::Complete(None)));
        assert_eq!(parse(&hello(&[(0, sni(&[(0, b"127.0.0.1")]))])), Ok(Progress::Complete(None)));
    }

    #[test]
    fn refuses_what_rustls_refuses() {
        assert_eq!(parse(&[2, 0, 0, 0]), Err(HelloError::NotClientHello));
        assert_eq!(parse(&[1, 1, 0, 0]), Err(HelloError::TooLarge));
        let two = sni(&[(0, b"a.test"), (0, b"b.test")]);
        assert_eq!(parse(&hello(&[(0, two)])), Err(HelloError::BadServerName));
        assert_eq!(parse(&hello(&[(0, sni(&[(0, b"bad name!")]))])), Err(HelloError::BadServerName));
        assert_eq!(parse(&hello(&[(0, sni(&[(9, b"x")]))])), Err(HelloError::BadServerName));
        assert!(matches!(parse(&hello(&[(0, vec![0, 0])])), Err(HelloError::Malformed(_))));
    }

    #[test]
    fn lengths_that_overrun_are_malformed_not_panics() {
        let mut msg = hello(&[(0, sni(&[(0, b"a.test")]))]);
        // Every single-byte corruption either parses or fails cleanly.
        for i in 4..msg.len() {
            let keep = msg[i];
            for v in [0x00, 0x01, 0x7f, 0xff] {
                msg[i] = v;
                let _ = parse(&msg);
            }
            msg[i] = keep;
        }
        // A truncated body inside a complete-looking message.
        let inner = &hello(&[(0, sni(&[(0, b"a.test")]))])[4..20];
        let mut short = vec![CLIENT_HELLO, 0, 0, inner.len() as u8];
        short.extend_from_slice(inner);
        assert!(matches!(parse(&short), Err(HelloError::Malformed(_))));
    }
}
