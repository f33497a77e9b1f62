//! Revocation reasons (RFC 5280 CRLReason) and the entries of a CRL. The reason given when a
//! certificate is revoked (`key-compromise`, …) is stored with the revocation and written into
//! its CRL entry, except `unspecified`, which RFC 5280 says to leave out.

use time::OffsetDateTime;

/// Why a certificate is revoked, spelled as the ceremony, the admin API and the records spell
/// it (`key-compromise`; RFC 5280's `keyCompromise` is read too). `removeFromCRL` (delta CRLs
/// only) is not one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    PrivilegeWithdrawn,
    AaCompromise,
}

const ALL: [RevocationReason; 9] = [
    RevocationReason::Unspecified,
    RevocationReason::KeyCompromise,
    RevocationReason::CaCompromise,
    RevocationReason::AffiliationChanged,
    RevocationReason::Superseded,
    RevocationReason::CessationOfOperation,
    RevocationReason::CertificateHold,
    RevocationReason::PrivilegeWithdrawn,
    RevocationReason::AaCompromise,
];

impl RevocationReason {
    /// The reason as recorded and shown.
    pub fn name(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key-compromise",
            RevocationReason::CaCompromise => "ca-compromise",
            RevocationReason::AffiliationChanged => "affiliation-changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation-of-operation",
            RevocationReason::CertificateHold => "certificate-hold",
            RevocationReason::PrivilegeWithdrawn => "privilege-withdrawn",
            RevocationReason::AaCompromise => "aa-compromise",
        }
    }

    /// The RFC 5280 CRLReason code.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::CaCompromise => 2,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
            RevocationReason::CertificateHold => 6,
            RevocationReason::PrivilegeWithdrawn => 9,
            RevocationReason::AaCompromise => 10,
        }
    }

    /// The reason of a CRLReason code; an unknown code is `unspecified`.
    pub fn from_code(code: u8) -> Self {
        ALL.into_iter()
            .find(|r| r.code() == code)
            .unwrap_or(RevocationReason::Unspecified)
    }

    /// The reason a stored revocation names; one recorded before reasons were checked (any
    /// text) is `unspecified`.
    pub fn from_stored(name: &str) -> Self {
        name.parse().unwrap_or(RevocationReason::Unspecified)
    }

    /// The reason code extension of a CRL entry: none for `unspecified` (RFC 5280 5.3.1).
    fn rcgen(self) -> Option<rcgen::RevocationReason> {
        use rcgen::RevocationReason as R;
        Some(match self {
            RevocationReason::Unspecified => return None,
            RevocationReason::KeyCompromise => R::KeyCompromise,
            RevocationReason::CaCompromise => R::CaCompromise,
            RevocationReason::AffiliationChanged => R::AffiliationChanged,
            RevocationReason::Superseded => R::Superseded,
            RevocationReason::CessationOfOperation => R::CessationOfOperation,
            RevocationReason::CertificateHold => R::CertificateHold,
            RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            RevocationReason::AaCompromise => R::AaCompromise,
        })
    }
}

impl std::fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RevocationReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // `key-compromise`, `keyCompromise` and `KEY_COMPROMISE` are one reason.
        let fold = |n: &str| {
            n.chars()
                .filter(|c| *c != '-' && *c != '_')
                .map(|c| c.to_ascii_lowercase())
                .collect::<String>()
        };
        let wanted = fold(s);
        ALL.into_iter()
            .find(|r| fold(r.name()) == wanted)
            .ok_or_else(|| {
                format!(
                    "unknown revocation reason {s:?} (expected one of {})",
                    ALL.map(RevocationReason::name).join(", ")
                )
            })
    }
}

/// One entry of a CRL to sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub serial: Vec<u8>,
    pub at: OffsetDateTime,
    pub reason: RevocationReason,
}

impl Revoked {
    /// The entry of a stored revocation (hex serial, RFC 3339 time, reason name); a time that
    /// does not parse is `now`.
    pub fn from_stored(
        serial_hex: &str,
        revoked_at: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Self {
        Revoked {
            serial: hex::decode(serial_hex).unwrap_or_default(),
            at: OffsetDateTime::parse(revoked_at, &time::format_description::well_known::Rfc3339)
                .unwrap_or(now),
            reason: RevocationReason::from_stored(reason),
        }
    }

    pub(super) fn params(&self) -> rcgen::RevokedCertParams {
        rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&self.serial),
            revocation_time: self.at,
            reason_code: self.reason.rcgen(),
            invalidity_date: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for r in ALL {
            assert_eq!(r.name().parse::<RevocationReason>(), Ok(r));
            assert_eq!(RevocationReason::from_code(r.code()), r);
        }
        assert_eq!("keyCompromise".parse(), Ok(RevocationReason::KeyCompromise));
        assert_eq!("cACompromise".parse(), Ok(RevocationReason::CaCompromise));
        assert!("stolen".parse::<RevocationReason>().is_err());
        assert_eq!(
            RevocationReason::from_stored("an old free-form reason"),
            RevocationReason::Unspecified
        );
        assert!(RevocationReason::Unspecified.rcgen().is_none());
        assert_eq!(
            RevocationReason::KeyCompromise.rcgen(),
            Some(rcgen::RevocationReason::KeyCompromise)
        );
    }
}
