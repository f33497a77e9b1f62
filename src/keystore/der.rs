//! The few DER encodings the keystore needs to turn device answers into standard forms:
//! SubjectPublicKeyInfo for EC and RSA public keys, and ECDSA signatures (raw `r || s` from the
//! device, DER `SEQUENCE { r, s }` for X.509).

/// OID 1.2.840.10045.2.1 (id-ecPublicKey), DER-encoded with tag and length.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// OID 1.2.840.10045.3.1.7 (prime256v1).
pub const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// OID 1.3.132.0.34 (secp384r1).
pub const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// OID 1.2.840.113549.1.1.1 (rsaEncryption) followed by NULL parameters.
const RSA_ALGORITHM_ID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

fn push_len(out: &mut Vec<u8>, len: usize) {
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            let count = u8::try_from(bytes.len() - skip).expect("a usize has at most 8 bytes");
            out.push(0x80 | count);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
}

/// Tag-length-value.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// A SEQUENCE of already-encoded parts.
pub fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// A non-negative INTEGER from big-endian magnitude bytes (leading zeros allowed).
pub fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let trimmed = match magnitude.iter().position(|b| *b != 0) {
        Some(first) => &magnitude[first..],
        None => &[0u8][..],
    };
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(0x02, &content)
}

/// BIT STRING with no unused bits.
pub fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tlv(0x03, &content)
}

/// SubjectPublicKeyInfo of an EC key from its curve OID and uncompressed point.
pub fn ec_spki(curve_oid: &[u8], point: &[u8]) -> Vec<u8> {
    let alg = sequence(&[OID_EC_PUBLIC_KEY, curve_oid]);
    sequence(&[&alg, &bit_string(point)])
}

/// SubjectPublicKeyInfo of an RSA key from modulus and public exponent.
pub fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let alg = tlv(0x30, RSA_ALGORITHM_ID);
    let key = sequence(&[&unsigned_integer(modulus), &unsigned_integer(exponent)]);
    sequence(&[&alg, &bit_string(&key)])
}

/// DER `ECDSA-Sig-Value` from a raw `r || s` whose halves are `field_len` bytes each.
/// Returns `None` when the input has the wrong length or a zero half (never a valid signature).
pub fn ecdsa_signature(raw: &[u8], field_len: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * field_len {
        return None;
    }
    let (r, s) = raw.split_at(field_len);
    if r.iter().all(|b| *b == 0) || s.iter().all(|b| *b == 0) {
        return None;
    }
    Some(sequence(&[&unsigned_integer(r), &unsigned_integer(s)]))
}

/// Left-pads big-endian bytes to `len` (TPMs return coordinates without leading zeros).
pub fn left_pad(bytes: &[u8], len: usize) -> Option<Vec<u8>> {
    let trimmed = match bytes.iter().position(|b| *b != 0) {
        Some(first) => &bytes[first..],
        None => &[][..],
    };
    if trimmed.len() > len {
        return None;
    }
    let mut out = vec![0u8; len - trimmed.len()];
    out.extend_from_slice(trimmed);
    Some(out)
}

/// The uncompressed point from a PKCS#11 `CKA_EC_POINT`, which the standard says is a DER
/// OCTET STRING but some tokens return bare. `point_len` is 1 + 2 × field length.
pub fn ec_point_from_attribute(value: &[u8], point_len: usize) -> Option<Vec<u8>> {
    if value.len() == point_len && value[0] == 0x04 {
        return Some(value.to_vec());
    }
    let (tag, content) = read_tlv(value)?;
    (tag == 0x04 && content.len() == point_len && content[0] == 0x04).then(|| content.to_vec())
}

/// Splits the first TLV off `input`: `(whole first TLV, rest)`.
pub fn split_tlv(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let first = *input.get(1)?;
    let (header, len) = if first < 0x80 {
        (2, first as usize)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || input.len() < 2 + n {
            return None;
        }
        let len = input[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (2 + n, len)
    };
    let end = header.checked_add(len)?;
    (input.len() >= end).then(|| input.split_at(end))
}

/// The subjectPublicKey bits of a DER SubjectPublicKeyInfo
/// (`SEQUENCE { algorithm, BIT STRING }`), for verifiers and certificate builders.
pub fn subject_public_key_bits(spki: &[u8]) -> Option<&[u8]> {
    let (tag, content) = read_tlv(spki)?;
    let (_algorithm, rest) = split_tlv(content).filter(|_| tag == 0x30)?;
    let (tag, bits) = read_tlv(rest)?;
    match bits.split_first() {
        Some((0, key)) if tag == 0x03 => Some(key),
        _ => None,
    }
}

/// The signature scheme a key with this SubjectPublicKeyInfo signs with by default
/// (ECDSA P-256/P-384 with SHA-256/384, RSA PKCS#1 v1.5 with SHA-256).
pub fn spki_scheme(spki: &[u8]) -> Option<crate::keystore::SignatureScheme> {
    use crate::keystore::SignatureScheme;
    let (tag, content) = read_tlv(spki)?;
    let (algorithm, _) = split_tlv(content).filter(|_| tag == 0x30)?;
    let (tag, params) = read_tlv(algorithm)?;
    if tag != 0x30 {
        return None;
    }
    if params == RSA_ALGORITHM_ID {
        return Some(SignatureScheme::RsaPkcs1Sha256);
    }
    match params.strip_prefix(OID_EC_PUBLIC_KEY)? {
        curve if curve == OID_P256 => Some(SignatureScheme::EcdsaSha256),
        curve if curve == OID_P384 => Some(SignatureScheme::EcdsaSha384),
        _ => None,
    }
}

/// Reads one TLV that must span the whole input.
pub fn read_tlv(input: &[u8]) -> Option<(u8, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() == len).then_some((tag, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(unsigned_integer(&[0, 0, 0x7f]), vec![0x02, 0x01, 0x7f]);
        assert_eq!(unsigned_integer(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(unsigned_integer(&[0, 0]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        let v = tlv(0x04, &[0u8; 300]);
        assert_eq!(&v[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(read_tlv(&v).map(|(t, c)| (t, c.len())), Some((0x04, 300)));
    }

    #[test]
    fn ecdsa_signature_rejects_wrong_length_and_zero_halves() {
        assert!(ecdsa_signature(&[1u8; 63], 32).is_none());
        let mut raw = vec![0u8; 64];
        raw[63] = 1;
        assert!(ecdsa_signature(&raw, 32).is_none());
        let raw = [0xffu8; 64];
        let der = ecdsa_signature(&raw, 32).expect("valid");
        assert_eq!(der[0], 0x30);
        assert_eq!(der.len(), 2 + 2 * (2 + 33));
    }

    #[test]
    fn ec_point_is_unwrapped_from_octet_string_or_taken_bare() {
        let mut point = vec![0x04];
        point.extend_from_slice(&[7u8; 64]);
        assert_eq!(ec_point_from_attribute(&point, 65), Some(point.clone()));
        let wrapped = tlv(0x04, &point);
        assert_eq!(ec_point_from_attribute(&wrapped, 65), Some(point));
        assert_eq!(ec_point_from_attribute(&[0x04, 0x01, 0x04], 65), None);
    }

    #[test]
    fn key_bits_come_out_of_the_spki_they_went_into() {
        let point = [[0x04].as_slice(), &[9u8; 64]].concat();
        let spki = ec_spki(OID_P256, &point);
        assert_eq!(subject_public_key_bits(&spki), Some(point.as_slice()));
        assert_eq!(subject_public_key_bits(&spki[..spki.len() - 1]), None);
    }

    #[test]
    fn split_tlv_takes_the_first_element() {
        let a = tlv(0x30, &[1, 2, 3]);
        let b = tlv(0x04, &[0u8; 200]);
        let both = [a.clone(), b.clone()].concat();
        assert_eq!(split_tlv(&both), Some((&a[..], &b[..])));
        assert_eq!(split_tlv(&b), Some((&b[..], &[][..])));
        assert_eq!(split_tlv(&b[..50]), None);
    }

    #[test]
    fn left_pad_restores_leading_zeros() {
        assert_eq!(left_pad(&[1, 2], 4), Some(vec![0, 0, 1, 2]));
        assert_eq!(left_pad(&[0, 0, 1, 2], 3), Some(vec![0, 1, 2]));
        assert_eq!(left_pad(&[1, 2, 3], 2), None);
    }
}
