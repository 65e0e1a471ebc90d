//! Operator actions end to end, on both stores: retry, cancel and resume
//! move a saga as its definition says and leave an audit event in its
//! history; a repeated request does nothing twice; a refused one changes
//! nothing; and only the right token may act or list.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Mode, TestApp};
use serde_json::{Value, json};
use uuid::Uuid;

const ALICE: &str = "alice-operator-token-0123456789";
const READER: &str = "read-only-token-0123456789";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sagas")
}

/// With the test sagas, no participant, and alice's operator token.
async fn start(mode: Mode) -> TestApp {
    TestApp::start_configured(mode, |config| {
        config.sagas_dir = fixtures();
        config.embed_participants = Some(false);
        config.operator_token = format!("alice:{ALICE}").parse().ok();
        config.read_token = READER.parse().ok();
    })
    .await
}

impl TestApp {
    async fn act(&self, id: Uuid, action: &str, body: Value, token: Option<&str>, key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}/sagas/{id}/actions/{action}", self.url)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("POST action: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn start_saga(&self, name: &str) -> Uuid {
        let (status, body) = self.send(&format!("/sagas/{name}"), json!({}), None).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).unwrap_or_else(|| panic!("no id in {body}"))
    }

    async fn history(&self, id: Uuid) -> Vec<Value> {
        let (status, events) = self.get(&format!("/sagas/{id}/events")).await;
        assert_eq!(status, 200, "{events}");
        events.as_array().cloned().unwrap_or_default()
    }

    async fn saga(&self, id: Uuid) -> Value {
        let (status, body) = self.get(&format!("/sagas/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls until the saga is in `state`.
    async fn reaches(&self, id: Uuid, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body = self.saga(id).await;
            if body["state"] == state {
                return body;
            }
            assert!(Instant::now() < deadline, "saga {id} never reached `{state}`: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn types(history: &[Value]) -> Vec<&str> {
    history.iter().filter_map(|e| e["type"].as_str()).collect()
}

/// The audit record of an operator event: its change's `by` (retry) or `cause`.
fn audit(event: &Value) -> &Value {
    let data = &event["data"];
    if data["by"].is_object() { &data["by"] } else { &data["cause"] }
}

async fn retry(app: &TestApp) {
    let id = app.start_saga("hold").await;
    let before = app.saga(id).await;
    assert_eq!(before["pending_command"]["attempt"], 1, "{before}");
    let reason = json!({ "reason": "the work service was redeployed" });

    let (status, body) = app.act(id, "retry", reason.clone(), Some(ALICE), Some("r-1")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!((body["state"].as_str(), body["events"].clone()), (Some("work"), json!(["operator_retried"])), "{body}");
    let after = app.saga(id).await;
    assert_eq!(after["pending_command"]["attempt"], 2, "one more attempt: {after}");
    assert_eq!(after["pending_command"]["command_id"], before["pending_command"]["command_id"], "the same command id is sent again");

    let history = app.history(id).await;
    assert_eq!(types(&history), ["hold_started", "operator_retried"]);
    let record = audit(&history[1]);
    assert_eq!((record["action"].as_str(), record["operator"].as_str()), (Some("retry"), Some("alice")), "{record}");
    assert_eq!(record["reason"], "the work service was redeployed");
    assert!(history[1]["recorded_at"].is_string());
    assert!(history[1]["trace_id"].is_string(), "the action continues the saga's trace: {}", history[1]);
    assert_eq!(history[1]["trace_id"], history[0]["trace_id"], "one trace per saga");

    // The same request again (same key) does nothing.
    let (status, body) = app.act(id, "retry", reason, Some(ALICE), Some("r-1")).await;
    assert_eq!((status, body["repeated"].clone()), (200, json!(true)), "{body}");
    assert_eq!(app.history(id).await.len(), 2, "a repeated retry is not recorded twice");
}

async fn cancel(app: &TestApp) {
    let id = app.start_saga("hold").await;
    let reason = json!({ "reason": "customer called support" });
    let (status, body) = app.act(id, "cancel", reason.clone(), Some(ALICE), Some("c-1")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "undo", "the definition's cancel goes to the compensation: {body}");
    let saga = app.saga(id).await;
    assert_eq!((saga["state"].as_str(), saga["status"].as_str()), (Some("undo"), Some("undoing")), "{saga}");
    let history = app.history(id).await;
    assert_eq!(types(&history), ["hold_started", "hold_cancelled"]);
    assert_eq!(audit(&history[1])["operator"], "alice");
    assert_eq!(audit(&history[1])["action"], "cancel");

    let (status, body) = app.act(id, "cancel", reason.clone(), Some(ALICE), Some("c-1")).await;
    assert_eq!((status, body["repeated"].clone()), (200, json!(true)), "{body}");
    // A new cancel in `undo`, which declares none: refused, nothing changes.
    let (status, body) = app.act(id, "cancel", reason, Some(ALICE), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("declares no `cancel`")), "{body}");
    assert_eq!(app.history(id).await.len(), 2, "a refused action records nothing");
    assert_eq!(app.saga(id).await["version"], saga["version"]);
}

async fn resume(app: &TestApp) {
    let id = app.start_saga("fragile").await;
    let failed = app.reaches(id, "stuck").await;
    assert_eq!(failed["terminal"], true);
    let reason = |why: &str| json!({ "reason": why, "to": "undo" });

    // Only a listed repair target, only once the saga has ended.
    let (status, body) = app.act(id, "resume", json!({ "reason": "x", "to": "work" }), Some(ALICE), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("repair")), "{body}");
    let (status, _) = app.act(id, "retry", json!({ "reason": "x" }), Some(ALICE), None).await;
    assert_eq!(status, 409, "a finished saga has nothing to retry");
    let before = app.history(id).await;

    let (status, body) = app.act(id, "resume", reason("the undo service is back"), Some(ALICE), Some("s-1")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["events"], json!(["operator_resumed"]));
    let history = app.history(id).await;
    assert!(history.len() > before.len(), "the resume is recorded");
    let resumed = &history[before.len()];
    assert_eq!(resumed["type"], "operator_resumed");
    assert_eq!((audit(resumed)["to"].as_str(), audit(resumed)["operator"].as_str()), (Some("undo"), Some("alice")));
    // The undo command goes out with the id it had before: a participant
    // that did undo then answers as it did instead of undoing twice.
    let earlier = history.iter().find(|e| e["data"]["to"] == "undo").map(|e| e["data"]["pending"]["command_id"].clone());
    assert!(earlier.as_ref().is_some_and(Value::is_string), "the first entry into undo names its command: {before:?}");
    assert_eq!(Some(resumed["data"]["pending"]["command_id"].clone()), earlier, "{resumed}");

    // Nobody answers the undo again, so the saga fails again: resumed once, on its own terms.
    app.reaches(id, "stuck").await;
    let counts = app.http.get(format!("{}/sagas/counts?definition=fragile", app.url)).bearer_auth(READER).send().await;
    let counts: Value = match counts {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(e) => panic!("counts: {e}"),
    };
    let stuck = counts["counts"].as_array().and_then(|c| c.iter().find(|c| c["state"] == "stuck")).cloned().unwrap_or_default();
    assert_eq!((stuck["count"].as_i64(), stuck["terminal"].as_bool()), (Some(1), Some(true)), "finished sagas are counted: {counts}");
    let (status, body) = app.act(id, "resume", reason("again"), Some(ALICE), Some("s-1")).await;
    assert_eq!((status, body["repeated"].clone()), (200, json!(true)), "the same key resumes once: {body}");
    let history = app.history(id).await;
    assert_eq!(types(&history).iter().filter(|t| **t == "operator_resumed").count(), 1);
}

async fn bad_requests(app: &TestApp) {
    let id = app.start_saga("hold").await;
    let cases: [(&str, Value, u16, &str); 7] = [
        ("retry", json!({}), 400, "reason"),
        ("retry", json!({ "reason": "" }), 400, "reason"),
        ("retry", json!({ "reason": 5 }), 400, "reason"),
        ("retry", json!({ "reason": "x".repeat(501) }), 400, "reason"),
        ("retry", json!({ "reason": "x", "force": true }), 400, "force"),
        ("resume", json!({ "reason": "x" }), 400, "to"),
        ("reboot", json!({ "reason": "x" }), 404, "retry, cancel and resume"),
    ];
    for (action, body, want, mentions) in cases {
        let (status, answer) = app.act(id, action, body.clone(), Some(ALICE), None).await;
        assert_eq!(status, want, "{action} {body}: {answer}");
        assert!(answer.to_string().contains(mentions), "{action} {body}: {answer}");
    }
    let (status, _) = app.act(Uuid::now_v7(), "retry", json!({ "reason": "x" }), Some(ALICE), None).await;
    assert_eq!(status, 404);
    let response = app.http.post(format!("{}/sagas/not-a-uuid/actions/retry", app.url)).bearer_auth(ALICE).json(&json!({ "reason": "x" })).send().await;
    assert_eq!(response.map(|r| r.status().as_u16()).ok(), Some(400));
    assert_eq!(types(&app.history(id).await), ["hold_started"], "no bad request recorded anything");
}

async fn tokens(app: &TestApp) {
    let id = app.start_saga("hold").await;
    let body = json!({ "reason": "x" });
    for (token, want) in [(None, 401), (Some("not-the-token-0123456789"), 401), (Some(READER), 403)] {
        let (status, answer) = app.act(id, "retry", body.clone(), token, None).await;
        assert_eq!(status, want, "{token:?}: {answer}");
    }
    let list = |token: Option<&'static str>| async move {
        let mut request = app.http.get(format!("{}/sagas", app.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("GET /sagas: {e}"));
        (response.status().as_u16(), response.headers().get("www-authenticate").is_some())
    };
    assert_eq!(list(None).await, (401, true), "with tokens configured, the list needs one, even on loopback");
    assert_eq!(list(Some("not-the-token-0123456789")).await, (401, true));
    assert_eq!(list(Some(READER)).await.0, 200);
    assert_eq!(list(Some(ALICE)).await.0, 200);
    // A saga by its id stays as open as the seed's `GET /?id=`.
    assert_eq!(app.get(&format!("/sagas/{id}")).await.0, 200);
    assert_eq!(types(&app.history(id).await), ["hold_started"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_on_both_stores() {
    for mode in [Mode::Embedded, Mode::Production] {
        let mut app = start(mode).await;
        retry(&app).await;
        cancel(&app).await;
        resume(&app).await;
        bad_requests(&app).await;
        tokens(&app).await;
        bulk(&app).await;
        app.stop().await;
    }
}

/// With no token configured, actions are off and say how to turn them on;
/// the list answers loopback clients only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_actions_are_off_and_the_list_is_loopback_only() {
    let mut app = TestApp::start_configured(Mode::Embedded, |config| {
        config.sagas_dir = fixtures();
        config.embed_participants = Some(false);
        config.bind = std::net::IpAddr::from([0, 0, 0, 0]);
    })
    .await;
    // Listening on every address, reached here through loopback.
    let port = app.url.rsplit(':').next().unwrap_or_default().to_string();
    app.url = format!("http://127.0.0.1:{port}");
    let id = app.start_saga("hold").await;
    let (status, body) = app.act(id, "retry", json!({ "reason": "x" }), Some(ALICE), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("ESO_OPERATOR_TOKEN")), "{body}");
    assert_eq!(app.get("/sagas").await.0, 200, "loopback may list");
    // A proxy on this host relays remote clients from loopback, and a page
    // may reach loopback through a rebound DNS name: neither counts.
    for (header, value) in [("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=203.0.113.9"), ("host", "rebound.example:3000")] {
        let response = app.http.get(format!("{}/sagas", app.url)).header(header, value).send().await;
        assert_eq!(response.map(|r| r.status().as_u16()).ok(), Some(403), "{header}: {value}");
    }

    // The same server from this machine's own network address is not loopback.
    match outward_address() {
        Some(ip) => {
            let response = app.http.get(format!("http://{ip}:{port}/sagas")).send().await.unwrap_or_else(|e| panic!("GET via {ip}: {e}"));
            assert_eq!(response.status().as_u16(), 403, "a client on {ip} may not list without a token");
            let one = app.http.get(format!("http://{ip}:{port}/sagas/{id}")).send().await.map(|r| r.status().as_u16()).ok();
            assert_eq!(one, Some(200), "a saga by id stays open");
        }
        None => assert!(std::env::var_os("CI").is_none(), "CI: this machine has no address but loopback, so the remote-client check cannot run"),
    }
    app.stop().await;
}

/// An address of this machine other than loopback (the one its default
/// route leaves from); no packet is sent.
fn outward_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    socket.local_addr().ok().map(|a| a.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// A job acts on what its filter matched when it was created: the sagas
/// whose state allows the action take it, the others are refused with why.
async fn bulk(app: &TestApp) {
    let ids = [app.start_saga("hold").await, app.start_saga("hold").await, app.start_saga("hold").await];
    for id in &ids[..1] {
        let (status, _) = app.act(*id, "cancel", json!({ "reason": "first" }), Some(ALICE), None).await;
        assert_eq!(status, 202);
    }
    let post = |body: Value, token: Option<&'static str>| async move {
        let mut request = app.http.post(format!("{}/actions", app.url)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("POST /actions: {e}"));
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap_or(Value::Null))
    };
    for (body, want, mentions) in [
        (json!({ "reason": "x", "filter": {} }), 400, "action"),
        (json!({ "action": "retry", "reason": "x" }), 400, "filter"),
        (json!({ "action": "retry", "reason": "x", "filter": { "limit": 5 } }), 400, "limit"),
        (json!({ "action": "retry", "reason": "x", "filter": { "state": ["a"] } }), 400, "filter.state"),
        (json!({ "action": "retry", "reason": "x", "filter": {}, "rate": 0 }), 400, "rate"),
        (json!({ "action": "retry", "filter": {} }), 400, "reason"),
        (json!({ "action": "retry", "reason": "x", "filter": { "definition": "nope" } }), 404, "nope"),
    ] {
        let (status, answer) = post(body.clone(), Some(ALICE)).await;
        assert_eq!(status, want, "{body}: {answer}");
        assert!(answer.to_string().contains(mentions), "{body}: {answer}");
    }
    assert_eq!(post(json!({ "action": "cancel", "reason": "x", "filter": {} }), Some(READER)).await.0, 403);

    let cancel_all = json!({ "action": "cancel", "reason": "close the shop", "filter": { "definition": "hold", "terminal": false } });
    let keyed = |body: Value, key: &'static str| async move {
        let response = app.http.post(format!("{}/actions", app.url)).bearer_auth(ALICE).header("Idempotency-Key", key).json(&body).send().await;
        let response = response.unwrap_or_else(|e| panic!("POST /actions: {e}"));
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap_or(Value::Null))
    };
    let (status, job) = keyed(cancel_all.clone(), "close-1").await;
    assert_eq!(status, 202, "{job}");
    // The same request again (a retry, a second click) is the same job.
    let (status, again) = keyed(cancel_all.clone(), "close-1").await;
    assert_eq!((status, &again["job"]), (200, &job["job"]), "{again}");
    let (status, reused) = keyed(json!({ "action": "retry", "reason": "x", "filter": {} }), "close-1").await;
    assert_eq!(status, 422, "a key reused for another request: {reused}");
    let matched = job["matched"].as_u64().unwrap_or(0);
    assert!(matched >= 3, "{job}");
    let finished = common::until_finished(&app.http, &app.url, READER, job["job"].as_str().unwrap_or_default(), Duration::from_secs(20)).await;
    let (done, refused) = (finished["done"].as_u64().unwrap_or(0), finished["refused"].as_u64().unwrap_or(0));
    assert_eq!(done + refused, matched, "{finished}");
    assert!(refused >= 1, "the saga already in `undo` has no cancel: {finished}");
    assert!(finished["problems"].as_array().is_some_and(|p| p.iter().any(|p| p["saga_id"] == ids[0].to_string() && p["result"] == "refused")), "{finished}");
    for id in &ids[1..] {
        let history = app.history(*id).await;
        assert_eq!(types(&history), ["hold_started", "hold_cancelled"], "cancelled once by the job");
        assert_eq!(audit(&history[1])["key"], format!("job:{}", job["job"].as_str().unwrap_or_default()));
    }
    let (status, listed) = app.get("/actions").await;
    assert_eq!(status, 401, "listing jobs needs a token: {listed}");
}
