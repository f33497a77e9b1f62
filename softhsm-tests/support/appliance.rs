//! An appliance started in this process on a fresh SoftHSM token, listening on 127.0.0.1:0,
//! and clients that talk to it over real TLS and gRPC.

use std::path::PathBuf;

use hsm_ca::client;
use hsm_ca::config::Config;
use hsm_ca::dev::token::{self as devtoken, TokenClaims, TokenSigner};
use hsm_ca::issuance::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use hsm_ca::keystore::KeyStore;
use hsm_ca::server::RunningServer;
use hsm_ca::state::{CaState, SledState};
use time::OffsetDateTime;
use tonic::transport::Channel;

use super::postgres::connect as postgres;
use super::TestToken;

pub const TOKEN_ISSUER: &str = "https://kubernetes.test/issuer";
pub const EAST_ISSUER: &str = "https://east.test/issuer";

pub struct Appliance {
    pub token: TestToken,
    pub dir: tempfile::TempDir,
    pub server: RunningServer,
    pub store: KeyStore,
    pub config: Config,
    pub roots: Vec<Vec<u8>>,
    pub signer: TokenSigner,
    pub east_signer: TokenSigner,
}

impl Appliance {
    /// Starts an appliance; `extra` is appended to the config (TOML).
    pub async fn start(extra: &str) -> Appliance {
        Self::start_with(extra, None).await
    }

    pub async fn start_with(extra: &str, pool: Option<hsm_ca::keystore::PoolOptions>) -> Appliance {
        Self::try_start_with(extra, pool).await.expect("server")
    }

    /// Prepares the token and CA state like [`Appliance::start`], and returns why the server
    /// refused to start, if it did.
    pub async fn try_start(extra: &str) -> Result<Appliance, hsm_ca::server::ServerError> {
        Self::try_start_with(extra, None).await
    }

    async fn try_start_with(
        extra: &str,
        pool: Option<hsm_ca::keystore::PoolOptions>,
    ) -> Result<Appliance, hsm_ca::server::ServerError> {
        let token = TestToken::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let signer = devtoken::new_signer("k1").expect("signer");
        let east_signer = devtoken::new_signer("east-1").expect("signer");
        std::fs::write(dir.path().join("jwks.json"), &signer.jwks).expect("jwks");
        std::fs::write(dir.path().join("east-jwks.json"), &east_signer.jwks).expect("jwks");
        let server = if extra.contains("[server]") {
            ""
        } else {
            "[server]\nlisten = \"127.0.0.1:0\"\ndns_names = [\"localhost\"]\nip_addresses = [\"127.0.0.1\"]\n"
        };
        let admin = if extra.contains("[admin]") {
            ""
        } else {
            "[admin]\nlisten = \"127.0.0.1:0\"\n"
        };
        let text = format!(
            r#"trust_domain = "cluster.local"
[keystore]
module = "{module}"
token_label = "{label}"
pin_file = "{pin}"
{server}
[[clusters]]
issuer = "{TOKEN_ISSUER}"
jwks_file = "jwks.json"
[[clusters]]
id = "east"
issuer = "{EAST_ISSUER}"
audiences = ["istio-ca", "other"]
jwks_file = "east-jwks.json"
{admin}
{extra}
"#,
            module = super::module().display(),
            label = token.label,
            pin = token.dir.path().join("pin").display(),
        );
        let path = dir.path().join("hsm-ca.toml");
        std::fs::write(&path, text).expect("config");
        let config = Config::load(&path).expect("config");
        let store = match pool {
            Some(p) => token.keystore_with(p),
            None => token.keystore(2),
        };
        let (roots, state) = tokio::task::block_in_place(|| {
            let now = OffsetDateTime::now_utc();
            let (_, root) = hsm_ca::authority::create_root(&store, &config, now).expect("root");
            std::fs::write(&config.root.certificates[0], &root.pem).expect("root file");
            let root_ca = hsm_ca::authority::issuing_ca_for(&store, &root.der).expect("root ca");
            let inter = new_intermediate(&root_ca, &store, &config, now);
            let state = SledState::open(&config.data_dir).expect("state");
            hsm_ca::authority::install_intermediate(
                &store,
                &state,
                std::slice::from_ref(&root.der),
                &inter.der,
                now,
            )
            .expect("install");
            (vec![root.der], CaState::from(state))
        });
        let server =
            hsm_ca::server::start(config.clone(), store.clone(), std::sync::Arc::new(state))
                .await?;
        Ok(Appliance {
            token,
            dir,
            server,
            store,
            config,
            roots,
            signer,
            east_signer,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops the server and starts it again on the same token, config and data directory
    /// (new listening ports).
    #[allow(dead_code)]
    pub async fn restart(self) -> Appliance {
        self.server.shutdown().await;
        let state = tokio::task::block_in_place(|| CaState::open(&self.config.data_dir))
            .expect("state after restart");
        let server = serve(&self.config, &self.store, state).await;
        Appliance { server, ..self }
    }

    /// A token for `ns`/`sa` from the default cluster's issuer, audience istio-ca.
    pub fn token_for(&self, ns: &str, sa: &str) -> String {
        self.mint(&self.signer, TOKEN_ISSUER, "istio-ca", ns, sa, 600, 0)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn mint(
        &self,
        signer: &TokenSigner,
        issuer: &str,
        aud: &str,
        ns: &str,
        sa: &str,
        exp: i64,
        nbf: i64,
    ) -> String {
        devtoken::mint(
            &signer.key_pkcs8_pem,
            &signer.kid,
            &TokenClaims {
                issuer,
                audiences: &[aud.to_string()],
                namespace: ns,
                service_account: sa,
                expires_in: exp,
                not_before_in: nbf,
            },
        )
        .expect("mint")
    }

    /// A gRPC client over TLS; `identity` is a client certificate chain and PKCS#8 key.
    pub async fn client(
        &self,
        identity: Option<(&[Vec<u8>], &[u8])>,
        tls13_only: bool,
    ) -> IstioCertificateServiceClient<Channel> {
        let tls = hsm_ca::tls::client_config(&self.roots, identity, tls13_only).expect("tls");
        client::connect(self.server.local_addr, "localhost", tls)
            .await
            .expect("connect")
    }
}

/// An appliance on a device of its own, issuing with its own intermediate under the same root.
#[allow(dead_code)]
pub struct OwnNode {
    pub token: TestToken,
    pub store: KeyStore,
    pub dir: tempfile::TempDir,
    pub server: RunningServer,
    pub config: Config,
}

/// A second appliance serving the same CA from the same device, on one PostgreSQL database:
/// its own data directory (audit log, bundle file) and listeners.
#[allow(dead_code)]
pub struct Node {
    pub dir: tempfile::TempDir,
    pub server: RunningServer,
    pub config: Config,
}

#[allow(dead_code)]
impl Appliance {
    /// Like [`Appliance::start`], with the CA state in the PostgreSQL database `settings`
    /// names: the intermediate prepared on the token is installed there, and the first start
    /// seeds the bundle from the root file.
    pub async fn start_on_postgres(extra: &str, settings: &hsm_ca::state::PgSettings) -> Appliance {
        Self::start_on_postgres_with(extra, settings, |_| {}).await
    }

    /// [`Appliance::start_on_postgres`] with its config adjusted by `adjust` first (with
    /// `own_intermediate`, the intermediate is installed as the node's own).
    pub async fn start_on_postgres_with(
        extra: &str,
        settings: &hsm_ca::state::PgSettings,
        adjust: impl FnOnce(&mut Config),
    ) -> Appliance {
        let mut app = Self::start(extra).await;
        app.server.shutdown().await;
        adjust(&mut app.config);
        let local =
            tokio::task::block_in_place(|| SledState::open(&app.config.data_dir)).expect("state");
        let shared = postgres(settings).await;
        if app.config.own_intermediate {
            if let CaState::Postgres(pg) = &shared {
                pg.own_intermediates(&app.config.node_id);
            }
        }
        for record in local.intermediates().expect("intermediates") {
            shared.install(record).await.expect("install");
        }
        drop(local);
        let server = serve(&app.config, &app.store, shared).await;
        Appliance { server, ..app }
    }

    /// An appliance on a device of its own (`token`) and the database `settings` names, with
    /// an intermediate of its own (`own_intermediate`) made in that device and signed by this
    /// appliance's root; node id `node`, believing rows signed by `members`.
    pub async fn node_on_own_device(
        &self,
        settings: &hsm_ca::state::PgSettings,
        token: TestToken,
        node: &str,
        members: Vec<Vec<u8>>,
    ) -> OwnNode {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["jwks.json", "east-jwks.json", "root-cert.pem"] {
            std::fs::copy(self.path(name), dir.path().join(name)).expect("copy");
        }
        let text = std::fs::read_to_string(self.path("hsm-ca.toml"))
            .expect("config")
            .replace(&self.token.label, &token.label)
            .replace(
                &self.token.dir.path().display().to_string(),
                &token.dir.path().display().to_string(),
            );
        std::fs::write(dir.path().join("hsm-ca.toml"), text).expect("config");
        let mut config = Config::load(&dir.path().join("hsm-ca.toml")).expect("config");
        config.node_id = node.into();
        config.own_intermediate = true;
        config.member_keys = members;
        let store = token.keystore(2);
        // Installed as `hsm-ca intermediate install` does on a shared database: through a
        // handle that signs with the node's device.
        let installer = postgres(settings).await;
        let unaudited = std::sync::Arc::new(std::sync::OnceLock::new());
        hsm_ca::cluster::trust_rows(&installer, &store, &config, &[], unaudited)
            .await
            .expect("row trust");
        let record = tokio::task::block_in_place(|| {
            let now = OffsetDateTime::now_utc();
            let root_ca =
                hsm_ca::authority::issuing_ca_for(&self.store, &self.roots[0]).expect("root ca");
            let inter = new_intermediate(&root_ca, &store, &config, now);
            hsm_ca::authority::check_intermediate(&store, &self.roots, &inter.der, now)
                .expect("check")
        });
        installer.install(record).await.expect("install");
        drop(installer);
        let server = serve(&config, &store, postgres(settings).await).await;
        OwnNode {
            token,
            store,
            dir,
            server,
            config,
        }
    }

    /// Another appliance on this one's device and on the database `settings` names, with its
    /// own data directory (the config, JWKS and root files copied).
    pub async fn second_node(&self, settings: &hsm_ca::state::PgSettings) -> Node {
        self.second_node_with(settings, |_| {}).await
    }

    /// [`Appliance::second_node`] with its config adjusted by `adjust` (its node id is
    /// `second` before that).
    pub async fn second_node_with(
        &self,
        settings: &hsm_ca::state::PgSettings,
        adjust: impl FnOnce(&mut Config),
    ) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "hsm-ca.toml",
            "jwks.json",
            "east-jwks.json",
            "root-cert.pem",
        ] {
            std::fs::copy(self.path(name), dir.path().join(name)).expect("copy");
        }
        let mut config = Config::load(&dir.path().join("hsm-ca.toml")).expect("config");
        config.node_id = "second".into();
        adjust(&mut config);
        let server = serve(&config, &self.store, postgres(settings).await).await;
        Node {
            dir,
            server,
            config,
        }
    }
}

/// The chain (PEM: leaf, intermediate, bundle) the node `server` of `app`'s CA issues to the
/// workload `default/web`, asking as istio-agent does; or the refusal's code.
pub async fn issue_chain(
    app: &Appliance,
    server: &RunningServer,
) -> Result<Vec<String>, tonic::Code> {
    let id = "spiffe://cluster.local/ns/default/sa/web";
    let csr = client::workload_csr(client::WorkloadKey::P256, id).expect("csr");
    let tls = hsm_ca::tls::client_config(&app.roots, None, false).expect("tls");
    let mut grpc = client::connect(server.local_addr, "localhost", tls)
        .await
        .expect("connect");
    let token = app.token_for("default", "web");
    Ok(
        client::create_certificate(&mut grpc, &csr.csr_pem, 600, Some(&token), None, None)
            .await
            .map_err(|e| match e {
                client::ClientError::Refused { code, .. } => code,
                other => panic!("{other}"),
            })?
            .cert_chain,
    )
}

/// An intermediate with `config`'s profile: its key made in `store`, signed by `root_ca`.
pub fn new_intermediate(
    root_ca: &hsm_ca::ca::IssuingCa,
    store: &KeyStore,
    config: &Config,
    now: OffsetDateTime,
) -> hsm_ca::ca::IssuedCert {
    let (_, csr) = hsm_ca::authority::new_intermediate_csr(store, config, now).expect("csr");
    let csr = hsm_ca::ca::parse_csr(csr.as_bytes()).expect("csr");
    hsm_ca::authority::sign_intermediate(root_ca, &csr, config, now).expect("sign")
}

/// Three officers of the admin API (the first also an auditor).
pub const OFFICER_A: &str = "spiffe://cluster.local/ns/hsm-ca/sa/officer-a";
pub const OFFICER_B: &str = "spiffe://cluster.local/ns/hsm-ca/sa/officer-b";
pub const OFFICER_C: &str = "spiffe://cluster.local/ns/hsm-ca/sa/officer-c";

/// The one admin user of [`operator_config`]: auditor, officer and operator.
pub const OPERATOR: &str = "spiffe://cluster.local/ns/hsm-ca/sa/operator";

/// The `[admin]` section with [`OPERATOR`] alone, one approval enough (admin identities from
/// the workload CA, for tests).
pub fn operator_config() -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"
development_shared_ca = true

[[admin.users]]
identity = "{OPERATOR}"
roles = ["auditor", "officer", "operator"]

[admin.approvals]
threshold = 1
"#
    )
}

/// The admin API of `server` as [`OPERATOR`], trusting `roots`.
pub fn operator_admin(server: &RunningServer, roots: &[Vec<u8>]) -> super::http::AdminClient {
    let (chain, key) = client_identity(&server.view, OPERATOR);
    super::http::AdminClient::new(
        server.admin_addr.expect("admin listens"),
        roots,
        Some((&chain, &key)),
    )
}

/// The `[admin]` section with [`OFFICER_A`], [`OFFICER_B`] and [`OFFICER_C`], two approvals
/// needed for sensitive operations.
pub fn officers_config() -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"
development_shared_ca = true

[[admin.users]]
identity = "{OFFICER_A}"
roles = ["auditor", "officer"]

[[admin.users]]
identity = "{OFFICER_B}"
roles = ["officer"]

[[admin.users]]
identity = "{OFFICER_C}"
roles = ["officer"]

[admin.approvals]
threshold = 2
expires_secs = 600
"#
    )
}

/// Serves `config` with the CA keys in `store` and the CA state `state`.
async fn serve(config: &Config, store: &KeyStore, state: CaState) -> RunningServer {
    hsm_ca::server::start(config.clone(), store.clone(), std::sync::Arc::new(state))
        .await
        .expect("server")
}

/// A client certificate for `id` from the active intermediate of `view`: the chain (leaf,
/// intermediate) and the PKCS#8 key, for TLS clients of the appliance's listeners.
pub fn client_identity(view: &hsm_ca::issuance::IssuerView, id: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let snap = view.load();
    let cert = tokio::task::block_in_place(|| {
        snap.ca.issue_leaf(
            &rcgen::PublicKeyData::subject_public_key_info(&key),
            id,
            std::time::Duration::from_secs(3600),
            std::time::Duration::from_secs(60),
            OffsetDateTime::now_utc(),
        )
    })
    .expect("client certificate");
    (
        vec![cert.der, snap.ca.cert_der().to_vec()],
        key.serialize_der(),
    )
}
