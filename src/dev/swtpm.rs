//! `hsm-ca dev --backend tpm`: the dev appliance's own swtpm, and its config. Never used by a
//! production appliance, whose TPM is the host's.
//!
//! The swtpm keeps its state in `<dir>/tpm`, listens on a free port pair of 127.0.0.1 (the
//! swtpm TCTI expects the control channel at port + 1), and is stopped by PID when the
//! appliance stops. The intermediate key lives in this TPM; the root key stays in the
//! embedded SoftHSM token, as an offline root would stay in its own HSM.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::DevError;

/// A running swtpm owned by the dev appliance.
pub struct DevSwtpm {
    child: Child,
    port: u16,
}

fn free_port_pair() -> Result<u16, DevError> {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").map_err(DevError::NoFreePort)?;
        let port = first.local_addr().map_err(DevError::NoFreePort)?.port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(DevError::NoFreePortPair)
}

impl DevSwtpm {
    /// Starts swtpm with its state in `state_dir` and waits until it answers.
    pub fn start(state_dir: &Path) -> Result<Self, DevError> {
        std::fs::create_dir_all(state_dir).map_err(DevError::io(state_dir))?;
        let port = free_port_pair()?;
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .arg("--tpmstate")
            .arg(format!("dir={}", state_dir.display()))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(DevError::SwtpmStart)?;
        let mut tpm = DevSwtpm { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port + 1)).is_err() {
            if let Ok(Some(status)) = tpm.child.try_wait() {
                return Err(DevError::SwtpmExited(status));
            }
            if Instant::now() > deadline {
                tpm.stop();
                return Err(DevError::SwtpmTimeout);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(tpm)
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DevSwtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The dev config for a TPM-held intermediate: the SoftHSM dev config with its keystore
/// section replaced.
pub fn tpm_config_text(softhsm_text: &str, tcti: &str) -> String {
    let start = softhsm_text
        .find("[keystore]")
        .expect("invariant: the dev config has a keystore section");
    let end = softhsm_text
        .find("[server]")
        .expect("invariant: the dev config has a server section");
    format!(
        "{}[keystore]\nbackend = \"tpm\"\ntcti = \"{tcti}\"\nkey_auth_file = \"tpm-key-auth\"\n\
         signing_sessions = 1\n\n{}",
        softhsm_text[..start].replace(
            "an embedded SoftHSM token under this folder.",
            "the intermediate in its own swtpm (tpm/), the root in the SoftHSM token (tokens/).",
        ),
        &softhsm_text[end..]
    )
}

/// Points the config at this start's swtpm port.
pub fn set_tcti(config_path: &Path, tcti: &str) -> Result<(), DevError> {
    let text = std::fs::read_to_string(config_path).map_err(DevError::io(config_path))?;
    let updated: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("tcti = ") {
                format!("tcti = \"{tcti}\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    crate::authority::write_file(config_path, (updated.join("\n") + "\n").as_bytes(), true)?;
    Ok(())
}
