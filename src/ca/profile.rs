//! The certificate profiles: what a root, an intermediate and a workload leaf contain.
//!
//! Roots and intermediates follow RFC 5280 and the SPIFFE X.509-SVID rules for signing
//! certificates; leaves follow the profile Istio's own CA issues (see the Istio CA contract):
//! empty subject, one critical URI SAN, digitalSignature + keyEncipherment, serverAuth +
//! clientAuth, CA:false, a random 128-bit serial, NotBefore backdated by the clock skew.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::CaError;
use crate::keystore::der;

/// A subject as officers configure it.
#[derive(Clone, Debug)]
pub struct Subject {
    pub common_name: String,
    pub organization: Option<String>,
}

impl Subject {
    pub fn to_dn(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        if let Some(o) = &self.organization {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        dn.push(DnType::CommonName, self.common_name.as_str());
        dn
    }
}

/// A random positive 128-bit serial number.
pub fn random_serial() -> SerialNumber {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    // A zero first byte would shorten the encoded serial; keep all 128 bits significant.
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    SerialNumber::from_slice(&bytes)
}

fn offset(now: OffsetDateTime, by: Duration) -> OffsetDateTime {
    now + time::Duration::try_from(by).unwrap_or(time::Duration::MAX)
}

fn back(now: OffsetDateTime, by: Duration) -> OffsetDateTime {
    now - time::Duration::try_from(by).unwrap_or(time::Duration::ZERO)
}

/// A self-signed root: CA:true, keyCertSign + cRLSign (critical), SKI.
pub fn root(
    subject: &Subject,
    validity: Duration,
    now: OffsetDateTime,
    skew: Duration,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject.to_dn();
    p.serial_number = Some(random_serial());
    p.not_before = back(now, skew);
    p.not_after = offset(now, validity);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method = KeyIdMethod::Sha256;
    p
}

/// What an intermediate is made from.
#[derive(Clone, Debug)]
pub struct IntermediateProfile {
    pub trust_domain: String,
    pub validity: Duration,
    pub name_constraint: bool,
    pub clock_skew: Duration,
}

/// An intermediate: CA:true pathLen 0, keyCertSign + cRLSign, SKI + AKI, URI SAN
/// `spiffe://<trust domain>`, optionally a URI name constraint on the trust domain.
/// NotAfter never passes the issuer's.
pub fn intermediate(
    subject: DistinguishedName,
    profile: &IntermediateProfile,
    now: OffsetDateTime,
    issuer_not_after: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject;
    p.serial_number = Some(random_serial());
    p.not_before = back(now, profile.clock_skew);
    p.not_after = offset(now, profile.validity).min(issuer_not_after);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.use_authority_key_identifier_extension = true;
    let uri = format!("spiffe://{}", profile.trust_domain);
    p.subject_alt_names =
        vec![SanType::URI(uri.as_str().try_into().map_err(|_| {
            CaError::Policy(format!("{uri} is not an IA5 string"))
        })?)];
    if profile.name_constraint {
        p.custom_extensions
            .push(uri_name_constraint(&profile.trust_domain));
    }
    Ok(p)
}

/// A critical NameConstraints extension permitting only URIs whose host is `trust_domain`.
pub fn uri_name_constraint(trust_domain: &str) -> CustomExtension {
    // NameConstraints ::= SEQUENCE { permittedSubtrees [0] SEQUENCE OF GeneralSubtree }
    // GeneralSubtree ::= SEQUENCE { base GeneralName }; uniformResourceIdentifier is [6] IA5String.
    let base = der::tlv(0x86, trust_domain.as_bytes());
    let subtree = der::tlv(0x30, &base);
    let permitted = der::tlv(0xa0, &subtree);
    let content = der::tlv(0x30, &permitted);
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 30], content);
    ext.set_criticality(true);
    ext
}

/// An end-entity certificate with an empty subject and no SANs yet: a random serial,
/// CA:false, digitalSignature + keyEncipherment, serverAuth and/or clientAuth, AKI.
pub fn end_entity(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    server: bool,
    client: bool,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.serial_number = Some(random_serial());
    p.not_before = not_before;
    p.not_after = not_after;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if server {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if client {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    p.use_authority_key_identifier_extension = true;
    p
}

/// A workload leaf for `spiffe_id`, valid from `not_before` to `not_after`.
pub fn leaf(
    spiffe_id: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    // Empty subject: the identity is the URI SAN, which rcgen then marks critical.
    let mut p = end_entity(not_before, not_after, true, true);
    p.subject_alt_names =
        vec![SanType::URI(spiffe_id.try_into().map_err(|_| {
            CaError::Policy(format!("{spiffe_id:?} is not an IA5 string"))
        })?)];
    Ok(p)
}

/// The CA's own TLS serving certificate: DNS and IP SANs, serverAuth, CA:false.
pub fn server(
    dns_names: &[String],
    ip_addresses: &[std::net::IpAddr],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    if let Some(first) = dns_names.first() {
        p.distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    p.serial_number = Some(random_serial());
    p.not_before = not_before;
    p.not_after = not_after;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    for name in dns_names {
        p.subject_alt_names.push(SanType::DnsName(
            name.as_str()
                .try_into()
                .map_err(|_| CaError::Policy(format!("{name:?} is not a DNS name")))?,
        ));
    }
    p.subject_alt_names
        .extend(ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    Ok(p)
}

/// The leaf's validity: from `now - skew` to `now + ttl`, never past the issuer's NotAfter.
pub fn leaf_validity(
    now: OffsetDateTime,
    ttl: Duration,
    skew: Duration,
    issuer_not_after: OffsetDateTime,
) -> (OffsetDateTime, OffsetDateTime) {
    (back(now, skew), offset(now, ttl).min(issuer_not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_random_128_bit() {
        let a = random_serial();
        let b = random_serial();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert_ne!(a.to_bytes()[0], 0);
    }

    #[test]
    fn leaf_validity_is_capped_at_issuer() {
        let now = OffsetDateTime::now_utc();
        let issuer_end = now + time::Duration::hours(1);
        let (nb, na) = leaf_validity(
            now,
            Duration::from_secs(86400),
            Duration::from_secs(120),
            issuer_end,
        );
        assert_eq!(na, issuer_end);
        assert_eq!(now - nb, time::Duration::seconds(120));
    }

    #[test]
    fn name_constraint_encodes_a_permitted_uri_subtree() {
        let ext = uri_name_constraint("td");
        assert!(ext.criticality());
        assert_eq!(
            ext.content(),
            &[0x30, 0x08, 0xa0, 0x06, 0x30, 0x04, 0x86, 0x02, b't', b'd']
        );
    }
}
