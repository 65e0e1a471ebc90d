//! `eso` as a child process a test can kill.

use super::*;

/// Environment for `eso` child processes of one test: its database, its
/// NATS, participants as their own processes, a small pool (several
/// processes per test and two tests at a time stay under Postgres's default
/// 100 connections) and a fast timer poll.
pub fn process_env(postgres: &Postgres, nats: &Nats) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", postgres.url.clone()),
        ("NATS_URL", nats.url.clone()),
        ("ESO_EMBED_PARTICIPANTS", "false".to_string()),
        ("ESO_TIMER_INTERVAL_MS", "20".to_string()),
        ("ESO_DB_POOL", "5".to_string()),
    ]
}

/// `eso` (or one of its subcommands) as a child process we can kill
/// (the kit's [`testkit::Process`], which it derefs to).
pub struct Process(testkit::Process);

impl Process {
    pub async fn spawn(args: &[&str], env: &[(&str, String)]) -> Process {
        let port = free_port();
        let output = if std::env::var("ESO_TEST_LOGS").is_ok() { testkit::Output::Inherit } else { testkit::Output::Null };
        let spec = testkit::ProcessSpec::new(format!("eso {}", args.join(" ")), env!("CARGO_BIN_EXE_eso"), port)
            .args(args)
            .env_remove(["OTEL_EXPORTER_OTLP_ENDPOINT"])
            .env("PORT", port.to_string())
            .env("BIND", "127.0.0.1")
            .env("SAGAS_DIR", PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sagas/definitions").display().to_string())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            // The test's own settings last: they may name another SAGAS_DIR.
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output(output);
        Process(testkit::Process::spawn(spec).await.unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// SIGKILL, then the same command on the same port.
    pub async fn restart(&mut self) {
        self.0.restart().await.unwrap_or_else(|e| panic!("{e:#}"));
    }
}

impl std::ops::Deref for Process {
    type Target = testkit::Process;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// `eso replay --dry-run` on the store `env` names: whether every saga's
/// stored snapshot and projection rows equal the fold of its events, and
/// if not, what it printed.
pub fn replay_differences(env: &[(&str, String)]) -> Result<(), String> {
    let output = Command::new(env!("CARGO_BIN_EXE_eso"))
        .args(["replay", "--dry-run"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .output()
        .map_err(|e| format!("eso replay: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && stdout.contains("every snapshot and projection matches its events") {
        Ok(())
    } else {
        Err(format!("eso replay --dry-run found differences:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr)))
    }
}

pub fn assert_replay_finds_no_difference(env: &[(&str, String)]) {
    if let Err(e) = replay_differences(env) {
        panic!("{e}");
    }
}

/// Postgres and NATS of a test's own, and the environment of its `eso`
/// processes.
pub struct Cluster {
    pub postgres: Postgres,
    pub nats: Nats,
    pub env: Vec<(&'static str, String)>,
}

impl Cluster {
    pub async fn new() -> Cluster {
        let postgres = Postgres::fresh().await;
        let nats = Nats::start().await;
        let env = process_env(&postgres, &nats);
        Cluster { postgres, nats, env }
    }

    /// `eso` with `args` (none: the orchestrator) on this cluster.
    pub async fn eso(&self, args: &[&str]) -> Process {
        Process::spawn(args, &self.env).await
    }
}
