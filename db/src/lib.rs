//! The SQL both the event store and the participants need: connecting to
//! Postgres or SQLite through one `AnyPool` type, running an owner's
//! migrations, batched statements over a JSON recordset, the group commit's
//! wait at partial load, the clock of every `*_at` column, and the lock that
//! keeps a SQLite file to one process.
//!
//! Each owner (the orchestrator's store, the participants) brings its own
//! migrations and tables; this crate knows none of them, so neither owner
//! depends on the other to reach its database.

pub mod gather;
mod lock;

use std::str::FromStr;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Connection, Executor};

pub use lock::{FileLock, lock_sqlite};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn of(url: &str) -> anyhow::Result<Backend> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            anyhow::bail!("unsupported database URL (want postgres://… or sqlite:…): {}", redact(url))
        }
    }
}

/// Connects with a pool sized for the backend. SQLite's pool gets one
/// connection, its writer: it has a single writer anyway, and one
/// connection avoids busy errors;
/// the orchestrator batches its writes, and reads go to [`readers`].
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<(AnyPool, Backend)> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of(url)?;
    let pool = match backend {
        Backend::Postgres => AnyPoolOptions::new().max_connections(max_connections),
        // WAL lets readers of the file (our own [`readers`], the sqlite3
        // CLI) run beside the writer; FULL makes every commit durable
        // before we answer 2xx.
        Backend::Sqlite => sqlite(1, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;"),
    };
    Ok((open(pool, url).await?, backend))
}

/// A pool for reads. SQLite in WAL mode lets readers run beside its one
/// writer, so reads (order lookups, saga loads) get connections of their
/// own instead of queueing behind group commits on the writer's; on
/// Postgres every connection can do both, so this is the same pool.
pub async fn readers(url: &str, pool: &AnyPool, backend: Backend, max_connections: u32) -> anyhow::Result<AnyPool> {
    match backend {
        Backend::Postgres => Ok(pool.clone()),
        Backend::Sqlite => open(sqlite(max_connections.max(1), "PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;"), url).await,
    }
}

/// The group committer's own connection. On Postgres its statements are
/// prepared, and Postgres settles on one generic plan for each after five
/// runs (made again when statistics or the schema change). Each of them
/// writes a batch keyed by
/// primary keys, which index lookups serve at any size of table; but a
/// plan made while a table was nearly empty scans it (a hash join over a
/// sequential scan), and every later commit would pay for that scan. So
/// this connection's planner is kept off scans and hash and merge joins,
/// and its plans stay lookups. On SQLite the writer's pool, whose one
/// connection is the one that commits.
pub async fn committer(url: &str, pool: &AnyPool, backend: Backend) -> anyhow::Result<AnyPool> {
    match backend {
        Backend::Sqlite => Ok(pool.clone()),
        Backend::Postgres => {
            let options = AnyPoolOptions::new().max_connections(1).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off").await?;
                    Ok(())
                })
            });
            open(options, url).await
        }
    }
}

/// Pool options for SQLite connections that each run `pragmas` first.
fn sqlite(max_connections: u32, pragmas: &'static str) -> AnyPoolOptions {
    AnyPoolOptions::new().max_connections(max_connections).after_connect(move |conn, _| {
        Box::pin(async move {
            conn.execute(pragmas).await?;
            Ok(())
        })
    })
}

/// How long a connection may sit idle before it is pinged when handed
/// out again (see [`open`]).
pub const PING_WHEN_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

async fn open(pool: AnyPoolOptions, url: &str) -> anyhow::Result<AnyPool> {
    let options = sqlx::any::AnyConnectOptions::from_str(url)?;
    // sqlx pings every connection it hands out: a round trip per query, an
    // eighth of eso's CPU under load. Only a connection idle for a while
    // (the likeliest to have died with a Postgres restart) is pinged now;
    // a busy one that died fails the one query that finds out, and every
    // caller already treats a failed query as "retry later".
    pool.acquire_timeout(std::time::Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", redact(url)))
}

/// Runs an owner's migrations (its `sqlx::migrate!` of the folder for
/// the pool's backend). On Postgres the migrator takes an advisory lock, so
/// replicas starting together do not race.
pub async fn migrate(pool: &AnyPool, migrator: &Migrator) -> anyhow::Result<()> {
    migrator.run(pool).await.map_err(|e| anyhow::anyhow!("migrations ({}): {e}", migrator.table_name))
}

/// Microseconds since the Unix epoch: the unit of every `*_at` column.
pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    const HIDDEN: &str = "****";
    // A URL that does not parse is not echoed: it may still hold a secret.
    let Ok(mut parsed) = url::Url::parse(url) else { return format!("{HIDDEN} (not a URL)") };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(HIDDEN));
    }
    // libpq and sqlx also take credentials as query parameters
    // (`?password=…`, `sslpassword`), and so may other URLs (`token`).
    let secret = |key: &str| ["password", "secret", "token"].iter().any(|s| key.to_ascii_lowercase().contains(s));
    if parsed.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> =
            parsed.query_pairs().map(|(k, v)| (k.to_string(), if secret(&k) { HIDDEN.to_string() } else { v.to_string() })).collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// The type of one column of a [`recordset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Text,
    BigInt,
    /// A nested JSON value, kept as its JSON text (no string escaping on
    /// the way in).
    Json,
}

/// A table `r` made of the JSON array bound as `$1`, one row per element
/// in array order, with the named columns plus `n`, the element's ordinal;
/// `$3` is bound to the number of elements. Batched statements take all
/// their rows in that one parameter, so their text does not depend on the
/// batch size. The `LIMIT $3` is for the planner: Postgres costs a JSON
/// recordset at 100 rows and would rather hash-join it against a whole
/// table than look up a few keys.
pub fn recordset(backend: Backend, columns: &[(&str, Column)]) -> String {
    recordset_at(backend, columns, 1, 3)
}

/// A [`recordset`] of the array bound as `$json`, with `$count` its number
/// of elements: for a statement that takes several arrays.
pub fn recordset_at(backend: Backend, columns: &[(&str, Column)], json: usize, count: usize) -> String {
    let list = |f: &dyn Fn(&str, Column) -> String| columns.iter().map(|&(name, kind)| f(name, kind)).collect::<Vec<_>>().join(", ");
    match backend {
        Backend::Postgres => {
            let defs = list(&|name, kind| match kind {
                Column::Text => format!("{name} text"),
                Column::BigInt => format!("{name} bigint"),
                Column::Json => format!("{name} json"),
            });
            let names = list(&|name, _| name.to_string());
            // Selecting from a subquery lets json columns come out as text;
            // a JSON `null` as the text `null`, as SQLite gives it, not as
            // SQL NULL.
            let cols = list(&|name, kind| match kind {
                Column::Json => format!("COALESCE({name}::text, 'null') AS {name}"),
                _ => name.to_string(),
            });
            format!(
                "(SELECT {cols}, n FROM ROWS FROM (json_to_recordset(${json}::json) AS ({defs})) WITH ORDINALITY AS x({names}, n) \
                 ORDER BY n LIMIT ${count}) AS r"
            )
        }
        Backend::Sqlite => {
            let cols = list(&|name, kind| match kind {
                Column::Json => format!("value->'{name}' AS {name}"),
                _ => format!("value->>'{name}' AS {name}"),
            });
            format!("(SELECT {cols}, key AS n FROM json_each(${json}) ORDER BY key LIMIT ${count}) AS r")
        }
    }
}

/// Inserts the rows of a [`recordset`] into `table`, in array order, with
/// each `stamped` column set to `$2`. An `ON CONFLICT` may follow: the
/// `WHERE true` keeps SQLite from reading it as a join's `ON`.
pub fn insert_rows(backend: Backend, table: &str, columns: &[(&str, Column)], stamped: &[&str]) -> String {
    insert_from(table, columns, stamped, &recordset(backend, columns))
}

/// Like [`insert_rows`], from `rows`, a table `r` with the named columns
/// and `n` (a [`recordset`], or a selection of one).
pub fn insert_from(table: &str, columns: &[(&str, Column)], stamped: &[&str], rows: &str) -> String {
    let names = columns.iter().map(|(name, _)| *name).chain(stamped.iter().copied()).collect::<Vec<_>>();
    let values = columns.iter().map(|(name, _)| format!("r.{name}")).chain(stamped.iter().map(|_| "$2".to_string())).collect::<Vec<_>>();
    format!("INSERT INTO {table} ({}) SELECT {} FROM {rows} WHERE true ORDER BY r.n", names.join(", "), values.join(", "))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn every_credential_form_is_redacted() {
        for (url, shown) in [
            ("postgres://eso:hunter2@db:5432/eso", "postgres://eso:****@db:5432/eso"),
            ("postgres://eso@db/eso?password=hunter2&sslmode=require", "postgres://eso@db/eso?password=****&sslmode=require"),
            ("postgres://db/eso?user=eso&sslpassword=hunter2", "postgres://db/eso?user=eso&sslpassword=****"),
            ("nats://app:hunter2@nats:4222", "nats://app:****@nats:4222"),
            ("nats://nats:4222?token=hunter2", "nats://nats:4222?token=****"),
            ("postgres://postgres@127.0.0.1:5432/postgres", "postgres://postgres@127.0.0.1:5432/postgres"),
            ("sqlite:eso.db?mode=rwc", "sqlite:eso.db?mode=rwc"),
            ("not a url with hunter2", "**** (not a URL)"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
            assert!(!redact(url).contains("hunter2"));
        }
    }
}
