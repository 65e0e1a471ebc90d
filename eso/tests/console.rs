//! The console in a real browser: headless Chromium driven over WebDriver
//! (chromedriver), the way an operator meets it: open the list, filter it,
//! open a saga, find its state lit in the diagram, retry it with a reason
//! and see the retry in its history.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them). Without them the test fails when `CI` is set and is skipped,
//! with a note, on a developer's machine. With `ESO_SCREENSHOTS=<folder>`
//! it saves a PNG of each page there (`docs/console/` holds the README's).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Mode, TestApp};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(15);
/// The operator token the console is used with (`name:token`, as
/// `ESO_OPERATOR_TOKEN` takes it).
const OPERATOR: &str = "ada";
const OPERATOR_TOKEN: &str = "console-test-operator-token";

/// Chromium under chromedriver, each on its own port and profile; both
/// killed when dropped.
struct Browser {
    client: Client,
    _driver: testkit::Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (after saying why) when the browser is not installed and
    /// this is not CI.
    async fn start() -> Option<Browser> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER].into_iter().filter(|p| !Path::new(p).exists()).collect();
        if !missing.is_empty() {
            let why = format!("the console test needs {} (apt-get install -y chromium chromium-driver)", missing.join(" and "));
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let port = testkit::free_port();
        let spec = testkit::ProcessSpec::new("chromedriver", CHROMEDRIVER, port).args([format!("--port={port}")]);
        let driver = testkit::Process::spawn(spec).await.unwrap_or_else(|e| panic!("{e:#}"));
        let profile = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.path().display())]);
        let caps = json!({ "browserName": "chrome", "goog:chromeOptions": { "binary": CHROMIUM, "args": args.collect::<Vec<_>>() } });
        let Value::Object(caps) = caps else { unreachable!("a JSON object") };
        // chromedriver speaks plain HTTP on loopback: no TLS stack needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("WebDriver session: {e}"));
        Some(Browser { client, _driver: driver, _profile: profile })
    }

    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.client.wait().at_most(WAIT).for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css} after {WAIT:?}: {e}"))
    }

    /// Clicks the element; again if the page's refresh replaced it first.
    async fn click(&self, css: &str) {
        for _ in 0..3 {
            match self.wait_for(css).await.click().await {
                Ok(()) => return,
                Err(e) if e.to_string().contains("stale") => continue,
                Err(e) => panic!("click {css}: {e}"),
            }
        }
        panic!("{css} kept being replaced before it could be clicked");
    }

    /// Runs `script` until it returns something `done` accepts.
    async fn until(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{what}: {e}"));
            if done(&value) {
                return value;
            }
            assert!(Instant::now() < deadline, "{what}: still {value} after {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the page under `$ESO_SCREENSHOTS/<name>.png`, when set.
    async fn screenshot(&self, name: &str) {
        let Some(folder) = std::env::var_os("ESO_SCREENSHOTS").map(PathBuf::from) else { return };
        let png = self.client.screenshot().await.unwrap_or_else(|e| panic!("screenshot: {e}"));
        std::fs::create_dir_all(&folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
        let path = folder.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// The shipped definitions and the test's `ticket` (an hour's wait on a
/// command nobody answers), in a folder of the test's own.
fn definitions() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for from in
        [manifest.join("../sagas/definitions/order.toml"), manifest.join("../sagas/definitions/trip.toml"), manifest.join("tests/fixtures/console/ticket.toml")]
    {
        let name = from.file_name().unwrap_or_else(|| panic!("{} has a name", from.display()));
        std::fs::copy(&from, dir.path().join(name)).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_stuck_saga_in_the_console_and_retries_it() {
    let Some(browser) = Browser::start().await else { return };
    let sagas = definitions();
    let mut app = TestApp::start_configured(Mode::Embedded, |config| {
        config.embed_participants = Some(false);
        config.sagas_dir = sagas.path().to_path_buf();
        config.operator_token = format!("{OPERATOR}:{OPERATOR_TOKEN}").parse().ok();
    })
    .await;
    let mut tickets = Vec::new();
    for title in ["printer", "badge", "laptop"] {
        let (status, body) = app.send("/sagas/ticket", json!({ "title": title }), None).await;
        assert_eq!(status, 201, "{body}");
        tickets.push(body["id"].as_str().unwrap_or_else(|| panic!("no id in {body}")).to_string());
    }
    for nights in [2, 3] {
        let (status, body) = app.send("/sagas/trip", json!({ "traveller": "Ada", "from": "Lisbon", "to": "Porto", "nights": nights }), None).await;
        assert_eq!(status, 201, "{body}");
    }
    let client = &browser.client;

    // With a token configured, the page loads but its reads need the
    // token: typed into the header's box, as a user does.
    client.goto(&format!("{}/ui", app.url)).await.unwrap_or_else(|e| panic!("open /ui: {e}"));
    browser.wait_for("#token").await.send_keys(OPERATOR_TOKEN).await.unwrap_or_else(|e| panic!("type the token: {e}"));
    browser.click("#token-form button[type='submit']").await;

    // The list: every saga, then only those in `review`.
    let rows = "return [...document.querySelectorAll('tr.saga-row')].map(r => [r.dataset.id, r.querySelector('td.state').textContent])";
    browser.until("all five sagas listed", rows, |v| v.as_array().is_some_and(|a| a.len() == 5)).await;
    let state = browser.wait_for("#filter-state").await;
    state.send_keys("review").await.unwrap_or_else(|e| panic!("type the state: {e}"));
    browser.click("#apply").await;
    let listed = browser.until("only the tickets, in review", rows, |v| v.as_array().is_some_and(|a| a.len() == 3 && a.iter().all(|r| r[1] == "review"))).await;
    let mut ids: Vec<String> = listed.as_array().into_iter().flatten().filter_map(|r| r[0].as_str().map(String::from)).collect();
    ids.sort();
    tickets.sort();
    assert_eq!(ids, tickets, "the list shows the tickets");
    browser.screenshot("sagas").await;

    // One saga: its current state lit in the diagram, its history.
    let id = &tickets[0];
    browser.click(&format!("tr.saga-row[data-id='{id}']")).await;
    browser.wait_for("#diagram g.state.current[data-state='review']").await;
    let lit = client.find_all(Locator::Css("#diagram g.state.current")).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lit.len(), 1, "one state is current");
    browser.wait_for("#history tr[data-type='ticket_opened']").await;
    let state = browser.wait_for("#saga-state").await.text().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state, "review");

    // A retry with a reason, from the button the saga's state offers.
    let (_, saga) = app.get(&format!("/sagas/{id}")).await;
    assert_eq!(saga["actions"]["retry"], true, "a pending command can be retried: {saga}");
    let reason = browser.wait_for("#reason").await;
    reason.send_keys("printer driver fixed").await.unwrap_or_else(|e| panic!("type the reason: {e}"));
    browser.click("button.action[data-action='retry']").await;
    let answer =
        browser.until("the retry answered", "return document.getElementById('action-answer').textContent", |v| v.as_str().is_some_and(|s| !s.is_empty())).await;
    assert!(answer.as_str().is_some_and(|s| s.starts_with("202")), "the retry was accepted: {answer}");
    let retried = browser.wait_for("#history tr[data-type='operator_retried']").await;
    let text = retried.text().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("printer driver fixed") && text.contains("retry") && text.contains(OPERATOR), "the history shows who retried and why: {text}");
    browser.screenshot("saga").await;

    // Definitions: each version with its diagram.
    client.goto(&format!("{}/ui#/definitions", app.url)).await.unwrap_or_else(|e| panic!("open definitions: {e}"));
    browser.wait_for("article[data-definition='ticket'] svg g.state[data-state='review']").await;
    browser.wait_for("article[data-definition='order'] svg g.state[data-state='refund_failed']").await;
    browser.screenshot("definitions").await;

    browser.client.clone().close().await.unwrap_or_else(|e| panic!("close the browser: {e}"));
    app.stop().await;
}
