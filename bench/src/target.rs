//! The system under test: a server someone else runs (`--url`), or one the
//! benchmark starts as child processes of this very `eso` executable
//! (`--spawn embedded|postgres`), each with its own temporary directory,
//! database and `nats-server`, so runs never see each other's data.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use super::procfs::{self, Proc};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// SIGTERM lets eso drain; after this it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Variables of ours that a child must not inherit from the bench's environment.
const CHILD_ENV_REMOVED: &[&str] =
    &["DATABASE_URL", "NATS_URL", "PORT", "BIND", "SAGAS_DIR", "ESO_SQLITE_PATH", "ESO_EMBED_PARTICIPANTS", "OTEL_EXPORTER_OTLP_ENDPOINT"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpawnMode {
    /// `eso` on a SQLite file with the in-process bus and participants.
    Embedded,
    /// `eso` on a fresh Postgres database and a private `nats-server`, with
    /// the payment and delivery participants as their own processes.
    Postgres,
}

impl SpawnMode {
    pub fn name(self) -> &'static str {
        match self {
            SpawnMode::Embedded => "embedded",
            SpawnMode::Postgres => "postgres",
        }
    }
}

/// How to start children; built once from the command line.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    pub exe: PathBuf,
    pub sagas_dir: PathBuf,
    pub admin_url: String,
    /// An existing NATS to use instead of a private `nats-server`.
    pub nats_url: Option<String>,
    pub nats_server: PathBuf,
    pub otlp_endpoint: Option<String>,
    /// Extra `KEY=VALUE` for every child (`--child-env`).
    pub child_env: Vec<(String, String)>,
    pub keep: bool,
}

pub struct Target {
    pub mode: String,
    pub url: String,
    pub processes: Vec<Proc>,
    /// The Postgres database of a spawned production-mode target.
    pub database: Option<Database>,
    pub nats_url: Option<String>,
    children: Vec<(String, Child, PathBuf)>,
    nats: Option<NatsServer>,
    dir: Option<PathBuf>,
    keep: bool,
}

impl Target {
    /// A server started by someone else; `pids` are followed for memory.
    pub fn attach(url: &str, pids: &[u32]) -> Target {
        let processes = pids.iter().map(|&pid| Proc { name: procfs::command_name(pid).unwrap_or_else(|| format!("pid {pid}")), pid }).collect();
        Target {
            mode: "url".into(),
            url: url.trim_end_matches('/').to_string(),
            processes,
            database: None,
            nats_url: None,
            children: vec![],
            nats: None,
            dir: None,
            keep: true,
        }
    }

    /// Starts eso (and for `postgres`: a database, NATS, the participants)
    /// and returns once every process answers `/readyz`.
    pub async fn spawn(mode: SpawnMode, opts: &SpawnOptions) -> anyhow::Result<Target> {
        let dir = scratch_dir(mode.name())?;
        let mut target = Target {
            mode: mode.name().into(),
            url: String::new(),
            processes: vec![],
            database: None,
            nats_url: None,
            children: vec![],
            nats: None,
            dir: Some(dir.clone()),
            keep: opts.keep,
        };
        match target.launch(mode, opts, &dir).await {
            Ok(()) => Ok(target),
            Err(e) => {
                target.stop().await;
                Err(e)
            }
        }
    }

    async fn launch(&mut self, mode: SpawnMode, opts: &SpawnOptions, dir: &Path) -> anyhow::Result<()> {
        let mut env: Vec<(String, String)> = vec![("RUST_LOG".into(), "warn".into())];
        if let Some(endpoint) = &opts.otlp_endpoint {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
        }
        match mode {
            SpawnMode::Embedded => {
                env.push(("ESO_SQLITE_PATH".into(), dir.join("eso.db").display().to_string()));
            }
            SpawnMode::Postgres => {
                let database = Database::create(&opts.admin_url).await?;
                env.push(("DATABASE_URL".into(), database.url.clone()));
                self.database = Some(database);
                let nats_url = match &opts.nats_url {
                    Some(url) => url.clone(),
                    None => {
                        let nats = NatsServer::start(&opts.nats_server, &dir.join("nats")).await?;
                        let url = nats.url.clone();
                        self.processes.push(Proc { name: "nats-server".into(), pid: nats.pid });
                        self.nats = Some(nats);
                        url
                    }
                };
                env.push(("NATS_URL".into(), nats_url.clone()));
                env.push(("ESO_EMBED_PARTICIPANTS".into(), "false".into()));
                self.nats_url = Some(nats_url);
            }
        }
        env.extend(opts.child_env.iter().cloned());

        let port = free_port()?;
        let mut eso_env = env.clone();
        eso_env.push(("BIND".into(), "127.0.0.1".into()));
        eso_env.push(("SAGAS_DIR".into(), opts.sagas_dir.display().to_string()));
        self.start_child("eso", &opts.exe, &[], &eso_env, port, dir).await?;
        self.url = format!("http://127.0.0.1:{port}");
        if mode == SpawnMode::Postgres {
            // After the orchestrator, so the database exists with its schema; the
            // participants then add their own tables (their own migrations).
            for name in ["payment", "delivery"] {
                let port = free_port()?;
                self.start_child(&format!("eso participant {name}"), &opts.exe, &["participant", name], &env, port, dir).await?;
            }
        }
        // Our children first, nats-server (if ours) last in the list.
        self.processes.rotate_left(usize::from(self.nats.is_some()));
        Ok(())
    }

    async fn start_child(&mut self, name: &str, exe: &Path, args: &[&str], env: &[(String, String)], port: u16, dir: &Path) -> anyhow::Result<()> {
        let log_path = dir.join(format!("{}.log", name.replace(' ', "-")));
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(exe);
        command.args(args);
        for key in CHILD_ENV_REMOVED {
            command.env_remove(key);
        }
        command.envs(env.iter().map(|(k, v)| (k, v))).env("PORT", port.to_string());
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).kill_on_drop(true);
        let child = command.spawn().with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
        let pid = child.id().context("child exited at once")?;
        self.children.push((name.to_string(), child, log_path.clone()));
        self.processes.push(Proc { name: name.to_string(), pid });
        let ready = format!("http://127.0.0.1:{port}/readyz");
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(r) = http.get(&ready).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some((_, child, _)) = self.children.last_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("{name} exited ({status}) before it was ready; its log:\n{}", tail(&log_path));
            }
            if Instant::now() > deadline {
                bail!("{name} not ready at {ready} after {READY_TIMEOUT:?}; its log:\n{}", tail(&log_path));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pids of participant processes we started.
    pub fn participants(&self) -> Vec<u32> {
        self.processes.iter().filter(|p| p.name.starts_with("eso participant")).map(|p| p.pid).collect()
    }

    /// Whether every child is still running (a crash mid-run fails the bench).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child, log) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("{name} exited during the benchmark ({status}); its log:\n{}", tail(log));
            }
        }
        Ok(())
    }

    /// SIGTERM to every child, SIGKILL after the grace period; drops the
    /// database and the temporary directory unless `--keep`.
    pub async fn stop(mut self) {
        // A paused (--hold) process would not act on SIGTERM.
        signal(&self.participants(), "CONT");
        for (_, child, _) in &self.children {
            if let Some(pid) = child.id() {
                terminate(pid);
            }
        }
        for (name, child, _) in &mut self.children {
            if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                eprintln!("{name} did not stop within {STOP_GRACE:?} of SIGTERM; killing it");
                let _ = child.kill().await;
            }
        }
        if let Some(mut nats) = self.nats.take() {
            nats.stop().await;
        }
        if let Some(db) = self.database.take() {
            if self.keep {
                println!("kept database {}", db.url);
            } else if let Err(e) = db.drop_database().await {
                eprintln!("could not drop database {}: {e:#}", db.name);
            }
        }
        if let Some(dir) = self.dir.take() {
            if self.keep {
                println!("kept {} (logs, SQLite file)", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

/// A database of the benchmark's own on the Postgres server at the admin URL.
pub struct Database {
    pub admin_url: String,
    pub name: String,
    pub url: String,
}

impl Database {
    pub async fn create(admin_url: &str) -> anyhow::Result<Database> {
        let name = format!("eso_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin_connection(admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.with_context(|| format!("CREATE DATABASE {name}"))?;
        Ok(Database { admin_url: admin_url.to_string(), url: database_url(admin_url, &name), name })
    }

    /// Flushes dirty buffers now, so a checkpoint owed to earlier writes
    /// (the ceiling's, a previous run's, `CREATE DATABASE`'s) does not land
    /// in the middle of the first points.
    pub async fn checkpoint(&self) -> anyhow::Result<()> {
        let mut conn = admin_connection(&self.admin_url).await?;
        sqlx::query("CHECKPOINT").execute(&mut conn).await?;
        Ok(())
    }

    /// Checkpoints the server has done since its statistics were reset
    /// (timed and requested); a checkpoint's writes and fsyncs show up in
    /// commit latency, so the report counts them per point.
    pub async fn checkpoints(&self) -> Option<i64> {
        let mut conn = admin_connection(&self.admin_url).await.ok()?;
        for query in [
            "SELECT checkpoints_timed + checkpoints_req AS n FROM pg_stat_bgwriter",
            // PostgreSQL 17 moved them.
            "SELECT num_timed + num_requested AS n FROM pg_stat_checkpointer",
        ] {
            if let Ok(row) = sqlx::query(query).fetch_one(&mut conn).await {
                return sqlx::Row::try_get::<i64, _>(&row, "n").ok();
            }
        }
        None
    }

    pub async fn drop_database(&self) -> anyhow::Result<()> {
        let mut conn = admin_connection(&self.admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))).execute(&mut conn).await?;
        Ok(())
    }
}

pub async fn admin_connection(admin_url: &str) -> anyhow::Result<sqlx::AnyConnection> {
    sqlx::any::install_default_drivers();
    <sqlx::AnyConnection as sqlx::Connection>::connect(admin_url).await.with_context(|| {
        format!(
            "cannot reach PostgreSQL at {} (set --admin-url; start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`)",
            db::redact(admin_url)
        )
    })
}

/// The admin URL with its database name replaced, query string kept.
pub fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = admin_url.split_once('?').map_or((admin_url, None), |(b, q)| (b, Some(q)));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let server = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// A private `nats-server -js` on a free port with its store in `dir`.
pub struct NatsServer {
    pub url: String,
    pub pid: u32,
    child: Child,
}

impl NatsServer {
    pub async fn start(binary: &Path, dir: &Path) -> anyhow::Result<NatsServer> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = free_port()?;
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (install the nats-server package or pass --nats-server PATH or --nats-url URL)", binary.display()))?;
        let pid = child.id().context("nats-server exited at once")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on port {port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(NatsServer { url: format!("nats://127.0.0.1:{port}"), pid, child })
    }

    pub async fn stop(&mut self) {
        terminate(self.pid);
        if tokio::time::timeout(STOP_GRACE, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// `nats-server` from `/usr/sbin` (the Debian package) or PATH.
pub fn find_nats_server() -> PathBuf {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// `sagas/definitions/` (holding the order saga the load runs) in the
/// current directory or one of its parents, or in the repository the
/// executable was built in (`target/<profile>/eso`).
pub fn find_sagas_dir(exe: &Path) -> Option<PathBuf> {
    let from_cwd = std::env::current_dir().ok().into_iter().flat_map(|d| d.ancestors().map(Path::to_path_buf).collect::<Vec<_>>());
    let from_exe = exe.ancestors().skip(1).map(Path::to_path_buf).collect::<Vec<_>>();
    from_cwd.chain(from_exe).map(|d| d.join("sagas").join("definitions")).find(|d| d.join("order.toml").is_file())
}

pub fn scratch_dir(what: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("eso-bench-{what}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// SIGTERM through `kill(1)`, which saves a libc dependency; if it cannot
/// run, the caller's SIGKILL after the grace period still stops the child.
fn terminate(pid: u32) {
    signal(&[pid], "TERM");
}

/// Sends a signal (`TERM`, `STOP`, `CONT`) with `kill(1)`.
pub fn signal(pids: &[u32], name: &str) {
    if pids.is_empty() {
        return;
    }
    let mut command = std::process::Command::new("kill");
    command.arg(format!("-{name}")).args(pids.iter().map(u32::to_string)).stderr(Stdio::null());
    if let Err(e) = command.status() {
        eprintln!("kill -{name}: {e}");
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"), "postgres://postgres@127.0.0.1:5432/x");
        assert_eq!(database_url("postgres://u:p@h/db?sslmode=disable", "x"), "postgres://u:p@h/x?sslmode=disable");
        assert_eq!(database_url("postgres://h:5432", "x"), "postgres://h:5432/x");
    }
}
