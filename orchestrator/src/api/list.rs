//! Finding sagas: `GET /sagas` (filtered, newest first, a page at a time)
//! and `GET /sagas/counts` (how many per state). [`Query`] is the filter
//! both the list and a bulk action take, parsed once.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use axum::Json;
use axum::extract::{Query as Params, State};
use serde_json::{Value, json};

use super::auth::CanRead;
use super::{ApiError, AppState, truncate};
use crate::clock::{now_us, parse_rfc3339, rfc3339};
use crate::store::{Cursor, Filter, Listed};

/// Sagas in one page of `GET /sagas`, by default and at most.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;
/// Longest name, state or status a query may name.
const MAX_NAME_LEN: usize = 100;
/// The longest `stuck_for`: past it the age is a typo, not a question.
const MAX_AGE: Duration = Duration::from_secs(3650 * 24 * 60 * 60);

/// Which sagas a list (or a bulk action) is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub definition: Option<String>,
    pub version: Option<u32>,
    pub status: Option<String>,
    pub state: Option<String>,
    pub terminal: Option<bool>,
    /// Live sagas whose last step is older than this.
    pub stuck_for: Option<Duration>,
    /// Live sagas whose pending command is at this attempt or later.
    pub min_attempt: Option<u32>,
    /// Started at or after (Unix microseconds).
    pub started_after: Option<i64>,
    /// Started before (Unix microseconds).
    pub started_before: Option<i64>,
}

impl Query {
    /// The keys [`Query::parse`] reads.
    pub const KEYS: [&str; 9] = ["definition", "version", "status", "state", "terminal", "stuck_for", "min_attempt", "started_after", "started_before"];

    /// The filter of a query string (or a bulk action's `filter`, as
    /// strings); a key that is neither a filter nor one of `others` is
    /// refused, so a misspelt filter does not silently match everything.
    pub fn parse(params: &HashMap<String, String>, others: &[&str]) -> Result<Query, ApiError> {
        if let Some(unknown) = params.keys().find(|k| !Self::KEYS.contains(&k.as_str()) && !others.contains(&k.as_str())) {
            let known: Vec<&str> = Self::KEYS.iter().chain(others).copied().collect();
            return Err(ApiError::BadRequest(format!("unknown parameter {:?}; this takes {}", truncate(unknown), known.join(", "))));
        }
        let value = |name: &str| params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let text = |name: &str| match value(name) {
            Some(v) if v.len() > MAX_NAME_LEN => Err(ApiError::field(name, format!("must be at most {MAX_NAME_LEN} characters"))),
            v => Ok(v.map(str::to_string)),
        };
        let time = |name: &str| {
            value(name).map(|v| parse_rfc3339(v).ok_or_else(|| ApiError::field(name, "must be an RFC 3339 time, like 2026-05-01T12:00:00Z"))).transpose()
        };
        let terminal = match value("terminal") {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => return Err(ApiError::field("terminal", "must be true or false")),
        };
        let version = match value("version") {
            None => None,
            Some(v) => Some(v.parse::<u32>().ok().filter(|&n| n >= 1).ok_or_else(|| ApiError::field("version", "must be a whole number from 1"))?),
        };
        let stuck_for = match value("stuck_for") {
            None => None,
            Some(v) => match humantime::parse_duration(v) {
                Ok(age) if (Duration::from_secs(1)..=MAX_AGE).contains(&age) => Some(age),
                _ => return Err(ApiError::field("stuck_for", "must be an age from 1s to 3650d, like 10m or 2h")),
            },
        };
        let min_attempt = match value("min_attempt") {
            None => None,
            Some(v) => Some(v.parse::<u32>().ok().filter(|&n| n >= 1).ok_or_else(|| ApiError::field("min_attempt", "must be a whole number from 1"))?),
        };
        let (started_after, started_before) = (time("started_after")?, time("started_before")?);
        if let (Some(after), Some(before)) = (started_after, started_before)
            && after > before
        {
            return Err(ApiError::field("started_after", "must not be later than started_before"));
        }
        // Only a live saga is stuck or waits on an attempt.
        if terminal == Some(true) {
            for (name, set) in [("stuck_for", stuck_for.is_some()), ("min_attempt", min_attempt.is_some())] {
                if set {
                    return Err(ApiError::field(name, "finds live sagas only, so it cannot go with terminal=true"));
                }
            }
        }
        let live = stuck_for.is_some() || min_attempt.is_some();
        Ok(Query {
            definition: text("definition")?,
            version,
            status: text("status")?,
            state: text("state")?,
            terminal: if live { Some(false) } else { terminal },
            stuck_for,
            min_attempt,
            started_after,
            started_before,
        })
    }

    /// The store's filters for this query at `now` (Unix microseconds):
    /// one per (definition, status) pair, each a walk of the status index.
    pub fn filters(&self, registry: &sagas::Registry, now: i64, after: Option<Cursor>, limit: u32) -> Result<Vec<Filter>, ApiError> {
        let names: BTreeSet<String> = match &self.definition {
            Some(name) if registry.latest(name).is_none() => {
                return Err(ApiError::NotFound(format!("no saga definition named {:?} is loaded", truncate(name))));
            }
            Some(name) => BTreeSet::from([name.clone()]),
            None => registry.iter().map(|d| d.name.clone()).collect(),
        };
        let updated_before = self.stuck_for.map(|age| now.saturating_sub(i64::try_from(age.as_micros()).unwrap_or(i64::MAX)));
        // The statuses a saga can show are those its definition's states
        // name. A state shows one status per version, so a state filter
        // narrows the walk to that status (or those, across versions).
        let mut filters = Vec::new();
        let (mut known_state, mut known_version) = (self.state.is_none(), self.version.is_none());
        for name in names {
            // Every loaded version's states (or the one asked for): a saga shows one of them.
            let versions: Vec<_> = registry.iter().filter(|d| d.name == name && self.version.is_none_or(|v| d.version == v)).collect();
            known_version |= !versions.is_empty();
            let states: Vec<&sagas::definition::State> = versions.iter().flat_map(|d| d.states.values()).collect();
            let statuses: BTreeSet<String> = states
                .iter()
                .filter(|s| self.state.as_ref().is_none_or(|w| &s.name == w))
                .filter(|s| self.terminal.is_none_or(|t| s.terminal == t))
                .map(|s| s.status.clone())
                .filter(|s| self.status.as_ref().is_none_or(|wanted| s == wanted))
                .collect();
            known_state |= self.state.as_ref().is_some_and(|w| states.iter().any(|s| &s.name == w));
            for status in statuses {
                // A condition the status already implies is left out: with it,
                // Postgres may judge the rows rarer than they are and trade the
                // ordered walk of the index for a bitmap of every match.
                let showing: Vec<_> = states.iter().filter(|s| s.status == status).collect();
                let state = self.state.clone().filter(|w| showing.iter().any(|s| &s.name != w));
                let terminal = self.terminal.filter(|&t| showing.iter().any(|s| s.terminal != t));
                filters.push(Filter {
                    definition: name.clone(),
                    status,
                    state,
                    terminal,
                    version: self.version,
                    updated_before,
                    min_attempt: self.min_attempt,
                    started_after: self.started_after,
                    started_before: self.started_before,
                    after,
                    limit,
                });
            }
        }
        if !known_version {
            return Err(ApiError::field("version", "no loaded definition has that version"));
        }
        if !known_state {
            return Err(ApiError::field("state", "no loaded definition has a state of that name"));
        }
        Ok(filters)
    }
}

/// `GET /sagas?definition=&version=&status=&state=&terminal=&stuck_for=&min_attempt=&started_after=&started_before=&limit=&after=`:
/// sagas, newest first, a page at a time; `next` is the `after` of the next page.
pub async fn list(_: CanRead, State(state): State<AppState>, Params(params): Params<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let (found, next) = find(&state, &params).await?;
    let sagas: Vec<Value> = found
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "definition": { "name": s.definition, "version": s.version },
                "state": s.state,
                "status": s.status,
                "terminal": s.terminal,
                "attempt": s.attempt,
                "created_at": rfc3339(s.created_at),
                "updated_at": rfc3339(s.updated_at),
            })
        })
        .collect();
    Ok(Json(json!({ "sagas": sagas, "next": next.map(|c| c.to_string()) })))
}

/// One page of the sagas `params` (the query of `GET /sagas`) asks for,
/// and the cursor of the next page if there may be one (also what a bulk
/// action job matches, a page at a time).
pub(super) async fn find(state: &AppState, params: &HashMap<String, String>) -> Result<(Vec<Listed>, Option<Cursor>), ApiError> {
    let query = Query::parse(params, &["limit", "after"])?;
    let limit = match params.get("limit").map(|v| v.trim()) {
        None | Some("") => DEFAULT_LIMIT,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(ApiError::field("limit", format!("must be a whole number from 1 to {MAX_LIMIT}"))),
        },
    };
    let after = match params.get("after").map(|v| v.trim()) {
        None | Some("") => None,
        Some(v) => Some(v.parse::<Cursor>().map_err(|()| ApiError::field("after", "must be the `next` of an earlier page"))?),
    };
    let filters = query.filters(state.runtime.registry(), now_us(), after, limit)?;
    let pages = futures::future::try_join_all(filters.iter().map(|f| state.store.list(f))).await?;
    let mut found: Vec<Listed> = pages.into_iter().flatten().collect();
    found.sort_by_key(|s| std::cmp::Reverse(s.cursor()));
    found.truncate(limit as usize);
    let next = (found.len() == limit as usize).then(|| found.last().map(Listed::cursor)).flatten();
    Ok((found, next))
}

/// `GET /sagas/counts?definition=&version=`: how many sagas are in each
/// state of each definition version.
pub async fn counts(_: CanRead, State(state): State<AppState>, Params(params): Params<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    const KNOWN: [&str; 2] = ["definition", "version"];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!("unknown parameter {:?}; GET /sagas/counts takes {}", truncate(unknown), KNOWN.join(", "))));
    }
    let query = Query::parse(&params, &[])?;
    // The list's own checks: a definition and a version that are loaded.
    // Only loaded versions, as each filter is an entry of the
    // finished-counts cache: the filters a client can name are bounded.
    query.filters(state.runtime.registry(), now_us(), None, 1)?;
    let (counts, finished_as_of) = state.store.counts(query.definition.as_deref(), query.version).await?;
    let counts: Vec<Value> = counts
        .iter()
        .map(|c| json!({ "definition": c.definition, "version": c.version, "state": c.state, "status": c.status, "terminal": c.terminal, "count": c.count }))
        .collect();
    // Finished sagas are counted every 15 s at most; live ones each time.
    Ok(Json(json!({ "counts": counts, "finished_as_of": rfc3339(finished_as_of) })))
}
