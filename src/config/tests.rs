//! Config parsing and validation, and the annotated examples in hsm-config/.

use super::*;
use crate::keystore::BackendSettings;

const MINIMAL: &str = r#"
trust_domain = "cluster.local"
[keystore]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "hsm-ca"
pin_file = "pin"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/hsm-ca/hsm-ca.toml"), text)
}

#[test]
fn minimal_config_gets_safe_defaults_and_resolved_paths() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.keystore.pool.workers, 2);
    assert_eq!(
        c.root.certificates,
        vec![PathBuf::from("/etc/hsm-ca/root-cert.pem")]
    );
    let BackendSettings::Pkcs11(pkcs11) = &c.keystore.backend else {
        panic!("pkcs11 is the default backend");
    };
    assert_eq!(
        pkcs11.pin,
        SecretSource::File(PathBuf::from("/etc/hsm-ca/pin"))
    );
    assert_eq!(c.workload.clock_skew, Duration::from_secs(120));
    assert!(!c.intermediate.name_constraint);
}

#[test]
fn unknown_key_is_named() {
    let err = parse(&format!("{MINIMAL}\n[workload]\nmax_tll_secs = 5\n")).expect_err("typo");
    assert!(err.to_string().contains("max_tll_secs"), "{err}");
}

#[test]
fn pin_from_both_sources_is_refused() {
    let text = MINIMAL.replace("pin_file = \"pin\"", "pin_file = \"pin\"\npin_env = \"P\"");
    let err = parse(&text).expect_err("both");
    assert!(
        err.to_string()
            .contains("keystore.pin_file: give pin_file or pin_env"),
        "{err}"
    );
}

#[test]
fn no_pin_source_is_refused() {
    let text = MINIMAL.replace("pin_file = \"pin\"", "");
    let err = parse(&text).expect_err("none");
    assert!(err.to_string().contains("keystore.pin_file"), "{err}");
}

#[test]
fn bad_trust_domain_is_named() {
    let err = parse(&MINIMAL.replace("cluster.local", "Cluster.Local")).expect_err("caps");
    assert!(err.to_string().contains("trust_domain"), "{err}");
}

#[test]
fn bad_algorithm_is_named() {
    let text = format!("{MINIMAL}\n[root]\nkey_algorithm = \"dsa-1024\"\n");
    let err = parse(&text).expect_err("dsa");
    assert!(err.to_string().contains("dsa-1024"), "{err}");
}

#[test]
fn default_ttl_above_max_is_refused() {
    let text = format!("{MINIMAL}\n[workload]\nmax_ttl_secs = 3600\ndefault_ttl_secs = 7200\n");
    let err = parse(&text).expect_err("ttl");
    assert!(
        err.to_string().contains("workload.default_ttl_secs"),
        "{err}"
    );
}

/// The annotated examples in hsm-config/ must be configs this build accepts.
#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("hsm-config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("hsm-config/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(
        seen >= 5,
        "expected the SoftHSM and vendor examples, found {seen}"
    );
}

const TPM: &str = r#"
trust_domain = "cluster.local"
[keystore]
backend = "tpm"
tcti = "swtpm:host=127.0.0.1,port=2321"
key_auth_env = "TPM_KEY_AUTH"
"#;

#[test]
fn a_tpm_backend_gets_one_worker_and_its_auth_by_reference() {
    let c = parse(TPM).expect("valid");
    assert_eq!(c.keystore.pool.workers, 1);
    let BackendSettings::Tpm(tpm) = &c.keystore.backend else {
        panic!("backend = \"tpm\" chooses the TPM");
    };
    assert_eq!(tpm.tcti, "swtpm:host=127.0.0.1,port=2321");
    assert_eq!(tpm.key_auth, Some(SecretSource::Env("TPM_KEY_AUTH".into())));
    assert_eq!(tpm.owner_auth, None);
}

#[test]
fn tpm_config_mistakes_are_named() {
    let cases = [
        (
            TPM.replace("tcti = \"swtpm:host=127.0.0.1,port=2321\"", ""),
            "keystore.tcti",
        ),
        (
            TPM.replace("swtpm:host", "carrier-pigeon:host"),
            "keystore.tcti",
        ),
        (
            format!("{TPM}key_auth_file = \"auth\"\n"),
            "keystore.key_auth_file",
        ),
        (format!("{TPM}pin_file = \"pin\"\n"), "keystore.pin_file"),
        (format!("{TPM}module = \"/lib/x.so\"\n"), "keystore.module"),
        (TPM.replace("\"tpm\"", "\"tpm3\""), "keystore.backend"),
    ];
    for (text, key) in cases {
        let err = parse(&text).expect_err(key);
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

#[test]
fn the_store_is_sled_unless_postgres_is_chosen() {
    assert!(matches!(
        parse(MINIMAL).expect("valid").store_backend,
        crate::state::StoreBackend::Sled
    ));
    let text = format!(
        "{MINIMAL}\n[store]\nbackend = \"postgres\"\n[store.postgres]\n\
         url = \"postgresql://hsmca@db1,db2/hsmca?target_session_attrs=read-write\"\n\
         password_file = \"db-password\"\nca_file = \"db-ca.pem\"\npool_size = 4\n"
    );
    let crate::state::StoreBackend::Postgres(pg) = parse(&text).expect("valid").store_backend
    else {
        panic!("backend = \"postgres\"");
    };
    assert_eq!(pg.describe(), "postgres://hsmca@db1:5432,db2:5432/hsmca");
}

#[test]
fn store_mistakes_are_named_and_never_echo_a_password() {
    let pg = |body: &str| format!("{MINIMAL}\n[store]\nbackend = \"postgres\"\n{body}");
    let cases = [
        (pg(""), "store.postgres"),
        (
            pg("[store.postgres]\nurl = \"postgresql://ca:s3cr3t-pw@db/ca\"\npassword_env = \"P\"\n"),
            "must not contain a password",
        ),
        (
            pg("[store.postgres]\nurl = \"postgresql://ca@db/ca\"\n"),
            "password_file or password_env",
        ),
        (
            pg("[store.postgres]\nurl = \"postgresql://ca@db/ca\"\npassword_env = \"P\"\npool_size = 0\n"),
            "pool_size",
        ),
        (
            format!("{MINIMAL}\n[store]\nbackend = \"etcd\"\n"),
            "store.backend",
        ),
    ];
    for (text, expected) in cases {
        let err = parse(&text).expect_err(expected).to_string();
        assert!(err.contains(expected), "{expected}: {err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }
}

const VAULT: &str = r#"
[vault_api]
enabled = true
[[vault_api.roles]]
name = "gateways"
allowed_domains = ["mesh.example.com"]
allow_subdomains = true
[[vault_api.intermediates]]
name = "spire"
trust_domain = "spire.example.org"
[[vault_api.approles]]
name = "ci"
role_id = "r1"
secret_id_file = "ci.secret"
policies = ["gateways", "spire"]
"#;

#[test]
fn vault_api_is_off_by_default_and_resolves_its_secret_files() {
    let c = parse(MINIMAL).expect("valid");
    assert!(!c.vault_api.enabled);
    let c = parse(&format!("{MINIMAL}{VAULT}")).expect("valid");
    assert!(c.vault_api.enabled);
    assert_eq!(c.vault_api.pki_mount, "pki");
    assert_eq!(
        c.vault_api.approles[0].secret_id,
        SecretSource::File(PathBuf::from("/etc/hsm-ca/ci.secret"))
    );
    assert_eq!(
        c.vault_api.intermediates[0].trust_domain,
        "spire.example.org"
    );
}

#[test]
fn vault_api_refuses_unknown_policies_missing_secrets_and_open_roles() {
    let typo = VAULT.replace(
        r#"policies = ["gateways", "spire"]"#,
        r#"policies = ["gateway"]"#,
    );
    let err = parse(&format!("{MINIMAL}{typo}")).expect_err("unknown policy");
    assert!(err.to_string().contains("\"gateway\""), "{err}");
    let no_secret = VAULT.replace("secret_id_file = \"ci.secret\"\n", "");
    let err = parse(&format!("{MINIMAL}{no_secret}")).expect_err("no secret");
    assert!(err.to_string().contains("secret_id"), "{err}");
    let open = VAULT.replace(r#"allowed_domains = ["mesh.example.com"]"#, "");
    let err = parse(&format!("{MINIMAL}{open}")).expect_err("signs anything");
    assert!(
        err.to_string().contains("never signs what is asked"),
        "{err}"
    );
    let bad_td = VAULT.replace("spire.example.org", "Spire.Example");
    assert!(parse(&format!("{MINIMAL}{bad_td}")).is_err());
    let no_cluster = format!(
        "{MINIMAL}{VAULT}[[vault_api.kubernetes_roles]]\nname = \"cm\"\ncluster = \"nowhere\"\n\
         bound_service_account_namespaces = [\"a\"]\nbound_service_account_names = [\"b\"]\n\
         policies = [\"gateways\"]\n"
    );
    let err = parse(&no_cluster).expect_err("unknown cluster");
    assert!(err.to_string().contains("nowhere"), "{err}");
}

#[test]
fn an_intermediate_grant_may_not_reach_admin_identities_through_the_bundle() {
    let admin = "[admin]\n[[admin.users]]\nidentity = \"spiffe://spire.example.org/admin\"\nroles = [\"auditor\"]\n";
    let err = parse(&format!("{MINIMAL}{VAULT}{admin}")).expect_err("reachable admin");
    assert!(
        err.to_string().contains("spiffe://spire.example.org/admin"),
        "{err}"
    );
    let own_ca = admin.replace(
        "[admin]\n",
        "[admin]\nclient_ca_files = [\"admin-ca.pem\"]\n",
    );
    parse(&format!("{MINIMAL}{VAULT}{own_ca}")).expect("an admin CA of its own");
}

#[test]
fn a_cluster_takes_exactly_one_key_source() {
    let cluster = |body: &str| {
        parse(&format!(
            "{MINIMAL}\n[[clusters]]\nissuer = \"https://kubernetes.default.svc\"\n{body}\n"
        ))
    };
    let c = cluster("jwks_file = \"jwks.json\"").expect("file");
    assert_eq!(
        c.clusters[0].keys,
        crate::auth::JwksSource::File(PathBuf::from("/etc/hsm-ca/jwks.json"))
    );
    assert_eq!(c.clusters[0].refresh, Duration::from_secs(60));
    let c = cluster("discovery = true\nca_file = \"ca.crt\"\ntoken_file = \"t\"\nrefresh_secs = 5")
        .expect("discovery");
    assert_eq!(
        c.clusters[0].keys,
        crate::auth::JwksSource::Https {
            endpoint: crate::auth::JwksEndpoint::Discovery,
            ca_file: PathBuf::from("/etc/hsm-ca/ca.crt"),
            token: Some(SecretSource::File(PathBuf::from("/etc/hsm-ca/t"))),
        }
    );
    assert_eq!(c.clusters[0].refresh, Duration::from_secs(5));
    for (body, key) in [
        ("", "clusters.jwks_file"),
        (
            "jwks_file = \"a\"\njwks_url = \"https://x/openid/v1/jwks\"",
            "clusters.jwks_file",
        ),
        (
            "jwks_url = \"https://x/openid/v1/jwks\"\ndiscovery = true\nca_file = \"c\"",
            "clusters.jwks_url",
        ),
        (
            "jwks_url = \"https://x/openid/v1/jwks\"",
            "clusters.ca_file",
        ),
        (
            "jwks_url = \"http://x/jwks\"\nca_file = \"c\"",
            "clusters.jwks_url",
        ),
        ("jwks_file = \"a\"\nca_file = \"c\"", "clusters.ca_file"),
        (
            "jwks_file = \"a\"\ntoken_file = \"t\"",
            "clusters.token_file",
        ),
        (
            "jwks_file = \"a\"\nrefresh_secs = 0",
            "clusters.refresh_secs",
        ),
    ] {
        let err = cluster(body).expect_err(body);
        assert!(err.to_string().contains(key), "{body}: {err}");
    }
    let err = parse(&format!(
        "{MINIMAL}\n[[clusters]]\nissuer = \"kubernetes\"\ndiscovery = true\nca_file = \"c\"\n"
    ))
    .expect_err("discovery needs an https issuer");
    assert!(err.to_string().contains("clusters.discovery"), "{err}");
}

#[test]
fn acme_is_off_by_default_and_requires_eab_when_on() {
    let c = parse(MINIMAL).expect("valid");
    assert!(!c.acme.enabled);
    let c = parse(&format!("{MINIMAL}[acme]\nenabled = true\n")).expect("valid");
    assert!(c.acme.enabled && c.acme.eab_required);
    assert_eq!(c.acme.validation.http01_port, 80);
    assert_eq!(c.acme.validation.tls_alpn01_port, 443);
    assert_eq!(c.acme.validation.resolver, None);
}

#[test]
fn acme_errors_name_their_key() {
    for (section, key) in [
        (
            "[acme]\nexternal_url = \"http://ca.example.com\"\n",
            "acme.external_url",
        ),
        ("[acme]\ncert_file = \"chain.pem\"\n", "acme.cert_file"),
        (
            "[acme]\ndefault_validity_secs = 10\nmax_validity_secs = 5\n",
            "acme.default_validity_secs",
        ),
        (
            "[acme]\n[acme.validation]\nresolver = \"dns.local\"\n",
            "acme.validation.resolver",
        ),
        (
            "[acme]\n[acme.validation]\ntimeout_secs = 0\n",
            "acme.validation.timeout_secs",
        ),
        (
            "[acme]\n[acme.validation]\nmax_concurrent = 0\n",
            "acme.validation.max_concurrent",
        ),
        (
            "[acme]\n[acme.validation]\nhttp01_port = 0\n",
            "acme.validation.http01_port",
        ),
    ] {
        let err = parse(&format!("{MINIMAL}{section}")).expect_err(key);
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

#[test]
fn node_ids_are_checked_and_require_shipped_needs_the_shared_database() {
    let with_node = |id: &str| parse(&format!("node_id = \"{id}\"\n{MINIMAL}"));
    assert_eq!(with_node("ca-1.east").expect("valid").node_id, "ca-1.east");
    for bad in ["", "two words", "a/b", &"x".repeat(65)] {
        let err = with_node(bad).expect_err(bad);
        assert!(err.to_string().contains("node_id"), "{bad}: {err}");
    }
    let c = parse(MINIMAL).expect("valid");
    assert!(!c.node_id.is_empty(), "the host name by default");
    assert!(!c.audit_shipping.require_shipped);
    assert_eq!(c.audit_shipping.timeout, Duration::from_secs(5));
    let err = parse(&format!("{MINIMAL}[audit]\nrequire_shipped = true\n"))
        .expect_err("sled has nowhere to ship");
    assert!(err.to_string().contains("audit.require_shipped"), "{err}");
    let err = parse(&format!("{MINIMAL}[audit]\nship_timeout_secs = 0\n")).expect_err("zero");
    assert!(err.to_string().contains("audit.ship_timeout_secs"), "{err}");
}

#[test]
fn member_keys_must_be_p256_public_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let good = dir.path().join("b.pem");
    std::fs::write(&good, key.public_key_pem()).expect("write");
    let bad = dir.path().join("c.pem");
    std::fs::write(&bad, "not a key").expect("write");
    let with = |path: &Path| {
        Config::parse(
            &dir.path().join("hsm-ca.toml"),
            &format!("member_keys = [\"{}\"]\n{MINIMAL}", path.display()),
        )
    };
    let c = with(&good).expect("valid");
    assert_eq!(
        c.member_keys,
        vec![rcgen::PublicKeyData::subject_public_key_info(&key)]
    );
    for path in [bad.as_path(), &dir.path().join("missing.pem")] {
        let err = with(path).expect_err("refused");
        assert!(err.to_string().contains("member_keys"), "{err}");
    }
}

#[test]
fn an_own_intermediate_needs_a_shared_database() {
    let err = parse(&format!("own_intermediate = true\n{MINIMAL}")).expect_err("on sled");
    assert!(err.to_string().contains("own_intermediate"), "{err}");
    let c = parse(&format!(
        "own_intermediate = true\n{MINIMAL}\n[store]\nbackend = \"postgres\"\n\
         [store.postgres]\nurl = \"postgresql://hsmca@localhost/hsmca\"\n\
         password_env = \"HSMCA_DB_PASSWORD\"\n"
    ))
    .expect("on postgres");
    assert!(c.own_intermediate);
    assert!(!parse(MINIMAL).expect("default").own_intermediate);
}
