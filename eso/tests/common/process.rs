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

/// `eso` (or one of its subcommands) as a child process we can kill.
pub struct Process {
    pub child: Child,
    pub port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Process {
    pub async fn spawn(args: &[&str], env: &[(&str, String)]) -> Process {
        let port = free_port();
        let mut p = Process {
            child: spawn_eso(args, env, port),
            port,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        };
        wait_for_port(p.port, Duration::from_secs(30)).await;
        let _ = &mut p;
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown code runs, as in a crash or an OOM kill.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn restart(&mut self) {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, String)> = self.env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.child = spawn_eso(&args, &env, self.port);
        wait_for_port(self.port, Duration::from_secs(30)).await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_eso(args: &[&str], env: &[(&str, String)], port: u16) -> Child {
    let log = std::env::var("ESO_TEST_LOGS").is_ok();
    Command::new(env!("CARGO_BIN_EXE_eso"))
        .args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PORT", port.to_string())
        .env("BIND", "127.0.0.1")
        .env("SAGAS_DIR", PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sagas/definitions"))
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(if log { Stdio::inherit() } else { Stdio::null() })
        .stderr(if log { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .unwrap_or_else(|e| panic!("spawn eso: {e}"))
}

/// `eso replay --dry-run` on the store `env` names: asserts that every
/// saga's stored snapshot and projection rows equal the fold of its events.
pub fn assert_replay_finds_no_difference(env: &[(&str, String)]) {
    let output = Command::new(env!("CARGO_BIN_EXE_eso"))
        .args(["replay", "--dry-run"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("eso replay: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "eso replay --dry-run found differences:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("every snapshot and projection matches its events"), "{stdout}");
}
