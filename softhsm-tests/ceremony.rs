//! The air-gapped root ceremony, end to end, with the `hsm-ca` binary on real SoftHSM tokens.
//!
//! Every ceremony command here runs inside `unshare --map-root-user --net`: a network
//! namespace whose only interface is a loopback that is down, so a ceremony that tried to
//! reach the network could not. The appliance runs as `hsm-ca serve` on 127.0.0.1 and a
//! workload certificate is requested from it over real TLS and gRPC.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::{offline, openssl_p256_csr, openssl_verify, run_in, CliEnv, Output};

/// The ceremony host: its own token, whose user PIN the officers will hold as shares.
struct Host {
    env: CliEnv,
}

impl Host {
    fn new() -> Self {
        let env = CliEnv::new("");
        let config = std::fs::read_to_string(env.path("hsm-ca.toml")).expect("config");
        std::fs::write(
            env.path("hsm-ca.toml"),
            config.replace("pin_file = \"pin\"", "pin_shares = true"),
        )
        .expect("config");
        // CliEnv initialised the token with this security-officer PIN.
        std::fs::write(env.path("so-pin"), "so-secret-1").expect("so pin");
        Host { env }
    }

    fn ceremony(&self, args: &[&str], stdin: Option<&str>) -> Output {
        offline(
            self.env.dir.path(),
            &self.env.path("hsm-ca.toml"),
            &[&["ceremony"], args].concat(),
            stdin,
        )
    }

    fn run(&self, args: &[&str]) -> Output {
        self.env.run(args)
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.env.path(name)
    }

    /// Records in the host's chain, as `ceremony transcript` counts them.
    fn records(&self) -> u64 {
        let out = self.run(&["ceremony", "transcript"]);
        assert!(out.ok, "{out:?}");
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("Chain intact ("))
            .expect("summary line");
        line.trim_start_matches("Chain intact (")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("count")
    }
}

fn shares(dir: &str, picks: &[(usize, &str)]) -> Vec<String> {
    picks
        .iter()
        .flat_map(|(i, name)| ["--share".to_string(), format!("{dir}/share-{i}-{name}.txt")])
        .collect()
}

fn args<'a>(fixed: &[&'a str], more: &'a [String]) -> Vec<&'a str> {
    fixed
        .iter()
        .copied()
        .chain(more.iter().map(String::as_str))
        .collect()
}

const OFFICERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

fn passphrase(name: &str) -> String {
    format!("{name}-passphrase-2026")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn pem_der(path: &Path) -> Vec<u8> {
    let text = std::fs::read(path).expect("pem");
    pem::parse(text).expect("pem").into_contents()
}

/// `hsm-ca serve` for `env`, and the address it listens on.
fn serve(env: &CliEnv) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .current_dir(env.dir.path())
        .arg("--config")
        .arg(env.path("hsm-ca.toml"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("serve printed where it listens")
            .expect("line");
        if let Some(rest) = line.strip_prefix("Serving istio.v1.auth.IstioCertificateService on ") {
            break rest.trim().to_string();
        }
    };
    (child, addr)
}

#[test]
fn a_three_of_five_ceremony_makes_a_root_the_appliance_issues_under_and_a_verifiable_transcript() {
    let host = Host::new();
    let holders: Vec<String> = OFFICERS
        .iter()
        .flat_map(|n| ["--holder".to_string(), n.to_string()])
        .collect();
    let passes: String = OFFICERS.iter().map(|n| passphrase(n) + "\n").collect();
    let out = host.ceremony(
        &args(
            &[
                "init-quorum",
                "--officers",
                "5",
                "--threshold",
                "3",
                "--encrypt",
                "--so-pin-file",
                "so-pin",
                "--officer",
                "Wendy Witness",
                "--out-dir",
                "media/quorum",
                "--yes",
            ],
            &holders,
        ),
        Some(&passes),
    );
    assert!(out.ok, "{out:?}");
    assert!(!out.stderr.contains("Failed to close session"), "{out:?}");
    for (i, name) in OFFICERS.iter().enumerate() {
        let path = host.path(&format!("media/quorum/share-{}-{name}.txt", i + 1));
        let text = std::fs::read_to_string(&path).expect("share file");
        assert!(text.contains(&format!("Officer:   {name}")), "{text}");
        assert!(text.contains("any 3 shares unlock the token"), "{text}");
        assert!(text.contains("Encrypted: yes"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is readable by others", path.display());
    }
    // The PIN the token had before is gone: only the officers' shares open it now.
    let old = host.env.run(&["keys", "list"]);
    assert!(!out.stdout.contains(&host.env.pin) && !out.stderr.contains(&host.env.pin));
    assert!(!old.ok);
    let config = std::fs::read_to_string(host.path("hsm-ca.toml")).expect("config");
    std::fs::write(
        host.path("old-pin.toml"),
        config.replace("pin_shares = true", "pin_file = \"pin\""),
    )
    .expect("config");
    let old = run_in(
        host.env.dir.path(),
        &host.path("old-pin.toml"),
        &["keys", "list"],
    );
    assert!(
        old.stderr.contains("the PIN was refused by the token"),
        "{old:?}"
    );

    // Two officers are not enough, and leave no trace: no login, no record, no output.
    let before = host.records();
    let two = shares("media/quorum", &[(1, "alice"), (4, "dave")]);
    let out = host.ceremony(
        &args(&["init-root", "--out-dir", "media/root", "--yes"], &two),
        Some(&format!(
            "{}\n{}\n",
            passphrase("alice"),
            passphrase("dave")
        )),
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("2 share(s) given") && out.stderr.contains("needs 3 of its 5 officers"),
        "{out:?}"
    );
    assert!(out.stderr.contains("Nothing was presented to the token"));
    assert!(!out.stderr.contains("login"), "{}", out.stderr);
    assert_eq!(host.records(), before);
    assert!(!host.path("media/root").exists());

    // A wrong passphrase stops before the token too.
    let three = shares("media/quorum", &[(1, "alice"), (3, "carol"), (5, "erin")]);
    let out = host.ceremony(
        &args(&["init-root", "--out-dir", "media/root", "--yes"], &three),
        Some(&format!("{}\nnot-carols-passphrase\n", passphrase("alice"))),
    );
    assert!(
        out.stderr
            .contains("the passphrase does not open this share"),
        "{out:?}"
    );
    assert_eq!(host.records(), before);

    // Three officers create the root.
    let three_passes = format!(
        "{}\n{}\n{}\n",
        passphrase("alice"),
        passphrase("carol"),
        passphrase("erin")
    );
    let out = host.ceremony(
        &args(
            &[
                "init-root",
                "--officer",
                "Wendy Witness",
                "--out-dir",
                "media/root",
                "--yes",
            ],
            &three,
        ),
        Some(&three_passes),
    );
    assert!(out.ok, "{out:?}");
    let root_pem = host.path("media/root/root-cert.pem");
    let root_der = pem_der(&root_pem);

    // Listing the token's keys on the ceremony host takes the officers' shares too.
    let listed = offline(
        host.env.dir.path(),
        &host.path("hsm-ca.toml"),
        &args(&["keys", "list"], &three),
        Some(&three_passes),
    );
    assert!(listed.ok, "{listed:?}");
    assert!(listed.stdout.contains("ecdsa-p256"), "{listed:?}");
    let without = host.run(&["keys", "list"]);
    assert!(
        !without.ok && without.stderr.contains("--share"),
        "{without:?}"
    );

    // The appliance: its own token; it makes the intermediate key and CSR.
    let signer = hsm_ca::dev::token::new_signer("k1").expect("signer");
    let app = CliEnv::new(
        "[server]\nlisten = \"127.0.0.1:0\"\ndns_names = [\"localhost\"]\n\
         [[clusters]]\nissuer = \"https://kubernetes.test/issuer\"\njwks_file = \"jwks.json\"\n\
         [admin]\nenabled = false\n",
    );
    std::fs::write(app.path("jwks.json"), &signer.jwks).expect("jwks");
    std::fs::copy(&root_pem, app.path("root-cert.pem")).expect("root to appliance");
    let out = app.run(&["intermediate", "new", "--out", "inter.csr"]);
    assert!(out.ok, "{out:?}");
    let csr_fp = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Public key SHA-256: "))
        .expect("fingerprint")
        .to_string();
    std::fs::copy(app.path("inter.csr"), host.path("inter.csr")).expect("csr to media");

    // Three other officers sign it.
    let other = shares("media/quorum", &[(2, "bob"), (4, "dave"), (5, "erin")]);
    let out = host.ceremony(
        &args(
            &[
                "sign-intermediate",
                "--csr",
                "inter.csr",
                "--officer",
                "Wendy Witness",
                "--out-dir",
                "media/intermediate",
                "--yes",
            ],
            &other,
        ),
        Some(&format!(
            "{}\n{}\n{}\n",
            passphrase("bob"),
            passphrase("dave"),
            passphrase("erin")
        )),
    );
    assert!(out.ok, "{out:?}");
    assert!(out.stdout.contains(&csr_fp), "{}", out.stdout);
    let inter = host.path("media/intermediate/intermediate-cert.pem");
    let (ok, text) = openssl_verify(&root_pem, None, &inter);
    assert!(ok, "{text}");

    // The appliance installs it and issues a workload certificate under it.
    std::fs::copy(&inter, app.path("intermediate-cert.pem")).expect("to appliance");
    let out = app.run(&["intermediate", "install", "--cert", "intermediate-cert.pem"]);
    assert!(out.ok, "{out:?}");
    let (mut server, addr) = serve(&app);
    let token = hsm_ca::dev::token::mint(
        &signer.key_pkcs8_pem,
        &signer.kid,
        &hsm_ca::dev::token::TokenClaims {
            issuer: "https://kubernetes.test/issuer",
            audiences: &["istio-ca".to_string()],
            namespace: "default",
            service_account: "web",
            expires_in: 600,
            not_before_in: 0,
        },
    )
    .expect("token");
    std::fs::write(app.path("sa-token"), token).expect("token");
    let out = app.run(&[
        "request",
        "--addr",
        &addr,
        "--ca-root",
        "root-cert.pem",
        "--token",
        "sa-token",
        "--ns",
        "default",
        "--sa",
        "web",
        "--trust-domain",
        "example.org",
        "--out",
        "web",
    ]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.ok, "{out:?}");
    let chain = app.path("web/cert-chain.pem");
    let (ok, text) = openssl_verify(&root_pem, Some(&chain), &chain);
    assert!(ok, "{text}");

    // The transcript verifies offline against the root certificate and tells the story.
    let jsonl = host.path("media/intermediate/transcript.jsonl");
    let jsonl_s = jsonl.to_str().expect("utf8");
    let root_s = root_pem.to_str().expect("utf8");
    let out = host.run(&["audit", "verify", "--file", jsonl_s, "--root-cert", root_s]);
    assert!(out.ok, "{out:?}");
    assert!(out.stdout.contains("Records after the last checkpoint: 0."));
    let out = host.run(&[
        "ceremony",
        "transcript",
        "--file",
        jsonl_s,
        "--root-cert",
        root_s,
    ]);
    assert!(out.ok, "{out:?}");
    let inter_fp = sha256_hex(&pem_der(&inter));
    let root_fp = sha256_hex(&root_der);
    for want in [
        "ceremony `init-quorum` started",
        "any 3 of 5: alice, bob, carol, dave, erin (shares encrypted)",
        "ceremony `init-root` started",
        "attending: Wendy Witness, alice, carol, erin",
        "logged in with 3 share(s)",
        "#1 alice, #3 carol, #5 erin",
        "#2 bob, #4 dave, #5 erin",
        "signed (sign-intermediate): CN=hsm-ca intermediate",
        &root_fp,
        &inter_fp,
        &csr_fp,
        "intermediate-cert.pem  SHA-256",
        "signed by root key",
        "Verified:",
    ] {
        assert!(
            out.stdout.contains(want),
            "missing {want:?}:\n{}",
            out.stdout
        );
    }
    // The same text went to the media.
    let txt = std::fs::read_to_string(host.path("media/intermediate/transcript.txt")).expect("txt");
    assert!(txt.contains(&inter_fp));

    // Tampering is detected: an edited record, a removed record, a cut-off end, another key.
    let original = std::fs::read_to_string(&jsonl).expect("jsonl");
    let lines: Vec<&str> = original.lines().collect();
    let edited: String = original.replacen("Wendy Witness", "Mallory", 1);
    let removed: String = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let cut: String = lines[..lines.len() - 1]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    for (name, text, expect) in [
        ("edited", edited, "does not link"),
        ("removed", removed, "sequence number"),
        ("cut", cut, "does not end with a checkpoint"),
    ] {
        let path = host.path(&format!("{name}.jsonl"));
        std::fs::write(&path, text).expect("write");
        let out = host.run(&[
            "audit",
            "verify",
            "--file",
            path.to_str().expect("utf8"),
            "--root-cert",
            root_s,
        ]);
        assert!(!out.ok, "{name} transcript verified");
        assert!(out.stderr.contains(expect), "{name}: {out:?}");
    }
    // Checked against another root (the appliance-side dev root would do): refused.
    let stranger = CliEnv::new("");
    assert!(
        stranger
            .ceremony(&["init-root", "--out-dir", "media", "--yes"])
            .ok
    );
    let out = host.run(&[
        "audit",
        "verify",
        "--file",
        jsonl_s,
        "--root-cert",
        stranger.path("media/root-cert.pem").to_str().expect("utf8"),
    ]);
    assert!(!out.ok);
    assert!(out.stderr.contains("checkpoint does not verify"), "{out:?}");
    assert_eq!(out.code, Some(3), "a failed verification exits with 3");
}

#[test]
fn rotation_revocation_and_share_rotation_on_the_offline_host() {
    let host = Host::new();
    let out = host.ceremony(
        &[
            "init-quorum",
            "--officers",
            "3",
            "--threshold",
            "2",
            "--so-pin-file",
            "so-pin",
            "--out-dir",
            "media/q1",
            "--yes",
        ],
        None,
    );
    assert!(out.ok, "{out:?}");
    let q1 = shares("media/q1", &[(1, "officer-1"), (3, "officer-3")]);
    let out = host.ceremony(
        &args(&["init-root", "--out-dir", "media/root", "--yes"], &q1),
        None,
    );
    assert!(out.ok, "{out:?}");
    let old_root = host.path("media/root/root-cert.pem");

    // An intermediate from any CSR (here openssl's), then revoked.
    openssl_p256_csr(
        host.env.dir.path(),
        "/CN=east intermediate",
        "east-key.pem",
        "east.csr",
    );
    let out = host.ceremony(
        &args(
            &[
                "sign-intermediate",
                "--csr",
                "east.csr",
                "--out-dir",
                "media/east",
                "--yes",
            ],
            &q1,
        ),
        None,
    );
    assert!(out.ok, "{out:?}");
    let east = host.path("media/east/intermediate-cert.pem");
    let out = host.ceremony(
        &args(
            &[
                "revoke-intermediate",
                "--cert",
                east.to_str().expect("utf8"),
                "--reason",
                "key-compromise",
                "--out-dir",
                "media/revoked",
                "--yes",
            ],
            &q1,
        ),
        None,
    );
    assert!(out.ok, "{out:?}");
    let crl = host.path("media/revoked/root-crl.pem");
    let check = Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(&crl)
        .arg("-CAfile")
        .arg(&old_root)
        .output()
        .expect("openssl crl");
    let text = String::from_utf8_lossy(&check.stdout).to_uppercase()
        + &String::from_utf8_lossy(&check.stderr).to_uppercase();
    assert!(check.status.success(), "{text}");
    assert!(text.contains("VERIFY OK"), "{text}");
    let serial = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&east)
        .output()
        .expect("serial");
    let serial = String::from_utf8_lossy(&serial.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_uppercase();
    assert!(text.contains(&serial), "{serial} not in\n{text}");
    // The entry carries the reason given on the command line.
    assert!(text.contains("KEY COMPROMISE"), "{text}");

    // Root rotation: a new root, cross-signed by the old one.
    let out = host.ceremony(
        &args(&["rotate-root", "--out-dir", "media/rotated", "--yes"], &q1),
        None,
    );
    assert!(out.ok, "{out:?}");
    let new_root = host.path("media/rotated/root-cert.pem");
    let cross = host.path("media/rotated/cross-signed-root.pem");
    let (ok, text) = openssl_verify(&old_root, None, &cross);
    assert!(
        ok,
        "the cross-signed root does not chain to the old root: {text}"
    );
    let (ok, text) = openssl_verify(&new_root, None, &new_root);
    assert!(ok, "{text}");
    let bundle =
        std::fs::read_to_string(host.path("media/rotated/trust-bundle.pem")).expect("bundle");
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    let jsonl = host.path("media/rotated/transcript.jsonl");
    let verify = |roots: &Path| {
        host.run(&[
            "audit",
            "verify",
            "--file",
            jsonl.to_str().expect("utf8"),
            "--root-cert",
            roots.to_str().expect("utf8"),
        ])
    };
    let out = verify(&host.path("media/rotated/trust-bundle.pem"));
    assert!(out.ok, "{out:?}");
    // The last checkpoint is the new root's: the old root alone does not verify it.
    assert!(!verify(&old_root).ok);
    // Later signatures default to the newest root.
    let out = host.ceremony(
        &args(&["crl", "--out-dir", "media/crl-new", "--yes"], &q1),
        None,
    );
    assert!(out.ok, "{out:?}");
    let check = Command::new("openssl")
        .args(["crl", "-noout", "-in"])
        .arg(host.path("media/crl-new/root-crl.pem"))
        .arg("-CAfile")
        .arg(&new_root)
        .output()
        .expect("openssl crl");
    assert!(check.status.success(), "{check:?}");

    // Share rotation: new officers and threshold; the old shares stop working before login.
    let out = host.ceremony(
        &args(
            &[
                "reshare",
                "--officers",
                "4",
                "--threshold",
                "3",
                "--out-dir",
                "media/q2",
                "--yes",
            ],
            &q1,
        ),
        None,
    );
    assert!(out.ok, "{out:?}");
    let before = host.records();
    let out = host.ceremony(
        &args(&["crl", "--out-dir", "media/crl-old-shares", "--yes"], &q1),
        None,
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("which this host replaced by quorum"),
        "{out:?}"
    );
    assert_eq!(host.records(), before);
    let q2 = shares(
        "media/q2",
        &[(1, "officer-1"), (2, "officer-2"), (4, "officer-4")],
    );
    let out = host.ceremony(
        &args(&["crl", "--out-dir", "media/crl-q2", "--yes"], &q2),
        None,
    );
    assert!(out.ok, "{out:?}");
    let out = host.run(&[
        "audit",
        "verify",
        "--file",
        host.path("media/crl-q2/transcript.jsonl")
            .to_str()
            .expect("utf8"),
        "--root-cert",
        host.path("media/rotated/trust-bundle.pem")
            .to_str()
            .expect("utf8"),
    ]);
    assert!(out.ok, "{out:?}");
}

#[test]
fn a_ceremony_refuses_to_run_with_a_network_route() {
    let routes = std::fs::read_to_string("/proc/self/net/route").unwrap_or_default();
    let has_route = routes
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().next().is_some_and(|i| i != "lo"));
    let host = Host::new();
    const INIT_QUORUM: &[&str] = &[
        "init-quorum",
        "--officers",
        "2",
        "--threshold",
        "2",
        "--so-pin-file",
        "so-pin",
        "--out-dir",
        "media/q",
        "--yes",
    ];
    // Outside the namespace, on this machine's own network.
    let out = host.run(&[&["ceremony"], INIT_QUORUM].concat());
    if has_route {
        assert!(!out.ok);
        assert!(out.stderr.contains("A ceremony runs offline"), "{out:?}");
        assert!(!host.path("media/q").exists());
    }
    // In a namespace without network it runs.
    let out = host.ceremony(INIT_QUORUM, None);
    assert!(out.ok, "{out:?}");
}
