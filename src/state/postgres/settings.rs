//! How the appliance reaches its PostgreSQL database (`[store.postgres]`): the connection URL
//! (one host or several, `target_session_attrs=read-write` to find the writable one), the
//! password's source, the CA file TLS verifies the server against, the pool size; and the
//! connection pool built from them.
//!
//! The password is never in the URL (refused), only loaded from its file or environment
//! variable when connecting; no error, `Debug` or description made here contains it.

use std::path::PathBuf;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::NoTls;

use super::super::StateError;
use super::tls::MakeRustls;
use crate::secret::SecretSource;

/// Connections kept by default.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// How long one host may take to accept a connection, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a free connection from the pool.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// The validated `[store.postgres]` settings.
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// The connection URL or key=value string, without a password.
    url: String,
    password: SecretSource,
    /// PEM file of the CA(s) the server's certificate must chain to; TLS is off without it.
    ca_file: Option<PathBuf>,
    pool_size: usize,
}

impl PgSettings {
    /// Checks the settings: the URL parses and holds no password, TLS settings agree with
    /// `ca_file`, the pool holds 1 to 256 connections. The error says what is wrong without
    /// repeating the URL.
    pub fn new(
        url: &str,
        password: SecretSource,
        ca_file: Option<PathBuf>,
        pool_size: usize,
    ) -> Result<Self, String> {
        let parsed = parse(url)?;
        if parsed.get_password().is_some() {
            return Err(
                "must not contain a password: put it in store.postgres.password_file \
                        or name a variable in store.postgres.password_env"
                    .into(),
            );
        }
        if parsed.get_hosts().is_empty() {
            return Err("names no host".into());
        }
        if parsed
            .get_hosts()
            .iter()
            .any(|h| !matches!(h, Host::Tcp(_)))
        {
            return Err("hosts must be TCP host names or addresses".into());
        }
        match (parsed.get_ssl_mode(), &ca_file) {
            (SslMode::Disable, Some(_)) => {
                return Err("says sslmode=disable but store.postgres.ca_file is set".into())
            }
            (SslMode::Require, None) => {
                return Err(
                    "says sslmode=require: set store.postgres.ca_file so the server's \
                            certificate and name are checked"
                        .into(),
                )
            }
            _ => {}
        }
        if !(1..=256).contains(&pool_size) {
            return Err(format!("pool_size {pool_size} is outside 1..=256"));
        }
        // Without TLS the SCRAM exchange and every row would cross the network in the clear.
        let local = |h: &Host| match h {
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            Host::Unix(_) => true,
        };
        if ca_file.is_none() && !parsed.get_hosts().iter().all(local) {
            return Err(
                "names a host on another machine without store.postgres.ca_file: set it so the \
                 connection is encrypted and the server's certificate and name are checked"
                    .into(),
            );
        }
        Ok(PgSettings {
            url: url.to_string(),
            password,
            ca_file,
            pool_size,
        })
    }

    /// User, hosts and database, safe to print (never a password).
    pub fn describe(&self) -> String {
        let Ok(parsed) = parse(&self.url) else {
            return "postgres (unparsable URL)".into();
        };
        let ports = parsed.get_ports();
        let hosts: Vec<String> = parsed
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let name = match h {
                    Host::Tcp(name) => name.clone(),
                    Host::Unix(path) => path.display().to_string(),
                };
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                format!("{name}:{port}")
            })
            .collect();
        format!(
            "postgres://{}@{}/{}",
            parsed.get_user().unwrap_or(""),
            hosts.join(","),
            parsed.get_dbname().unwrap_or("")
        )
    }

    /// The connection settings with the password loaded now.
    fn client_config(&self) -> Result<tokio_postgres::Config, StateError> {
        let mut config = parse(&self.url).map_err(StateError::Settings)?;
        let password = self
            .password
            .load()
            .map_err(|e| StateError::Settings(format!("database password: {e}")))?;
        config.password(password.expose());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("hsm-ca");
        }
        Ok(config)
    }

    /// Opens a connection of its own, `LISTEN`s on `channel`, and wakes `wake` at every
    /// notification until the connection ends (then returns; the caller connects again).
    pub(super) async fn listen(
        &self,
        channel: &str,
        wake: &tokio::sync::Notify,
    ) -> Result<(), StateError> {
        let mut config = self.client_config()?;
        match &self.ca_file {
            Some(path) => {
                config.ssl_mode(SslMode::Require);
                listen_on(config, MakeRustls::from_ca_file(path)?, channel, wake).await
            }
            None => {
                config.ssl_mode(SslMode::Disable);
                listen_on(config, NoTls, channel, wake).await
            }
        }
    }

    /// A pool over the database; no connection is made yet. Loads the password and the CA
    /// file now.
    pub(super) fn pool(&self) -> Result<Pool, StateError> {
        let mut config = self.client_config()?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &self.ca_file {
            Some(path) => {
                config.ssl_mode(SslMode::Require);
                Manager::from_config(config, MakeRustls::from_ca_file(path)?, manager_config)
            }
            None => {
                config.ssl_mode(SslMode::Disable);
                Manager::from_config(config, NoTls, manager_config)
            }
        };
        Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| StateError::Settings(format!("connection pool: {e}")))
    }
}

/// Parses a connection string. A parse error's own text can quote a character of the input
/// (which may be a password), so only messages that name an option are passed on.
fn parse(url: &str) -> Result<tokio_postgres::Config, String> {
    url.parse::<tokio_postgres::Config>().map_err(|e| {
        let text = e.to_string();
        if text.contains("option `") {
            format!("is not a valid connection string: {text}")
        } else {
            "is not a valid connection string (postgresql://user@host:port,host2:port/database\
             ?target_session_attrs=read-write)"
                .into()
        }
    })
}

async fn listen_on<T>(
    config: tokio_postgres::Config,
    tls: T,
    channel: &str,
    wake: &tokio::sync::Notify,
) -> Result<(), StateError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
{
    let db = |e: tokio_postgres::Error| StateError::Database(e.to_string());
    let (client, mut connection) = config.connect(tls).await.map_err(db)?;
    // The connection is driven here; the LISTEN below completes while it is.
    let statement = format!("LISTEN {channel}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            done = &mut listen, if !listening => {
                done.map_err(db)?;
                listening = true;
                // Whatever changed while no one listened is read on the next wake.
                wake.notify_one();
            }
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(db(e)),
                None => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Result<PgSettings, String> {
        PgSettings::new(url, SecretSource::Env("PGPASS".into()), None, 4)
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_being_repeated() {
        for url in [
            "postgresql://ca:hunter2-secret@db/hsmca",
            "host=db user=ca password=hunter2-secret dbname=hsmca",
        ] {
            let err = settings(url).expect_err("refused");
            assert!(err.contains("must not contain a password"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = settings("postgresql://ca:hunter2@db:x/").expect_err("bad");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn multi_host_urls_are_described_without_secrets() {
        let s = PgSettings::new(
            "postgresql://ca@db1:5433,db2/hsmca?target_session_attrs=read-write",
            SecretSource::Env("PGPASS".into()),
            Some(PathBuf::from("ca.pem")),
            4,
        )
        .expect("valid");
        assert_eq!(s.describe(), "postgres://ca@db1:5433,db2:5432/hsmca");
        assert!(settings("postgresql://ca@db/hsmca?sslmode=require")
            .expect_err("no CA")
            .contains("ca_file"));
    }

    #[test]
    fn a_remote_host_needs_tls_and_a_local_one_does_not() {
        let err = settings("postgresql://ca@127.0.0.1,db.example/hsmca").expect_err("remote");
        assert!(err.contains("ca_file"), "{err}");
        for url in [
            "postgresql://ca@127.0.0.1:5433/hsmca",
            "postgresql://ca@localhost,[::1]:5434/hsmca",
        ] {
            settings(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }
}
