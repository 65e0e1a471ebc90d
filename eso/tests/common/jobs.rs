//! Following a bulk job (`GET /actions/{job}`) from a test.

use super::*;

/// How often a test looks at a job: fine enough to kill it mid-way.
const POLL: Duration = Duration::from_millis(20);

/// The job as `GET /actions/{id}` shows it to `token`.
pub async fn job(http: &reqwest::Client, url: &str, token: &str, id: &str) -> Value {
    let response = http.get(format!("{url}/actions/{id}")).bearer_auth(token).send().await.unwrap_or_else(|e| panic!("GET job: {e}"));
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.unwrap_or(Value::Null)
}

/// Waits until at least `at_least` of the job's sagas are done, and asserts
/// that fewer than `total` are: a crash after that proves nothing.
pub async fn until_part_done(http: &reqwest::Client, url: &str, token: &str, id: &str, at_least: u64, total: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = job(http, url, token, id).await["done"].as_u64().unwrap_or(0);
        if done >= at_least {
            assert!(done < total, "the job finished before the crash; the test proves nothing");
            return;
        }
        assert!(Instant::now() < deadline, "the job did not start");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits up to `timeout` for the job to finish, and returns it.
pub async fn until_finished(http: &reqwest::Client, url: &str, token: &str, id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let state = job(http, url, token, id).await;
        if state["status"] == "finished" {
            return state;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {state}");
        tokio::time::sleep(POLL).await;
    }
}
