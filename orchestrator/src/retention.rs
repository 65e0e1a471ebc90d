//! How long history is kept: the finished sagas in the store
//! (`ESO_RETENTION`), and the event stream on NATS (`ESO_EVENTS_MAX_AGE`,
//! `ESO_EVENTS_MAX_BYTES`, `ESO_EVENTS_REPLICAS`).
//!
//! The default keeps everything, as eso always did: deleting a customer's
//! history is a decision, not a default. A deployment that decides sets a
//! period; every replica then deletes, a batch at a time, the sagas that
//! finished longer ago than that (their events, their row, their read
//! models' rows). Whoever wants the history for longer reads it off the
//! event stream, which holds every event and has limits of its own.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::store::Store;

/// The settings, flattened into [`crate::config::Config`].
#[derive(clap::Args, Debug, Clone)]
pub struct History {
    /// What becomes of finished sagas: `keep` (the default), or
    /// `delete:PERIOD` (e.g. `delete:90d`): deleted, events and all, once
    /// they finished longer than PERIOD ago, which must be at least
    /// ESO_IDEMPOTENCY_TTL (a repeated request still finds its saga).
    #[arg(long, env = "ESO_RETENTION", default_value = "keep", value_parser = Retention::parse)]
    pub retention: Retention,
    /// The event stream's age limit (e.g. `30d`); older events leave it.
    /// Unset: no limit.
    #[arg(long, env = "ESO_EVENTS_MAX_AGE", value_parser = humantime::parse_duration)]
    pub events_max_age: Option<Duration>,
    /// The event stream's size limit in bytes (suffixes K, M, G, T in
    /// powers of 1024, e.g. `50G`); the oldest events leave it first.
    /// Unset: no limit.
    #[arg(long, env = "ESO_EVENTS_MAX_BYTES", value_parser = parse_bytes)]
    pub events_max_bytes: Option<u64>,
    /// Copies of the event stream on a NATS cluster: 3 in production (one
    /// server can then fail), 1 on a single server.
    #[arg(long, env = "ESO_EVENTS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub events_replicas: u8,
}

impl Default for History {
    fn default() -> Self {
        History { retention: Retention::Keep, events_max_age: None, events_max_bytes: None, events_replicas: 1 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Keep,
    /// Delete a saga this long after it finished.
    Delete(Duration),
}

impl Retention {
    pub fn parse(text: &str) -> Result<Retention, String> {
        let text = text.trim();
        if text == "keep" {
            return Ok(Retention::Keep);
        }
        let Some(period) = text.strip_prefix("delete:") else {
            return Err(format!("expected `keep` or `delete:PERIOD` (e.g. delete:90d), not {text:?}"));
        };
        let period = humantime::parse_duration(period.trim()).map_err(|e| format!("delete:{period}: {e}"))?;
        if period < Duration::from_secs(1) {
            return Err("the period must be at least 1s".into());
        }
        Ok(Retention::Delete(period))
    }

    /// Refuses a period shorter than an idempotency key's lifetime: a
    /// client repeating its request would be told of a saga that is gone.
    pub fn check(self, idempotency_ttl: Duration) -> Result<(), String> {
        match self {
            Retention::Delete(period) if period < idempotency_ttl => Err(format!(
                "delete:{} is shorter than ESO_IDEMPOTENCY_TTL ({}): a repeated request would find its saga deleted",
                humantime::format_duration(period),
                humantime::format_duration(idempotency_ttl)
            )),
            _ => Ok(()),
        }
    }
}

/// `50G`, `512M`, `1048576`: bytes, with binary suffixes.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, ""), |i| text.split_at(i));
    let unit: u64 = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        other => return Err(format!("unknown unit {other:?}: use K, M, G or T")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("expected a number of bytes such as 50G, not {text:?}"))?;
    n.checked_mul(unit).filter(|&b| b > 0 && b <= i64::MAX as u64).ok_or_else(|| format!("{text} is out of range"))
}

/// Sagas deleted per transaction: short enough not to hold locks long.
const BATCH: i64 = 500;

/// Deletes finished sagas past their period until `stop`, on every replica
/// (on Postgres they skip each other's rows). Nothing with `Keep`.
pub async fn run(store: Store, finished: Vec<(String, String)>, retention: Retention, stop: CancellationToken) {
    let Retention::Delete(period) = retention else { return };
    // Often enough that the tables stay near the period, rarely enough to cost nothing.
    let every = (period / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let period_us = i64::try_from(period.as_micros()).unwrap_or(i64::MAX);
    tracing::info!(period = %humantime::format_duration(period), "deleting sagas finished longer ago than the retention period");
    loop {
        let before = clock::now_us().saturating_sub(period_us);
        for (definition, status) in &finished {
            loop {
                match store.forget_finished(definition, status, before, BATCH).await {
                    Ok(n) => {
                        metrics::counter!("eso_sagas_deleted_total", "definition" => definition.clone()).increment(n as u64);
                        if (n as i64) < BATCH || stop.is_cancelled() {
                            break;
                        }
                    }
                    Err(e) => {
                        metrics::counter!("eso_retention_errors_total").increment(1);
                        tracing::warn!(error = %e, definition, status, "retention: finished sagas not deleted; trying again later");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_keep_or_a_period() {
        assert_eq!(Retention::parse("keep"), Ok(Retention::Keep));
        assert_eq!(Retention::parse("delete:90d"), Ok(Retention::Delete(Duration::from_secs(90 * 86_400))));
        for bad in ["", "forever", "delete:", "delete:soon", "delete:0s", "90d"] {
            assert!(Retention::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Retention::Delete(Duration::from_secs(3600)).check(Duration::from_secs(86_400)).is_err());
        assert!(Retention::Delete(Duration::from_secs(86_400)).check(Duration::from_secs(86_400)).is_ok());
        assert!(Retention::Keep.check(Duration::from_secs(86_400)).is_ok());
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("50G"), Ok(50 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2 T"), Ok(2 << 40));
        for bad in ["", "G", "0", "12X", "-1", "99999999999T"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} accepted");
        }
    }
}
