//! The system under test: a server someone else runs (`--url`), or one the
//! benchmark starts as child processes of the `eso` binary
//! (`--spawn embedded|postgres`), each with its own temporary directory,
//! database and `nats-server` (from the test kit), so runs never see each
//! other's data.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testkit::{Database, NatsServer, Output, Process, ProcessSpec, Signal};

use crate::bytes::Probe;
use crate::procfs::{self, Proc};

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
    /// The `eso` binary.
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
    /// Where to read what each point wrote (a spawned target's store).
    pub probe: Option<Probe>,
    pub nats_url: Option<String>,
    children: Vec<Process>,
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
            probe: None,
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
            probe: None,
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
                self.probe = Some(Probe::sqlite(&dir.join("eso.db")));
            }
            SpawnMode::Postgres => {
                let database = Database::create(&opts.admin_url, "eso_bench").await?;
                env.push(("DATABASE_URL".into(), database.url.clone()));
                self.probe = Some(Probe::Postgres { url: database.url.clone() });
                self.database = Some(database);
                let nats_url = match &opts.nats_url {
                    Some(url) => url.clone(),
                    None => {
                        let nats = NatsServer::start(&opts.nats_server, &dir.join("nats")).await?;
                        let url = nats.url.clone();
                        if let Some(pid) = nats.pid() {
                            self.processes.push(Proc { name: "nats-server".into(), pid });
                        }
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

        let port = testkit::free_port();
        let mut eso_env = env.clone();
        eso_env.push(("BIND".into(), "127.0.0.1".into()));
        eso_env.push(("SAGAS_DIR".into(), opts.sagas_dir.display().to_string()));
        self.start_child("eso", &opts.exe, &[], &eso_env, port, dir).await?;
        self.url = format!("http://127.0.0.1:{port}");
        if mode == SpawnMode::Postgres {
            // After the orchestrator, so the database exists with its schema; the
            // participants then add their own tables (their own migrations).
            for name in ["payment", "delivery"] {
                let port = testkit::free_port();
                self.start_child(&format!("eso participant {name}"), &opts.exe, &["participant", name], &env, port, dir).await?;
            }
        }
        // Our children first, nats-server (if ours) last in the list.
        self.processes.rotate_left(usize::from(self.nats.is_some()));
        Ok(())
    }

    /// Starts a child (the kit waits for its port), then waits for `/readyz`.
    async fn start_child(&mut self, name: &str, exe: &Path, args: &[&str], env: &[(String, String)], port: u16, dir: &Path) -> anyhow::Result<()> {
        let log_path = dir.join(format!("{}.log", name.replace(' ', "-")));
        let spec = ProcessSpec::new(name, exe, port)
            .args(args)
            .env_remove(CHILD_ENV_REMOVED)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PORT", port.to_string())
            .output(Output::File(log_path))
            .ready_timeout(READY_TIMEOUT);
        let started = Instant::now();
        let mut child = Process::spawn(spec).await?;
        self.processes.push(Proc { name: name.to_string(), pid: child.pid() });
        let ready = format!("http://127.0.0.1:{port}/readyz");
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build()?;
        let outcome = loop {
            if let Ok(r) = http.get(&ready).send().await
                && r.status().is_success()
            {
                break Ok(());
            }
            if let Some(status) = child.exited() {
                break Err(anyhow::anyhow!("{name} exited ({status}) before it was ready{}", child.log_tail()));
            }
            if started.elapsed() > READY_TIMEOUT {
                break Err(anyhow::anyhow!("{name} not ready at {ready} after {READY_TIMEOUT:?}{}", child.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.children.push(child);
        outcome
    }

    /// Stops the spawned `eso` (SIGTERM, then SIGKILL), leaving the rest running.
    pub async fn stop_eso(&mut self) -> anyhow::Result<()> {
        let eso = self.children.iter_mut().find(|c| c.spec.name == "eso").context("no spawned eso to stop")?;
        if !eso.stop(STOP_GRACE).await {
            eprintln!("eso did not stop within {STOP_GRACE:?} of SIGTERM; killed it");
        }
        Ok(())
    }

    /// Starts the spawned `eso` again, as it was, and waits for `/readyz`.
    pub async fn start_eso(&mut self) -> anyhow::Result<()> {
        let eso = self.children.iter_mut().find(|c| c.spec.name == "eso").context("no spawned eso to start")?;
        eso.restart().await?;
        let (pid, ready) = (eso.pid(), format!("{}/readyz", eso.url()));
        for p in self.processes.iter_mut().filter(|p| p.name == "eso") {
            p.pid = pid;
        }
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build()?;
        let started = Instant::now();
        while !http.get(&ready).send().await.is_ok_and(|r| r.status().is_success()) {
            if started.elapsed() > READY_TIMEOUT {
                bail!("eso not ready at {ready} after {READY_TIMEOUT:?} once started again");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Pids of participant processes we started.
    pub fn participants(&self) -> Vec<u32> {
        self.processes.iter().filter(|p| p.name.starts_with("eso participant")).map(|p| p.pid).collect()
    }

    /// Whether every child is still running (a crash mid-run fails the bench).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            if let Some(status) = child.exited() {
                bail!("{} exited during the benchmark ({status}){}", child.spec.name, child.log_tail());
            }
        }
        Ok(())
    }

    /// SIGTERM to every child, SIGKILL after the grace period; drops the
    /// database and the temporary directory unless `--keep`.
    pub async fn stop(mut self) {
        // A paused (--hold) process would not act on SIGTERM.
        testkit::signal(&self.participants(), Signal::SIGCONT);
        for child in &self.children {
            child.terminate();
        }
        for child in &mut self.children {
            if !child.wait_or_kill(STOP_GRACE).await {
                eprintln!("{} did not stop within {STOP_GRACE:?} of SIGTERM; killed it", child.spec.name);
            }
        }
        if let Some(mut nats) = self.nats.take() {
            nats.stop(STOP_GRACE).await;
        }
        if let Some(db) = self.database.take() {
            if self.keep {
                println!("kept database {}", db::redact(&db.url));
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

/// Flushes dirty buffers now, so a checkpoint owed to earlier writes
/// (the ceiling's, a previous run's, `CREATE DATABASE`'s) does not land
/// in the middle of the first points.
pub async fn checkpoint(db: &Database) -> anyhow::Result<()> {
    let mut conn = testkit::admin_connection(&db.admin_url).await?;
    sqlx::query("CHECKPOINT").execute(&mut conn).await?;
    Ok(())
}

/// Checkpoints the server has done since its statistics were reset
/// (timed and requested); a checkpoint's writes and fsyncs show up in
/// commit latency, so the report counts them per point.
pub async fn checkpoints(db: &Database) -> Option<i64> {
    let mut conn = testkit::admin_connection(&db.admin_url).await.ok()?;
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

/// The `eso` binary to spawn: `--eso PATH`, or the `eso` beside this
/// executable (`target/release/eso` beside `target/release/eso-bench`).
pub fn find_eso(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe().context("finding this executable")?.with_file_name(format!("eso{}", std::env::consts::EXE_SUFFIX)),
    };
    if !path.is_file() {
        bail!(
            "no eso binary at {} to spawn: build it (`cargo build --release -p eso -p eso-bench`, or `cargo build -p eso` for a debug run) or pass --eso PATH",
            path.display()
        );
    }
    Ok(path)
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
