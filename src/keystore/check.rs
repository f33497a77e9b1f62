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

use p256::elliptic_curve::bigint::{ArrayEncoding, U256};
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::{AffineCoordinates, Double};
use p256::elliptic_curve::sec1::FromEncodedPoint;
use p256::elliptic_curve::{Curve, PrimeField};
use p256::{
    AffinePoint, EncodedPoint, FieldBytes, NistP256, NonZeroScalar, ProjectivePoint, Scalar,
};

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
                this.build_tables_now();
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
        let in_range = |bytes| Option::<NonZeroScalar>::from(NonZeroScalar::from_repr(bytes));
        let (Some(r), Some(_)) = (in_range(r_bytes), in_range(s_bytes)) else {
            return Some(false);
        };
        // n is prime and s in [1, n-1], so the inverse exists.
        let (w, exists) = U256::from_be_byte_array(s_bytes).inv_odd_mod(&NistP256::ORDER);
        if !bool::from(exists) {
            return Some(false);
        }
        let w = Option::<Scalar>::from(Scalar::from_repr(w.to_be_byte_array()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let digest: [u8; 32] = digest.as_ref().try_into().ok()?;
        let e = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(digest));
        let mut sum = ProjectivePoint::IDENTITY;
        GENERATOR.add_multiple(&mut sum, &(e * w).to_repr());
        self.key.add_multiple(&mut sum, &(*r * w).to_repr());
        let point = sum.to_affine();
        if bool::from(point.is_identity()) {
            return Some(false);
        }
        let x = <Scalar as Reduce<U256>>::reduce_bytes(&point.x());
        Some(x == *r)
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

#[cfg(test)]
mod tests;
