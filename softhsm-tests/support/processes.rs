//! Appliances run as `hsm-ca serve` processes on one PostgreSQL database: the CA is prepared
//! here (a SoftHSM token, a root and an intermediate made on it, the intermediate installed in
//! the database, as `Appliance::start_on_postgres` does in process), then each node gets a
//! folder of its own (config, data directory with its audit chain, log files) and a process
//! listening on 127.0.0.1 at ports it announces. Every process is killed when its [`Node`] is
//! dropped, also when a test panics. [`Load`] is clients requesting certificates without pause
//! through the repository's client, each knowing every address it is given.
//!
//! Until each node has its own intermediate, the nodes share the one SoftHSM token (its file
//! store is safe for several processes): each process opens it through `SOFTHSM2_CONF`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hsm_ca::client::{self, Ask, WorkloadKey};
use hsm_ca::dev::token::{self as devtoken, TokenClaims, TokenSigner};
use hsm_ca::keystore::KeyStore;
use hsm_ca::state::PgSettings;
use time::OffsetDateTime;

use super::http::AdminClient;
use super::postgres::connect;
use super::TestToken;

use super::appliance::{OPERATOR, TOKEN_ISSUER};
const WORKLOAD: &str = "spiffe://cluster.local/ns/default/sa/web";

/// The CA the nodes serve: the shared token, root and intermediate, the files every node
/// copies, the service-account token signer and an operator's admin identity.
pub struct Ca {
    pub token: TestToken,
    pub dir: tempfile::TempDir,
    pub store: KeyStore,
    pub roots: Vec<Vec<u8>>,
    pub intermediate: Vec<u8>,
    pub signer: TokenSigner,
    operator: (Vec<Vec<u8>>, Vec<u8>),
    softhsm_conf: PathBuf,
}

impl Ca {
    /// Makes the token, root and intermediate (valid for a day), and installs the intermediate
    /// in the database `settings` names (the first node to start seeds the bundle from the root file).
    pub async fn prepare(settings: &PgSettings) -> Ca {
        let token = TestToken::new();
        let softhsm_conf = PathBuf::from(std::env::var_os("SOFTHSM2_CONF").expect("set"));
        let dir = tempfile::tempdir().expect("tempdir");
        let signer = devtoken::new_signer("k1").expect("signer");
        std::fs::write(dir.path().join("jwks.json"), &signer.jwks).expect("jwks");
        let path = dir.path().join("ca.toml");
        std::fs::write(
            &path,
            format!(
                "trust_domain = \"cluster.local\"\n[keystore]\nmodule = \"{}\"\n\
                 token_label = \"{}\"\npin_file = \"{}\"\n[intermediate]\nvalidity_days = 1\n",
                super::module().display(),
                token.label,
                token.dir.path().join("pin").display()
            ),
        )
        .expect("config");
        let config = hsm_ca::config::Config::load(&path).expect("config");
        let store = token.keystore(2);
        let (root, inter, operator) = tokio::task::block_in_place(|| {
            let now = OffsetDateTime::now_utc();
            let (_, root) = hsm_ca::authority::create_root(&store, &config, now).expect("root");
            std::fs::write(dir.path().join("root-cert.pem"), &root.pem).expect("root file");
            let root_ca = hsm_ca::authority::issuing_ca_for(&store, &root.der).expect("root ca");
            let inter = super::appliance::new_intermediate(&root_ca, &store, &config, now);
            let ca = hsm_ca::authority::issuing_ca_for(&store, &inter.der).expect("issuer");
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
            let cert = ca
                .issue_leaf(
                    &rcgen::PublicKeyData::subject_public_key_info(&key),
                    OPERATOR,
                    Duration::from_secs(3 * 3600),
                    Duration::from_secs(60),
                    now,
                )
                .expect("operator certificate");
            let operator = (vec![cert.der, inter.der.clone()], key.serialize_der());
            (root, inter, operator)
        });
        let record = tokio::task::block_in_place(|| {
            hsm_ca::authority::check_intermediate(
                &store,
                std::slice::from_ref(&root.der),
                &inter.der,
                OffsetDateTime::now_utc(),
            )
        })
        .expect("intermediate");
        connect(settings)
            .await
            .install(record)
            .await
            .expect("install");
        Ca {
            token,
            dir,
            store,
            roots: vec![root.der],
            intermediate: inter.der,
            signer,
            operator,
            softhsm_conf,
        }
    }

    /// A node's config: its id, the shared token, the database at `url` (password in
    /// `password_file`), listeners on 127.0.0.1:0, the operator as admin; `extra` appended.
    pub fn config(&self, node_id: &str, url: &str, password_file: &Path, extra: &str) -> String {
        format!(
            r#"trust_domain = "cluster.local"
node_id = "{node_id}"
data_dir = "data"
[keystore]
module = "{module}"
token_label = "{label}"
pin_file = "{pin}"
[keystore.module_env]
SOFTHSM2_CONF = "{conf}"
[server]
listen = "127.0.0.1:0"
dns_names = ["localhost"]
ip_addresses = ["127.0.0.1"]
[[clusters]]
issuer = "{TOKEN_ISSUER}"
jwks_file = "jwks.json"
[admin]
listen = "127.0.0.1:0"
development_shared_ca = true
[[admin.users]]
identity = "{OPERATOR}"
roles = ["auditor", "officer"]
[admin.approvals]
threshold = 1
[store]
backend = "postgres"
[store.postgres]
url = "{url}"
password_file = "{password}"
{extra}
"#,
            module = super::module().display(),
            label = self.token.label,
            pin = self.token.dir.path().join("pin").display(),
            conf = self.softhsm_conf.display(),
            password = password_file.display(),
        )
    }

    /// The admin API at `addr` as the operator.
    pub fn admin(&self, addr: SocketAddr) -> AdminClient {
        AdminClient::new(
            addr,
            &self.roots,
            Some((&self.operator.0, &self.operator.1)),
        )
    }

    /// A service-account token for the workload.
    pub fn workload_token(&self) -> String {
        devtoken::mint(
            &self.signer.key_pkcs8_pem,
            &self.signer.kid,
            &TokenClaims {
                issuer: TOKEN_ISSUER,
                audiences: &["istio-ca".to_string()],
                namespace: "default",
                service_account: "web",
                expires_in: 3600,
                not_before_in: 0,
            },
        )
        .expect("mint")
    }

    /// One certificate from any of `addrs` (the repository's client: each address tried in
    /// turn until one answers): the leaf's serial (hex) and its issuer's certificate, and the
    /// address that answered.
    pub async fn request(
        &self,
        addrs: &[SocketAddr],
        token: &str,
    ) -> Result<(String, Vec<u8>, SocketAddr), client::ClientError> {
        let csr = client::workload_csr(WorkloadKey::P256, WORKLOAD).expect("csr");
        let ask = Ask {
            server_name: "localhost",
            tls: hsm_ca::tls::client_config(&self.roots, None, false).expect("tls"),
            csr_pem: &csr.csr_pem,
            ttl_secs: 600,
            token: Some(token),
            cluster_id: None,
        };
        let (answer, addr) = client::request_from_any(addrs, &ask).await?;
        let leaf = hsm_ca::ca::certificates_from_pem(answer.cert_chain[0].as_bytes()).expect("pem");
        let issuer =
            hsm_ca::ca::certificates_from_pem(answer.cert_chain[1].as_bytes()).expect("pem");
        let serial = hsm_ca::ca::inspect::serial_hex(
            hsm_ca::ca::inspect::parse_certificate(&leaf[0])
                .expect("leaf")
                .raw_serial(),
        );
        Ok((serial, issuer[0].clone(), addr))
    }
}

/// One appliance process and its folder.
pub struct Node {
    pub id: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    starts: u32,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl Node {
    /// Writes `config` into a new folder (with the root and JWKS files) and starts the node.
    pub fn start(ca: &Ca, id: &str, config: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["root-cert.pem", "jwks.json"] {
            std::fs::copy(ca.dir.path().join(name), dir.path().join(name)).expect("copy");
        }
        std::fs::write(dir.path().join("hsm-ca.toml"), config).expect("config");
        let mut node = Node {
            id: id.to_string(),
            dir,
            child: None,
            starts: 0,
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        node.spawn();
        node
    }

    /// Starts the process on the node's folder (its data directory as it is) and waits until
    /// it says where it listens.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.id);
        self.starts += 1;
        let out = self.dir.path().join(format!("stdout-{}.log", self.starts));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
            .current_dir(self.dir.path())
            .env("HSM_CA_LOG", "info")
            .args(["--config", "hsm-ca.toml", "serve"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(log)
            .spawn()
            .expect("hsm-ca serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let find = |prefix: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            };
            if let (Some(grpc), Some(admin)) = (
                find("Serving istio.v1.auth.IstioCertificateService on "),
                find("Admin API on "),
            ) {
                self.grpc = grpc;
                self.admin = admin;
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("wait"));
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "node {} did not start ({exited:?}): {}",
                self.id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    /// Everything the node logged, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: the process ends at once, without a clean stop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} {}", self.id);
    }

    /// A clean stop (SIGTERM), waited for.
    pub fn stop(&mut self) {
        if self.child.is_some() {
            self.signal("CONT");
            self.signal("TERM");
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process would not die of SIGKILL until continued on some kernels.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// Polls `probe` every 100 ms until it gives a value, for at most `limit`; panics with `what`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The serials (hex) of every certificate whose issuance a node shipped to the database.
pub fn shipped_serials(db: &super::postgres::PgCluster) -> std::collections::HashSet<String> {
    db.psql("SELECT issued_serial FROM audit_records WHERE issued_serial IS NOT NULL")
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A value of `/metrics` text: the first sample of `name` (no labels).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Requests certificates from `addrs` on `clients` tasks until `stop`: the serials received
/// with the address that answered, and the errors.
pub struct Load {
    serials: Arc<Mutex<Vec<(String, SocketAddr)>>>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(ca: &Arc<Ca>, addrs: &[SocketAddr], clients: usize) -> Load {
        let load = Load {
            serials: Arc::default(),
            errors: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        let tasks = (0..clients)
            .map(|_| {
                let (ca, addrs) = (ca.clone(), addrs.to_vec());
                let (serials, errors, stop) =
                    (load.serials.clone(), load.errors.clone(), load.stop.clone());
                tokio::spawn(async move {
                    let token = ca.workload_token();
                    while !stop.load(Ordering::Relaxed) {
                        match ca.request(&addrs, &token).await {
                            Ok((serial, _, addr)) => {
                                serials.lock().expect("lock").push((serial, addr))
                            }
                            Err(e) => {
                                errors.lock().expect("lock").push(e.to_string());
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    pub fn issued(&self) -> usize {
        self.serials.lock().expect("lock").len()
    }

    /// Stops the clients; the serials (with the address that answered) and errors they saw.
    pub async fn finish(self) -> (Vec<(String, SocketAddr)>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("client");
        }
        let serials = self.serials.lock().expect("lock").clone();
        let errors = self.errors.lock().expect("lock").clone();
        (serials, errors)
    }
}

/// Waits until `n` more certificates were issued by `load`.
pub async fn issued_more(load: &Load, n: usize, limit: Duration) {
    let target = load.issued() + n;
    wait_for(limit, "certificates under load", || {
        let done = load.issued() >= target;
        async move { done.then_some(()) }
    })
    .await;
}
