use super::*;

/// Fingerprints read as `openssl x509 -fingerprint -sha256` prints them: uppercase hex pairs
/// joined by colons (here SHA-256 of "abc", FIPS 180-2's example).
#[test]
fn a_fingerprint_is_uppercase_hex_pairs_with_colons() {
    assert_eq!(
        fingerprint(b"abc"),
        "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:\
         B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
    );
    assert_eq!(
        fingerprint_id(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
