//! The check every signature passes before it leaves the keystore: it must verify with the
//! public key of the key that was asked to sign, so that a device fault or a stale handle (one
//! that names another key since a recovery) can never hand out a wrong signature.
//!
//! A CA signs thousands of times with the same few keys, so a P-256 key that keeps signing gets
//! a table of its signed multiples (and the generator has one per process): `u1·G + u2·Q` then
//! takes at most 52 mixed additions in Jacobian coordinates instead of ring's 256 doublings and
//! constant-time window additions, which verification of public data does not need. The check
//! is the same ECDSA verification (FIPS 186-5 6.4.2, as ring does it: `r` and `s` in
//! `[1, n-1]`, `R` not the identity, `x(R) mod n == r`). Whatever it does not cover goes to
//! ring, so the two never disagree on what passes: a signature that is not canonical DER, and
//! an addition of a point to itself or its negation, which the incomplete formula leaves out.
//! Until a key's table is ready, and for every other key and algorithm, ring checks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use p256::elliptic_curve::bigint::{ArrayEncoding, Limb, U256};
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::Double;
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use p256::elliptic_curve::{Curve, PrimeField};
use p256::{
    AffinePoint, EncodedPoint, FieldBytes, FieldElement, NistP256, NonZeroScalar, ProjectivePoint,
    Scalar,
};

use super::{der, signature_verifies, SignatureScheme};

/// Signatures a key makes before its table is built (~10 ms on one core, ~0.85 MB): keys that
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

/// A table entry: an affine point, one cache line.
#[derive(Clone, Copy)]
#[repr(align(64))]
struct Entry {
    x: FieldElement,
    y: FieldElement,
}

impl Entry {
    /// The y coordinate of the point, or of its negation.
    fn y(&self, negate: bool) -> FieldElement {
        if negate {
            self.y.neg()
        } else {
            self.y
        }
    }
}

/// A running sum in Jacobian coordinates: the point `(X/Z², Y/Z³)`.
#[derive(Clone, Copy)]
struct Jacobian {
    x: FieldElement,
    y: FieldElement,
    z: FieldElement,
}

impl Jacobian {
    fn from_entry(entry: &Entry, negate: bool) -> Jacobian {
        Jacobian {
            x: entry.x,
            y: entry.y(negate),
            z: FieldElement::ONE,
        }
    }

    /// `self + (±entry)` with the mixed addition of Bernstein and Lange ("madd-2007-bl",
    /// 7M + 4S); `None` when `±entry` is `self` or `-self`, which that formula does not cover
    /// (the caller then asks ring).
    fn add(&self, entry: &Entry, negate: bool) -> Option<Jacobian> {
        let y2 = entry.y(negate);
        let z1z1 = self.z.square();
        let u2 = entry.x * z1z1;
        let s2 = y2 * self.z * z1z1;
        let h = u2 - self.x;
        if bool::from(h.is_zero()) {
            return None;
        }
        let hh = h.square();
        let i = hh.double().double();
        let j = h * i;
        let r = (s2 - self.y).double();
        let v = self.x * i;
        let x3 = r.square() - j - v.double();
        let y3 = r * (v - x3) - (self.y * j).double();
        let z3 = (self.z + h).square() - z1z1 - hh;
        Some(Jacobian {
            x: x3,
            y: y3,
            z: z3,
        })
    }

    /// Whether the x coordinate, reduced mod n, is `r` (`r` in `[1, n-1]`), without an
    /// inversion: `x = X/Z²` is below p, so it is `r` or `r + n`.
    fn x_mod_n_is(&self, r: &FieldBytes) -> bool {
        let z2 = self.z.square();
        if bool::from(z2.is_zero()) {
            return false;
        }
        let r = U256::from_be_byte_array(*r);
        let candidate = |value: U256| {
            Option::<FieldElement>::from(FieldElement::from_uint(value))
                .is_some_and(|value| value * z2 == self.x)
        };
        let (plus_n, carry) = r.adc(&NistP256::ORDER, Limb::ZERO);
        candidate(r) || (carry == Limb::ZERO && candidate(plus_n))
    }
}

/// Signed multiples of a point: with `w`-bit windows, `rows[i][d - 1]` is `d · 2^(w·i) · P` for
/// `d` in `[1, 2^(w-1)]`; a scalar written in signed digits of that range is then one addition
/// (or subtraction) per non-zero digit.
struct Table {
    window: usize,
    rows: Vec<Vec<Entry>>,
}

impl Table {
    /// `None` only if a formula's case were met that mathematics excludes for a point of the
    /// curve: a wrong table must never be built.
    fn new(point: ProjectivePoint, window: usize) -> Option<Table> {
        let per_row = 1 << (window - 1);
        let count = 256 / window + 1;
        let mut rows = Vec::with_capacity(count);
        let mut base = point;
        for _ in 0..count {
            // d·B for d ≥ 3 is (d-1)·B + B, never ±B, so the mixed addition always applies.
            let first = entry(&base.to_affine())?;
            let mut multiples = vec![
                Jacobian::from_entry(&first, false),
                Jacobian::from_entry(&entry(&base.double().to_affine())?, false),
            ];
            while multiples.len() < per_row {
                let last = *multiples.last()?;
                multiples.push(last.add(&first, false)?);
            }
            rows.push(normalize(&multiples)?);
            for _ in 0..window {
                base = base.double();
            }
        }
        Some(Table { window, rows })
    }

    /// Adds `k · P` to `sum` (`None` is the identity), `k` as 32 big-endian bytes; `None` when an
    /// addition falls outside the formula.
    fn add_multiple(&self, sum: &mut Option<Jacobian>, k: &FieldBytes) -> Option<()> {
        let words = U256::from_be_byte_array(*k).to_words();
        let bit = |at: usize| words.get(at / 64).map_or(0, |w| (w >> (at % 64)) & 1);
        let (half, full) = (1u64 << (self.window - 1), 1u64 << self.window);
        let mut carry = 0;
        for (i, row) in self.rows.iter().enumerate() {
            let start = i * self.window;
            let digits = (0..self.window).fold(0, |v, b| v | bit(start + b) << b) + carry;
            let (digit, negate) = if digits > half {
                carry = 1;
                (full - digits, true)
            } else {
                carry = 0;
                (digits, false)
            };
            if digit == 0 {
                continue;
            }
            let entry = &row[usize::try_from(digit).ok()? - 1];
            *sum = Some(match sum {
                None => Jacobian::from_entry(entry, negate),
                Some(point) => point.add(entry, negate)?,
            });
        }
        (carry == 0).then_some(())
    }
}

/// The affine form of each point, with one inversion for them all.
fn normalize(points: &[Jacobian]) -> Option<Vec<Entry>> {
    let mut products = Vec::with_capacity(points.len());
    let mut product = FieldElement::ONE;
    for point in points {
        product *= &point.z;
        products.push(product);
    }
    let mut inverse = Option::<FieldElement>::from(product.invert())?;
    let mut entries = vec![
        Entry {
            x: FieldElement::ZERO,
            y: FieldElement::ZERO,
        };
        points.len()
    ];
    for i in (0..points.len()).rev() {
        let z_inverse = if i == 0 {
            inverse
        } else {
            inverse * products[i - 1]
        };
        inverse *= &points[i].z;
        let z2 = z_inverse.square();
        entries[i] = Entry {
            x: points[i].x * z2,
            y: points[i].y * z2 * z_inverse,
        };
    }
    Some(entries)
}

/// A point's entry; `None` for the identity, which has no coordinates.
fn entry(point: &AffinePoint) -> Option<Entry> {
    let encoded = point.to_encoded_point(false);
    let coordinate =
        |bytes: Option<&FieldBytes>| Option::<FieldElement>::from(FieldElement::from_bytes(bytes?));
    Some(Entry {
        x: coordinate(encoded.x())?,
        y: coordinate(encoded.y())?,
    })
}

/// Window of the tables: 26 rows of 512 points, ~0.85 MB a table, 26 additions a scalar. Wider
/// windows mean fewer additions but tables that miss the cache more (12 bits, 2.9 MB, was
/// slower in the appliance than 10).
const WINDOW: usize = 10;

/// The generator's table, built once per process when the first key gets its own.
static GENERATOR: LazyLock<Option<Table>> =
    LazyLock::new(|| Table::new(ProjectivePoint::GENERATOR, WINDOW));

/// A P-256 public key with its table, beside the generator's.
struct Comb {
    generator: &'static Table,
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
        Some(Comb {
            generator: GENERATOR.as_ref()?,
            key: Table::new(affine.into(), WINDOW)?,
        })
    }

    /// ECDSA P-256 with SHA-256 over `message`; `None` when `signature` is not canonical DER
    /// with two 32-byte integers, or the sum meets a case the addition formula leaves out (the
    /// caller then asks ring).
    fn verify(&self, message: &[u8], signature: &[u8]) -> Option<bool> {
        let (r_bytes, s_bytes) = canonical_halves(signature)?;
        let in_range = |bytes| Option::<NonZeroScalar>::from(NonZeroScalar::from_repr(bytes));
        let (Some(r), Some(_)) = (in_range(r_bytes), in_range(s_bytes)) else {
            return Some(false);
        };
        let w = Option::<Scalar>::from(Scalar::from_repr(
            inverse_mod_n(&U256::from_be_byte_array(s_bytes))?.to_be_byte_array(),
        ))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let digest: [u8; 32] = digest.as_ref().try_into().ok()?;
        let e = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(digest));
        let mut sum = None;
        self.generator.add_multiple(&mut sum, &(e * w).to_repr())?;
        self.key.add_multiple(&mut sum, &(*r * w).to_repr())?;
        // No sum is the identity: R must not be.
        Some(sum.is_some_and(|point| point.x_mod_n_is(&r_bytes)))
    }
}

/// `a⁻¹ mod n` for `a` in `[1, n-1]`, by the binary extended Euclidean algorithm: variable
/// time, which public values allow, and about twice as fast as the constant-time inversions.
fn inverse_mod_n(a: &U256) -> Option<U256> {
    let n = NistP256::ORDER;
    if *a == U256::ZERO || *a >= n {
        return None;
    }
    let is_even = |x: &U256| x.as_words()[0] & 1 == 0;
    // x / 2 mod n: (x + n) / 2 when x is odd, with the sum's carry as its top bit.
    let half = |x: U256| {
        if is_even(&x) {
            return x.shr_vartime(1);
        }
        let (sum, carry) = x.adc(&n, Limb::ZERO);
        let half = sum.shr_vartime(1);
        if carry == Limb::ZERO {
            half
        } else {
            half | U256::ONE.shl_vartime(255)
        }
    };
    // Invariants: x1·a ≡ u and x2·a ≡ v (mod n); gcd(u, v) stays gcd(a, n) = 1.
    let (mut u, mut v, mut x1, mut x2) = (*a, n, U256::ONE, U256::ZERO);
    while u != U256::ONE && v != U256::ONE {
        // Only a common factor (none, n being prime) could bring either to zero.
        if u == U256::ZERO || v == U256::ZERO {
            return None;
        }
        while is_even(&u) {
            u = u.shr_vartime(1);
            x1 = half(x1);
        }
        while is_even(&v) {
            v = v.shr_vartime(1);
            x2 = half(x2);
        }
        if u >= v {
            u = u.wrapping_sub(&v);
            x1 = x1.sub_mod(&x2, &n);
        } else {
            v = v.wrapping_sub(&u);
            x2 = x2.sub_mod(&x1, &n);
        }
    }
    Some(if u == U256::ONE { x1 } else { x2 })
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
