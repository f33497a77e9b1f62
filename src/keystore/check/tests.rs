use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

use p256::elliptic_curve::point::AffineCoordinates;

use super::*;

fn key_pair() -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).expect("key")
}

fn sign(key: &EcdsaKeyPair, message: &[u8]) -> Vec<u8> {
    key.sign(&SystemRandom::new(), message)
        .expect("sign")
        .as_ref()
        .to_vec()
}

/// A check of `key`'s signatures with its tables built, not shared with other tests.
fn check_with_tables(key: &EcdsaKeyPair) -> Arc<KeyCheck> {
    let check = Arc::new(KeyCheck {
        public_key: Arc::from(key.public_key().as_ref()),
        uses: AtomicU64::new(0),
        tables: OnceLock::new(),
    });
    assert!(check.build_tables_now());
    check
}

/// A DER signature from raw `r` and `s` (32 bytes each).
fn encode(r: &[u8], s: &[u8]) -> Vec<u8> {
    der::sequence(&[&der::unsigned_integer(r), &der::unsigned_integer(s)])
}

fn halves(signature: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (r, s) = canonical_halves(signature).expect("canonical");
    (r.to_vec(), s.to_vec())
}

/// The tables and ring give the same answer on valid signatures, signatures by another key,
/// signatures of another message, altered halves and halves out of range.
#[test]
fn the_tables_accept_exactly_what_ring_accepts() {
    let (key, other) = (key_pair(), key_pair());
    let check = check_with_tables(&key);
    let comb = check.tables.get().expect("tables");
    let ring_says = |message: &[u8], signature: &[u8]| {
        signature_verifies(
            SignatureScheme::EcdsaSha256,
            key.public_key().as_ref(),
            message,
            signature,
        )
    };
    let n = NistP256::ORDER.to_be_byte_array().to_vec();
    let n_minus = |s: &[u8]| {
        let s: [u8; 32] = s.try_into().expect("32 bytes");
        let s = Scalar::from_repr(FieldBytes::from(s)).expect("below n");
        (-s).to_repr().to_vec()
    };
    let (mut valid, mut refused) = (0, 0);
    for i in 0..300u32 {
        let message = format!("tbs certificate {i}").into_bytes();
        let good = sign(&key, &message);
        let (r, s) = halves(&good);
        let mut flipped_r = r.clone();
        flipped_r[31] ^= 1;
        let mut flipped_s = s.clone();
        flipped_s[7] ^= 0x40;
        let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            ("valid", message.clone(), good.clone()),
            ("another key", message.clone(), sign(&other, &message)),
            ("another message", b"another tbs".to_vec(), good.clone()),
            ("r altered", message.clone(), encode(&flipped_r, &s)),
            ("s altered", message.clone(), encode(&r, &flipped_s)),
            ("s negated", message.clone(), encode(&r, &n_minus(&s))),
            ("r is n", message.clone(), encode(&n, &s)),
            ("s is n", message.clone(), encode(&r, &n)),
            ("r is zero", message.clone(), encode(&[0; 32], &s)),
            ("s is zero", message.clone(), encode(&r, &[0; 32])),
            ("swapped", message.clone(), encode(&s, &r)),
        ];
        for (case, message, signature) in cases {
            let expected = ring_says(&message, &signature);
            let answer = comb.verify(&message, &signature);
            assert!(
                answer.is_none_or(|a| a == expected),
                "{case} #{i}: tables {answer:?}, ring {expected}"
            );
            assert_eq!(
                check.verifies(SignatureScheme::EcdsaSha256, &message, &signature),
                expected,
                "{case} #{i}"
            );
            if expected {
                valid += 1;
            } else {
                refused += 1;
            }
            if case == "valid" || case == "s negated" {
                assert!(expected, "{case} #{i} verifies");
                assert_eq!(answer, Some(true), "{case} #{i}: the tables answered");
            }
        }
    }
    assert_eq!(valid, 600, "each valid signature and its negated s");
    assert_eq!(refused, 300 * 9);
}

/// What is not the canonical DER of two numbers is left to ring, which then decides.
#[test]
fn a_signature_not_in_canonical_der_is_left_to_ring() {
    let key = key_pair();
    let check = check_with_tables(&key);
    let comb = check.tables.get().expect("tables");
    let message = b"tbs".to_vec();
    let good = sign(&key, &message);
    let (r, s) = halves(&good);
    // r with a needless leading zero byte.
    let r_content = der::unsigned_integer(&r)[2..].to_vec();
    let padded_r = der::tlv(0x02, &[vec![0], r_content].concat());
    let padded = der::tlv(0x30, &[padded_r, der::unsigned_integer(&s)].concat());
    let trailing = [good.clone(), vec![0]].concat();
    let mut wrong_tag = good.clone();
    wrong_tag[0] = 0x31;
    for (case, signature) in [
        ("padded", padded),
        ("trailing byte", trailing),
        ("set", wrong_tag),
        ("empty", Vec::new()),
        ("raw r||s", [r.clone(), s.clone()].concat()),
    ] {
        assert_eq!(comb.verify(&message, &signature), None, "{case}");
        assert_eq!(
            check.verifies(SignatureScheme::EcdsaSha256, &message, &signature),
            signature_verifies(
                SignatureScheme::EcdsaSha256,
                key.public_key().as_ref(),
                &message,
                &signature
            ),
            "{case}"
        );
    }
}

/// A key gets its tables once it has signed often; they are built on another thread and then
/// used, and the answers do not change on the way.
#[test]
fn a_key_that_keeps_signing_gets_its_tables() {
    let (key, other) = (key_pair(), key_pair());
    let check = KeyCheck::for_key(Arc::from(key.public_key().as_ref()));
    assert!(Arc::ptr_eq(
        &check,
        &KeyCheck::for_key(Arc::from(key.public_key().as_ref()))
    ));
    let message = b"tbs".to_vec();
    let (good, bad) = (sign(&key, &message), sign(&other, &message));
    for _ in 0..=HOT_AFTER {
        assert!(!check.has_tables());
        assert!(check.verifies(SignatureScheme::EcdsaSha256, &message, &good));
    }
    let waited = Instant::now();
    while !check.has_tables() {
        assert!(waited.elapsed() < Duration::from_secs(30), "no tables");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(check.verifies(SignatureScheme::EcdsaSha256, &message, &good));
    assert!(!check.verifies(SignatureScheme::EcdsaSha256, &message, &bad));
}

#[test]
fn a_public_key_off_the_curve_gets_no_tables() {
    let mut point = key_pair().public_key().as_ref().to_vec();
    point[40] ^= 1;
    assert!(Comb::for_point(&point).is_none());
    assert!(Comb::for_point(&[0x04; 65]).is_none());
    assert!(Comb::for_point(&[]).is_none());
}

/// `k · P` from a table, as an affine point (`None`: the identity or a case left to ring).
fn table_multiple(table: &Table, k: &Scalar) -> Option<AffinePoint> {
    let mut sum = None;
    table.add_multiple(&mut sum, &k.to_repr())?;
    let point = sum?;
    let z = Option::<FieldElement>::from(point.z.invert())?;
    let (x, y) = (point.x * z.square(), point.y * z.square() * z);
    let encoded = EncodedPoint::from_affine_coordinates(&x.to_bytes(), &y.to_bytes(), false);
    Option::from(AffinePoint::from_encoded_point(&encoded))
}

/// The signed-digit tables give `k · P` for scalars whose digits carry at every window, none,
/// or only at the top, with the window in use and two others (whose top rows differ).
#[test]
fn the_tables_multiply_like_the_curve() {
    let point = ProjectivePoint::GENERATOR * Scalar::from(0x5eed_u64);
    let table = Table::new(point, WINDOW).expect("table");
    let generator = GENERATOR.as_ref().expect("generator table");
    let narrow = Table::new(point, 7).expect("table");
    let bytes = Table::new(point, 8).expect("table");
    let mut scalars = vec![
        Scalar::ONE,
        Scalar::from(2u64),
        Scalar::from(511u64),
        Scalar::from(512u64),
        Scalar::from(513u64),
        Scalar::from(1023u64),
        Scalar::from(2048u64),
        Scalar::from(2049u64),
        Scalar::from(4095u64),
        -Scalar::ONE,
        -Scalar::from(2u64),
        Scalar::from(2u64).pow_vartime(&[255]),
        Scalar::from(2u64).pow_vartime(&[255]) - Scalar::ONE,
    ];
    let mut seed = Scalar::from(0x1234_5678_u64);
    for _ in 0..200 {
        seed = seed.square() + Scalar::from(7u64);
        scalars.push(seed);
    }
    for k in &scalars {
        for (name, table, base) in [
            ("key", &table, point),
            ("generator", generator, ProjectivePoint::GENERATOR),
            ("7-bit", &narrow, point),
            ("8-bit", &bytes, point),
        ] {
            assert_eq!(
                table_multiple(table, k),
                Some((base * k).to_affine()),
                "{name} table, k = {:?}",
                k.to_repr()
            );
        }
    }
    assert_eq!(
        table_multiple(&table, &Scalar::ZERO),
        None,
        "zero is no point"
    );
}

/// The incomplete addition declines a point added to itself or to its negation instead of
/// answering wrongly; the caller then asks ring.
#[test]
fn the_addition_declines_a_point_and_its_negation() {
    let table = Table::new(ProjectivePoint::GENERATOR, WINDOW).expect("table");
    let g = table.rows[0][0];
    let sum = Jacobian::from_entry(&g, false);
    assert!(sum.add(&g, false).is_none(), "G + G");
    assert!(sum.add(&g, true).is_none(), "G - G");
    let three = sum.add(&table.rows[0][1], false).expect("G + 2G");
    assert!(three.x_mod_n_is(
        &(ProjectivePoint::GENERATOR * Scalar::from(3u64))
            .to_affine()
            .x()
    ));
}

/// The variable-time inverse is the inverse, at the ends of the range and between, and there is
/// none of zero or of n.
#[test]
fn the_inverse_mod_n_is_the_inverse() {
    let mut scalars = vec![
        Scalar::ONE,
        Scalar::from(2u64),
        -Scalar::ONE,
        -Scalar::from(2u64),
    ];
    let mut seed = Scalar::from(0xfeed_u64);
    for _ in 0..2000 {
        seed = seed.square() + Scalar::from(3u64);
        scalars.push(seed);
    }
    for a in scalars {
        let inverse = inverse_mod_n(&U256::from_be_byte_array(a.to_repr())).expect("inverse");
        let inverse = Scalar::from_repr(inverse.to_be_byte_array()).expect("below n");
        assert_eq!(inverse * a, Scalar::ONE, "a = {:?}", a.to_repr());
    }
    assert_eq!(inverse_mod_n(&U256::ZERO), None);
    assert_eq!(inverse_mod_n(&NistP256::ORDER), None);
}
