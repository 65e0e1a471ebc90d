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
    /// definition (and version). A pass over every row it counts, with no
    /// index to help: about 0.2 s at a million sagas on Postgres
    /// (`scripts/list_timing.sh`), where the live part alone, through the
    /// partial `sagas_due` index, takes 15 ms.
    pub async fn counts(&self, definition: Option<&str>, version: Option<u32>) -> Result<Vec<Count>, StoreError> {
        let mut sql = String::from("SELECT definition, definition_version, state, status, terminal, COUNT(*) AS n FROM sagas");
        match (definition.is_some(), version.is_some()) {
            (true, true) => sql.push_str(" WHERE definition = $1 AND definition_version = $2"),
            (true, false) => sql.push_str(" WHERE definition = $1"),
            (false, true) => sql.push_str(" WHERE definition_version = $1"),
            (false, false) => {}
        }
        sql.push_str(" GROUP BY definition, definition_version, state, status, terminal ORDER BY definition, definition_version, state");
        let mut query = sqlx::query(AssertSqlSafe(sql));
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
