//! The whole CA with its intermediate key in a TPM: `hsm-ca dev --backend tpm` starts its own
//! swtpm, issues a workload certificate over gRPC and TLS on 127.0.0.1, and stops the swtpm
//! when it stops. The chain is checked by `openssl verify -x509_strict`.

mod support;
#[path = "conformance/swtpm.rs"]
mod swtpm;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn process_alive(pid: u32) -> bool {
    // A stopped and reaped process has no /proc entry; a zombie would show state Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.contains(") Z "),
        Err(_) => false,
    }
}

fn swtpm_pid(line: &str) -> Option<u32> {
    let rest = line.strip_prefix("swtpm (pid ")?;
    rest.split(')').next()?.parse().ok()
}

/// Stops the appliance by PID if the test ends early.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_dev_appliance_issues_from_an_intermediate_held_in_swtpm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev_dir = dir.path().join("dev");
    let bin = env!("CARGO_BIN_EXE_hsm-ca");
    let mut child = Command::new(bin)
        .args([
            "dev",
            "--backend",
            "tpm",
            "--listen",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(&dev_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dev appliance");
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let (mut addr, mut pid, mut tpm_key_listed) = (None, None, false);
    let deadline = Instant::now() + Duration::from_secs(120);
    while addr.is_none() && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(p) = swtpm_pid(&line) {
            pid = Some(p);
        }
        // The key table shows the TPM key with the attributes that prove it cannot leave.
        if line.starts_with("81010000") && line.contains("tpm 0x81010000") {
            let flags: Vec<&str> = line.split_whitespace().skip(3).collect();
            assert_eq!(
                flags,
                ["ecdsa-p256", "yes", "no", "yes", "yes", "yes"],
                "{line}"
            );
            tpm_key_listed = true;
        }
        if let Some(rest) = line.strip_prefix("Serving istio.v1.auth.IstioCertificateService on ") {
            addr = rest.split_whitespace().next().map(str::to_string);
        }
    }
    let addr = addr.expect("the appliance prints its address");
    let pid = pid.expect("the appliance names its swtpm");
    assert!(tpm_key_listed, "the TPM key is listed");
    assert!(process_alive(pid), "swtpm runs while the appliance serves");

    let out = dir.path().join("web");
    let status = Command::new(bin)
        .args(["request", "--dev"])
        .arg(&dev_dir)
        .args(["--addr", &addr, "--ns", "default", "--sa", "web", "--out"])
        .arg(&out)
        .status()
        .expect("request");
    assert!(status.success(), "request failed");
    let chain = out.join("cert-chain.pem");
    let (ok, text) = support::openssl_verify(&out.join("root-cert.pem"), Some(&chain), &chain);
    assert!(ok, "{text}");
    // The leaf was issued by the intermediate the dev appliance keeps in the TPM.
    let chain_text = std::fs::read_to_string(&chain).expect("chain");
    let inter = std::fs::read_to_string(dev_dir.join("intermediate-cert.pem")).expect("inter");
    assert!(
        chain_text.contains(inter.trim()),
        "intermediate not in chain"
    );

    // Stopping the appliance stops its swtpm.
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.0.wait().expect("wait");
    assert!(status.success(), "appliance exit: {status}");
    assert!(
        !process_alive(pid),
        "swtpm {pid} still runs after the appliance stopped"
    );

    // A second start reuses the key: the swtpm state persisted it.
    let again = Command::new(bin)
        .args(["dev", "--backend", "tpm", "--setup-only", "--dir"])
        .arg(&dev_dir)
        .output()
        .expect("second start");
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{text}");
    assert!(
        text.contains("(reused)") && text.contains("tpm 0x81010000"),
        "{text}"
    );
    // A folder made for the TPM is not silently opened as a SoftHSM one.
    let wrong = Command::new(bin)
        .args(["dev", "--setup-only", "--dir"])
        .arg(&dev_dir)
        .output()
        .expect("wrong backend");
    assert!(!wrong.status.success());
    assert!(Path::new(&dev_dir).join("tpm").exists());

    // `keys list` with the appliance's config, against its TPM state served by another swtpm.
    let port = swtpm::free_port_pair();
    let tpm = Running(swtpm::spawn_swtpm(&dev_dir.join("tpm"), port, port + 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port + 1)).is_err() {
        assert!(Instant::now() < deadline, "swtpm did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let config_path = dev_dir.join("hsm-ca.toml");
    let config = std::fs::read_to_string(&config_path).expect("config");
    let config: String = config
        .lines()
        .map(|l| {
            if l.starts_with("tcti = ") {
                format!("tcti = \"swtpm:host=127.0.0.1,port={port}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&config_path, config).expect("config");
    let listed = Command::new(bin)
        .arg("--config")
        .arg(&config_path)
        .args(["keys", "list"])
        .output()
        .expect("keys list");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("81010000"))
        .unwrap_or_else(|| panic!("no TPM key listed: {text}"));
    let flags: Vec<&str> = row.split_whitespace().skip(3).collect();
    assert_eq!(
        flags,
        ["ecdsa-p256", "yes", "no", "yes", "yes", "yes"],
        "{row}"
    );
    drop(tpm);
}
