//! `eso saga migrate`, `versions` and `retire`: clients of a running eso's
//! API (`POST /definitions/{name}/migrations`, `GET /actions/{job}`,
//! `GET /definitions`, `POST /definitions/{name}/versions/{v}/retire`), so a migration runs where the sagas are, under
//! that eso's job lease, and this command only starts and follows it.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// How often a migration's progress is read.
const POLL: Duration = Duration::from_secs(1);

/// Where the API is and how to act on it.
#[derive(clap::Args, Clone)]
pub struct Api {
    /// The eso to talk to.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// An operator token (a bare token, or the `name:token` entry the
    /// server's ESO_OPERATOR_TOKEN lists; the first is used).
    #[arg(long, env = "ESO_OPERATOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Api {
    fn request(&self, http: &reqwest::Client, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = http.request(method, format!("{}{path}", self.url.trim_end_matches('/')));
        match self.token() {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn token(&self) -> Option<&str> {
        let first = self.token.as_deref()?.split(',').next()?.trim();
        Some(first.split_once(':').map_or(first, |(_, token)| token.trim())).filter(|t| !t.is_empty())
    }
}

/// The body of an answer, or an error with the API's own message.
async fn answer(response: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let why = body.get("error").map_or_else(|| body.to_string(), |e| e.as_str().map_or_else(|| e.to_string(), str::to_string));
        bail!("{what}: {status}: {why}{}", body.get("fields").map(|f| format!(" {f}")).unwrap_or_default());
    }
    Ok(body)
}

pub struct Migrate {
    pub name: String,
    pub from: u32,
    pub to: u32,
    pub state: Option<String>,
    pub rate: Option<u32>,
    pub reason: String,
}

/// Starts the migration and prints its progress until the job finishes;
/// fails if any saga failed to move (refused ones are listed, not failures:
/// a saga that finished meanwhile is refused, rightly).
pub async fn migrate(api: &Api, m: Migrate) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut body = json!({ "from": m.from, "to": m.to, "reason": m.reason });
    if let Some(state) = &m.state {
        body["filter"] = json!({ "state": state });
    }
    if let Some(rate) = m.rate {
        body["rate"] = json!(rate);
    }
    let path = format!("/definitions/{}/migrations", m.name);
    let sent = api.request(&http, reqwest::Method::POST, &path).json(&body).send().await.with_context(|| format!("cannot reach {}", api.url))?;
    let job = answer(sent, "migration refused").await?;
    let id = job["job"].as_str().context("the answer names no job")?.to_string();
    println!("job {id}: moving {} saga(s) of {} v{} onto v{} at {} per second", job["matched"], m.name, m.from, m.to, job["rate"]);
    let mut shown = String::new();
    loop {
        let read = api.request(&http, reqwest::Method::GET, &format!("/actions/{id}")).send().await;
        let job = match read {
            Ok(response) => answer(response, "cannot follow the job").await?,
            // The server may be restarting; the job resumes on its own.
            Err(e) => {
                eprintln!("cannot reach {} ({e}); trying again", api.url);
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let line = format!("matched {}, done {}, refused {}, failed {}", job["matched"], job["done"], job["refused"], job["failed"]);
        if line != shown {
            println!("{line}");
            shown = line;
        }
        if job["status"] == "finished" {
            for problem in job["problems"].as_array().into_iter().flatten() {
                println!(
                    "  {} {}: {}",
                    problem["saga_id"].as_str().unwrap_or("?"),
                    problem["result"].as_str().unwrap_or("?"),
                    problem["detail"].as_str().unwrap_or("")
                );
            }
            if job["failed"].as_i64().unwrap_or(0) > 0 {
                bail!("{} saga(s) could not be moved; run the migration again to retry them", job["failed"]);
            }
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Retires a version no saga is live on (the server refuses otherwise).
pub async fn retire(api: &Api, name: &str, version: u32) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let path = format!("/definitions/{name}/versions/{version}/retire");
    let sent = api.request(&http, reqwest::Method::POST, &path).send().await.with_context(|| format!("cannot reach {}", api.url))?;
    answer(sent, "retire refused").await?;
    println!("{name} v{version} retired: no longer loaded from the next start (remove its file from SAGAS_DIR)");
    Ok(())
}

/// Prints every loaded version: name, version, hash, live sagas, and
/// which is the one new sagas start on.
pub async fn versions(api: &Api) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let sent = api.request(&http, reqwest::Method::GET, "/definitions").send().await.with_context(|| format!("cannot reach {}", api.url))?;
    let body = answer(sent, "cannot list definitions").await?;
    println!("{:<20} {:>7} {:<12} {:>8}", "NAME", "VERSION", "HASH", "LIVE");
    for def in body["definitions"].as_array().into_iter().flatten() {
        let hash = def["hash"].as_str().unwrap_or_default();
        let latest = if def["latest"] == true { "  (new sagas start here)" } else { "" };
        println!("{:<20} {:>7} {:<12} {:>8}{latest}", def["name"].as_str().unwrap_or("?"), def["version"], &hash[..hash.len().min(12)], def["live"]);
    }
    Ok(())
}
