//! Key templates for the TPM: the sign-only attributes every hsm-ca key gets, the fixed
//! template of the storage primary, and the reading of a key's public area back into an
//! algorithm, a SubjectPublicKeyInfo and a [`KeyInfo`].
//!
//! This part only builds and reads structures; it never talks to the TPM, and it never
//! reports a key as device-bound unless its attributes forbid it ever leaving the TPM.

use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::structures::{
    EccPoint, EccScheme, HashScheme, Public, PublicBuilder, PublicEccParametersBuilder,
    PublicKeyRsa, PublicRsaParametersBuilder, RsaExponent, RsaScheme, SymmetricDefinitionObject,
};

use crate::keystore::{der, KeyAlgorithm, KeyId, KeyInfo, KeystoreError};

fn sign_attributes() -> Result<ObjectAttributes, tss_esapi::Error> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()
}

/// The storage primary: the same template gives the same key on every call.
pub(super) fn primary_template() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

pub(super) fn key_template(algorithm: KeyAlgorithm) -> Result<Public, KeystoreError> {
    let build = || -> Result<Public, tss_esapi::Error> {
        let builder = PublicBuilder::new()
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(sign_attributes()?);
        let ecc = |hash, curve| -> Result<Public, tss_esapi::Error> {
            builder
                .clone()
                .with_public_algorithm(PublicAlgorithm::Ecc)
                .with_ecc_parameters(
                    PublicEccParametersBuilder::new_unrestricted_signing_key(
                        EccScheme::EcDsa(HashScheme::new(hash)),
                        curve,
                    )
                    .build()?,
                )
                .with_ecc_unique_identifier(EccPoint::default())
                .build()
        };
        match algorithm {
            KeyAlgorithm::EcdsaP256 => ecc(HashingAlgorithm::Sha256, EccCurve::NistP256),
            KeyAlgorithm::EcdsaP384 => ecc(HashingAlgorithm::Sha384, EccCurve::NistP384),
            _ => builder
                .clone()
                .with_public_algorithm(PublicAlgorithm::Rsa)
                .with_rsa_parameters(
                    PublicRsaParametersBuilder::new_unrestricted_signing_key(
                        RsaScheme::RsaSsa(HashScheme::new(HashingAlgorithm::Sha256)),
                        RsaKeyBits::Rsa2048,
                        RsaExponent::default(),
                    )
                    .build()?,
                )
                .with_rsa_unique_identifier(PublicKeyRsa::default())
                .build(),
        }
    };
    if algorithm.rsa_bits().is_some_and(|bits| bits != 2048) {
        return Err(KeystoreError::Unsupported(format!(
            "{algorithm} keys in the TPM backend (rsa-2048, ecdsa-p256, ecdsa-p384 only)"
        )));
    }
    build().map_err(|e| KeystoreError::Device {
        operation: "key template".into(),
        reason: e.to_string(),
    })
}

/// Algorithm and DER SubjectPublicKeyInfo of a TPM public area.
pub(super) fn public_key_of(public: &Public) -> Option<(KeyAlgorithm, Vec<u8>)> {
    match public {
        Public::Ecc {
            parameters, unique, ..
        } => {
            let (algorithm, oid, field) = match parameters.ecc_curve() {
                EccCurve::NistP256 => (KeyAlgorithm::EcdsaP256, der::OID_P256, 32),
                EccCurve::NistP384 => (KeyAlgorithm::EcdsaP384, der::OID_P384, 48),
                _ => return None,
            };
            // The TPM drops leading zero bytes of x and y; the SEC1 point needs full width.
            let mut point = vec![0x04];
            point.extend(der::left_pad(unique.x().value(), field)?);
            point.extend(der::left_pad(unique.y().value(), field)?);
            Some((algorithm, der::ec_spki(oid, &point)))
        }
        Public::Rsa {
            parameters, unique, ..
        } => {
            if parameters.key_bits() != RsaKeyBits::Rsa2048 {
                return None;
            }
            // Exponent 0 in a TPM public area means the default, 65537.
            let exponent = match parameters.exponent().value() {
                0 => 65537,
                e => e,
            };
            Some((
                KeyAlgorithm::Rsa2048,
                der::rsa_spki(unique.value(), &exponent.to_be_bytes()),
            ))
        }
        _ => None,
    }
}

/// How TPM object attributes answer the questions [`KeyInfo`] asks (they come from PKCS#11):
/// - `local` and `always_sensitive`: `sensitiveDataOrigin` — the TPM generated the private
///   part itself, so it never existed outside.
/// - `never_extractable` and `!extractable`: `fixedTPM` and `fixedParent` — the key can never
///   be duplicated to another TPM or re-parented (a TPM has no command that returns a private
///   key in the clear; duplication is the only way out, and these attributes forbid it).
/// - `sensitive`: a TPM never reveals a private key, so it is sensitive whenever it cannot be
///   duplicated.
pub(super) fn key_info(handle: u32, public: &Public) -> Result<KeyInfo, KeystoreError> {
    let id = KeyId(handle.to_be_bytes().to_vec());
    let attributes = public.object_attributes();
    let non_duplicable = attributes.fixed_tpm() && attributes.fixed_parent();
    let born_inside = attributes.sensitive_data_origin();
    let (algorithm, public_key) = match public_key_of(public) {
        Some((a, k)) => (Some(a), k),
        None => (None, Vec::new()),
    };
    Ok(KeyInfo {
        label: format!("tpm 0x{handle:08x}"),
        id,
        algorithm,
        public_key,
        sensitive: non_duplicable,
        extractable: !non_duplicable,
        always_sensitive: born_inside,
        never_extractable: non_duplicable,
        local: born_inside,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::tpm::HANDLE_BASE;

    fn public_with(fixed_tpm: bool, fixed_parent: bool, sensitive_origin: bool) -> Public {
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(fixed_tpm)
            .with_fixed_parent(fixed_parent)
            .with_sensitive_data_origin(sensitive_origin)
            .with_user_with_auth(true)
            .with_sign_encrypt(true)
            .build()
            .expect("attributes");
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new_unrestricted_signing_key(
                    EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                    EccCurve::NistP256,
                )
                .build()
                .expect("params"),
            )
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .expect("public")
    }

    #[test]
    fn only_non_duplicable_keys_born_in_the_tpm_count_as_device_bound() {
        let bound = key_info(HANDLE_BASE, &public_with(true, true, true)).expect("info");
        assert!(bound.is_device_bound());
        assert_eq!(bound.id.0, vec![0x81, 0x01, 0x00, 0x00]);
        for (tpm, parent, origin) in [
            (false, true, true),
            (true, false, true),
            (true, true, false),
        ] {
            let info = key_info(HANDLE_BASE, &public_with(tpm, parent, origin)).expect("info");
            assert!(
                !info.is_device_bound(),
                "fixedTPM {tpm} fixedParent {parent} sensitiveDataOrigin {origin}"
            );
        }
    }
}
