//! The check every signature passes before it leaves the keystore: it must verify with the
//! public key of the key that was asked to sign, so that a device fault or a stale handle (one
//! that names another key since a recovery) can never hand out a wrong signature.
//!
//! A CA signs thousands of times with the same few keys, so a P-256 key that keeps signing gets
//! tables of its multiples (and of the generator's): `u1·G + u2·Q` then takes 64 table
//! additions instead of ring's 256 doublings and constant-time window additions, which
//! verification of public data does not need. The check is the same ECDSA verification
//! (FIPS 186-5 6.4.2, as ring does it: `r` and `s` in `[1, n-1]`, `R` not the identity,
//! `x(R) mod n == r`), on `p256`'s complete addition formulas, and a signature it cannot
//! read in canonical DER goes to ring, so the two never disagree on what passes. Until a key's
//! tables are ready, and for every other key and algorithm, ring checks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use p256::elliptic_curve::bigint::U256;
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::{AffineCoordinates, Double};
use p256::elliptic_curve::sec1::FromEncodedPoint;
use p256::elliptic_curve::PrimeField;
use p256::{AffinePoint, EncodedPoint, FieldBytes, ProjectivePoint, Scalar};

use super::{der, signature_verifies, SignatureScheme};

/// Signatures a key makes before its tables are built (~75 ms on one core, ~0.6 MB): keys that
/// sign now and then are checked by ring alone.
const HOT_AFTER: u64 = 64;

/// Keys that may get tables in one process: the CA's keys and an audit key, with room to spare.
const MAX_KEYS: usize = 16;

/// The shared checks, by public key.
type Checks = HashMap<Arc<[u8]>, Arc<KeyCheck>>;

/// The check of one key's signatures, shared by every worker that signs with it.
pub struct KeyCheck {
    /// The subjectPublicKey bits (an uncompressed point for EC keys).
    public_key: Arc<[u8]>,
    /// Signatures checked, until the tables are asked for.
    uses: AtomicU64,
    tables: OnceLock<Arc<Comb>>,
}

impl KeyCheck {
    /// The check for `public_key`: the process's shared one while there is room for it.
    pub fn for_key(public_key: Arc<[u8]>) -> Arc<KeyCheck> {
        static KEYS: LazyLock<Mutex<Checks>> = LazyLock::new(Default::default);
        let mut keys = KEYS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = keys.get(&public_key) {
            return found.clone();
        }
        let check = Arc::new(KeyCheck {
            public_key: public_key.clone(),
            uses: AtomicU64::new(0),
            tables: OnceLock::new(),
        });
        if keys.len() < MAX_KEYS {
            keys.insert(public_key, check.clone());
        } else {
            // Never gets tables: the count starts past the point where they are asked for.
            check.uses.store(u64::MAX / 2, Ordering::Relaxed);
        }
        check
    }

    /// Whether `signature` over `message` verifies with this key under `scheme`.
    pub fn verifies(
        self: &Arc<Self>,
        scheme: SignatureScheme,
        message: &[u8],
        signature: &[u8],
    ) -> bool {
        if scheme == SignatureScheme::EcdsaSha256 {
            if let Some(comb) = self.tables.get() {
                if let Some(answer) = comb.verify(message, signature) {
                    return answer;
                }
            } else if self.uses.fetch_add(1, Ordering::Relaxed) == HOT_AFTER {
                self.build_tables();
            }
        }
        signature_verifies(scheme, &self.public_key, message, signature)
    }

    /// Builds the tables on a thread of their own; ring checks meanwhile.
    fn build_tables(self: &Arc<Self>) {
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("keystore-tables".into())
            .spawn(move || {
                if let Some(comb) = Comb::for_point(&this.public_key) {
                    let _ = this.tables.set(Arc::new(comb));
                }
            });
        if let Err(e) = spawned {
            tracing::debug!("signature check tables not built: {e}");
        }
    }

    /// Whether the tables are in use (for tests).
    pub fn has_tables(&self) -> bool {
        self.tables.get().is_some()
    }

    /// Builds the tables now, on this thread (for tests and benchmarks).
    pub fn build_tables_now(&self) -> bool {
        match Comb::for_point(&self.public_key) {
            Some(comb) => {
                let _ = self.tables.set(Arc::new(comb));
                true
            }
            None => false,
        }
    }
}

/// Multiples of a point by every byte value at every byte position: `rows[i][d - 1]` is
/// `d · 2^(8i) · P`, so `k · P` is the sum of one entry per non-zero byte of `k`.
struct Table {
    rows: Vec<Vec<AffinePoint>>,
}

impl Table {
    fn new(point: ProjectivePoint) -> Table {
        let mut rows = Vec::with_capacity(32);
        let mut base = point;
        for _ in 0..32 {
            let mut row = Vec::with_capacity(255);
            let mut multiple = base;
            for _ in 0..255 {
                row.push(multiple.to_affine());
                multiple += base;
            }
            rows.push(row);
            for _ in 0..8 {
                base = base.double();
            }
        }
        Table { rows }
    }

    /// Adds `k · P` to `sum`, `k` as 32 big-endian bytes.
    fn add_multiple(&self, sum: &mut ProjectivePoint, k: &FieldBytes) {
        for (row, byte) in self.rows.iter().zip(k.iter().rev()) {
            if *byte != 0 {
                *sum += row[usize::from(*byte) - 1];
            }
        }
    }
}

/// The generator's table, built once per process when the first key gets its own.
static GENERATOR: LazyLock<Table> = LazyLock::new(|| Table::new(ProjectivePoint::GENERATOR));

/// A P-256 public key with its table, beside the generator's.
struct Comb {
    key: Table,
}

impl Comb {
    /// Tables for an uncompressed SEC1 point; `None` if it is not a point of the curve.
    fn for_point(point: &[u8]) -> Option<Comb> {
        let encoded = EncodedPoint::from_bytes(point).ok()?;
        let affine = Option::<AffinePoint>::from(AffinePoint::from_encoded_point(&encoded))?;
        if bool::from(affine.is_identity()) {
            return None;
        }
        LazyLock::force(&GENERATOR);
        Some(Comb {
            key: Table::new(affine.into()),
        })
    }

    /// ECDSA P-256 with SHA-256 over `message`; `None` when `signature` is not canonical DER
    /// with two 32-byte integers (the caller then asks ring).
    fn verify(&self, message: &[u8], signature: &[u8]) -> Option<bool> {
        let (r_bytes, s_bytes) = canonical_halves(signature)?;
        let (r, s) = (Limbs::from_be(&r_bytes), Limbs::from_be(&s_bytes));
        if r.is_zero() || s.is_zero() || !r.below(&ORDER) || !s.below(&ORDER) {
            return Some(false);
        }
        let w = Option::<Scalar>::from(Scalar::from_repr(s.inverse_mod_order()?.to_be()))?;
        let r_scalar = Option::<Scalar>::from(Scalar::from_repr(r_bytes))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let digest: [u8; 32] = digest.as_ref().try_into().ok()?;
        let e = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(digest));
        let mut sum = ProjectivePoint::IDENTITY;
        GENERATOR.add_multiple(&mut sum, &(e * w).to_repr());
        self.key.add_multiple(&mut sum, &(r_scalar * w).to_repr());
        let point = sum.to_affine();
        if bool::from(point.is_identity()) {
            return Some(false);
        }
        let x = <Scalar as Reduce<U256>>::reduce_bytes(&point.x());
        Some(x == r_scalar)
    }
}

/// `r` and `s` of a DER `ECDSA-Sig-Value`, each as 32 big-endian bytes, when the input is
/// exactly the canonical encoding of those two numbers.
fn canonical_halves(signature: &[u8]) -> Option<(FieldBytes, FieldBytes)> {
    let (tag, body) = der::read_tlv(signature)?;
    if tag != 0x30 {
        return None;
    }
    let (r, rest) = der::split_tlv(body)?;
    let (s, rest) = der::split_tlv(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let half = |tlv: &[u8]| -> Option<Vec<u8>> {
        match der::read_tlv(tlv)? {
            (0x02, magnitude) => der::left_pad(magnitude, 32),
            _ => None,
        }
    };
    let (r, s) = (half(r)?, half(s)?);
    if der::ecdsa_signature(&[r.as_slice(), s.as_slice()].concat(), 32)? != signature {
        return None;
    }
    let (r, s): ([u8; 32], [u8; 32]) = (r.try_into().ok()?, s.try_into().ok()?);
    Some((FieldBytes::from(r), FieldBytes::from(s)))
}

/// The order `n` of P-256, least significant limb first.
const ORDER: Limbs = Limbs([
    0xf3b9_cac2_fc63_2551,
    0xbce6_faad_a717_9e84,
    0xffff_ffff_ffff_ffff,
    0xffff_ffff_0000_0000,
]);

/// A 256-bit number, least significant limb first, for the inverse of `s` modulo `n`: the
/// binary extended Euclidean algorithm on public data, in variable time.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Limbs([u64; 4]);

impl Limbs {
    const ONE: Limbs = Limbs([1, 0, 0, 0]);

    fn from_be(bytes: &FieldBytes) -> Limbs {
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().rev().zip(bytes.chunks_exact(8)) {
            *limb = u64::from_be_bytes(chunk.try_into().unwrap_or_default());
        }
        Limbs(limbs)
    }

    fn to_be(self) -> FieldBytes {
        let mut bytes = FieldBytes::default();
        for (chunk, limb) in bytes.chunks_exact_mut(8).zip(self.0.iter().rev()) {
            chunk.copy_from_slice(&limb.to_be_bytes());
        }
        bytes
    }

    fn is_zero(&self) -> bool {
        self.0 == [0; 4]
    }

    fn is_even(&self) -> bool {
        self.0[0] & 1 == 0
    }

    fn below(&self, other: &Limbs) -> bool {
        self.0.iter().rev().cmp(other.0.iter().rev()) == std::cmp::Ordering::Less
    }

    /// `self + other` and the carry out.
    fn add(&self, other: &Limbs) -> (Limbs, bool) {
        let mut out = [0u64; 4];
        let mut carry = false;
        for (o, (a, b)) in out.iter_mut().zip(self.0.iter().zip(other.0.iter())) {
            let (sum, c1) = a.overflowing_add(*b);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            *o = sum;
            carry = c1 || c2;
        }
        (Limbs(out), carry)
    }

    /// `self - other` and the borrow out.
    fn sub(&self, other: &Limbs) -> (Limbs, bool) {
        let mut out = [0u64; 4];
        let mut borrow = false;
        for (o, (a, b)) in out.iter_mut().zip(self.0.iter().zip(other.0.iter())) {
            let (diff, b1) = a.overflowing_sub(*b);
            let (diff, b2) = diff.overflowing_sub(u64::from(borrow));
            *o = diff;
            borrow = b1 || b2;
        }
        (Limbs(out), borrow)
    }

    /// Halves a 257-bit number whose top bit is `top`.
    fn halve(&mut self, top: bool) {
        for i in 0..3 {
            self.0[i] = (self.0[i] >> 1) | (self.0[i + 1] << 63);
        }
        self.0[3] = (self.0[3] >> 1) | (u64::from(top) << 63);
    }

    /// `self / 2 mod n` for `self < n`.
    fn halve_mod_order(&mut self) {
        if self.is_even() {
            self.halve(false);
        } else {
            let (sum, carry) = self.add(&ORDER);
            *self = sum;
            self.halve(carry);
        }
    }

    /// `self - other mod n` for both below `n`.
    fn sub_mod_order(&self, other: &Limbs) -> Limbs {
        match self.sub(other) {
            (diff, false) => diff,
            (diff, true) => diff.add(&ORDER).0,
        }
    }

    /// `self⁻¹ mod n` for `self` in `[1, n-1]` (`n` is prime, so the inverse exists); `None`
    /// for anything else.
    fn inverse_mod_order(self) -> Option<Limbs> {
        if self.is_zero() || !self.below(&ORDER) {
            return None;
        }
        // Invariants: u ≡ x1·self and v ≡ x2·self (mod n); gcd(u, v) = 1 throughout.
        let (mut u, mut v) = (self, ORDER);
        let (mut x1, mut x2) = (Limbs::ONE, Limbs([0; 4]));
        while u != Limbs::ONE && v != Limbs::ONE {
            if u.is_zero() || v.is_zero() {
                return None;
            }
            while u.is_even() {
                u.halve(false);
                x1.halve_mod_order();
            }
            while v.is_even() {
                v.halve(false);
                x2.halve_mod_order();
            }
            if v.below(&u) || u == v {
                u = u.sub(&v).0;
                x1 = x1.sub_mod_order(&x2);
            } else {
                v = v.sub(&u).0;
                x2 = x2.sub_mod_order(&x1);
            }
        }
        Some(if u == Limbs::ONE { x1 } else { x2 })
    }
}

#[cfg(test)]
mod tests;
