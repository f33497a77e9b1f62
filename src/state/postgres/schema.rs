//! The CA state's tables in PostgreSQL and their versioned migrations. On every start the
//! pending migrations run in one transaction under an advisory lock (two appliances starting
//! at once migrate once), and a database whose schema is newer than this binary knows is
//! refused before anything is read or written.
//!
//! A migration, once released, is never edited: the schema grows by appending one. Records
//! are the same versioned JSON as in sled (`record jsonb`); the other columns exist for keys,
//! constraints and ordering. It must never drop or rewrite data a previous version wrote.

use deadpool_postgres::Object;

use super::{db, LOCK_CLASS};
use crate::state::StateError;

/// The advisory lock (within [`LOCK_CLASS`]) held while migrating.
const MIGRATION_LOCK: i32 = 0;

/// Every migration, in order: (version, SQL). The last version is the one this binary knows.
///
/// Version 1 leaves room for the cluster (issue 11) without building it: `intermediates`
/// carries the node that holds the key (`node_id`, `''` on a single appliance) and "at most
/// one active" is per node; trust-changing rows carry a nullable `signature` for the writing
/// node's device-held key. Later versions add the node registry, the change sequence and the
/// signing keys, and make `signature` required once every row is signed.
///
/// Version 2 adds the officers' proposals: one row per proposal, its status in a column (for
/// listing and for the conditional updates that claim one), the record as JSON.
///
/// Version 3 adds the Vault front door's tokens: only each token's SHA-256, its expiry (unix
/// seconds, for pruning) and the record.
///
/// Version 4 adds the ACME front door's objects (accounts, orders, authorizations,
/// certificates, EAB keys, nonces): one row per (kind, id), an optional expiry for pruning.
///
/// Version 5 adds the change sequence: one counter that triggers raise in the same
/// transaction as any statement changing roots, intermediates, revocations or imported CRLs
/// (whichever code or person wrote it), so that every node sees a committed trust change by
/// reading one row.
///
/// Version 6 adds the nodes' shipped audit records: each node's audit public key
/// (`audit_nodes`), and its records by (node, sequence number) as the exact bytes stored on
/// its disk, with the CA key and serial of `issued` records in columns for lookups.
///
/// Version 7 adds the leader lease: one row naming the node that runs the leader-only jobs,
/// until when, and the epoch that grows with every change of holder.
///
/// Version 8 adds the node registry: each node's last heartbeat (the database's clock), whether
/// it stopped cleanly, and what it reported (version, active intermediate, roots it serves).
///
/// Version 9 keeps the cross-certificates made here (ACME offers them as alternate chains).
///
/// Version 10 makes the change-sequence trigger also notify `hsmca_changes` (delivered at
/// commit): a wake-up for the nodes, which still read the sequence, and still poll.
///
/// Version 11 adds the seals: per trust table a sequence number, the digest of its rows and a
/// member's signature over both (written with every change once the appliances sign rows).
///
/// Version 12 adds each node's signature over its registry report and stop flag.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE roots (
    fingerprint text COLLATE "C" PRIMARY KEY,
    added_at    text COLLATE "C" NOT NULL,
    record      jsonb NOT NULL,
    signature   bytea
);
CREATE TABLE bundle (
    single   boolean PRIMARY KEY DEFAULT true CHECK (single),
    sequence bigint NOT NULL CHECK (sequence >= 0)
);
INSERT INTO bundle (single, sequence) VALUES (true, 0);
CREATE TABLE intermediates (
    key_id    text COLLATE "C" PRIMARY KEY,
    node_id   text COLLATE "C" NOT NULL DEFAULT '',
    status    text NOT NULL CHECK (status IN ('prepared', 'active', 'retired')),
    record    jsonb NOT NULL,
    signature bytea
);
CREATE UNIQUE INDEX intermediates_one_active_per_node
    ON intermediates (node_id) WHERE status = 'active';
CREATE TABLE revocations (
    issuer    text COLLATE "C" NOT NULL,
    serial    text COLLATE "C" NOT NULL,
    record    jsonb NOT NULL,
    signature bytea,
    PRIMARY KEY (issuer, serial)
);
CREATE TABLE crl_numbers (
    issuer      text COLLATE "C" PRIMARY KEY,
    last_number bigint NOT NULL CHECK (last_number > 0)
);
CREATE TABLE imported_crls (
    issuer text COLLATE "C" PRIMARY KEY,
    number bigint NOT NULL CHECK (number >= 0),
    record jsonb NOT NULL
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE proposals (
    id         text COLLATE "C" PRIMARY KEY,
    status     text NOT NULL
               CHECK (status IN ('pending', 'executing', 'executed', 'failed', 'expired')),
    created_at text COLLATE "C" NOT NULL,
    record     jsonb NOT NULL,
    signature  bytea
);
CREATE INDEX proposals_open ON proposals (created_at, id)
    WHERE status IN ('pending', 'executing');
"#,
    ),
    (
        3,
        r#"
CREATE TABLE vault_tokens (
    token_sha256 text COLLATE "C" PRIMARY KEY,
    expires_at   bigint NOT NULL,
    record       jsonb NOT NULL
);
CREATE INDEX vault_tokens_expiry ON vault_tokens (expires_at);
"#,
    ),
    (
        4,
        r#"
CREATE TABLE acme_objects (
    kind       text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL,
    expires_at bigint,
    record     jsonb NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX acme_objects_expiry ON acme_objects (expires_at) WHERE expires_at IS NOT NULL;
"#,
    ),
    (
        5,
        r#"
CREATE TABLE changes (
    single   boolean PRIMARY KEY DEFAULT true CHECK (single),
    sequence bigint NOT NULL CHECK (sequence >= 0)
);
INSERT INTO changes (single, sequence) VALUES (true, 0);
CREATE FUNCTION hsmca_trust_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE changes SET sequence = sequence + 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER roots_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON roots
    FOR EACH STATEMENT EXECUTE FUNCTION hsmca_trust_changed();
CREATE TRIGGER intermediates_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON intermediates
    FOR EACH STATEMENT EXECUTE FUNCTION hsmca_trust_changed();
CREATE TRIGGER revocations_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON revocations
    FOR EACH STATEMENT EXECUTE FUNCTION hsmca_trust_changed();
CREATE TRIGGER imported_crls_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON imported_crls
    FOR EACH STATEMENT EXECUTE FUNCTION hsmca_trust_changed();
"#,
    ),
    (
        6,
        r#"
CREATE TABLE audit_nodes (
    node_id        text COLLATE "C" PRIMARY KEY,
    public_key_pem text,
    registered_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE audit_records (
    node_id       text COLLATE "C" NOT NULL REFERENCES audit_nodes (node_id),
    seq           bigint NOT NULL CHECK (seq > 0),
    stored        bytea NOT NULL,
    issued_ca_key text COLLATE "C",
    issued_serial text COLLATE "C",
    PRIMARY KEY (node_id, seq)
);
CREATE INDEX audit_records_issued ON audit_records (issued_ca_key, issued_serial)
    WHERE issued_serial IS NOT NULL;
"#,
    ),
    (
        7,
        r#"
CREATE TABLE leader (
    single     boolean PRIMARY KEY DEFAULT true CHECK (single),
    node_id    text COLLATE "C",
    epoch      bigint NOT NULL CHECK (epoch >= 0),
    expires_at timestamptz
);
INSERT INTO leader (single, node_id, epoch, expires_at) VALUES (true, NULL, 0, NULL);
"#,
    ),
    (
        8,
        r#"
CREATE TABLE nodes (
    node_id      text COLLATE "C" PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL,
    stopped      boolean NOT NULL DEFAULT false,
    record       jsonb NOT NULL
);
"#,
    ),
    (
        9,
        r#"
CREATE TABLE cross_certificates (
    fingerprint text COLLATE "C" PRIMARY KEY,
    record      jsonb NOT NULL
);
"#,
    ),
    (
        10,
        r#"
CREATE OR REPLACE FUNCTION hsmca_trust_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE changes SET sequence = sequence + 1;
    PERFORM pg_notify('hsmca_changes', '');
    RETURN NULL;
END
$$;
"#,
    ),
    (
        11,
        r#"
CREATE TABLE seals (
    name      text COLLATE "C" PRIMARY KEY,
    sequence  bigint NOT NULL CHECK (sequence > 0),
    digest    bytea NOT NULL,
    signature bytea NOT NULL
);
"#,
    ),
    (
        12,
        r#"
ALTER TABLE nodes ADD COLUMN signature bytea;
"#,
    ),
];

/// The schema version this binary writes and reads.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Brings the database to [`SCHEMA_VERSION`], or refuses one that is newer. Returns the
/// version it found before migrating (0: an empty database).
pub(super) async fn migrate(client: &mut Object) -> Result<i32, StateError> {
    let tx = client.transaction().await.map_err(db)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&LOCK_CLASS, &MIGRATION_LOCK],
    )
    .await
    .map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(db)?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(db)?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(StateError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql).await.map_err(|e| {
            StateError::Database(format!("schema migration to version {version}: {e}"))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(found)
}
