//! Just enough DER to write what rcgen cannot: leaf certificates with several
//! OUs in the subject (rcgen keeps one value per attribute type) and the
//! PKCS#7 certs-only bundle EST answers with.
//!
//! Every function returns a complete TLV; callers concatenate them.

use time::OffsetDateTime;

pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const SET: u8 = 0x31;

/// A tag, its DER length and the content.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A constructed value whose content is the concatenation of `parts`.
pub(crate) fn cons(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    tlv(tag, &parts.concat())
}

pub(crate) fn seq(parts: &[&[u8]]) -> Vec<u8> {
    cons(SEQUENCE, parts)
}

/// A non-negative INTEGER from big-endian magnitude bytes, minimally encoded.
pub(crate) fn uint(magnitude: &[u8]) -> Vec<u8> {
    let trimmed = &magnitude[magnitude.iter().take_while(|b| **b == 0).count()..];
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(0x02, &content)
}

/// An OBJECT IDENTIFIER from its arcs (the first two must be valid: 0..2 and < 40).
pub(crate) fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut content = Vec::new();
    let (first, rest) = match arcs {
        [a, b, rest @ ..] => (a * 40 + b, rest),
        [a] => (a * 40, &[][..]),
        [] => (0, &[][..]),
    };
    for arc in std::iter::once(first).chain(rest.iter().copied()) {
        let mut groups = [0u8; 10];
        let mut n = 0;
        let mut v = arc;
        loop {
            groups[n] = (v & 0x7f) as u8;
            n += 1;
            v >>= 7;
            if v == 0 {
                break;
            }
        }
        for i in (0..n).rev() {
            content.push(groups[i] | if i > 0 { 0x80 } else { 0 });
        }
    }
    tlv(0x06, &content)
}

pub(crate) fn octets(bytes: &[u8]) -> Vec<u8> {
    tlv(0x04, bytes)
}

/// A BIT STRING of whole bytes.
pub(crate) fn bits(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tlv(0x03, &content)
}

pub(crate) fn utf8(s: &str) -> Vec<u8> {
    tlv(0x0c, s.as_bytes())
}

pub(crate) fn boolean_true() -> Vec<u8> {
    vec![0x01, 0x01, 0xff]
}

/// UTCTime for 1950..2049, GeneralizedTime otherwise (RFC 5280 4.1.2.5).
pub(crate) fn time(t: OffsetDateTime) -> Vec<u8> {
    let t = t.to_offset(time::UtcOffset::UTC);
    let (y, mo, d, h, mi, s) = (t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second());
    if (1950..2050).contains(&y) {
        tlv(0x17, format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100).as_bytes())
    } else {
        tlv(0x18, format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z").as_bytes())
    }
}

/// An X.509 extension: `SEQUENCE { id, critical (if true), OCTET STRING value }`.
pub(crate) fn extension(id: &[u64], critical: bool, value: &[u8]) -> Vec<u8> {
    if critical {
        seq(&[&oid(id), &boolean_true(), &octets(value)])
    } else {
        seq(&[&oid(id), &octets(value)])
    }
}

/// The length of the first TLV of `der` according to its header, or `None`
/// when the header itself is cut short or not definite-length DER.
pub(crate) fn announced_len(der: &[u8]) -> Option<usize> {
    let first = *der.get(1)?;
    if first < 0x80 {
        return Some(2 + first as usize);
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let len_bytes = der.get(2..2 + n)?;
    let len = len_bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
    Some(2 + n + len)
}

pub(crate) mod oids {
    pub const CN: &[u64] = &[2, 5, 4, 3];
    pub const OU: &[u64] = &[2, 5, 4, 11];
    pub const ECDSA_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
    pub const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
    pub const KEY_USAGE: &[u64] = &[2, 5, 29, 15];
    pub const EXT_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
    pub const SUBJECT_KEY_ID: &[u64] = &[2, 5, 29, 14];
    pub const AUTHORITY_KEY_ID: &[u64] = &[2, 5, 29, 35];
    pub const SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];
    pub const CLIENT_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 2];
    pub const SERVER_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 1];
    pub const PKCS7_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 1];
    pub const PKCS7_SIGNED_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 2];
}

/// A PKCS#7 / CMS "certs-only" message (RFC 7030 4.1.3, RFC 5652): a
/// degenerate SignedData with the certificates and no signers.
///
/// ```text
/// ContentInfo { contentType signedData, content [0] EXPLICIT SignedData {
///     version 1, digestAlgorithms {}, encapContentInfo { id-data },
///     certificates [0] IMPLICIT { certs... }, signerInfos {} } }
/// ```
/// The certificates keep the order given (leaf first), as OpenSSL writes and
/// reads them; they are not re-sorted as a strict DER SET OF would be.
pub fn pkcs7_certs_only(certs_der: &[&[u8]]) -> Vec<u8> {
    let certs = tlv(0xa0, &certs_der.concat());
    let signed_data = seq(&[&uint(&[1]), &tlv(SET, &[]), &seq(&[&oid(oids::PKCS7_DATA)]), &certs, &tlv(SET, &[])]);
    seq(&[&oid(oids::PKCS7_SIGNED_DATA), &tlv(0xa0, &signed_data)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_integers() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(announced_len(&long), Some(304));
        assert_eq!(uint(&[0x00, 0x00, 0x7f]), vec![0x02, 1, 0x7f]);
        assert_eq!(uint(&[0x80]), vec![0x02, 2, 0x00, 0x80]);
        assert_eq!(uint(&[]), vec![0x02, 1, 0x00]);
    }

    #[test]
    fn oids_encode_like_the_registry() {
        // 1.2.840.113549.1.7.2, as in every PKCS#7 file.
        assert_eq!(oid(oids::PKCS7_SIGNED_DATA), vec![0x06, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02]);
        assert_eq!(oid(oids::CN), vec![0x06, 3, 0x55, 0x04, 0x03]);
    }

    #[test]
    fn times_switch_to_generalized_in_2050() {
        let day = |y, m, d| time::Date::from_calendar_date(y, m, d).unwrap().midnight().assume_utc();
        assert_eq!(super::time(day(2049, time::Month::December, 31))[0], 0x17);
        let t = day(2050, time::Month::January, 1);
        let enc = super::time(t);
        assert_eq!(enc[0], 0x18);
        assert_eq!(&enc[2..], b"20500101000000Z");
    }
}
