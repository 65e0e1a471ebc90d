//! Real servers of a test's own: a Postgres database (or a whole private
//! Postgres), a nats-server.

use super::*;

pub const ADMIN_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A small pool on `url`, for a test's own queries.
pub async fn pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new().max_connections(4).connect(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// A database of its own on the Postgres server at `DATABASE_URL`
/// (default: the local server, user postgres).
pub struct Postgres {
    pub url: String,
}

impl Postgres {
    pub async fn fresh() -> Postgres {
        let admin = std::env::var("DATABASE_URL").unwrap_or_else(|_| ADMIN_URL_DEFAULT.to_string());
        sqlx::any::install_default_drivers();
        let mut conn = match <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await {
            Ok(c) => c,
            Err(e) => panic!(
                "this test needs PostgreSQL at {admin} (set DATABASE_URL to an admin URL; start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`): {e}"
            ),
        };
        let name = format!("eso_test_{}", Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap_or_else(|e| panic!("create database: {e}"));
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Postgres { url: format!("{base}/{name}") }
    }

    pub async fn pool(&self) -> sqlx::AnyPool {
        pool(&self.url).await
    }
}

/// A PostgreSQL server of this test's own (initdb in a temporary
/// directory, run as the `postgres` user), for tests that crash the
/// database: the shared server must stay up for the other tests.
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
        wait_for_port(self.port, Duration::from_secs(20)).await;
    }

    /// Stops it the way a crash would: no checkpoint, in-flight work lost.
    pub fn crash(&mut self) -> bool {
        self.pg_ctl(&["-m", "immediate", "stop"])
    }

    pub async fn pool(&self) -> sqlx::AnyPool {
        pool(&self.url).await
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.crash();
    }
}

/// A `nats-server` with JetStream of this test's own.
pub struct Nats {
    pub port: u16,
    pub url: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nats {
    pub async fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let port = free_port();
        let mut nats = Nats { port, url: format!("nats://127.0.0.1:{port}"), dir, child: None };
        nats.start_again().await;
        nats
    }

    fn binary() -> PathBuf {
        for candidate in ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"] {
            if std::path::Path::new(candidate).exists() {
                return PathBuf::from(candidate);
            }
        }
        PathBuf::from("nats-server")
    }

    /// Starts the server (again) on the same port and storage.
    pub async fn start_again(&mut self) {
        let child = Command::new(Self::binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("this test needs nats-server on PATH (Debian package nats-server): {e}"));
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10)).await;
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url).await.unwrap_or_else(|e| panic!("connect nats: {e}"))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port} after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
