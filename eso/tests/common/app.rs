//! The orchestrator in this process, on a free port.

use super::*;

pub fn telemetry() -> Arc<observability::Telemetry> {
    static TELEMETRY: OnceLock<Arc<observability::Telemetry>> = OnceLock::new();
    TELEMETRY
        .get_or_init(|| {
            // Quiet by default: tasks on other threads escape libtest's capture.
            let mut config = observability::TelemetryConfig::from_env("eso-test");
            if std::env::var("RUST_LOG").is_err() {
                config.log_filter = "warn".into();
            }
            match observability::init_with_config(config) {
                Ok(t) => Arc::new(t),
                Err(e) => panic!("telemetry: {e}"),
            }
        })
        .clone()
}

pub fn config(database_url: Option<String>, nats_url: Option<String>, sqlite: PathBuf) -> Config {
    Config {
        port: 0,
        bind: "127.0.0.1".parse().unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
        database_url,
        sqlite_path: sqlite,
        nats_url,
        sagas_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sagas/definitions"),
        db_pool: 8,
        timer_interval_ms: 20,
        commit_gather: db::gather::WINDOW,
        max_body_bytes: 16 * 1024,
        max_connections: None,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
        idempotency_ttl: Duration::from_secs(24 * 60 * 60),
        embed_participants: Some(true),
        operator_token: None,
        read_token: None,
        trace_url: None,
        admission: orchestrator::admission::Policy::DEFAULT,
        history: orchestrator::retention::History::default(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SQLite file and the in-process bus: `cargo run` with no configuration.
    Embedded,
    /// Postgres and NATS, participants answering over NATS.
    Production,
    /// The embedded store with NATS: participants of other processes answer.
    SqliteAndNats,
}

/// The orchestrator in this process, on a free port.
pub struct TestApp {
    pub running: Option<Running>,
    pub url: String,
    pub http: reqwest::Client,
    pub postgres: Option<Postgres>,
    pub nats: Option<Nats>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn start(mode: Mode) -> TestApp {
        TestApp::start_with(mode, true).await
    }

    /// With no participant answering: sagas wait on their first command.
    pub async fn start_without_participants(mode: Mode) -> TestApp {
        TestApp::start_with(mode, false).await
    }

    async fn start_with(mode: Mode, participants: bool) -> TestApp {
        TestApp::start_configured(mode, |config| config.embed_participants = Some(participants)).await
    }

    /// With the test configuration changed by `edit` before the start.
    pub async fn start_configured(mode: Mode, edit: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let (postgres, nats) = match mode {
            Mode::Embedded => (None, None),
            Mode::Production => (Some(Postgres::fresh().await), Some(Nats::start().await)),
            Mode::SqliteAndNats => (None, Some(Nats::start().await)),
        };
        let mut config = config(postgres.as_ref().map(|p| p.url.clone()), nats.as_ref().map(|n| n.url.clone()), dir.path().join("eso.db"));
        edit(&mut config);
        let running = eso::start(&config, telemetry()).await.unwrap_or_else(|e| panic!("start: {e:#}"));
        let url = running.url();
        TestApp { running: Some(running), url, http: reqwest::Client::new(), postgres, nats, _dir: dir }
    }

    /// The embedded store's SQLite file (embedded mode).
    pub fn sqlite_path(&self) -> PathBuf {
        self._dir.path().join("eso.db")
    }

    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// POSTs `body` as JSON to `path`, with an `Idempotency-Key` if given.
    pub async fn send(&self, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.url)).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, body: Value) -> (u16, Value) {
        let response = self.http.post(&self.url).json(&body).send().await.unwrap_or_else(|e| panic!("POST: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn order(&self, description: &str) -> Uuid {
        let (status, body) = self.post(json!({ "amount": 207.00, "description": description })).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).unwrap_or_else(|| panic!("no id in {body}"))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn status(&self, id: Uuid) -> String {
        let (_, body) = self.get(&format!("/?id={id}")).await;
        body["status"].as_str().unwrap_or_default().to_string()
    }

    /// Polls until the order shows a terminal status.
    pub async fn wait_terminal(&self, id: Uuid, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, body) = self.get(&format!("/?id={id}")).await;
            if ["delivered", "cancelled", "failed"].contains(&body["status"].as_str().unwrap_or_default()) {
                return body;
            }
            assert!(Instant::now() < deadline, "order {id} not terminal after {timeout:?}: {body}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
