//! The issuing CA as the service sees it: swapped atomically when an intermediate is rotated,
//! so a request in flight finishes with the CA it started with.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::ca::{certificate_pem, IssuingCa};

/// Everything one issuance needs from the CA state.
#[derive(Debug)]
pub struct IssuerSnapshot {
    pub ca: IssuingCa,
    /// Intermediates between the issuing CA and the root, issuing CA first, one PEM each.
    pub intermediates_pem: Vec<String>,
    /// Every root of the trust bundle, DER.
    pub roots: Vec<Vec<u8>>,
    /// The trust bundle as one PEM string (the last element of every response).
    pub bundle_pem: String,
}

impl IssuerSnapshot {
    pub fn new(ca: IssuingCa, roots: Vec<Vec<u8>>) -> Self {
        let intermediates_pem = vec![certificate_pem(ca.cert_der())];
        let bundle_pem = roots.iter().map(|r| certificate_pem(r)).collect::<String>();
        IssuerSnapshot {
            ca,
            intermediates_pem,
            roots,
            bundle_pem,
        }
    }
}

/// The current issuer, hot-swappable.
#[derive(Debug)]
pub struct IssuerView {
    current: ArcSwap<IssuerSnapshot>,
}

impl IssuerView {
    pub fn new(first: IssuerSnapshot) -> Self {
        IssuerView {
            current: ArcSwap::from_pointee(first),
        }
    }

    /// The issuer for one request; hold the `Arc` for the whole request.
    pub fn load(&self) -> Arc<IssuerSnapshot> {
        self.current.load_full()
    }

    /// Makes `next` the issuer for requests that start from now on.
    pub fn replace(&self, next: IssuerSnapshot) {
        self.current.store(Arc::new(next));
    }
}
