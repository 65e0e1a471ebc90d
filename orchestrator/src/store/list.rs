//! Finding sagas: newest first, filtered, a page at a time.
//!
//! Pages are cut by a cursor (the last row's `created_at` and id), not an
//! offset, so a page costs the same at the millionth saga as at the first
//! and rows started meanwhile do not shift later pages. Each query names
//! one definition and one status and walks the index that starts with them
//! (`sagas_by_status`, migration 0003) backwards from the cursor; a search
//! across statuses or definitions is one such query per pair, merged by
//! the caller.
//!
//! The other filters (version, a last step before a time, an attempt, a
//! start range) have no index of their own, since each index costs every
//! step of every saga a write. The start range bounds the walk itself
//! (`created_at` is in the index); the rest are checked on the rows the
//! walk reaches. "Stuck" and "past its N-th attempt" only ask about live
//! sagas, whose statuses are the index's small part: finished sagas far
//! outnumber them, and the walk never reads their entries.

use std::fmt;
use std::str::FromStr;

use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::{Store, StoreError};

/// Where a page ends: the next page holds what was started before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub created_at: i64,
    pub id: Uuid,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.created_at, self.id.simple())
    }
}

impl FromStr for Cursor {
    type Err = ();

    fn from_str(s: &str) -> Result<Cursor, ()> {
        let (at, id) = s.split_once('_').ok_or(())?;
        Ok(Cursor { created_at: at.parse().map_err(|_| ())?, id: Uuid::parse_str(id).map_err(|_| ())? })
    }
}

/// What to look for among one definition's sagas of one status.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub definition: String,
    pub status: String,
    pub state: Option<String>,
    pub terminal: Option<bool>,
    /// The definition's version.
    pub version: Option<u32>,
    /// Only sagas whose last step was before this time (stuck ones).
    pub updated_before: Option<i64>,
    /// Only sagas waiting on a command at this attempt or a later one.
    pub min_attempt: Option<u32>,
    /// Only sagas started at or after this time.
    pub started_after: Option<i64>,
    /// Only sagas started before this time.
    pub started_before: Option<i64>,
    /// Only sagas started before this one.
    pub after: Option<Cursor>,
    pub limit: u32,
}

/// One saga of a list: its row without the snapshot.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: Uuid,
    pub definition: String,
    pub version: u32,
    pub state: String,
    pub status: String,
    pub terminal: bool,
    /// The pending command's attempt; none when the saga waits on none.
    pub attempt: Option<u32>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// How many sagas are in one state of one definition version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub definition: String,
    pub version: u32,
    pub state: String,
    pub status: String,
    pub terminal: bool,
    pub count: i64,
}

impl Listed {
    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

impl Store {
    /// Up to `filter.limit` sagas of one definition and status, newest first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Listed>, StoreError> {
        let mut sql = String::from(
            "SELECT id, definition, definition_version, state, status, terminal, attempt, created_at, updated_at FROM sagas \
             WHERE definition = $1 AND status = $2",
        );
        let mut n = 2;
        let mut param = |sql: &mut String, clause: &str| {
            n += 1;
            sql.push_str(&clause.replace('?', &format!("${n}")));
        };
        if filter.state.is_some() {
            param(&mut sql, " AND state = ?");
        }
        if filter.terminal.is_some() {
            param(&mut sql, " AND terminal = ?");
        }
        if filter.version.is_some() {
            param(&mut sql, " AND definition_version = ?");
        }
        if filter.updated_before.is_some() {
            param(&mut sql, " AND updated_at < ?");
        }
        if filter.min_attempt.is_some() {
            param(&mut sql, " AND attempt >= ?");
        }
        if filter.started_after.is_some() {
            param(&mut sql, " AND created_at >= ?");
        }
        if filter.started_before.is_some() {
            param(&mut sql, " AND created_at < ?");
        }
        if filter.after.is_some() {
            param(&mut sql, " AND (created_at, id) < (?");
            param(&mut sql, ", ?)");
        }
        param(&mut sql, " ORDER BY created_at DESC, id DESC LIMIT ?");
        // The text depends only on which filters are set: a handful of
        // statements, each prepared once per connection.
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(&filter.definition).bind(&filter.status);
        if let Some(state) = &filter.state {
            query = query.bind(state);
        }
        if let Some(terminal) = filter.terminal {
            query = query.bind(i64::from(terminal));
        }
        // In the order their clauses were added above.
        let numbers = [filter.version.map(i64::from), filter.updated_before, filter.min_attempt.map(i64::from), filter.started_after, filter.started_before];
        for value in numbers.into_iter().flatten() {
            query = query.bind(value);
        }
        if let Some(after) = filter.after {
            query = query.bind(after.created_at).bind(after.id.to_string());
        }
        let rows = query.bind(i64::from(filter.limit)).fetch_all(&self.readers).await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                let version: i64 = r.try_get("definition_version")?;
                let attempt: Option<i64> = r.try_get("attempt")?;
                Ok(Listed {
                    id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    definition: r.try_get("definition")?,
                    version: u32::try_from(version).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    state: r.try_get("state")?,
                    status: r.try_get("status")?,
                    terminal: r.try_get::<i64, _>("terminal")? != 0,
                    attempt: attempt.map(u32::try_from).transpose().map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// Sagas per definition version and state, optionally of one
    /// definition (and version). Live sagas are counted at each call,
    /// through the partial `sagas_due` index (15 ms at 10,000 live among a
    /// million, `scripts/list_timing.sh`). Finished ones need a pass over
    /// every finished row (0.2 s at a million), and only change when a saga
    /// finishes or is resumed: they are counted at most every
    /// [`FINISHED_COUNTS_TTL`] per filter, by one request at a time, so a
    /// console refreshing every few seconds does not scan the table each
    /// time. Returns the counts and when the finished ones were taken.
    pub async fn counts(&self, definition: Option<&str>, version: Option<u32>) -> Result<(Vec<Count>, i64), StoreError> {
        let mut counts = self.count_where(definition, version, 0).await?;
        let key = (definition.map(str::to_string), version);
        // Held across the count: requests for an expired entry wait for
        // one count instead of each scanning the table.
        let mut cache = self.finished_counts.0.lock().await;
        let fresh = cache.get(&key).filter(|(at, _, _)| at.elapsed() < FINISHED_COUNTS_TTL).map(|(_, taken, c)| (*taken, c.clone()));
        let (taken, finished) = match fresh {
            Some(hit) => hit,
            None => {
                let finished = self.count_where(definition, version, 1).await?;
                let taken = crate::clock::now_us();
                if cache.len() >= MAX_CACHED_COUNTS {
                    cache.clear();
                }
                cache.insert(key, (std::time::Instant::now(), taken, finished.clone()));
                (taken, finished)
            }
        };
        drop(cache);
        counts.extend(finished);
        counts.sort_by(|a, b| (&a.definition, a.version, &a.state).cmp(&(&b.definition, b.version, &b.state)));
        Ok((counts, taken))
    }

    pub(super) async fn count_where(&self, definition: Option<&str>, version: Option<u32>, terminal: i64) -> Result<Vec<Count>, StoreError> {
        let mut sql = String::from("SELECT definition, definition_version, state, status, terminal, COUNT(*) AS n FROM sagas WHERE terminal = $1");
        match (definition.is_some(), version.is_some()) {
            (true, true) => sql.push_str(" AND definition = $2 AND definition_version = $3"),
            (true, false) => sql.push_str(" AND definition = $2"),
            (false, true) => sql.push_str(" AND definition_version = $2"),
            (false, false) => {}
        }
        sql.push_str(" GROUP BY definition, definition_version, state, status, terminal");
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(terminal);
        if let Some(definition) = definition {
            query = query.bind(definition);
        }
        if let Some(version) = version {
            query = query.bind(i64::from(version));
        }
        let rows = query.fetch_all(&self.readers).await?;
        rows.iter()
            .map(|r| {
                let version: i64 = r.try_get("definition_version")?;
                Ok(Count {
                    definition: r.try_get("definition")?,
                    version: u32::try_from(version).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    state: r.try_get("state")?,
                    status: r.try_get("status")?,
                    terminal: r.try_get::<i64, _>("terminal")? != 0,
                    count: r.try_get("n")?,
                })
            })
            .collect()
    }
}

/// How long counts of finished sagas are reused.
pub const FINISHED_COUNTS_TTL: std::time::Duration = std::time::Duration::from_secs(15);
/// Filters whose finished counts are kept (definitions × versions, and all).
const MAX_CACHED_COUNTS: usize = 64;

/// A counts filter: definition and version, each optional.
type CountsKey = (Option<String>, Option<u32>);
/// When finished sagas were counted (for the TTL, and as Unix microseconds
/// for the answer), and the counts.
type Counted = (std::time::Instant, i64, Vec<Count>);

/// Finished sagas' counts per filter.
#[derive(Default)]
pub(crate) struct FinishedCounts(tokio::sync::Mutex<std::collections::HashMap<CountsKey, Counted>>);
