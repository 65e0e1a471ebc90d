//! PostgreSQL: a fresh database per test or benchmark run on a shared
//! server, or a whole private server for tests that crash it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::{free_port, wait_for_port};

/// The local server, user postgres, as CI and the Debian package set it up.
pub const ADMIN_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// `DATABASE_URL`, or [`ADMIN_URL_DEFAULT`]: a URL that may create databases.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| ADMIN_URL_DEFAULT.to_string())
}

/// One connection to the admin URL, or an error saying how to get one.
pub async fn admin_connection(admin_url: &str) -> anyhow::Result<sqlx::AnyConnection> {
    sqlx::any::install_default_drivers();
    <sqlx::AnyConnection as sqlx::Connection>::connect(admin_url).await.with_context(|| {
        format!(
            "cannot reach PostgreSQL at {} (set DATABASE_URL for the tests or --admin-url for eso-bench to an admin URL; \
             start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`)",
            db::redact(admin_url)
        )
    })
}

/// The URL with its database name (the path) replaced; user, host, port
/// and query string kept.
pub fn database_url(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(admin_url).with_context(|| format!("not a URL: {}", db::redact(admin_url)))?;
    url.set_path(&format!("/{name}"));
    Ok(url.into())
}

/// A database of the caller's own on the server at an admin URL. Nothing
/// drops it by itself: call [`Database::drop_database`] where it should go
/// (the tests leave theirs for inspection; the bench drops its own).
#[derive(Debug, Clone)]
pub struct Database {
    pub admin_url: String,
    pub name: String,
    pub url: String,
}

impl Database {
    /// `CREATE DATABASE {prefix}_{uuid}`.
    pub async fn create(admin_url: &str, prefix: &str) -> anyhow::Result<Database> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let url = database_url(admin_url, &name)?;
        let mut conn = admin_connection(admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.with_context(|| format!("CREATE DATABASE {name}"))?;
        Ok(Database { admin_url: admin_url.to_string(), name, url })
    }

    pub async fn drop_database(&self) -> anyhow::Result<()> {
        let mut conn = admin_connection(&self.admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))).execute(&mut conn).await?;
        Ok(())
    }
}

/// A PostgreSQL server of a test's own (initdb in a temporary directory,
/// run as the `postgres` user), for tests that crash the database: the
/// shared server must stay up for the other tests. Panics, saying what is
/// missing, when it cannot run.
pub struct PrivatePostgres {
    pub url: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    pub async fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| versions.filter_map(Result::ok).map(|v| v.path().join("bin")).find(|b| b.join("initdb").exists()))
            .unwrap_or_else(|| panic!("this test needs the PostgreSQL server binaries (Debian package postgresql) under /usr/lib/postgresql"));
        let dir = tempfile::Builder::new().prefix("eso-pg-").tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
        assert!(chown.is_ok_and(|s| s.success()), "this test runs PostgreSQL as the postgres user and needs root to hand it a directory");
        let data = dir.path().join("data");
        let init = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(init.is_ok_and(|s| s.success()), "initdb failed");
        let port = free_port();
        let mut pg = PrivatePostgres { url: format!("postgres://postgres@127.0.0.1:{port}/postgres"), dir, bin, port };
        pg.start_again().await;
        pg
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub async fn start_again(&mut self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200", self.port, self.dir.path().display());
        assert!(self.pg_ctl(&["-w", "-o", &options, "start"]), "pg_ctl start failed");
        wait_for_port(self.port, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("private PostgreSQL: {e:#}"));
    }

    /// Stops it the way a crash would: no checkpoint, in-flight work lost.
    pub fn crash(&mut self) -> bool {
        self.pg_ctl(&["-m", "immediate", "stop"])
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.crash();
    }
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn replaces_the_database_name() {
        let url = |admin: &str| database_url(admin, "x").unwrap();
        assert_eq!(url("postgres://postgres@127.0.0.1:5432/postgres"), "postgres://postgres@127.0.0.1:5432/x");
        assert_eq!(url("postgres://u:p@h/db?sslmode=disable"), "postgres://u:p@h/x?sslmode=disable");
        assert_eq!(url("postgres://h:5432"), "postgres://h:5432/x");
    }
}
