//! The `[store]` section: which backend keeps the CA state (`sled`, the default, or
//! `postgres` with its `[store.postgres]` settings). Builds the state's own
//! [`StoreBackend`]; connecting is the state's job. The database password is named here (a file
//! or a variable), never read, and never accepted inside the URL.

use super::raw::RawStore;
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
