//! The `[store]` section: which backend keeps the CA state (`sled`, the default, or
//! `postgres` with its `[store.postgres]` settings). Builds the state's own
//! [`StoreBackend`]; connecting is the state's job. The database password is named here (a file
//! or a variable), never read, and never accepted inside the URL.

use std::time::Duration;

use super::raw::{RawAudit, RawStore};
use super::AuditShipping;
use super::{ConfigError, Ctx};
use crate::state::postgres::DEFAULT_POOL_SIZE;
use crate::state::{PgSettings, StoreBackend};

pub(super) fn backend(ctx: &Ctx, store: &RawStore) -> Result<StoreBackend, ConfigError> {
    match (store.backend.as_str(), &store.postgres) {
        ("sled", None) => Ok(StoreBackend::Sled),
        ("sled", Some(_)) => Err(ctx.invalid(
            "store.postgres",
            "is for backend = \"postgres\" (the backend is sled)",
        )),
        ("postgres", None) => Err(ctx.invalid(
            "store.postgres",
            "backend = \"postgres\" needs a [store.postgres] section with its url",
        )),
        ("postgres", Some(pg)) => {
            let password = ctx
                .secret(
                    pg.password_file.clone(),
                    pg.password_env.clone(),
                    "store.postgres.password_file",
                    "password",
                )?
                .ok_or_else(|| {
                    ctx.invalid(
                        "store.postgres.password_file",
                        "the database password must come from password_file or password_env",
                    )
                })?;
            let settings = PgSettings::new(
                &pg.url,
                password,
                pg.ca_file.clone().map(|p| ctx.resolve(p)),
                pg.pool_size.unwrap_or(DEFAULT_POOL_SIZE),
            )
            .map_err(|problem| ctx.invalid("store.postgres.url", problem))?;
            Ok(StoreBackend::Postgres(settings))
        }
        (other, _) => Err(ctx.invalid(
            "store.backend",
            format!("unknown backend {other:?} (expected \"sled\" or \"postgres\")"),
        )),
    }
}

/// `node_id`: letters, digits, `.`, `-` and `_`, at most 64; the host name when not given.
pub(super) fn node_id(ctx: &Ctx, given: Option<String>) -> Result<String, ConfigError> {
    let id = match given {
        Some(id) => id,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
    };
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if valid {
        Ok(id)
    } else {
        Err(ctx.invalid(
            "node_id",
            "must be 1 to 64 letters, digits, '.', '-' or '_' (set it when the host name is not)",
        ))
    }
}

/// `[audit] require_shipped` and `ship_timeout_secs`: shipping needs the shared database.
pub(super) fn audit_shipping(
    ctx: &Ctx,
    audit: &RawAudit,
    backend: &StoreBackend,
) -> Result<AuditShipping, ConfigError> {
    if audit.require_shipped && !matches!(backend, StoreBackend::Postgres(_)) {
        return Err(ctx.invalid(
            "audit.require_shipped",
            "records are shipped to the shared database: it needs [store] backend = \"postgres\"",
        ));
    }
    if audit.require_shipped && !audit.enabled {
        return Err(ctx.invalid(
            "audit.require_shipped",
            "needs the audit log (audit.enabled = true)",
        ));
    }
    if !(1..=300).contains(&audit.ship_timeout_secs) {
        return Err(ctx.invalid(
            "audit.ship_timeout_secs",
            "must be between 1 and 300 (seconds)",
        ));
    }
    Ok(AuditShipping {
        require_shipped: audit.require_shipped,
        timeout: Duration::from_secs(audit.ship_timeout_secs),
    })
}

/// `member_keys`: PEM `PUBLIC KEY` files, P-256 (what `hsm-ca admin nodes` shows as each node's
/// `row_key_pem`).
pub(super) fn member_keys(
    ctx: &Ctx,
    files: Vec<std::path::PathBuf>,
) -> Result<Vec<Vec<u8>>, ConfigError> {
    files
        .into_iter()
        .map(|file| {
            let path = ctx.resolve(file);
            let text = std::fs::read(&path)
                .map_err(|e| ctx.invalid("member_keys", format!("{}: {e}", path.display())))?;
            let block = pem::parse(text)
                .ok()
                .filter(|b| b.tag() == "PUBLIC KEY")
                .ok_or_else(|| {
                    ctx.invalid(
                        "member_keys",
                        format!("{}: not a PEM PUBLIC KEY", path.display()),
                    )
                })?;
            let spki = block.into_contents();
            if crate::keystore::der::spki_scheme(&spki)
                != Some(crate::keystore::SignatureScheme::EcdsaSha256)
            {
                return Err(ctx.invalid(
                    "member_keys",
                    format!("{}: not a P-256 public key", path.display()),
                ));
            }
            Ok(spki)
        })
        .collect()
}
