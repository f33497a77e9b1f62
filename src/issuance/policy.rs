//! What a workload CSR may ask for. Refuse, do not rewrite: a CSR whose names differ from the
//! identity being issued is an error the caller should see (as istio-csr does).

use std::time::Duration;

use crate::auth::SpiffeId;
use crate::ca::{CsrKey, ParsedCsr};

/// Largest CSR PEM accepted in a request.
pub const MAX_CSR_PEM: usize = 32 * 1024;

pub use crate::ca::csr::{MAX_RSA_BITS, MIN_RSA_BITS};

/// Checks the CSR against the identity that will be issued. `Err` says what is wrong.
pub fn check_csr(csr: &ParsedCsr, identity: &SpiffeId) -> Result<(), String> {
    match csr.key {
        CsrKey::Rsa { bits } if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) => {}
        CsrKey::Rsa { bits } => {
            return Err(format!(
                "RSA-{bits} keys are not accepted (2048 to {MAX_RSA_BITS} bits)"
            ))
        }
        CsrKey::EcP256 | CsrKey::EcP384 => {}
        CsrKey::Other(ref k) => {
            return Err(format!("{k} keys are not accepted (RSA, P-256, P-384)"))
        }
    }
    let want = identity.to_string();
    if csr.uri_sans.len() != 1 || csr.uri_sans[0] != want {
        return Err(format!(
            "the CSR's URI SANs {:?} must be exactly [{want:?}]",
            csr.uri_sans
        ));
    }
    if !csr.dns_sans.is_empty() || csr.ip_sans > 0 || !csr.email_sans.is_empty() {
        return Err("DNS, IP and email SANs are not allowed in workload certificates".into());
    }
    if csr.has_common_name {
        return Err("a common name is not allowed in workload certificates".into());
    }
    if !csr.other_extensions.is_empty() {
        return Err(format!(
            "extensions other than SAN, key usage and extended key usage are not allowed: {}",
            csr.other_extensions.join(", ")
        ));
    }
    Ok(())
}

/// The lifetime to issue: the requested seconds (default when absent or ≤ 0), clamped to
/// `max`. The issuer's NotAfter caps it further when the certificate is built.
pub fn ttl(requested_secs: i64, default: Duration, max: Duration) -> Duration {
    let requested = if requested_secs <= 0 {
        default
    } else {
        Duration::from_secs(requested_secs as u64)
    };
    requested.min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_defaults_and_clamps() {
        let d = Duration::from_secs(86400);
        let m = Duration::from_secs(3600);
        assert_eq!(
            ttl(0, Duration::from_secs(600), m),
            Duration::from_secs(600)
        );
        assert_eq!(
            ttl(-5, Duration::from_secs(600), m),
            Duration::from_secs(600)
        );
        assert_eq!(ttl(120, d, m), Duration::from_secs(120));
        assert_eq!(ttl(1_000_000, d, m), m);
    }
}
