//! A CA certificate together with its key in the device: it signs intermediates (a root) or
//! workload leaves (an intermediate).

use std::time::Duration;

use rcgen::{CertificateParams, Issuer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{certificate_pem, from_rcgen, profile, CaError};
use crate::keystore::{der, DeviceSigningKey};

/// A certificate just issued.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub der: Vec<u8>,
    pub pem: String,
    /// Serial number as lowercase hex.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl IssuedCert {
    fn from_rcgen(cert: rcgen::Certificate, params: &CertificateParams) -> Self {
        IssuedCert::new(cert.der().to_vec(), params)
    }

    fn new(der: Vec<u8>, params: &CertificateParams) -> Self {
        IssuedCert {
            pem: certificate_pem(&der),
            der,
            serial: params
                .serial_number
                .as_ref()
                .map(|s| hex::encode(s.to_bytes()))
                .unwrap_or_default(),
            not_before: params.not_before,
            not_after: params.not_after,
        }
    }
}

/// A certificate built and not yet signed ([`IssuingCa::prepare`]): its serial and validity
/// can be recorded while the device signs it.
#[derive(Debug)]
pub struct PreparedCert {
    params: CertificateParams,
    tbs: Vec<u8>,
    /// The DER signatureAlgorithm that goes beside the signature.
    algorithm: Vec<u8>,
    serial: String,
}

impl PreparedCert {
    /// Serial number as lowercase hex (as in [`IssuedCert::serial`]).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn not_before(&self) -> OffsetDateTime {
        self.params.not_before
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.params.not_after
    }

    /// Signs it in the device with `ca`'s key (the CA that prepared it) and assembles the
    /// certificate.
    pub async fn sign(self, ca: &IssuingCa) -> Result<IssuedCert, CaError> {
        let signature = ca
            .key
            .store()
            .sign(ca.key.id(), ca.key.algorithm().default_scheme(), &self.tbs)
            .await?;
        let cert_der = der::sequence(&[&self.tbs, &self.algorithm, &der::bit_string(&signature)]);
        Ok(IssuedCert::new(cert_der, &self.params))
    }
}

/// A CA certificate and the device key that belongs to it.
pub struct IssuingCa {
    issuer: Issuer<'static, DeviceSigningKey>,
    key: DeviceSigningKey,
    cert_der: Vec<u8>,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuingCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuingCa")
            .field("subject", &self.subject)
            .field("key", &self.key.id())
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl IssuingCa {
    /// Pairs a CA certificate with its key; refuses a certificate that is not a CA or whose
    /// public key is not the key's.
    pub fn new(key: DeviceSigningKey, cert_der: Vec<u8>) -> Result<Self, CaError> {
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| CaError::MalformedCertificate(e.to_string()))?;
        if cert.public_key().raw != key.spki() {
            return Err(CaError::Chain(format!(
                "certificate {} does not belong to key {}",
                cert.subject(),
                key.id()
            )));
        }
        if !cert.is_ca() {
            return Err(CaError::Chain(format!(
                "certificate {} is not a CA certificate",
                cert.subject()
            )));
        }
        let subject = cert.subject().to_string();
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key.clone())
            .map_err(|e| CaError::MalformedCertificate(e.to_string()))?;
        Ok(IssuingCa {
            issuer,
            key,
            cert_der,
            subject,
            not_before,
            not_after,
        })
    }

    /// Creates a self-signed root with the key.
    pub fn self_signed(
        key: &DeviceSigningKey,
        params: &CertificateParams,
    ) -> Result<IssuedCert, CaError> {
        let cert = params.self_signed(key).map_err(from_rcgen)?;
        Ok(IssuedCert::from_rcgen(cert, params))
    }

    pub fn key(&self) -> &DeviceSigningKey {
        &self.key
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Refuses to sign once expired; reads the subject's key from its SubjectPublicKeyInfo,
    /// never from a CSR's signature algorithm (which names a hash, not a curve).
    fn subject_key(
        &self,
        spki_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<rcgen::SubjectPublicKeyInfo, CaError> {
        if now >= self.not_after {
            return Err(CaError::IssuerExpired(self.not_after.to_string()));
        }
        rcgen::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| CaError::Policy(format!("unsupported public key: {e}")))
    }

    /// Signs `params` for the public key `spki_der` (DER SubjectPublicKeyInfo, e.g. from a CSR).
    pub fn sign(
        &self,
        params: &CertificateParams,
        spki_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<IssuedCert, CaError> {
        let subject_key = self.subject_key(spki_der, now)?;
        let cert = params
            .signed_by(&subject_key, &self.issuer)
            .map_err(from_rcgen)?;
        Ok(IssuedCert::from_rcgen(cert, params))
    }

    /// Like [`IssuingCa::sign`], but the device signature is awaited instead of blocking a
    /// thread: rcgen builds the to-be-signed bytes, the keystore signs them asynchronously, and
    /// the certificate is assembled here.
    pub async fn sign_async(
        &self,
        params: &CertificateParams,
        spki_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<IssuedCert, CaError> {
        self.prepare(params.clone(), spki_der, now)?
            .sign(self)
            .await
    }

    /// Everything of a certificate but its signature: what will be signed, with its serial
    /// and validity known before the device is asked.
    pub fn prepare(
        &self,
        params: CertificateParams,
        spki_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<PreparedCert, CaError> {
        let subject_key = self.subject_key(spki_der, now)?;
        let (unsigned, tbs) = crate::keystore::signer::capture_signed_message(|| {
            params.signed_by(&subject_key, &self.issuer)
        });
        let unsigned = unsigned.map_err(from_rcgen)?;
        let tbs =
            tbs.ok_or_else(|| CaError::Build("no to-be-signed bytes were produced".into()))?;
        // rcgen's output is SEQUENCE { tbs, signatureAlgorithm, BIT STRING (empty) }.
        let malformed = || CaError::Build("unexpected certificate encoding".into());
        let (_, content) = der::read_tlv(unsigned.der()).ok_or_else(malformed)?;
        let (tbs_tlv, rest) = der::split_tlv(content).ok_or_else(malformed)?;
        let (algorithm, _) = der::split_tlv(rest).ok_or_else(malformed)?;
        if tbs_tlv != tbs.as_slice() {
            return Err(malformed());
        }
        let algorithm = algorithm.to_vec();
        Ok(PreparedCert {
            serial: params
                .serial_number
                .as_ref()
                .map(|s| hex::encode(s.to_bytes()))
                .unwrap_or_default(),
            params,
            tbs,
            algorithm,
        })
    }

    /// [`IssuingCa::prepare`] for a workload leaf (see [`IssuingCa::issue_leaf`]).
    pub fn prepare_leaf(
        &self,
        spki_der: &[u8],
        spiffe_id: &str,
        ttl: Duration,
        clock_skew: Duration,
        now: OffsetDateTime,
    ) -> Result<PreparedCert, CaError> {
        let params = self.leaf_params(spiffe_id, ttl, clock_skew, now)?;
        self.prepare(params, spki_der, now)
    }

    /// The workload profile for `spiffe_id`, valid for `ttl` but never past this CA.
    fn leaf_params(
        &self,
        spiffe_id: &str,
        ttl: Duration,
        clock_skew: Duration,
        now: OffsetDateTime,
    ) -> Result<CertificateParams, CaError> {
        let (not_before, not_after) = profile::leaf_validity(now, ttl, clock_skew, self.not_after);
        profile::leaf(spiffe_id, not_before, not_after)
    }

    /// [`IssuingCa::issue_leaf`] without blocking a thread on the device.
    pub async fn issue_leaf_async(
        &self,
        spki_der: &[u8],
        spiffe_id: &str,
        ttl: Duration,
        clock_skew: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, CaError> {
        self.prepare_leaf(spki_der, spiffe_id, ttl, clock_skew, now)?
            .sign(self)
            .await
    }

    /// Issues a workload leaf for `spiffe_id` valid for `ttl` (capped at this CA's NotAfter).
    pub fn issue_leaf(
        &self,
        spki_der: &[u8],
        spiffe_id: &str,
        ttl: Duration,
        clock_skew: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, CaError> {
        let params = self.leaf_params(spiffe_id, ttl, clock_skew, now)?;
        self.sign(&params, spki_der, now)
    }

    /// Signs a CRL listing `revoked` (each entry with its reason code, unless unspecified),
    /// numbered `number`, valid from `now` until `next_update`. Returns its DER.
    pub fn sign_crl(
        &self,
        revoked: &[super::Revoked],
        number: u64,
        now: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<Vec<u8>, CaError> {
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update,
            crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked.iter().map(super::Revoked::params).collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).map_err(from_rcgen)?;
        Ok(crl.der().to_vec())
    }

    /// Cross-signs the CA certificate `other_der` (another root): same subject and key, issued
    /// by this CA, valid no longer than either.
    pub fn cross_sign(&self, other_der: &[u8], now: OffsetDateTime) -> Result<IssuedCert, CaError> {
        let (_, other) = X509Certificate::from_der(other_der)
            .map_err(|e| CaError::MalformedCertificate(e.to_string()))?;
        if !other.is_ca() {
            return Err(CaError::Chain(format!(
                "{} is not a CA certificate",
                other.subject()
            )));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = same_name(other.subject())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        // The root's own key identifier, so that certificates it issued (whose authority key
        // identifier names it) chain through the cross-signed certificate too.
        let ski = other
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            });
        params.key_identifier_method = match ski {
            Some(ski) => rcgen::KeyIdMethod::PreSpecified(ski),
            None => rcgen::KeyIdMethod::Sha256,
        };
        params.serial_number = Some(profile::random_serial());
        params.not_before = now.max(other.validity().not_before.to_datetime());
        params.not_after = self.not_after.min(other.validity().not_after.to_datetime());
        params.use_authority_key_identifier_extension = true;
        let cert = self.sign(&params, other.public_key().raw, now)?;
        // Chains are built by matching names byte for byte: a subject that differs from the
        // root's in any way (a string type, an order) would cross-sign nothing.
        let (_, made) = X509Certificate::from_der(&cert.der)
            .map_err(|e| CaError::MalformedCertificate(e.to_string()))?;
        if made.subject().as_raw() != other.subject().as_raw() {
            return Err(CaError::Build(format!(
                "the subject of {} cannot be reproduced exactly (a multi-valued RDN or a \
                 repeated attribute type); it is not cross-signed",
                other.subject()
            )));
        }
        Ok(cert)
    }
}

/// `name` as rcgen writes it: each attribute with its own string type (PrintableString stays
/// PrintableString), in order.
fn same_name(name: &x509_parser::x509::X509Name) -> Result<rcgen::DistinguishedName, CaError> {
    use rcgen::string::{BmpString, Ia5String, PrintableString, TeletexString, UniversalString};
    use rcgen::DnValue;
    use x509_parser::der_parser::asn1_rs::Tag;
    let bad = |what: &str| CaError::MalformedCertificate(format!("subject: {what}"));
    let text = |data: &[u8]| {
        std::str::from_utf8(data)
            .map(str::to_string)
            .map_err(|_| bad("an attribute is not valid text"))
    };
    let mut dn = rcgen::DistinguishedName::new();
    for rdn in name.iter() {
        for attr in rdn.iter() {
            let oid: Vec<u64> = attr.attr_type().iter().into_iter().flatten().collect();
            let data = attr.attr_value().data;
            let invalid = |_| bad("an attribute does not fit its string type");
            let value = match attr.attr_value().header.tag() {
                Tag::Utf8String => DnValue::Utf8String(text(data)?),
                Tag::PrintableString => DnValue::PrintableString(
                    PrintableString::try_from(text(data)?).map_err(invalid)?,
                ),
                Tag::Ia5String => {
                    DnValue::Ia5String(Ia5String::try_from(text(data)?).map_err(invalid)?)
                }
                Tag::T61String => {
                    DnValue::TeletexString(TeletexString::try_from(text(data)?).map_err(invalid)?)
                }
                Tag::BmpString => {
                    DnValue::BmpString(BmpString::from_utf16be(data.to_vec()).map_err(invalid)?)
                }
                Tag::UniversalString => DnValue::UniversalString(
                    UniversalString::from_utf32be(data.to_vec()).map_err(invalid)?,
                ),
                _ => return Err(bad("an attribute is not a string")),
            };
            dn.push(rcgen::DnType::from_oid(&oid), value);
        }
    }
    Ok(dn)
}
