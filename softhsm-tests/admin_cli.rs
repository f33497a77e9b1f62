//! `hsm-ca admin …` against a dev appliance started through the binary: every route's command
//! with the admin identity from flags or from the config's `[admin_client]`, `--output json`
//! parsed as a script would, and the exit codes (0 ok, 1 refused, 2 usage, 3 not verified).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hsm-ca");

struct DevAppliance {
    child: Child,
    dir: PathBuf,
    grpc: String,
    admin_url: String,
}

impl Drop for DevAppliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(base: &Path) -> DevAppliance {
    use std::io::{BufRead, BufReader};
    let dir = base.join("dev");
    let mut child = Command::new(BIN)
        .current_dir(base)
        .args(["dev", "--dir"])
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dev appliance");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut grpc, mut admin) = (None, None);
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(rest) = line.strip_prefix("Serving istio.v1.auth.IstioCertificateService on ") {
            grpc = rest.split_whitespace().next().map(str::to_string);
        }
        if let Some(rest) = line.strip_prefix("Admin API on ") {
            admin = rest.split_whitespace().next().map(str::to_string);
        }
        if grpc.is_some() && admin.is_some() {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    DevAppliance {
        child,
        dir,
        grpc: grpc.expect("the appliance said where it serves"),
        admin_url: admin.expect("the appliance said where its admin API is"),
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn finish(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl DevAppliance {
    /// `hsm-ca -c <dev>/hsm-ca.toml admin --url <admin> ARGS`: identity from `[admin_client]`.
    fn admin(&self, args: &[&str]) -> Run {
        finish(
            Command::new(BIN)
                .arg("--config")
                .arg(self.dir.join("hsm-ca.toml"))
                .args(["admin", "--url", &self.admin_url])
                .args(args)
                .output()
                .expect("admin"),
        )
    }

    /// `hsm-ca admin` with everything from flags (no config file).
    fn admin_with_flags(&self, cwd: &Path, args: &[&str]) -> Run {
        finish(
            Command::new(BIN)
                .current_dir(cwd)
                .args(["admin", "--url", &self.admin_url, "--ca-file"])
                .arg(self.dir.join("root-cert.pem"))
                .arg("--client-cert")
                .arg(self.dir.join("admin-cert.pem"))
                .arg("--client-key")
                .arg(self.dir.join("admin-key.pem"))
                .args(args)
                .output()
                .expect("admin"),
        )
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.admin(&all);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out:?}"))
    }
}

#[test]
fn admin_commands_drive_a_dev_appliance_with_stable_json_and_exit_codes() {
    let base = tempfile::tempdir().expect("tempdir");
    let app = start(base.path());
    let elsewhere = tempfile::tempdir().expect("tempdir");

    // The identity from flags only, run where no config file is.
    let out = app.admin_with_flags(elsewhere.path(), &["state", "--output", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let state: Value = serde_json::from_str(&out.stdout).expect("state JSON");
    let first_key = state["intermediates"][0]["key_id"]
        .as_str()
        .expect("key id")
        .to_string();
    let root_fp = state["roots"][0]["fingerprint"]
        .as_str()
        .expect("root fingerprint")
        .to_string();
    // …and from [admin_client], in text for people.
    let out = app.admin(&["state"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&first_key), "{out:?}");

    let ready = app.json(&["ready"]);
    assert_eq!(ready["ready"], true, "{ready}");
    let out = app.admin(&["bundle"]);
    assert!(
        out.stdout.starts_with("-----BEGIN CERTIFICATE-----"),
        "{out:?}"
    );
    let spiffe = app.json(&["bundle"]);
    assert!(
        spiffe["keys"].as_array().is_some_and(|k| k.len() == 1),
        "{spiffe}"
    );
    let metrics = app.json(&["metrics"]);
    assert!(
        metrics
            .as_array()
            .expect("samples")
            .iter()
            .any(|s| s["name"] == "hsmca_build_info" && s["value"] == 1.0),
        "{metrics}"
    );

    // The intermediate lifecycle: new key, signed by the online root, installed, activated.
    let csr = base.path().join("next.csr");
    let cert = base.path().join("next.pem");
    let new = app.json(&["intermediate-new", "--out", csr.to_str().expect("utf8")]);
    let next_key = new["key_id"].as_str().expect("key id").to_string();
    assert!(std::fs::read_to_string(&csr)
        .expect("csr written")
        .contains("CERTIFICATE REQUEST"));
    let signed = app.json(&[
        "intermediate-sign",
        "--csr",
        csr.to_str().expect("utf8"),
        "--out",
        cert.to_str().expect("utf8"),
    ]);
    assert_eq!(signed["root"], root_fp.as_str(), "{signed}");
    let installed = app.json(&[
        "intermediate-install",
        "--cert",
        cert.to_str().expect("utf8"),
    ]);
    assert!(installed.is_object(), "{installed}");
    let out = app.admin(&["intermediate-activate", &next_key]);
    assert_eq!(out.code, 0, "{out:?}");
    let state = app.json(&["state"]);
    let active: Vec<&Value> = state["intermediates"]
        .as_array()
        .expect("intermediates")
        .iter()
        .filter(|i| i["key_id"] == next_key.as_str())
        .collect();
    assert_eq!(active.len(), 1, "{state}");
    assert!(
        active[0].to_string().contains("active"),
        "the new intermediate is active: {state}"
    );

    // A workload certificate, then its revocation (threshold 1 in the dev config): the serial
    // is in the CRL the admin command prints.
    let web = base.path().join("web");
    let request = Command::new(BIN)
        .args(["request", "--dev"])
        .arg(&app.dir)
        .args([
            "--addr", &app.grpc, "--ns", "default", "--sa", "web", "--out",
        ])
        .arg(&web)
        .output()
        .expect("request");
    assert!(
        request.status.success(),
        "{}",
        String::from_utf8_lossy(&request.stderr)
    );
    let inspected = finish(
        Command::new(BIN)
            .args(["inspect"])
            .arg(web.join("cert-chain.pem"))
            .args(["--output", "json"])
            .output()
            .expect("inspect"),
    );
    let serial = serde_json::from_str::<Value>(&inspected.stdout).expect("inspect JSON")[0]
        ["serial"]
        .as_str()
        .expect("serial")
        .to_string();
    let revoked = app.json(&["revoke", "--serial", &serial, "--reason", "key-compromise"]);
    assert!(revoked.is_object(), "{revoked}");
    let crl = app.json(&["crl"]);
    let pem = crl["pem"].as_str().expect("pem");
    let mut text = String::new();
    // One CRL per CA: openssl reads the first of a file, so each goes on its own.
    for (n, block) in pem.split_inclusive("-----END X509 CRL-----").enumerate() {
        let crl_file = base.path().join(format!("crl-{n}.pem"));
        std::fs::write(&crl_file, block.trim_start()).expect("crl");
        let out = Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(&crl_file)
            .output()
            .expect("openssl");
        text.push_str(&String::from_utf8_lossy(&out.stdout).to_uppercase());
    }
    assert!(text.contains(&serial.to_uppercase()), "{text}");
    assert!(text.contains("KEY COMPROMISE"), "{text}");

    // One appliance on sled: no registry, an empty list.
    let nodes = app.json(&["nodes"]);
    assert_eq!(nodes["nodes"], serde_json::json!([]), "{nodes}");
    let proposals = app.json(&["proposals", "--all"]);
    assert!(proposals["proposals"].is_array(), "{proposals}");
    let page = app.json(&["audit", "--limit", "3"]);
    assert_eq!(page["records"].as_array().map(Vec::len), Some(3), "{page}");
    assert_eq!(page["records"][0]["seq"], 1, "{page}");
    let verified = app.json(&["audit-verify"]);
    assert_eq!(verified["verified"], true, "{verified}");
    let out = app.admin(&["audit-public-key"]);
    assert!(out.stdout.contains("BEGIN PUBLIC KEY"), "{out:?}");

    // ACME EAB keys on the running appliance: made with a policy, listed without the HMAC
    // key, revoked; an unknown key id is refused.
    let made = app.json(&[
        "acme-eab-create",
        "--dns-suffix",
        "apps.mesh.test",
        "--wildcards",
        "--max-validity-secs",
        "86400",
    ]);
    let kid = made["kid"].as_str().expect("kid").to_string();
    let hmac = made["hmac_key"].as_str().expect("hmac key").to_string();
    let out = app.admin(&["acme-eab-list"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&kid) && out.stdout.contains("apps.mesh.test"),
        "{out:?}"
    );
    assert!(!out.stdout.contains(&hmac), "the list shows no HMAC key");
    let listed = app.json(&["acme-eab-list"]);
    assert!(listed.to_string().contains("86400"), "{listed}");
    assert_eq!(app.admin(&["acme-eab-revoke", &kid]).code, 0);
    let listed = app.json(&["acme-eab-list"]);
    assert!(listed.to_string().contains("\"revoked\":true"), "{listed}");
    let out = app.admin(&["acme-eab-revoke", "0123456789abcdef", "--output", "json"]);
    assert_eq!(out.code, 1, "{out:?}");

    // 1: the API refused (no client certificate; an unknown proposal), with its error code.
    let out = finish(
        Command::new(BIN)
            .current_dir(elsewhere.path())
            .args(["admin", "--url", &app.admin_url, "--ca-file"])
            .arg(app.dir.join("root-cert.pem"))
            .args(["state"])
            .output()
            .expect("admin"),
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("unauthenticated"), "{out:?}");
    let out = app.admin(&["approve", "0123456789abcdef", "--output", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let err: Value = serde_json::from_str(&out.stdout).expect("error document");
    assert_eq!(err["error"]["code"], "not_found", "{out:?}");
    // 2: a usage error.
    let out = app.admin(&["revoke"]);
    assert_eq!(out.code, 2, "{out:?}");
    // 1: nobody listens.
    let out = finish(
        Command::new(BIN)
            .arg("--config")
            .arg(app.dir.join("hsm-ca.toml"))
            .args(["admin", "--url", "https://127.0.0.1:9", "state"])
            .output()
            .expect("admin"),
    );
    assert_eq!(out.code, 1, "{out:?}");

    // 3: the audit log on disk no longer verifies.
    support::edit_audit_record(&app.dir.join("data"), 2, |line| {
        let mut record: Value = serde_json::from_str(&line).expect("record");
        record["tampered"] = Value::Bool(true);
        record.to_string()
    });
    let out = app.admin(&["audit-verify"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("does not verify"), "{out:?}");
}
