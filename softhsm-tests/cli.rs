//! The `hsm-ca` binary as an officer uses it, each test with its own SoftHSM token folder.

mod support;

use support::{openssl_verify, run_in, CliEnv};

/// The error line (logs at trace level may come before it).
fn last_line(stderr: &str) -> &str {
    stderr.trim().lines().last().unwrap_or("")
}

#[test]
fn the_officer_flow_creates_a_root_and_installs_an_intermediate() {
    let env = CliEnv::new("");
    let out = env.ceremony(&["init-root", "--out-dir", "media", "--yes"]);
    assert!(out.ok, "{out:?}");
    assert!(
        out.stdout.contains("Wrote media/root-cert.pem"),
        "{}",
        out.stdout
    );
    assert!(env.path("root-cert.pem").exists());

    let out = env.run(&["intermediate", "new", "--out", "inter.csr"]);
    assert!(out.ok, "{out:?}");
    let fp_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("Public key SHA-256:"))
        .expect("fingerprint")
        .to_string();

    let out = sign_intermediate(&env);
    // The officer sees the same public-key fingerprint the operator saw.
    let fp = fp_line.trim_start_matches("Public key SHA-256:").trim();
    assert!(
        out.stdout.contains(fp),
        "fingerprint {fp} not shown:\n{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("CSR subject:            CN=hsm-ca intermediate"),
        "{}",
        out.stdout
    );
    let (ok, text) = openssl_verify(
        &env.path("root-cert.pem"),
        None,
        &env.path("inter/intermediate-cert.pem"),
    );
    assert!(ok, "{text}");

    let out = install_intermediate(&env);
    assert!(out.stdout.contains("as Active"), "{}", out.stdout);
    let out = env.run(&["intermediate", "list"]);
    assert!(out.stdout.starts_with("active"), "{}", out.stdout);

    // `config check --devices` opens the token and names the keys the appliance would use.
    let out = env.run(&["config", "check", "--devices"]);
    assert!(out.ok, "{out:?}");
    for want in [
        "hsm-ca.toml: valid",
        "  root ",
        ": key in this device",
        "(active), key ",
        ": in this device",
    ] {
        assert!(
            out.stdout.contains(want),
            "missing {want:?}:\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains(&env.pin) && !out.stderr.contains(&env.pin));

    let out = env.run(&["keys", "list"]);
    assert!(out.ok, "{out:?}");
    let rows: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{}", out.stdout);
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        // SENSITIVE EXTRACTABLE ALWAYS_SENSITIVE NEVER_EXTRACTABLE LOCAL
        assert_eq!(
            &cols[cols.len() - 5..],
            &["yes", "no", "yes", "yes", "yes"],
            "{row}"
        );
    }

    let out = env.run(&["inspect", "inter/intermediate-cert.pem"]);
    assert!(out.ok, "{out:?}");
    for want in [
        "SPIFFE ID:    spiffe://example.org",
        "CA:true, pathlen 0 (critical)",
        "Key Cert Sign, CRL Sign (critical)",
        "left)",
    ] {
        assert!(
            out.stdout.contains(want),
            "missing {want:?}:\n{}",
            out.stdout
        );
    }
    // Nothing the tool printed, at any log level, contains the PIN.
    assert!(!out.stderr.contains(&env.pin));
}

#[test]
fn a_wrong_pin_is_one_clear_line_and_never_printed() {
    let env = CliEnv::new("");
    let wrong = "wrong-pin-31337";
    std::fs::write(env.path("pin"), wrong).expect("pin");
    let out = env.run(&["keys", "list"]);
    assert!(!out.ok);
    assert_eq!(
        last_line(&out.stderr),
        "error: the PIN was refused by the token",
        "{out:?}"
    );
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(wrong) && !text.contains(&env.pin), "{text}");
    }
}

#[test]
fn a_pin_from_the_environment_works_and_stays_out_of_logs() {
    let env = CliEnv::new("");
    let config = std::fs::read_to_string(env.path("hsm-ca.toml")).expect("config");
    std::fs::write(
        env.path("hsm-ca.toml"),
        config.replace("pin_file = \"pin\"", "pin_env = \"TEST_HSM_PIN\""),
    )
    .expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .current_dir(env.dir.path())
        .env("HSM_CA_LOG", "trace")
        .env("TEST_HSM_PIN", &env.pin)
        .args([
            "--config",
            "hsm-ca.toml",
            "intermediate",
            "new",
            "--out",
            "x.csr",
        ])
        .output()
        .expect("run");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains(&env.pin) && !stderr.contains(&env.pin));
    let out = env.run(&["keys", "list"]);
    assert_eq!(
        last_line(&out.stderr),
        "error: cannot read the PIN: environment variable TEST_HSM_PIN is not set"
    );
}

#[test]
fn change_pin_replaces_the_pin_records_it_and_refuses_what_would_lose_the_token() {
    let env = CliEnv::new("");
    let new_pin = "a-new-pin-of-the-appliance-7f3a9c";
    let change = |file: &str, content: &str| {
        std::fs::write(env.path(file), content).expect("new pin");
        env.run(&["keys", "change-pin", "--new-pin-file", file])
    };
    let old_still_works = || assert!(env.run(&["keys", "list"]).ok, "the old PIN stopped working");

    let out = change("short", "1234567\n");
    assert!(!out.ok);
    assert!(
        last_line(&out.stderr).contains("has 7 characters; use 8 to 255"),
        "{out:?}"
    );
    old_still_works();
    let out = change("same", &format!("{}\n", env.pin));
    assert!(
        last_line(&out.stderr).contains("the new PIN is the current one"),
        "{out:?}"
    );
    old_still_works();

    // While another process holds the appliance's audit log (a running appliance), nothing
    // changes.
    {
        let _held = hsm_ca::audit::AuditLog::open(&env.path("data")).expect("audit log");
        let out = change("new-pin", new_pin);
        assert!(!out.ok);
        assert!(
            last_line(&out.stderr).contains("stop the appliance first, nothing was changed"),
            "{out:?}"
        );
    }
    old_still_works();

    let out = change("new-pin", &format!("{new_pin}\n"));
    assert!(out.ok, "{out:?}");
    assert!(out.stdout.contains("was changed"), "{out:?}");
    // The token's session is closed before the library is let go (no error after success).
    assert!(!out.stderr.contains("Failed to close session"), "{out:?}");
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !text.contains(new_pin) && !text.contains(&env.pin),
            "{text}"
        );
    }
    // The old PIN is refused now; the new one opens the token.
    let out = env.run(&["keys", "list"]);
    assert_eq!(
        last_line(&out.stderr),
        "error: the PIN was refused by the token",
        "{out:?}"
    );
    std::fs::write(env.path("pin"), new_pin).expect("pin");
    assert!(env.run(&["keys", "list"]).ok);

    // The change is in the appliance's audit log, signed, without either PIN.
    let out = env.run(&["audit", "export", "--out", "exported"]);
    assert!(out.ok, "{out:?}");
    let log = std::fs::read_to_string(env.path("exported/audit.jsonl")).expect("export");
    assert!(log.contains(r#""kind":"pin_changed""#), "{log}");
    assert!(!log.contains(new_pin) && !log.contains(&env.pin));
    let verify = env.run(&["audit", "verify"]);
    assert!(verify.ok, "{verify:?}");

    // A token whose PIN officers hold is changed only by a ceremony.
    let config = std::fs::read_to_string(env.path("hsm-ca.toml")).expect("config");
    std::fs::write(
        env.path("hsm-ca.toml"),
        config.replace("pin_file = \"pin\"", "pin_shares = true"),
    )
    .expect("config");
    let out = change("another", "another-pin-123");
    assert!(
        last_line(&out.stderr).contains("ceremony reshare"),
        "{out:?}"
    );
}

/// Output piped into a reader that went away (`| head -1`) ends the command quietly: no
/// panic, the work is done.
#[test]
fn commands_survive_a_closed_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    // Enough certificates that the output outgrows the pipe's buffer.
    let bundle = cert.cert.pem().repeat(200);
    std::fs::write(dir.path().join("bundle.pem"), bundle).expect("bundle");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .current_dir(dir.path())
        .args(["inspect", "bundle.pem"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("inspect");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn a_token_that_is_not_there_is_named() {
    let env = CliEnv::new("");
    let config = std::fs::read_to_string(env.path("hsm-ca.toml")).expect("config");
    std::fs::write(env.path("hsm-ca.toml"), config.replace(&env.label, "nope")).expect("config");
    let out = env.run(&["keys", "list"]);
    assert!(!out.ok);
    assert_eq!(
        last_line(&out.stderr),
        "error: no token with label \"nope\" is present"
    );
}

#[test]
fn a_tampered_csr_is_refused_and_nothing_is_written() {
    let env = CliEnv::new("");
    let out = env.ceremony(&["init-root", "--out-dir", "media", "--yes"]);
    assert!(out.ok, "{out:?}");
    assert!(env.run(&["intermediate", "new", "--out", "inter.csr"]).ok);
    let pem = std::fs::read_to_string(env.path("inter.csr")).expect("csr");
    let mut der = pem::parse(&pem).expect("pem").into_contents();
    let at = der
        .windows(12)
        .position(|w| w == b"intermediate")
        .expect("subject");
    der[at] = b'J';
    std::fs::write(
        env.path("bad.csr"),
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der)),
    )
    .expect("write");
    let out = env.ceremony(&[
        "sign-intermediate",
        "--csr",
        "bad.csr",
        "--out-dir",
        "bad",
        "--yes",
    ]);
    assert!(!out.ok);
    assert_eq!(
        last_line(&out.stderr),
        "error: CSR signature invalid: the requester does not hold the private key"
    );
    assert!(!env.path("bad/intermediate-cert.pem").exists());
}

/// A root (`media/`) and an intermediate key with its CSR (`inter.csr`).
fn root_and_intermediate_csr(env: &CliEnv) {
    let out = env.ceremony(&["init-root", "--out-dir", "media", "--yes"]);
    assert!(out.ok, "{out:?}");
    let out = env.run(&["intermediate", "new", "--out", "inter.csr"]);
    assert!(out.ok, "{out:?}");
}

/// The ceremony signs `inter.csr` into `inter/intermediate-cert.pem`.
fn sign_intermediate(env: &CliEnv) -> support::Output {
    let out = env.ceremony(&[
        "sign-intermediate",
        "--csr",
        "inter.csr",
        "--out-dir",
        "inter",
        "--yes",
    ]);
    assert!(out.ok, "{out:?}");
    out
}

/// `intermediate install` of the signed `inter/intermediate-cert.pem`.
fn install_intermediate(env: &CliEnv) -> support::Output {
    let out = env.run(&[
        "intermediate",
        "install",
        "--cert",
        "inter/intermediate-cert.pem",
    ]);
    assert!(out.ok, "{out:?}");
    out
}

#[test]
fn signing_needs_a_confirmation_when_not_scripted() {
    let env = CliEnv::new("");
    root_and_intermediate_csr(&env);
    let out = env.ceremony(&[
        "sign-intermediate",
        "--csr",
        "inter.csr",
        "--out-dir",
        "inter",
    ]);
    assert!(!out.ok);
    assert!(out.stderr.contains("pass --yes"), "{out:?}");
    assert!(!env.path("inter/intermediate-cert.pem").exists());
}

#[test]
fn install_refuses_certificates_without_a_key_or_chain() {
    let a = CliEnv::new("");
    let b = CliEnv::new("");
    for env in [&a, &b] {
        let out = env.ceremony(&["init-root", "--out-dir", "media", "--yes"]);
        assert!(out.ok, "{out:?}");
        assert!(env.run(&["intermediate", "new", "--out", "inter.csr"]).ok);
        assert!(
            env.ceremony(&[
                "sign-intermediate",
                "--csr",
                "inter.csr",
                "--out-dir",
                "inter",
                "--yes"
            ])
            .ok
        );
    }
    // b's intermediate chains to b's root, and its key is in b's token, not a's.
    std::fs::copy(b.path("inter/intermediate-cert.pem"), a.path("foreign.pem")).expect("copy");
    let out = a.run(&["intermediate", "install", "--cert", "foreign.pem"]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("does not chain to the configured root"),
        "{out:?}"
    );
    // Trust b's root too: now the chain is fine but the key is not in a's token.
    let config = std::fs::read_to_string(a.path("hsm-ca.toml")).expect("config");
    std::fs::copy(b.path("root-cert.pem"), a.path("root-b.pem")).expect("copy");
    std::fs::write(
        a.path("hsm-ca.toml"),
        format!("{config}\n[root]\ncertificates = [\"root-cert.pem\", \"root-b.pem\"]\n"),
    )
    .expect("config");
    let out = a.run(&["intermediate", "install", "--cert", "foreign.pem"]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("does not match any key in the token"),
        "{out:?}"
    );
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.starts_with("error"))
            .count(),
        1,
        "{out:?}"
    );
}

#[test]
fn init_root_never_overwrites_an_existing_root() {
    let env = CliEnv::new("");
    let out = env.ceremony(&["init-root", "--out-dir", "media", "--yes"]);
    assert!(out.ok, "{out:?}");
    let before = std::fs::read(env.path("root-cert.pem")).expect("root");
    let out = env.ceremony(&["init-root", "--out-dir", "media", "--yes"]);
    assert!(!out.ok);
    assert!(out.stderr.contains("already exists"), "{out:?}");
    assert_eq!(
        std::fs::read(env.path("root-cert.pem")).expect("root"),
        before
    );
}

#[test]
fn config_errors_name_the_key() {
    let env = CliEnv::new("[keystore2]\n");
    let out = env.run(&["keys", "list"]);
    assert!(!out.ok);
    assert!(out.stderr.contains("keystore2"), "{out:?}");
    let env = CliEnv::new("[intermediate]\nvalidity_days = 0\n");
    let out = env.run(&["keys", "list"]);
    assert!(
        out.stderr
            .contains("intermediate.validity_days: 0 is outside"),
        "{out:?}"
    );
}

#[test]
fn inspect_describes_each_certificate_of_a_bundle_and_rejects_garbage() {
    let env = CliEnv::new("");
    root_and_intermediate_csr(&env);
    sign_intermediate(&env);
    let bundle = std::fs::read_to_string(env.path("inter/intermediate-cert.pem")).expect("inter")
        + &std::fs::read_to_string(env.path("root-cert.pem")).expect("root");
    std::fs::write(env.path("bundle.pem"), bundle).expect("bundle");
    let out = env.run(&["inspect", "bundle.pem"]);
    assert!(out.ok, "{out:?}");
    assert!(out.stdout.contains("Certificate 1 of 2") && out.stdout.contains("Certificate 2 of 2"));
    assert_eq!(out.stdout.matches("SHA-256:").count(), 2);
    std::fs::write(env.path("junk.pem"), "not a certificate").expect("junk");
    let out = env.run(&["inspect", "junk.pem"]);
    assert!(!out.ok);
    assert!(
        last_line(&out.stderr).starts_with("error: malformed certificate"),
        "{out:?}"
    );
}

#[test]
fn the_dev_appliance_is_created_once_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev_dir = dir.path().join("dev");
    let dev = dev_dir.to_str().expect("utf8");
    let unused = dir.path().join("unused.toml");
    let first = run_in(dir.path(), &unused, &["dev", "--dir", dev, "--setup-only"]);
    assert!(first.ok, "{first:?}");
    assert!(first.stdout.contains("(new)"));
    for f in [
        "hsm-ca.toml",
        "root-cert.pem",
        "intermediate-cert.pem",
        "pin",
    ] {
        assert!(dev_dir.join(f).exists(), "{f} missing");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dev_dir.join("pin"))
            .expect("pin")
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the PIN file is readable by others");
    let root_before = std::fs::read(dev_dir.join("root-cert.pem")).expect("root");
    let second = run_in(dir.path(), &unused, &["dev", "--dir", dev, "--setup-only"]);
    assert!(second.ok, "{second:?}");
    assert!(second.stdout.contains("(reused)"));
    assert_eq!(
        std::fs::read(dev_dir.join("root-cert.pem")).expect("root"),
        root_before
    );
    let (ok, text) = openssl_verify(
        &dev_dir.join("root-cert.pem"),
        None,
        &dev_dir.join("intermediate-cert.pem"),
    );
    assert!(ok, "{text}");
    // The generated config works for the other commands.
    let keys = run_in(dir.path(), &dev_dir.join("hsm-ca.toml"), &["keys", "list"]);
    assert!(keys.ok, "{keys:?}");
    assert_eq!(keys.stdout.lines().count(), 3, "{}", keys.stdout);
}

/// The README's flow: start the dev appliance, request a certificate from another process,
/// verify the chain with openssl against the root that came with it.
#[test]
fn the_readme_flow_dev_appliance_then_request() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let dev_dir = dir.path().join("dev");
    let dev = dev_dir.to_str().expect("utf8").to_string();
    // Logs as a log shipper would take them: JSON lines, every event down to debug.
    let log_path = dir.path().join("appliance.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .current_dir(dir.path())
        .args(["--log-format", "json", "--log-level", "debug"])
        .args(["dev", "--dir", &dev, "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("dev appliance");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let guard = Kill(child);
    let mut addr = None;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(Ok(line)) = lines.next() {
        if let Some(rest) = line.strip_prefix("Serving istio.v1.auth.IstioCertificateService on ") {
            addr = rest.split_whitespace().next().map(str::to_string);
            break;
        }
    }
    // Keep draining so the appliance's later output never meets a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let addr = addr.expect("the appliance said where it serves");
    let out = dir.path().join("web");
    let request = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .args([
            "request", "--dev", &dev, "--addr", &addr, "--ns", "default", "--sa", "web", "--out",
        ])
        .arg(&out)
        .output()
        .expect("request");
    assert!(
        request.status.success(),
        "{}",
        String::from_utf8_lossy(&request.stderr)
    );
    let (ok, text) = openssl_verify(
        &out.join("root-cert.pem"),
        Some(&out.join("cert-chain.pem")),
        &out.join("cert-chain.pem"),
    );
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::read(out.join("root-cert.pem")).expect("root"),
        std::fs::read(dev_dir.join("root-cert.pem")).expect("root")
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out.join("key.pem"))
            .expect("key")
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "key.pem is readable by others");

    // A CA served by several nodes, one of them down: every request is answered by the live
    // one, whichever address the client tries first; with every node down the error says so.
    let dead = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").to_string()
    };
    let (dead1, dead2) = (dead(), dead());
    for round in 0..3 {
        let failover = dir.path().join(format!("failover{round}"));
        let request = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
            .args(["request", "--dev", &dev, "--ns", "default", "--sa", "web"])
            .args([
                "--addr",
                &format!("{dead1},{addr}"),
                "--addr",
                &dead2,
                "--out",
            ])
            .arg(&failover)
            .output()
            .expect("request");
        let stdout = String::from_utf8_lossy(&request.stdout);
        assert!(
            request.status.success(),
            "{}",
            String::from_utf8_lossy(&request.stderr)
        );
        assert!(stdout.contains(&format!("by {addr}")), "{stdout}");
    }
    let request = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .args(["request", "--dev", &dev, "--ns", "default", "--sa", "web"])
        .args(["--addr", &format!("{dead1},{dead2}"), "--out"])
        .arg(dir.path().join("nowhere"))
        .output()
        .expect("request");
    let stderr = String::from_utf8_lossy(&request.stderr);
    assert!(!request.status.success());
    assert!(
        last_line(&stderr).contains("no CA node answered (2 addresses tried)"),
        "{stderr}"
    );
    assert!(!dir.path().join("nowhere").join("key.pem").exists());

    // Renewal with the certificate just received, over mTLS, as a VM agent does.
    let renewed = dir.path().join("web2");
    let request = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .args(["request", "--dev", &dev, "--addr", &addr, "--renew-with"])
        .arg(&out)
        .arg("--out")
        .arg(&renewed)
        .output()
        .expect("renew");
    assert!(
        request.status.success(),
        "{}",
        String::from_utf8_lossy(&request.stderr)
    );
    assert!(String::from_utf8_lossy(&request.stdout)
        .contains("spiffe://cluster.local/ns/default/sa/web"));

    // The running appliance holds its audit log; verifying it from another process waits a
    // moment, then says who holds it instead of failing with a bare lock error.
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .args(["audit", "verify", "--config"])
        .arg(dev_dir.join("hsm-ca.toml"))
        .output()
        .expect("audit verify");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(!verify.status.success());
    assert!(
        last_line(&stderr).contains("another process holds it open"),
        "{stderr}"
    );
    drop(guard);

    // Every log line is a JSON object with a level and a message; each issuance is one debug
    // event naming its serial; no line carries a token (a JWT starts with `eyJ`), a PIN or
    // colour escapes.
    let text = std::fs::read_to_string(&log_path).expect("log");
    let pin = std::fs::read_to_string(dev_dir.join("pin")).expect("pin");
    let mut issued = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(event["level"].is_string(), "{line}");
        assert!(event["message"].is_string(), "{line}");
        if event["message"] == "issued" {
            assert_eq!(event["level"], "DEBUG", "{line}");
            assert!(event["serial"].is_string(), "{line}");
            issued += 1;
        }
        assert!(!line.contains("eyJ"), "a token in the log: {line}");
        assert!(!line.contains(pin.trim()), "the PIN in the log");
        assert!(
            !line.contains('\u{1b}'),
            "colour escapes in the log: {line}"
        );
    }
    assert!(issued >= 5, "{issued} issuance events in:\n{text}");
}

/// Whoever starts the appliance may stop reading its output; it must keep serving.
#[test]
fn the_dev_appliance_survives_a_closed_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev_dir = dir.path().join("dev");
    let dev = dev_dir.to_str().expect("utf8").to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .current_dir(dir.path())
        .args(["dev", "--dir", &dev, "--listen", &addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dev appliance");
    drop(child.stdout.take());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut served = false;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the appliance exited ({status}) when its stdout was closed");
        }
        if std::net::TcpStream::connect(&addr).is_ok() {
            served = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let request = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .args([
            "request", "--dev", &dev, "--addr", &addr, "--ns", "default", "--sa", "web", "--out",
        ])
        .arg(dir.path().join("out"))
        .output()
        .expect("request");
    let _ = child.kill();
    let _ = child.wait();
    assert!(served, "the appliance never listened");
    assert!(
        request.status.success(),
        "{}",
        String::from_utf8_lossy(&request.stderr)
    );
}

/// Every `hsm-ca …` command line in the README, SECURITY.md and the ops/ runbooks names a
/// command that exists, with options that command has.
#[test]
fn documented_command_lines_match_the_binary() {
    const WITH_SUBCOMMANDS: &[&str] = &["ceremony", "intermediate", "keys", "audit", "admin"];
    const COMMANDS: &[&str] = &[
        "ceremony",
        "intermediate",
        "keys",
        "inspect",
        "dev",
        "request",
        "audit",
        "bundle",
        "serve",
        "admin",
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join("SECURITY.md")];
    let mut dirs = vec![root.join("ops"), root.join("hsm-config")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    let mut help_cache = std::collections::BTreeMap::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices("hsm-ca ") {
                let rest = &line[at + "hsm-ca ".len()..];
                let rest = rest.split(['#', '`', '|', ';', ')']).next().unwrap_or("");
                let mut words = rest.split_whitespace().peekable();
                // Global options before the command.
                while words.peek().is_some_and(|w| *w == "--config" || *w == "-c") {
                    words.next();
                    words.next();
                }
                let Some(command) = words.next() else {
                    continue;
                };
                if !COMMANDS.contains(&command) {
                    continue;
                }
                let mut argv = vec![command.to_string()];
                if WITH_SUBCOMMANDS.contains(&command) {
                    match words.peek() {
                        Some(sub) if !sub.starts_with('-') && !sub.starts_with('[') => {
                            argv.push(sub.to_string());
                            words.next();
                        }
                        _ => continue,
                    }
                }
                let help = help_cache.entry(argv.clone()).or_insert_with(|| {
                    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
                        .args(&argv)
                        .arg("--help")
                        .output()
                        .expect("help");
                    assert!(
                        out.status.success(),
                        "{}:{}: `hsm-ca {}` is not a command",
                        file.display(),
                        n + 1,
                        argv.join(" ")
                    );
                    String::from_utf8_lossy(&out.stdout).into_owned()
                });
                for word in words {
                    let word = word.trim_start_matches('[');
                    if let Some(flag) = word.strip_prefix("--") {
                        let flag: String = flag
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                            .collect();
                        assert!(
                            help.contains(&format!("--{flag}")),
                            "{}:{}: `hsm-ca {}` has no option --{flag}",
                            file.display(),
                            n + 1,
                            argv.join(" ")
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} command lines found");
}

#[test]
fn config_check_accepts_every_example_config() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for entry in std::fs::read_dir(repo.join("hsm-config")).expect("hsm-config") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let out = run_in(repo, &path, &["config", "check"]);
        assert!(out.ok, "{}: {out:?}", path.display());
        assert!(
            out.stdout.contains(": valid"),
            "{}: {}",
            path.display(),
            out.stdout
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} example configs");
}

#[test]
fn config_check_names_the_broken_key_and_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base =
        "trust_domain = \"example.org\"\n[keystore]\nmodule = \"/nonexistent/libpkcs11.so\"\n\
                token_label = \"ca\"\npin_file = \"pin\"\n";
    for (extra, key) in [
        ("[server]\nlisen = \"127.0.0.1:15012\"\n", "lisen"),
        ("[metrics]\nlisten = \"everywhere\"\n", "metrics.listen"),
        (
            "[rotation]\nprepare_at = 0.8\nactivate_at = 0.5\n",
            "rotation.activate_at",
        ),
        ("[admin]\nlisten = \"nowhere\"\n", "admin.listen"),
        ("signing_sessions = 0\n", "keystore.signing_sessions"),
        ("[workload]\nmax_ttl_secs = \"long\"\n", "max_ttl_secs"),
    ] {
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, format!("{base}{extra}")).expect("config");
        let out = run_in(dir.path(), &path, &["config", "check"]);
        assert!(!out.ok, "{extra} was accepted: {out:?}");
        let line = last_line(&out.stderr);
        assert!(line.starts_with("error: "), "{line}");
        assert!(
            line.contains(key),
            "{extra}: the error does not name {key}: {line}"
        );
    }
    // The module does not exist: without --devices nothing is opened, so the check passes…
    std::fs::write(dir.path().join("pin"), "1234").expect("pin");
    let path = dir.path().join("good.toml");
    std::fs::write(&path, base).expect("config");
    let out = run_in(dir.path(), &path, &["config", "check"]);
    assert!(out.ok, "{out:?}");
    assert!(
        out.stdout.contains("plaintext metrics  off"),
        "{}",
        out.stdout
    );
    // …and with it, the device is what fails.
    let out = run_in(dir.path(), &path, &["config", "check", "--devices"]);
    assert!(!out.ok, "{out:?}");
    assert!(
        last_line(&out.stderr).contains("libpkcs11.so"),
        "{}",
        out.stderr
    );
}

/// Runs `hsm-ca --config <env>/hsm-ca.toml serve --listen 127.0.0.1:0` without any log flag
/// or variable until it says where it serves, stops it with SIGTERM and returns its stderr.
fn serve_logs(env: &CliEnv) -> String {
    use std::io::{BufRead, BufReader};
    let log_path = env.path("serve.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .current_dir(env.dir.path())
        .env_remove("HSM_CA_LOG")
        .env_remove("HSM_CA_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .arg("--config")
        .arg(env.path("hsm-ca.toml"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("serve");
    let stdout = child.stdout.take().expect("stdout");
    // The banner names every listener; the plaintext /metrics one comes last.
    let serving = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("Plaintext /metrics on 127.0.0.1:"));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log_path).expect("log");
    assert!(serving, "the appliance did not start: {logs}");
    logs
}

#[test]
fn the_config_log_section_sets_level_and_format_when_no_flag_does() {
    let env = CliEnv::new(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"info\"\nformat = \"json\"\n",
    );
    root_and_intermediate_csr(&env);
    sign_intermediate(&env);
    install_intermediate(&env);

    // [log] level = "info", format = "json": the start's info events, as JSON lines.
    let logs = serve_logs(&env);
    let events: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["level"] == "INFO" && e["message"] == "connection limits"),
        "{logs}"
    );
    assert!(!logs.contains(&env.pin), "{logs}");
}

#[test]
fn data_commands_print_stable_json_and_exit_codes_say_what_failed() {
    let env = CliEnv::new("");
    root_and_intermediate_csr(&env);
    sign_intermediate(&env);
    install_intermediate(&env);
    let json = |args: &[&str]| -> serde_json::Value {
        let out = env.run(args);
        assert!(out.ok, "{out:?}");
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", out.stdout))
    };

    let keys = json(&["keys", "list", "--output", "json"]);
    let keys = keys.as_array().expect("array");
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in keys {
        assert_eq!(k["device_bound"], true, "{k}");
        assert_eq!(k["extractable"], false, "{k}");
        assert!(
            k["id"].is_string() && k["public_key_sha256"].is_string(),
            "{k}"
        );
    }
    let inters = json(&["intermediate", "list", "--output", "json"]);
    assert_eq!(inters[0]["status"], "active", "{inters}");
    assert!(inters[0]["key_id"].is_string(), "{inters}");
    let inspected = json(&["inspect", "inter/intermediate-cert.pem", "--output", "json"]);
    let cert = &inspected[0];
    assert_eq!(cert["ca"], true, "{cert}");
    assert_eq!(cert["path_len"], 0, "{cert}");
    assert_eq!(cert["spiffe_id"], "spiffe://example.org", "{cert}");
    assert_eq!(cert["subject"], "CN=hsm-ca intermediate", "{cert}");
    let bundle = json(&["bundle", "--output", "json"]);
    assert_eq!(bundle.as_array().map(Vec::len), Some(1), "{bundle}");
    assert_eq!(bundle[0]["certificate"]["ca"], true, "{bundle}");
    assert!(
        bundle[0]["pem"]
            .as_str()
            .is_some_and(|p| p.starts_with("-----BEGIN CERTIFICATE-----")),
        "{bundle}"
    );

    // 2: a usage error; 1: the operation failed.
    assert_eq!(env.run(&["inspect"]).code, Some(2));
    assert_eq!(env.run(&["keys", "list", "--output", "yaml"]).code, Some(2));
    assert_eq!(env.run(&["inspect", "missing.pem"]).code, Some(1));
}

/// Every Markdown file of the repository (outside build output and `.git`).
fn markdown_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    dirs.push(path);
                }
            } else if name.ends_with(".md") {
                files.push(path);
            }
        }
    }
    files
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of a Markdown file outside fenced code blocks, with their numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((n + 1, line));
        }
    }
    out
}

fn anchors_of(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    prose_lines(&text)
        .into_iter()
        .filter_map(|(_, l)| l.strip_prefix('#'))
        .map(|h| heading_anchor(h.trim_start_matches('#')))
        .collect()
}

/// Every relative Markdown link in the repository's .md files points at a file that exists
/// (and at a heading of it, for `#anchor` links), and every `*.md` file a document names
/// exists, relative to that document or to the repository root.
#[test]
fn every_markdown_link_and_referenced_document_resolves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = markdown_files(root);
    assert!(
        files.len() >= 10,
        "only {} Markdown files found",
        files.len()
    );
    let mut problems = Vec::new();
    let mut links = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        let dir = file.parent().expect("parent");
        let shown = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (n, line) in prose_lines(&text) {
            // Links: [text](target)
            for (at, _) in line.match_indices("](") {
                let rest = &line[at + 2..];
                let Some(end) = rest.find(')') else { continue };
                let target = rest[..end].split_whitespace().next().unwrap_or("");
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                links += 1;
                let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
                let resolved = if path.is_empty() {
                    file.clone()
                } else {
                    dir.join(path)
                };
                if !resolved.exists() {
                    problems.push(format!("{shown}:{n}: link to {target}: no such file"));
                    continue;
                }
                if !anchor.is_empty()
                    && resolved.extension().is_some_and(|e| e == "md")
                    && !anchors_of(&resolved).iter().any(|a| a == anchor)
                {
                    problems.push(format!("{shown}:{n}: link to {target}: no such heading"));
                }
            }
            // Documents named in the text: `ops/systemd/README.md`, SECURITY.md, …
            let words = line.split(|c: char| {
                !(c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-'))
            });
            for word in words {
                let word = word.trim_end_matches('.');
                if !word.ends_with(".md") || word.starts_with('/') || word == ".md" {
                    continue;
                }
                if !dir.join(word).exists() && !root.join(word).exists() {
                    problems.push(format!("{shown}:{n}: {word} is not in the repository"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(links >= 10, "only {links} relative links found");
}
