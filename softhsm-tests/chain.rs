//! Root → intermediate → leaf chains built with keys in SoftHSM, checked by an independent
//! verifier (`openssl verify -x509_strict`) and field by field against the profiles.

mod support;

use std::path::Path;
use std::time::Duration;

use hsm_ca::authority;
use hsm_ca::ca::{self, IssuingCa};
use hsm_ca::config::Config;
use hsm_ca::keystore::{KeyAlgorithm, KeyStore};
use rcgen::PublicKeyData;
use support::{openssl_in, openssl_p256_csr, openssl_verify, TestToken};
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

fn config(root_alg: KeyAlgorithm, inter_alg: KeyAlgorithm, extra: &str) -> Config {
    let text = format!(
        r#"trust_domain = "example.org"
[keystore]
module = "/unused"
token_label = "unused"
pin_env = "UNUSED"
[root]
key_algorithm = "{root_alg}"
organization = "Example"
[intermediate]
key_algorithm = "{inter_alg}"
{extra}
"#
    );
    Config::parse(Path::new("/tmp/hsm-ca.toml"), &text).expect("config")
}

struct Chain {
    root: Vec<u8>,
    intermediate: IssuingCa,
}

fn build_chain(store: &KeyStore, cfg: &Config, now: OffsetDateTime) -> Chain {
    let (_, root) = authority::create_root(store, cfg, now).expect("root");
    let root_ca = authority::issuing_ca_for(store, &root.der).expect("root ca");
    let (_, csr_pem) = authority::new_intermediate_csr(store, cfg, now).expect("csr");
    let csr = ca::parse_csr(csr_pem.as_bytes()).expect("parse csr");
    let inter = authority::sign_intermediate(&root_ca, &csr, cfg, now).expect("sign intermediate");
    let intermediate = authority::issuing_ca_for(store, &inter.der).expect("intermediate ca");
    Chain {
        root: root.der,
        intermediate,
    }
}

/// A workload key and CSR in software, like istio-agent (RSA, empty O) or ztunnel (P-256).
fn workload_csr(
    alg: &'static rcgen::SignatureAlgorithm,
    spiffe_id: &str,
    empty_o: bool,
) -> (ca::ParsedCsr, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(alg).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if empty_o {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "");
    }
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe_id.try_into().expect("uri"))];
    let pem = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let csr = ca::parse_csr(pem.as_bytes()).expect("parse");
    let spki = key.subject_public_key_info();
    (csr, spki)
}

fn write(dir: &Path, name: &str, der: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, ca::certificate_pem(der)).expect("write");
    p
}

fn check_leaf_profile(leaf_der: &[u8], inter_der: &[u8], spiffe_id: &str, csr_spki: &[u8]) {
    let (_, leaf) = X509Certificate::from_der(leaf_der).expect("leaf");
    let (_, inter) = X509Certificate::from_der(inter_der).expect("inter");
    assert_eq!(
        leaf.subject().iter_attributes().count(),
        0,
        "subject must be empty"
    );
    assert_eq!(
        leaf.public_key().raw,
        csr_spki,
        "leaf key must be the CSR's key"
    );
    assert!(leaf.raw_serial().len() >= 16, "128-bit serial");
    let mut seen = (false, false, false, false, false);
    for ext in leaf.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                assert!(ext.critical, "SAN critical with an empty subject");
                assert_eq!(san.general_names.len(), 1);
                assert!(matches!(san.general_names[0], GeneralName::URI(u) if u == spiffe_id));
                seen.0 = true;
            }
            ParsedExtension::KeyUsage(ku) => {
                assert!(ext.critical);
                assert!(ku.digital_signature() && ku.key_encipherment());
                assert!(!ku.key_cert_sign() && !ku.crl_sign());
                seen.1 = true;
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.server_auth && eku.client_auth);
                seen.2 = true;
            }
            ParsedExtension::BasicConstraints(bc) => {
                assert!(ext.critical && !bc.ca);
                seen.3 = true;
            }
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                let ski = inter
                    .extensions()
                    .iter()
                    .find_map(|e| match e.parsed_extension() {
                        ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                        _ => None,
                    })
                    .expect("intermediate SKI");
                assert_eq!(aki.key_identifier.as_ref().map(|k| k.0.to_vec()), Some(ski));
                seen.4 = true;
            }
            _ => {}
        }
    }
    assert_eq!(
        seen,
        (true, true, true, true, true),
        "missing extension in leaf"
    );
}

#[test]
fn chains_verify_with_openssl_strict_for_every_ca_key_type() {
    let token = TestToken::new();
    let store = token.keystore(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let now = OffsetDateTime::now_utc();
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa2048,
    ] {
        let cfg = config(alg, alg, "");
        let chain = build_chain(&store, &cfg, now);
        let root = write(dir.path(), &format!("root-{alg}.pem"), &chain.root);
        let inter = write(
            dir.path(),
            &format!("inter-{alg}.pem"),
            chain.intermediate.cert_der(),
        );
        let (ok, out) = openssl_verify(&root, None, &inter);
        assert!(ok, "{alg} intermediate: {out}");

        // ztunnel-style P-256 CSR and istio-agent-style RSA-2048 CSR with an empty O.
        for (leaf_alg, empty_o) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, false),
            (&rcgen::PKCS_RSA_SHA256, true),
        ] {
            let id = "spiffe://example.org/ns/default/sa/web";
            let (csr, spki) = if leaf_alg == &rcgen::PKCS_RSA_SHA256 {
                rsa_csr(id)
            } else {
                workload_csr(leaf_alg, id, empty_o)
            };
            assert_eq!(csr.spki, spki);
            let leaf = chain
                .intermediate
                .issue_leaf(
                    &csr.spki,
                    id,
                    Duration::from_secs(3600),
                    Duration::from_secs(120),
                    now,
                )
                .expect("leaf");
            let leaf_path = write(dir.path(), &format!("leaf-{alg}.pem"), &leaf.der);
            let (ok, out) = openssl_verify(&root, Some(&inter), &leaf_path);
            assert!(ok, "{alg} CA, leaf: {out}");
            check_leaf_profile(&leaf.der, chain.intermediate.cert_der(), id, &csr.spki);
            assert_eq!(leaf.not_before, now - time::Duration::seconds(120));
            assert_eq!(leaf.not_after, now + time::Duration::hours(1));
        }
    }
}

/// rcgen with ring cannot generate RSA keys; openssl makes the istio-agent-style CSR.
fn rsa_csr(spiffe_id: &str) -> (ca::ParsedCsr, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key.pem");
    let csr = dir.path().join("csr.pem");
    let status = std::process::Command::new("openssl")
        .args(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .args(["-subj", "/O=/", "-addext"])
        .arg(format!("subjectAltName=critical,URI:{spiffe_id}"))
        .output()
        .expect("openssl req");
    assert!(status.status.success(), "{status:?}");
    let parsed = ca::parse_csr(&std::fs::read(&csr).expect("csr")).expect("parse rsa csr");
    assert_eq!(parsed.key, ca::CsrKey::Rsa { bits: 2048 });
    assert!(parsed.subject_is_blank && !parsed.has_common_name);
    let spki = parsed.spki.clone();
    (parsed, spki)
}

#[test]
fn validity_is_capped_by_the_issuer_at_every_level() {
    let token = TestToken::new();
    let store = token.keystore(1);
    let now = OffsetDateTime::now_utc();
    // A 2-day root cannot carry a 365-day intermediate; a 10-day leaf stops with the intermediate.
    let mut cfg = config(KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256, "");
    cfg.root.validity = Duration::from_secs(2 * 86400);
    let chain = build_chain(&store, &cfg, now);
    let (_, root) = X509Certificate::from_der(&chain.root).expect("root");
    assert_eq!(
        chain.intermediate.not_after(),
        root.validity().not_after.to_datetime()
    );
    let (csr, _) = workload_csr(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        "spiffe://example.org/ns/a/sa/b",
        false,
    );
    let leaf = chain
        .intermediate
        .issue_leaf(
            &csr.spki,
            "spiffe://example.org/ns/a/sa/b",
            Duration::from_secs(10 * 86400),
            Duration::from_secs(120),
            now,
        )
        .expect("leaf");
    assert_eq!(leaf.not_after, chain.intermediate.not_after());
    // An expired issuer signs nothing.
    let later = chain.intermediate.not_after() + time::Duration::seconds(1);
    let err = chain
        .intermediate
        .issue_leaf(
            &csr.spki,
            "spiffe://example.org/ns/a/sa/b",
            Duration::from_secs(60),
            Duration::ZERO,
            later,
        )
        .expect_err("expired issuer");
    assert!(matches!(err, ca::CaError::IssuerExpired(_)), "{err}");
}

#[test]
fn the_intermediate_profile_is_a_spiffe_signing_certificate() {
    let token = TestToken::new();
    let store = token.keystore(1);
    let cfg = config(KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256, "");
    let chain = build_chain(&store, &cfg, OffsetDateTime::now_utc());
    let (_, inter) = X509Certificate::from_der(chain.intermediate.cert_der()).expect("inter");
    let bc = inter.basic_constraints().expect("ok").expect("bc");
    assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint == Some(0));
    let ku = inter.key_usage().expect("ok").expect("ku");
    assert!(
        ku.critical
            && ku.value.key_cert_sign()
            && ku.value.crl_sign()
            && !ku.value.digital_signature()
    );
    let san = inter.subject_alternative_name().expect("ok").expect("san");
    assert_eq!(san.value.general_names.len(), 1);
    assert!(matches!(
        san.value.general_names[0],
        GeneralName::URI("spiffe://example.org")
    ));
    assert_eq!(inter.subject().to_string(), "CN=hsm-ca intermediate");
    assert!(
        inter.name_constraints().expect("ok").is_none(),
        "off by default"
    );
}

#[test]
fn the_name_constraint_keeps_leaves_inside_the_trust_domain() {
    let token = TestToken::new();
    let store = token.keystore(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let now = OffsetDateTime::now_utc();
    let cfg = config(
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP256,
        "name_constraint = true",
    );
    let chain = build_chain(&store, &cfg, now);
    let root = write(dir.path(), "root.pem", &chain.root);
    let inter = write(dir.path(), "inter.pem", chain.intermediate.cert_der());
    let (csr, _) = workload_csr(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        "spiffe://example.org/ns/a/sa/b",
        false,
    );
    let inside = chain
        .intermediate
        .issue_leaf(
            &csr.spki,
            "spiffe://example.org/ns/a/sa/b",
            Duration::from_secs(600),
            Duration::ZERO,
            now,
        )
        .expect("inside");
    let outside = chain
        .intermediate
        .issue_leaf(
            &csr.spki,
            "spiffe://evil.example/ns/a/sa/b",
            Duration::from_secs(600),
            Duration::ZERO,
            now,
        )
        .expect("outside is signed; verifiers must refuse it");
    let (ok, out) = openssl_verify(
        &root,
        Some(&inter),
        &write(dir.path(), "in.pem", &inside.der),
    );
    assert!(ok, "{out}");
    let (ok, out) = openssl_verify(
        &root,
        Some(&inter),
        &write(dir.path(), "out.pem", &outside.der),
    );
    assert!(!ok, "a leaf outside the trust domain verified: {out}");
    assert!(
        out.contains("name constraint") || out.contains("permitted subtree"),
        "{out}"
    );
}

#[test]
fn install_checks_chain_key_and_expiry() {
    let token = TestToken::new();
    let store = token.keystore(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = hsm_ca::state::SledState::open(dir.path()).expect("state");
    let now = OffsetDateTime::now_utc();
    let cfg = config(KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256, "");
    let chain = build_chain(&store, &cfg, now);
    let other = build_chain(&store, &cfg, now);
    // Chains to another root: refused.
    let err = authority::install_intermediate(
        &store,
        &state,
        std::slice::from_ref(&other.root),
        chain.intermediate.cert_der(),
        now,
    )
    .expect_err("wrong root");
    assert!(err.to_string().contains("does not chain"), "{err}");
    // The root itself is a CA cert with a key in the token, but it is not issued by a root.
    let record = authority::install_intermediate(
        &store,
        &state,
        std::slice::from_ref(&chain.root),
        chain.intermediate.cert_der(),
        now,
    )
    .expect("install");
    assert_eq!(record.status, hsm_ca::state::IntermediateStatus::Active);
    let active = authority::active_issuer(&store, &state).expect("active");
    assert_eq!(active.cert_der(), chain.intermediate.cert_der());
    // Past its NotAfter: refused.
    let late = chain.intermediate.not_after() + time::Duration::seconds(1);
    let err = authority::install_intermediate(
        &store,
        &state,
        std::slice::from_ref(&chain.root),
        other.intermediate.cert_der(),
        late,
    )
    .expect_err("expired");
    assert!(err.to_string().contains("expired"), "{err}");
}

fn key_identifier(cert: &X509Certificate) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

#[test]
fn a_cross_signed_root_keeps_the_subject_byte_for_byte_printable_string_included() {
    let token = TestToken::new();
    let store = token.keystore(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let now = OffsetDateTime::now_utc();
    let cfg = config(KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256, "");
    let (_, ours) = authority::create_root(&store, &cfg, now).expect("root");
    let ours_ca = authority::issuing_ca_for(&store, &ours.der).expect("root ca");
    let ours_file = write(dir.path(), "ours.pem", &ours.der);

    // A root made elsewhere (openssl), its subject in PrintableStrings, and a CA under it.
    std::fs::write(
        dir.path().join("req.cnf"),
        "[req]\ndistinguished_name = dn\nstring_mask = default\nprompt = no\n\
         x509_extensions = ca\n[dn]\nC = US\nO = Example Org\nCN = Imported Root\n\
         [ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .expect("openssl config");
    openssl_in(
        dir.path(),
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-config",
            "req.cnf",
            "-days",
            "3650",
            "-keyout",
            "imported.key",
            "-out",
            "imported.pem",
        ],
    );
    std::fs::write(
        dir.path().join("sub.cnf"),
        "basicConstraints = critical,CA:TRUE,pathlen:0\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
    )
    .expect("extensions");
    openssl_p256_csr(
        dir.path(),
        "/O=Example Org/CN=Imported Sub CA",
        "sub.key",
        "sub.csr",
    );
    openssl_in(
        dir.path(),
        &[
            "x509",
            "-req",
            "-in",
            "sub.csr",
            "-CA",
            "imported.pem",
            "-CAkey",
            "imported.key",
            "-CAcreateserial",
            "-days",
            "365",
            "-extfile",
            "sub.cnf",
            "-out",
            "sub.pem",
        ],
    );
    let imported_pem = std::fs::read(dir.path().join("imported.pem")).expect("imported");
    let imported = ca::certificates_from_pem(&imported_pem)
        .expect("pem")
        .remove(0);
    let (_, parsed) = X509Certificate::from_der(&imported).expect("parse");
    let printable = parsed
        .subject()
        .iter_attributes()
        .filter(|a| {
            a.attr_value().header.tag() == x509_parser::der_parser::asn1_rs::Tag::PrintableString
        })
        .count();
    assert_eq!(printable, 3, "openssl wrote PrintableStrings");

    let cross = ours_ca.cross_sign(&imported, now).expect("cross-sign");
    let (_, cross_cert) = X509Certificate::from_der(&cross.der).expect("parse");
    assert_eq!(
        cross_cert.subject().as_raw(),
        parsed.subject().as_raw(),
        "the cross-signed subject differs from the imported root's"
    );
    assert_eq!(cross_cert.public_key().raw, parsed.public_key().raw);
    let cross_file = write(dir.path(), "cross.pem", &cross.der);
    let (ok, out) = openssl_verify(&ours_file, None, &cross_file);
    assert!(ok, "cross-signed root under ours: {out}");
    // A CA the imported root signed chains to our root through the cross-signed certificate:
    // openssl matches the sub CA's issuer name with the cross-signed subject.
    let (ok, out) = openssl_verify(&ours_file, Some(&cross_file), &dir.path().join("sub.pem"));
    assert!(ok, "sub CA → cross-signed root → our root: {out}");

    assert_eq!(
        key_identifier(&cross_cert),
        key_identifier(&parsed),
        "the cross-signed certificate keeps the root's key identifier"
    );
    // Our own subject (UTF8Strings) reproduces exactly too.
    let again = ours_ca.cross_sign(&ours.der, now).expect("cross-sign ours");
    let (_, again) = X509Certificate::from_der(&again.der).expect("parse");
    let (_, ours_parsed) = X509Certificate::from_der(&ours.der).expect("parse");
    assert_eq!(again.subject().as_raw(), ours_parsed.subject().as_raw());
}
