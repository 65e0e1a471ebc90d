//! `?wait=5s` on a read: answer once the saga has finished, when the wait
//! is up, or when the server stops, whichever comes first, so a client
//! learns an outcome with one request instead of polling.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use uuid::Uuid;

use super::{ApiError, AppState};

/// Longest `?wait=`: a waiting request holds a connection and a task.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// The `wait` parameter: zero when absent, a `400` when not a duration up to [`MAX_WAIT`].
pub fn parse(params: &HashMap<String, String>) -> Result<Duration, ApiError> {
    let Some(raw) = params.get("wait") else { return Ok(Duration::ZERO) };
    let wait = humantime::parse_duration(raw.trim())
        .map_err(|_| ApiError::BadRequest(format!("wait must be a duration such as 5s or 250ms, not {:?}", super::truncate(raw))))?;
    if wait > MAX_WAIT {
        return Err(ApiError::BadRequest(format!("wait must be at most {}", humantime::format_duration(MAX_WAIT))));
    }
    Ok(wait)
}

/// Reads saga `id` with `read` (which gives the answer and whether the
/// saga has finished, or `None` for no such saga: a `404`, at once) until
/// it has finished or `wait` is up.
pub async fn until_finished<T, F, Fut>(state: &AppState, id: Uuid, wait: Duration, not_found: &str, read: F) -> Result<T, ApiError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Option<(T, bool)>, ApiError>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    // With no room to wait (see `finishes::MAX_WATCHES`), answer at once.
    let watch = if wait.is_zero() { None } else { state.runtime.watch(id) };
    let recheck = state.runtime.finish_recheck();
    loop {
        let woken = watch.as_ref().map(|w| w.notified());
        let (answer, finished) = read().await?.ok_or_else(|| ApiError::NotFound(format!("{not_found} {id} not found")))?;
        let now = tokio::time::Instant::now();
        let Some(woken) = woken.filter(|_| !finished && now < deadline && !state.stopping.is_cancelled()) else {
            return Ok(answer);
        };
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep_until(recheck.map_or(deadline, |r| deadline.min(now + r))) => {}
            () = state.stopping.cancelled() => {}
        }
    }
}
