//! A private swtpm for one test: its own state folder and free ports on 127.0.0.1, stopped by
//! PID when dropped.

#![allow(dead_code)]
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Swtpm {
    pub port: u16,
    ctrl_port: u16,
    child: Option<Child>,
    pub state: tempfile::TempDir,
}

/// A free port P on 127.0.0.1 whose neighbour P+1 is free too: the swtpm TCTI expects the
/// control channel at P+1.
pub fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").expect("free port");
        let port = first.local_addr().expect("addr").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl Swtpm {
    pub fn start() -> Self {
        let state = tempfile::tempdir().expect("swtpm state dir");
        let port = free_port_pair();
        let ctrl_port = port + 1;
        let mut tpm = Swtpm {
            port,
            ctrl_port,
            child: None,
            state,
        };
        tpm.spawn();
        tpm
    }

    /// `swtpm:host=127.0.0.1,port=N`
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    fn spawn(&mut self) {
        let child = spawn_swtpm(self.state.path(), self.port, self.ctrl_port);
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        // The control port answers once swtpm is ready; the server port is left for the test.
        while TcpStream::connect(("127.0.0.1", self.ctrl_port)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops swtpm (its state stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts swtpm on the same ports and state, like a TPM daemon restart.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

pub fn spawn_swtpm(state: &Path, port: u16, ctrl_port: u16) -> Child {
    Command::new("swtpm")
        .arg("socket")
        .arg("--tpm2")
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={ctrl_port},bindaddr=127.0.0.1"))
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--flags")
        .arg("not-need-init,startup-clear")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("swtpm is not installed: run ops/test.sh, which installs it")
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}
