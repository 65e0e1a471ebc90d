//! The orchestrator's configuration: environment variables (or flags), read
//! once at start-up. The defaults make `cargo run` work on a bare machine:
//! no `DATABASE_URL` means an embedded SQLite file, no `NATS_URL` an
//! in-process bus with the participants running in-process too.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// HTTP port of the API.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Address to listen on. Loopback unless told otherwise: on a laptop,
    /// every other address is an unauthenticated API on whatever network it
    /// joins (the image sets 0.0.0.0, as containers need).
    #[arg(long, env = "BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Postgres URL (production). Unset: embedded SQLite at ESO_SQLITE_PATH.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The embedded store's file, used when DATABASE_URL is unset.
    #[arg(long, env = "ESO_SQLITE_PATH", default_value = "eso.db")]
    pub sqlite_path: PathBuf,
    /// NATS URL (production). Unset: in-process bus and participants.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Directory of saga definitions (`*.toml`). Without one, the built-in order saga.
    #[arg(long, env = "SAGAS_DIR", default_value = "sagas/definitions")]
    pub sagas_dir: PathBuf,
    /// Database connections (Postgres; on SQLite one writer, with readers beside it).
    #[arg(long, env = "ESO_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// How often due timers are polled, in milliseconds.
    #[arg(long, env = "ESO_TIMER_INTERVAL_MS", default_value_t = 50)]
    pub timer_interval_ms: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "ESO_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,
    /// Most HTTP connections this replica holds open at once; past them a
    /// new connection is answered `503` and closed at once, so a crowd of
    /// clients (slow ones above all) costs a bounded number of files and
    /// tasks. Unset: 4096, or fewer if the open-file limit cannot hold them.
    #[arg(long, env = "ESO_MAX_CONNECTIONS", value_parser = parse_max_connections)]
    pub max_connections: Option<usize>,
    /// Longest a client may take to send a request's headers (e.g. `10s`),
    /// which is also how long a kept-alive connection may sit idle; then
    /// the connection is closed.
    #[arg(long, env = "ESO_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_header_timeout)]
    pub header_timeout: Duration,
    /// Longest a client may take to send a request's body once its headers
    /// are in (e.g. `30s`); then it is answered `408` and the connection
    /// closed.
    #[arg(long, env = "ESO_BODY_TIMEOUT", default_value = "30s", value_parser = parse_body_timeout)]
    pub body_timeout: Duration,
    /// At partial load, how long a small commit may wait for more sagas'
    /// steps to share it (`0` never waits, else 1ms to 50ms). It waits only
    /// when another step is due within it and recent waits caught one (see
    /// `db::gather`): each commit costs the database a statement and a disk
    /// flush whatever it holds.
    #[arg(long, env = "ESO_COMMIT_GATHER", default_value = "2ms", value_parser = parse_commit_gather)]
    pub commit_gather: Duration,
    /// How long an `Idempotency-Key` names the saga it started (e.g. `24h`,
    /// `30m`); a key older than this starts a new saga.
    #[arg(long, env = "ESO_IDEMPOTENCY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,
    /// Bearer token(s) for operator actions (retry, cancel, resume), which
    /// also read: one token, or `name:token` entries separated by commas;
    /// the name is who a saga's history says acted. Unset: actions are off.
    #[arg(long, env = "ESO_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<crate::api::auth::Secret>,
    /// Bearer token(s) that may read every saga (the list, the console) but
    /// not act. With neither token set, those reads answer loopback only.
    #[arg(long, env = "ESO_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<crate::api::auth::Secret>,
    /// Run participants in this process even with NATS_URL set (they then
    /// answer over NATS like separate processes would).
    #[arg(long, env = "ESO_EMBED_PARTICIPANTS")]
    pub embed_participants: Option<bool>,
    /// Where a saga's trace is shown, as a URL with `{trace_id}` in it
    /// (e.g. `http://localhost:16686/trace/{trace_id}` for Jaeger); `GET
    /// /sagas/{id}` links it. Unset: no link.
    #[arg(long, env = "ESO_TRACE_URL", value_parser = TraceUrl::parse)]
    pub trace_url: Option<TraceUrl>,
    /// How many sagas this replica takes on at once; past it, a new one
    /// is answered `429` with `Retry-After`. `adaptive` (the limit follows
    /// the latency the machine sustains, between 32 and 4000),
    /// `adaptive:MIN..MAX`, `fixed:N`, or `off` (take everything).
    #[arg(long, env = "ESO_ADMISSION", default_value = "adaptive", value_parser = crate::admission::Policy::parse)]
    pub admission: crate::admission::Policy,
    /// How long finished sagas and the event stream are kept.
    #[command(flatten)]
    pub history: crate::retention::History,
}

/// A URL template for a trace, checked at start-up to hold `{trace_id}`,
/// so a typo shows when eso starts rather than as a wrong link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceUrl(String);

impl TraceUrl {
    pub const PLACEHOLDER: &str = "{trace_id}";

    pub fn parse(template: &str) -> Result<TraceUrl, String> {
        if !template.contains(Self::PLACEHOLDER) {
            return Err(format!("must contain {} where the trace id goes, e.g. http://localhost:16686/trace/{}", Self::PLACEHOLDER, Self::PLACEHOLDER));
        }
        Ok(TraceUrl(template.to_string()))
    }

    /// The link to one trace.
    pub fn link(&self, trace_id: &str) -> String {
        self.0.replace(Self::PLACEHOLDER, trace_id)
    }

    pub fn template(&self) -> &str {
        &self.0
    }
}

impl Config {
    pub fn database_url(&self) -> String {
        match self.named_database() {
            Some(url) => url.to_string(),
            None => sqlite_url(&self.sqlite_path),
        }
    }

    /// DATABASE_URL, unless unset or empty (then the store is embedded).
    pub fn named_database(&self) -> Option<&str> {
        self.database_url.as_deref().filter(|u| !u.is_empty())
    }

    pub fn nats_url(&self) -> Option<&str> {
        self.nats_url.as_deref().filter(|u| !u.is_empty())
    }

    /// Participants run in-process by default only with the in-process bus.
    pub fn embed_participants(&self) -> bool {
        self.embed_participants.unwrap_or(self.nats_url().is_none())
    }

    pub fn timer_interval(&self) -> Duration {
        Duration::from_millis(self.timer_interval_ms.max(1))
    }

    /// One line for the first log message: which mode, where, no secrets.
    pub fn describe(&self) -> String {
        let store = db::redact(&self.database_url());
        let bus = self.nats_url().map_or_else(|| "in-process".to_string(), db::redact);
        let mode = if self.nats_url().is_some() && self.named_database().is_some() { "production" } else { "embedded" };
        format!(
            "mode={mode} store={store} bus={bus} participants={} sagas_dir={} port={} trace_url={}",
            if self.embed_participants() { "in-process" } else { "external" },
            self.sagas_dir.display(),
            self.port,
            self.trace_url.as_ref().map_or("none", TraceUrl::template),
        )
    }
}

/// Bounds of the connection settings: below them every client would be cut
/// off (or refused); above them a setting no longer bounds anything, and
/// a deadline that far out could overflow the clock.
pub const MAX_CONNECTIONS: std::ops::RangeInclusive<usize> = 1..=1_000_000;
pub const HEADER_TIMEOUT: std::ops::RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(10 * 60);
pub const BODY_TIMEOUT: std::ops::RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(60 * 60);

fn parse_max_connections(value: &str) -> Result<usize, String> {
    let n = value.trim().parse::<usize>().map_err(|e| format!("must be a number of connections: {e}"))?;
    check_max_connections(n).map(|()| n)
}

pub fn check_max_connections(n: usize) -> Result<(), String> {
    if MAX_CONNECTIONS.contains(&n) {
        Ok(())
    } else {
        Err(format!("must be from {} to {} connections, not {n}", MAX_CONNECTIONS.start(), MAX_CONNECTIONS.end()))
    }
}

fn parse_header_timeout(value: &str) -> Result<Duration, String> {
    parse_bounded(value, &HEADER_TIMEOUT)
}

fn parse_body_timeout(value: &str) -> Result<Duration, String> {
    parse_bounded(value, &BODY_TIMEOUT)
}

/// `0` (never wait), or a window within `db::gather::WINDOWS`.
fn parse_commit_gather(value: &str) -> Result<Duration, String> {
    // humantime wants a unit even for zero.
    if value.trim() == "0" || humantime::parse_duration(value).is_ok_and(|d| d.is_zero()) {
        return Ok(Duration::ZERO);
    }
    parse_bounded(value, &db::gather::WINDOWS).map_err(|e| format!("{e}, or `0` never to wait"))
}

fn parse_bounded(value: &str, range: &std::ops::RangeInclusive<Duration>) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|e| format!("must be a duration such as `10s` or `500ms`: {e}"))?;
    check_duration(duration, range).map(|()| duration)
}

pub fn check_duration(duration: Duration, range: &std::ops::RangeInclusive<Duration>) -> Result<(), String> {
    if range.contains(&duration) {
        Ok(())
    } else {
        let show = |d: &Duration| humantime::format_duration(*d).to_string();
        Err(format!("must be from {} to {}, not {}", show(range.start()), show(range.end()), show(&duration)))
    }
}

/// The URL of an embedded SQLite file, created on first use.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite:{}?mode=rwc", path.display())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: super::Config,
    }

    /// On a laptop, `cargo run` must not open the API to every network.
    #[test]
    fn the_api_listens_on_loopback_unless_told_otherwise() {
        let config = Cli::parse_from(["eso"]).config;
        if std::env::var_os("BIND").is_none() {
            assert_eq!(config.bind, std::net::IpAddr::from([127, 0, 0, 1]));
        }
        assert_eq!(Cli::parse_from(["eso", "--bind", "0.0.0.0"]).config.bind, std::net::IpAddr::from([0, 0, 0, 0]));
    }

    #[test]
    fn connection_limits_out_of_bounds_are_refused_with_the_bounds() {
        let error = |args: &[&str]| Cli::try_parse_from([&["eso"], args].concat()).err().map(|e| e.to_string()).unwrap_or_default();
        for (args, says) in [
            (&["--max-connections", "0"][..], "from 1 to 1000000"),
            (&["--max-connections", "99999999999"], "from 1 to 1000000"),
            (&["--max-connections", "many"], "number of connections"),
            (&["--header-timeout", "0s"], "from 100ms to 10m"),
            (&["--header-timeout", "200years"], "from 100ms to 10m"),
            (&["--body-timeout", "10ms"], "from 100ms to 1h"),
            (&["--body-timeout", "soon"], "duration such as"),
            (&["--commit-gather", "1s"], "from 1ms to 50ms"),
            (&["--commit-gather", "250us"], "from 1ms to 50ms"),
            (&["--commit-gather", "a while"], "duration such as"),
        ] {
            let refused = error(args);
            assert!(refused.contains(says), "{args:?}: {refused}");
        }
        let config = Cli::try_parse_from(["eso", "--max-connections", "50", "--header-timeout", "1s", "--body-timeout", "500ms"]).map(|c| c.config);
        let limits = config.ok().map(|c| (c.max_connections, c.header_timeout, c.body_timeout));
        assert_eq!(limits, Some((Some(50), std::time::Duration::from_secs(1), std::time::Duration::from_millis(500))));
        let gather = |args: &[&str]| Cli::try_parse_from([&["eso"], args].concat()).ok().map(|c| c.config.commit_gather);
        assert_eq!(gather(&[]), Some(db::gather::WINDOW), "the default is the participants' window too");
        assert_eq!(gather(&["--commit-gather", "0"]), Some(std::time::Duration::ZERO));
        assert_eq!(gather(&["--commit-gather", "0ms"]), Some(std::time::Duration::ZERO));
        assert_eq!(gather(&["--commit-gather", "5ms"]), Some(std::time::Duration::from_millis(5)));
    }

    #[test]
    fn a_trace_url_must_say_where_the_trace_id_goes() {
        let config = Cli::try_parse_from(["eso", "--trace-url", "http://jaeger:16686/trace/{trace_id}"]).map(|c| c.config.trace_url);
        let link = config.ok().flatten().map(|t| t.link("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(link.as_deref(), Some("http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"));
        let refused = Cli::try_parse_from(["eso", "--trace-url", "http://jaeger:16686/trace/"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("{trace_id}"), "{refused}");
    }
}
