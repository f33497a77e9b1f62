//! Attribute templates for key creation and the reading of key attributes back.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::keystore::der;
use crate::keystore::{KeyAlgorithm, KeyId, KeyInfo, KeystoreError};

/// Mechanism and (public, private) templates that create `algorithm` inside the token.
/// The private half is a token object, private, sensitive, never extractable, sign-only.
pub fn key_pair_templates(
    algorithm: KeyAlgorithm,
    id: &KeyId,
    label: &str,
) -> (Mechanism<'static>, Vec<Attribute>, Vec<Attribute>) {
    let common_public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Id(id.0.clone()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Id(id.0.clone()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let mut public = common_public;
    let mechanism = match algorithm {
        KeyAlgorithm::EcdsaP256 => {
            public.push(Attribute::EcParams(der::OID_P256.to_vec()));
            Mechanism::EccKeyPairGen
        }
        KeyAlgorithm::EcdsaP384 => {
            public.push(Attribute::EcParams(der::OID_P384.to_vec()));
            Mechanism::EccKeyPairGen
        }
        rsa => {
            let bits = rsa.rsa_bits().unwrap_or(2048);
            public.push(Attribute::ModulusBits(bits.into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            Mechanism::RsaPkcsKeyPairGen
        }
    };
    (mechanism, public, private)
}

/// Reads what an auditor needs to know about the private key `private` and its public half.
pub fn read_key_info(
    session: &Session,
    private: ObjectHandle,
) -> Result<KeyInfo, cryptoki::error::Error> {
    let attrs = session.get_attributes(
        private,
        &[
            AttributeType::Id,
            AttributeType::Label,
            AttributeType::KeyType,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::AlwaysSensitive,
            AttributeType::NeverExtractable,
            AttributeType::Local,
        ],
    )?;
    let mut info = KeyInfo {
        id: KeyId(Vec::new()),
        label: String::new(),
        algorithm: None,
        public_key: Vec::new(),
        sensitive: false,
        extractable: true,
        always_sensitive: false,
        never_extractable: false,
        local: false,
    };
    let mut key_type = None;
    for attr in attrs {
        match attr {
            Attribute::Id(v) => info.id = KeyId(v),
            Attribute::Label(v) => info.label = String::from_utf8_lossy(&v).into_owned(),
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Sensitive(b) => info.sensitive = b,
            Attribute::Extractable(b) => info.extractable = b,
            Attribute::AlwaysSensitive(b) => info.always_sensitive = b,
            Attribute::NeverExtractable(b) => info.never_extractable = b,
            Attribute::Local(b) => info.local = b,
            _ => {}
        }
    }
    let public = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Id(info.id.0.clone()),
        ])?
        .into_iter()
        .next();
    if let Some(public) = public {
        if key_type == Some(KeyType::EC) {
            read_ec_public(session, public, &mut info)?;
        } else if key_type == Some(KeyType::RSA) {
            read_rsa_public(session, public, &mut info)?;
        }
    }
    Ok(info)
}

fn read_ec_public(
    session: &Session,
    public: ObjectHandle,
    info: &mut KeyInfo,
) -> Result<(), cryptoki::error::Error> {
    let attrs =
        session.get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])?;
    let mut params = None;
    let mut point = None;
    for attr in attrs {
        match attr {
            Attribute::EcParams(v) => params = Some(v),
            Attribute::EcPoint(v) => point = Some(v),
            _ => {}
        }
    }
    let (Some(params), Some(point)) = (params, point) else {
        return Ok(());
    };
    let (algorithm, curve, point_len) = if params == der::OID_P256 {
        (KeyAlgorithm::EcdsaP256, der::OID_P256, 65)
    } else if params == der::OID_P384 {
        (KeyAlgorithm::EcdsaP384, der::OID_P384, 97)
    } else {
        return Ok(());
    };
    if let Some(point) = der::ec_point_from_attribute(&point, point_len) {
        info.algorithm = Some(algorithm);
        info.public_key = der::ec_spki(curve, &point);
    }
    Ok(())
}

fn read_rsa_public(
    session: &Session,
    public: ObjectHandle,
    info: &mut KeyInfo,
) -> Result<(), cryptoki::error::Error> {
    let attrs = session.get_attributes(
        public,
        &[AttributeType::Modulus, AttributeType::PublicExponent],
    )?;
    let mut modulus = None;
    let mut exponent = None;
    for attr in attrs {
        match attr {
            Attribute::Modulus(v) => modulus = Some(v),
            Attribute::PublicExponent(v) => exponent = Some(v),
            _ => {}
        }
    }
    let (Some(modulus), Some(exponent)) = (modulus, exponent) else {
        return Ok(());
    };
    let significant = modulus.iter().skip_while(|b| **b == 0).count();
    info.algorithm = match significant * 8 {
        2048 => Some(KeyAlgorithm::Rsa2048),
        3072 => Some(KeyAlgorithm::Rsa3072),
        4096 => Some(KeyAlgorithm::Rsa4096),
        _ => None,
    };
    info.public_key = der::rsa_spki(&modulus, &exponent);
    Ok(())
}

/// A key id must be unique on the token; this refuses ambiguity rather than guess.
pub fn single(
    handles: Vec<ObjectHandle>,
    id: &KeyId,
) -> Result<Option<ObjectHandle>, KeystoreError> {
    match handles.len() {
        0 => Ok(None),
        1 => Ok(handles.into_iter().next()),
        n => Err(KeystoreError::Device {
            operation: "find key".into(),
            reason: format!("{n} private keys share id {id}"),
        }),
    }
}
