//! Shared test fixtures: fresh SoftHSM tokens, chosen by label, in temporary folders.
//!
//! In-process tests share one SoftHSM token folder per test process (SoftHSM reads its config
//! once per process) and create a fresh token with a unique label for every test. Tests that
//! run the `hsm-ca` binary get a folder, config and token of their own.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub mod acme;
pub mod appliance;
pub mod http;
pub mod postgres;
pub mod processes;
pub mod vault;

use hsm_ca::keystore::pkcs11::{provision, Pkcs11Device, Pkcs11Settings, TokenSelector};
use hsm_ca::keystore::{KeyStore, PoolOptions};
use hsm_ca::secret::{Secret, SecretSource};

/// The SoftHSM module on this machine.
pub fn module() -> PathBuf {
    provision::softhsm_module()
        .expect("SoftHSM is not installed: run ops/test.sh, which installs it")
}

pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// The process's SoftHSM token folder; sets SOFTHSM2_CONF before any test loads the module.
fn process_token_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).expect("tokens dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(&conf, provision::softhsm_config(&tokens)).expect("conf");
        std::env::set_var("SOFTHSM2_CONF", &conf);
        dir
    })
    .path()
}

/// A fresh token in this process, with its PIN in a file of its own.
pub struct TestToken {
    pub label: String,
    pub pin: Secret,
    pub dir: tempfile::TempDir,
}

impl TestToken {
    pub fn new() -> Self {
        process_token_dir();
        let label = format!("t-{}", random_hex(6));
        let pin = Secret::new(random_hex(8));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pin"), pin.expose()).expect("pin file");
        provision::create_token(&module(), &label, &Secret::new(random_hex(8)), &pin)
            .expect("create token");
        TestToken { label, pin, dir }
    }

    pub fn settings(&self) -> Pkcs11Settings {
        Pkcs11Settings {
            module: module(),
            token: TokenSelector::Label(self.label.clone()),
            pin: SecretSource::File(self.dir.path().join("pin")),
            verify_signatures: true,
        }
    }

    pub fn keystore(&self, workers: usize) -> KeyStore {
        self.keystore_with(PoolOptions {
            workers,
            queue_depth: 1024,
            call_timeout: Duration::from_secs(10),
        })
    }

    pub fn keystore_with(&self, options: PoolOptions) -> KeyStore {
        let device = Pkcs11Device::open(self.settings()).expect("open token");
        KeyStore::start(Arc::new(device), options).expect("start keystore")
    }
}

/// A folder for one CLI test: its own SoftHSM config, token, PIN file and hsm-ca.toml.
pub struct CliEnv {
    pub dir: tempfile::TempDir,
    pub pin: String,
    pub label: String,
}

impl CliEnv {
    pub fn new(extra_config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).expect("tokens");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(&conf, provision::softhsm_config(&tokens)).expect("conf");
        let label = format!("cli-{}", random_hex(4));
        let pin = random_hex(8);
        let status = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                &label,
                "--so-pin",
                "so-secret-1",
                "--pin",
                &pin,
            ])
            .output()
            .expect("softhsm2-util runs");
        assert!(status.status.success(), "softhsm2-util: {:?}", status);
        std::fs::write(dir.path().join("pin"), &pin).expect("pin");
        let config = format!(
            r#"trust_domain = "example.org"
data_dir = "data"
[keystore]
module = "{module}"
token_label = "{label}"
pin_file = "pin"
[keystore.module_env]
SOFTHSM2_CONF = "{conf}"
{extra_config}
"#,
            module = module().display(),
            conf = conf.display()
        );
        std::fs::write(dir.path().join("hsm-ca.toml"), config).expect("config");
        CliEnv { dir, pin, label }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `hsm-ca --config <dir>/hsm-ca.toml ceremony ARGS` in the folder, offline: in a
    /// network namespace of its own, where no interface is up.
    pub fn ceremony(&self, args: &[&str]) -> Output {
        offline(
            self.dir.path(),
            &self.path("hsm-ca.toml"),
            &[&["ceremony"], args].concat(),
            None,
        )
    }

    /// Runs `hsm-ca --config <dir>/hsm-ca.toml ARGS` in the folder.
    pub fn run(&self, args: &[&str]) -> Output {
        run_in(self.dir.path(), &self.path("hsm-ca.toml"), args)
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub ok: bool,
    /// The exit code (`None`: ended by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_in(cwd: &Path, config: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .current_dir(cwd)
        .env("HSM_CA_LOG", "trace")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("hsm-ca runs");
    Output {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `hsm-ca --config CONFIG ARGS` in `cwd` inside `unshare -rn` (a new user and network
/// namespace: only a loopback interface, down), feeding `stdin` when given.
pub fn offline(cwd: &Path, config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("unshare")
        .args(["--map-root-user", "--net"])
        .arg(env!("CARGO_BIN_EXE_hsm-ca"))
        .current_dir(cwd)
        .env("HSM_CA_LOG", "trace")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unshare runs (util-linux; unprivileged user namespaces)");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("hsm-ca runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.starts_with("unshare:"),
        "this test runs ceremonies in a network namespace of their own: {stderr}"
    );
    Output {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

/// `openssl verify -x509_strict` of `leaf` against `root`, with `untrusted` intermediates.
/// Runs openssl with `args` in `dir`; panics with its output when it fails.
#[allow(dead_code)]
pub fn openssl_in(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new P-256 key (`key`) and its CSR (`csr`) for `subject`, made by openssl in `dir`.
#[allow(dead_code)]
pub fn openssl_p256_csr(dir: &Path, subject: &str, key: &str, csr: &str) {
    openssl_in(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            key,
            "-out",
            csr,
        ],
    );
}

pub fn openssl_verify(root: &Path, untrusted: Option<&Path>, leaf: &Path) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["verify", "-x509_strict", "-CAfile"]).arg(root);
    if let Some(u) = untrusted {
        cmd.arg("-untrusted").arg(u);
    }
    cmd.arg(leaf);
    let out = cmd.output().expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Verifies a signature over `message` with the DER SubjectPublicKeyInfo `spki`, in software.
pub fn verify_signature(
    spki: &[u8],
    scheme: hsm_ca::keystore::SignatureScheme,
    message: &[u8],
    signature: &[u8],
) -> bool {
    use hsm_ca::keystore::SignatureScheme::*;
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).expect("spki");
    let key = parsed.subject_public_key.data.as_ref();
    let alg: &dyn ring::signature::VerificationAlgorithm = match scheme {
        EcdsaSha256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
        EcdsaSha384 => &ring::signature::ECDSA_P384_SHA384_ASN1,
        RsaPkcs1Sha256 => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        RsaPssSha256 => &ring::signature::RSA_PSS_2048_8192_SHA256,
    };
    ring::signature::UnparsedPublicKey::new(alg, key)
        .verify(message, signature)
        .is_ok()
}

/// Logs this process out of the token labelled `label` from a session of its own, as an
/// operator's tool would: every session of the process loses the login.
pub fn log_out_from_outside(label: &str) {
    let ctx = cryptoki::context::Pkcs11::new(module()).expect("module");
    let _ = ctx.initialize(hsm_ca::keystore::pkcs11::init_args());
    let slot = slot_by_label(&ctx, label);
    ctx.open_ro_session(slot)
        .expect("session")
        .logout()
        .expect("logout");
}

/// Destroys every private key on `token` whose label starts with `prefix`, from a session of
/// its own (as an operator's tool would): what the keystore then signs with is gone.
pub fn destroy_keys_from_outside(token: &TestToken, prefix: &str) -> usize {
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    let ctx = cryptoki::context::Pkcs11::new(module()).expect("module");
    let _ = ctx.initialize(hsm_ca::keystore::pkcs11::init_args());
    let slot = slot_by_label(&ctx, &token.label);
    let session = ctx.open_rw_session(slot).expect("session");
    // The process is logged in already when the keystore is open; logging in again is refused.
    let pin = cryptoki::types::AuthPin::new(token.pin.expose().to_string().into());
    let _ = session.login(cryptoki::session::UserType::User, Some(&pin));
    let mut destroyed = 0;
    for handle in session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .expect("find")
    {
        let label = session
            .get_attributes(handle, &[AttributeType::Label])
            .expect("label")
            .into_iter()
            .find_map(|a| match a {
                Attribute::Label(l) => Some(String::from_utf8_lossy(&l).into_owned()),
                _ => None,
            })
            .unwrap_or_default();
        if label.starts_with(prefix) {
            session.destroy_object(handle).expect("destroy");
            destroyed += 1;
        }
    }
    destroyed
}

/// The slot of the token labelled `label`, asked of a context directly (as an outsider would).
pub fn slot_by_label(ctx: &cryptoki::context::Pkcs11, label: &str) -> cryptoki::slot::Slot {
    ctx.get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| i.label().trim_end() == label)
                .unwrap_or(false)
        })
        .expect("slot by label")
}

/// Rewrites record `seq` of the audit log under `dir` (its segment files) with `edit`, as
/// someone with access to the files would.
pub fn edit_audit_record(dir: &Path, seq: u64, edit: impl FnOnce(String) -> String) {
    for path in hsm_ca::audit::segments::segment_files(dir) {
        let text = std::fs::read_to_string(&path).expect("segment");
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let at = lines.iter().position(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v["seq"] == seq)
                .unwrap_or(false)
        });
        if let Some(at) = at {
            let old = std::mem::take(&mut lines[at]);
            lines[at] = edit(old);
            std::fs::write(&path, lines.join("\n") + "\n").expect("write segment");
            return;
        }
    }
    panic!("record {seq} not found");
}

/// Changes the audit log's `meta.json` under `dir` with `edit`.
pub fn edit_audit_meta(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("audit").join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("meta.json")).expect("json");
    edit(&mut meta);
    std::fs::write(&path, serde_json::to_vec_pretty(&meta).expect("json")).expect("write");
}

/// Changes the token's user PIN from outside the keystore and logs the process out, as an
/// operator's tool would.
pub fn change_pin_from_outside(label: &str, old: &str, new: &str) {
    let ctx = cryptoki::context::Pkcs11::new(module()).expect("module");
    let _ = ctx.initialize(hsm_ca::keystore::pkcs11::init_args());
    let slot = slot_by_label(&ctx, label);
    let session = ctx.open_rw_session(slot).expect("session");
    // The process may be logged in already (the keystore's login is per application).
    let _ = session.login(
        cryptoki::session::UserType::User,
        Some(&cryptoki::types::AuthPin::from(old.to_string())),
    );
    session
        .set_pin(
            &cryptoki::types::AuthPin::from(old.to_string()),
            &cryptoki::types::AuthPin::from(new.to_string()),
        )
        .expect("set pin");
    session.logout().expect("logout");
}
