//! A real PostgreSQL server per test, from Debian's packages: `initdb` in a temporary folder,
//! the server on 127.0.0.1 at a free port, password (SCRAM) authentication for the role and
//! database `hsmca`, optionally TLS with a server certificate made here (rcgen) and only TLS
//! connections accepted. Stopped (`pg_ctl stop -m immediate`) and removed on drop.
//!
//! PostgreSQL refuses to run as root, and tests run as root in CI: the folder is handed to the
//! `postgres` user and the binaries run as it (`runuser`), from `/`. A missing PostgreSQL fails
//! the test with what to run; it never skips.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hsm_ca::secret::SecretSource;
use hsm_ca::state::{CaState, PgSettings, PgState, StoreBackend};

/// The role and database the appliance uses.
pub const ROLE: &str = "hsmca";

/// How a test's server is set up.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Serve TLS only, with a certificate for these names (DNS names or IP addresses).
    pub tls_names: Option<Vec<String>>,
    /// Every session is read-only (`default_transaction_read_only`), as on a standby.
    pub read_only: bool,
}

/// A running PostgreSQL server of one test.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// The role's password (also in [`PgCluster::password_file`]).
    pub password: String,
    /// The CA that signed the server certificate (PEM file), with TLS.
    pub ca_file: Option<PathBuf>,
}

/// The newest PostgreSQL's binaries (`/usr/lib/postgresql/<version>/bin`).
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): \
             run ops/install-deps.sh"
        )
    })
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `program args` as the `postgres` user when we are root, from `/`.
fn as_postgres(program: &Path, args: &[&str]) -> Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).current_dir("/");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Hands `path` to the `postgres` user (when we are root).
fn give_to_postgres(path: &Path) {
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .expect("chown")
            .success();
        assert!(ok, "chown postgres {}", path.display());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn write_private(path: &Path, contents: &[u8]) {
    std::fs::write(path, contents).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A CA and a server certificate it signed for `names`: (CA PEM, certificate PEM, key PEM).
pub fn server_certificate(names: &[String]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "database test CA");
    let ca_pem = ca.self_signed(&ca_key).expect("ca").pem();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let params = rcgen::CertificateParams::new(names.to_vec()).expect("names");
    let cert = params
        .signed_by(&key, &rcgen::Issuer::new(ca, ca_key))
        .expect("server cert");
    (ca_pem, cert.pem(), key.serialize_pem())
}

impl PgCluster {
    /// A plain (no TLS) writable server.
    pub fn start() -> Self {
        Self::start_with(PgOptions::default())
    }

    pub fn start_with(options: PgOptions) -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let password = format!("pw-{}", super::random_hex(12));
        let superuser_pw = root.join("superuser-pw");
        write_private(&superuser_pw, super::random_hex(16).as_bytes());
        let data = root.join("data");
        give_to_postgres(root);
        let root_s = root.to_str().expect("utf-8 path");
        let data_s = data.to_str().expect("utf-8 path");
        as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data_s,
                "-U",
                "postgres",
                "--pwfile",
                superuser_pw.to_str().expect("path"),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let port = free_port();
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = \
             '{root_s}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 50\nshared_buffers = 16MB\n"
        );
        let mut ca_file = None;
        if let Some(names) = &options.tls_names {
            let (ca_pem, cert_pem, key_pem) = server_certificate(names);
            std::fs::write(data.join("server.crt"), cert_pem).expect("cert");
            write_private(&data.join("server.key"), key_pem.as_bytes());
            give_to_postgres(&data);
            let ca = root.join("ca.pem");
            std::fs::write(&ca, ca_pem).expect("ca");
            ca_file = Some(ca);
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            // TLS only: a plain connection from 127.0.0.1 is refused.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            )
            .expect("pg_hba");
        }
        let mut pg_conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
        pg_conf.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), pg_conf).expect("conf");
        give_to_postgres(&data);
        let cluster = PgCluster {
            dir,
            bin,
            port,
            password,
            ca_file,
        };
        let log = cluster.dir.path().join("server.log");
        as_postgres(
            &cluster.bin.join("pg_ctl"),
            &[
                "-D",
                data_s,
                "-l",
                log.to_str().expect("path"),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        cluster.psql_in(
            "postgres",
            &[
                &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{}'", cluster.password),
                &format!("CREATE DATABASE {ROLE} OWNER {ROLE}"),
            ],
        );
        if options.read_only {
            cluster.psql_in(
                "postgres",
                &[&format!(
                    "ALTER DATABASE {ROLE} SET default_transaction_read_only = on"
                )],
            );
        }
        write_private(&cluster.password_file(), cluster.password.as_bytes());
        cluster
    }

    /// Where the role's password is (mode 0600).
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("hsmca-password")
    }

    /// The appliance's URL (no password), for `host`:port.
    pub fn url_for(&self, host: &str) -> String {
        format!("postgresql://{ROLE}@{host}:{}/{ROLE}", self.port)
    }

    pub fn url(&self) -> String {
        self.url_for("127.0.0.1")
    }

    /// Settings for `url`, with this server's password file and CA file.
    pub fn settings_for(&self, url: &str) -> PgSettings {
        PgSettings::new(
            url,
            SecretSource::File(self.password_file()),
            self.ca_file.clone(),
            4,
        )
        .expect("settings")
    }

    pub fn settings(&self) -> PgSettings {
        self.settings_for(&self.url())
    }

    /// Runs `sql` as the superuser in the `hsmca` database; returns psql's output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in(ROLE, &[sql])
    }

    /// Runs each command of `commands` (one transaction each) as the superuser in `database`.
    pub fn psql_in(&self, database: &str, commands: &[&str]) -> String {
        let port = self.port.to_string();
        let mut args = self.superuser_args(&port).to_vec();
        args.extend(["-d", database, "-v", "ON_ERROR_STOP=1", "-At"]);
        for command in commands {
            args.extend(["-c", command]);
        }
        let out = as_postgres(&self.bin.join("psql"), &args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How PostgreSQL's client programs reach this server as the superuser (`port` is
    /// `self.port` as text).
    fn superuser_args<'a>(&'a self, port: &'a str) -> [&'a str; 6] {
        [
            "-h",
            self.dir.path().to_str().expect("path"),
            "-p",
            port,
            "-U",
            "postgres",
        ]
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .current_dir("/")
            .output();
    }
}

/// `pg_ctl ARGS` on `data` as the `postgres` user.
fn pg_ctl(bin: &Path, data: &Path, args: &[&str]) -> Output {
    let data = data.to_str().expect("utf-8 path");
    as_postgres(&bin.join("pg_ctl"), &[&["-D", data], args].concat())
}

impl PgCluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server the way `mode` says (`immediate`: as if killed; `fast`: cleanly).
    pub fn stop(&self, mode: &str) {
        pg_ctl(
            &self.bin,
            &self.data(),
            &["-m", mode, "-w", "-t", "60", "stop"],
        );
    }

    /// Starts the stopped server again on its port.
    pub fn start_again(&self) {
        let log = self.dir.path().join("server.log");
        pg_ctl(
            &self.bin,
            &self.data(),
            &["-l", log.to_str().expect("path"), "-w", "-t", "60", "start"],
        );
    }

    /// Makes every commit wait until a standby has it (`synchronous_standby_names = '*'`,
    /// `synchronous_commit = on`).
    pub fn require_synchronous_standby(&self) {
        self.psql_in(
            "postgres",
            &[
                "ALTER SYSTEM SET synchronous_standby_names = '*'",
                "ALTER SYSTEM SET synchronous_commit = 'on'",
                "SELECT pg_reload_conf()",
            ],
        );
    }

    /// A streaming standby of this server (`pg_basebackup -R`), on a port of its own, started
    /// and caught up. It never waits for a standby itself (no `synchronous_standby_names`).
    pub fn standby(&self) -> PgCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        give_to_postgres(dir.path());
        let data = dir.path().join("data");
        let port = self.port.to_string();
        as_postgres(
            &self.bin.join("pg_basebackup"),
            &[
                &self.superuser_args(&port)[..],
                &[
                    "-D",
                    data.to_str().expect("path"),
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                ],
            ]
            .concat(),
        );
        let standby_port = free_port();
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
        conf.push_str(&format!(
            "\nport = {standby_port}\nunix_socket_directories = '{}'\n\
             synchronous_standby_names = ''\nhot_standby = on\n",
            dir.path().display()
        ));
        std::fs::write(data.join("postgresql.conf"), conf).expect("conf");
        let auto = data.join("postgresql.auto.conf");
        let kept: String = std::fs::read_to_string(&auto)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("synchronous_standby_names"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&auto, kept).expect("auto.conf");
        let standby = PgCluster {
            dir,
            bin: self.bin.clone(),
            port: standby_port,
            password: self.password.clone(),
            ca_file: self.ca_file.clone(),
        };
        write_private(&standby.password_file(), standby.password.as_bytes());
        give_to_postgres(standby.dir.path());
        standby.start_again();
        standby
    }

    /// Promotes this standby to a writable primary and waits until it is one.
    pub fn promote(&self) {
        pg_ctl(&self.bin, &self.data(), &["-w", "-t", "60", "promote"]);
    }
}

/// A handle of the test's own on the database `settings` names (no row trust).
pub async fn connect(settings: &PgSettings) -> CaState {
    CaState::connect(
        &StoreBackend::Postgres(settings.clone()),
        Path::new("/nonexistent"),
        1 << 20,
    )
    .await
    .expect("database")
}

/// The PostgreSQL state behind `state`.
pub fn pg(state: &CaState) -> &PgState {
    match state {
        CaState::Postgres(pg) => pg,
        CaState::Sled(_) => unreachable!("a database"),
    }
}
