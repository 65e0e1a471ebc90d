//! Load and the promises checked after it: nothing lost, nothing doubled.

use super::*;

/// POSTs `n` orders concurrently to the given base URLs (round robin) with
/// a mix of descriptions; returns their ids. Retries a POST that could not
/// connect (the target may be restarting) or was shed (after its
/// `Retry-After`, as [`post_retrying`]); a 2xx means the order is durable.
pub async fn post_many(urls: &[String], n: usize) -> Vec<Uuid> {
    let http = reqwest::Client::new();
    let posts = (0..n).map(|i| {
        let http = http.clone();
        let url = urls[i % urls.len()].clone();
        async move {
            let description = match i % 3 {
                0 => format!("test order {i}"),
                1 => format!("xxx order {i}"),
                _ => format!("random order {i}"),
            };
            let give_up = Instant::now() + Duration::from_secs(120);
            let mut jitter = Jitter::new();
            loop {
                assert!(Instant::now() < give_up, "POST {url} not accepted for 120 s");
                match http.post(&url).json(&json!({ "amount": 10.50, "description": description })).send().await {
                    Ok(r) if r.status().is_success() => {
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        return body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok());
                    }
                    // Shed: after Retry-After. Not accepted otherwise (connection
                    // refused, 503): soon. The client retries, as clients do.
                    Ok(r) => match shed_for(&r) {
                        Some(wait) => tokio::time::sleep(wait + jitter.next()).await,
                        None => tokio::time::sleep(Duration::from_millis(50)).await,
                    },
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    });
    futures::future::join_all(posts).await.into_iter().flatten().collect()
}

/// How long a shed answer (`429`, or `503` with `Retry-After`) asks the
/// client to wait; `None` for any other answer.
fn shed_for(response: &reqwest::Response) -> Option<Duration> {
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let shed = response.status() == 429 || (response.status() == 503 && retry_after.is_some());
    shed.then(|| Duration::from_secs(retry_after.unwrap_or(1)))
}

/// Up to half a second more on each wait, seeded per client, so clients
/// turned away together come back apart.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        Jitter((Uuid::new_v4().as_u128() % 500) as u64)
    }

    fn next(&mut self) -> Duration {
        self.0 = (self.0 * 7 + 131) % 500;
        Duration::from_millis(self.0)
    }
}

/// `POST url` with `body` as a client should: a request shed by admission
/// control is sent again after its `Retry-After` plus a jitter, for up to
/// a minute.
pub async fn post_retrying(http: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut jitter = Jitter::new();
    loop {
        let response = http.post(url).json(body).send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
        match shed_for(&response) {
            Some(wait) if Instant::now() < give_up => tokio::time::sleep(wait + jitter.next()).await,
            _ => return response,
        }
    }
}

/// Waits until every saga in the database is terminal.
pub async fn wait_all_terminal(pool: &sqlx::AnyPool, expected: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let row = sqlx::query("SELECT COUNT(*) AS total, (SELECT COUNT(*) FROM sagas WHERE terminal = 1) AS done FROM sagas").fetch_one(pool).await;
        if let Ok(row) = row {
            let total: i64 = row.try_get("total").unwrap_or(-1);
            let done: i64 = row.try_get("done").unwrap_or(-1);
            if total as usize >= expected && done == total {
                return;
            }
            assert!(Instant::now() < deadline, "after {timeout:?}: {done} of {total} sagas terminal (expected {expected})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the payment participant's records say about money: orders with
/// more than one payment record (a charge command sent twice under two
/// ids), delivered orders without exactly one kept charge, cancelled orders
/// that kept a confirmed charge, and accepted orders the store lost.
#[derive(Debug, Default)]
pub struct Money {
    /// Payment records read: none at all means the check looked at the
    /// wrong table.
    pub records: i64,
    pub doubled: Vec<String>,
    pub unpaid_deliveries: i64,
    pub kept_by_cancelled: i64,
    pub missing: Vec<Uuid>,
}

impl Money {
    pub async fn count(pool: &sqlx::AnyPool, orders: &[Uuid]) -> Result<Money, sqlx::Error> {
        let records = sqlx::query("SELECT COUNT(*) AS n FROM payments").fetch_one(pool).await?.try_get("n")?;
        let doubled = sqlx::query("SELECT order_id FROM payments GROUP BY order_id HAVING COUNT(*) > 1")
            .fetch_all(pool)
            .await?
            .iter()
            .filter_map(|r| r.try_get("order_id").ok())
            .collect();
        let unpaid_deliveries = sqlx::query(
            "SELECT COUNT(*) AS n FROM orders o WHERE o.status = 'delivered' AND NOT EXISTS \
             (SELECT 1 FROM payments p WHERE p.order_id = o.id AND p.outcome = 'confirmed' AND p.refunded = 0)",
        )
        .fetch_one(pool)
        .await?
        .try_get("n")?;
        let kept_by_cancelled = sqlx::query(
            "SELECT COUNT(*) AS n FROM orders o JOIN payments p ON p.order_id = o.id WHERE o.status = 'cancelled' AND p.outcome = 'confirmed' AND p.refunded = 0",
        )
        .fetch_one(pool)
        .await?
        .try_get("n")?;
        // One read of every id instead of a query per order: a fault run
        // checks thousands.
        let known: std::collections::HashSet<String> =
            sqlx::query("SELECT id FROM orders").fetch_all(pool).await?.iter().filter_map(|r| r.try_get("id").ok()).collect();
        let missing = orders.iter().filter(|id| !known.contains(&id.to_string())).copied().collect();
        Ok(Money { records, doubled, unpaid_deliveries, kept_by_cancelled, missing })
    }

    /// What is wrong, one phrase each; empty when nothing is.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = vec![];
        if !self.doubled.is_empty() {
            problems.push(format!("orders with more than one payment record: {:?}", self.doubled));
        }
        if self.unpaid_deliveries != 0 {
            problems.push(format!("{} delivered orders without exactly one kept charge", self.unpaid_deliveries));
        }
        if self.kept_by_cancelled != 0 {
            problems.push(format!("{} cancelled orders that kept the customer's money", self.kept_by_cancelled));
        }
        if !self.missing.is_empty() {
            problems.push(format!("{} accepted orders are not in the store: {:?}", self.missing.len(), self.missing));
        }
        problems
    }
}

/// Checks the promises that must hold after any crash: each order has
/// exactly one payment record, money moved back for every cancelled order
/// whose charge was confirmed, and no order is both delivered and refunded.
pub async fn assert_no_double_charge(pool: &sqlx::AnyPool, orders: &[Uuid]) {
    let money = Money::count(pool, orders).await.unwrap_or_else(|e| panic!("{e}"));
    let problems = money.problems();
    assert!(problems.is_empty(), "{}", problems.join("; "));
}

/// The event stream against the events table: committed events missing
/// from the stream, events on it more than once (each extra copy counted),
/// messages that are no event of the store, and messages whose body is
/// not the stored event (docs/protocol.md, "Events").
#[derive(Debug, Default)]
pub struct Published {
    pub events: usize,
    pub messages: u64,
    pub lost: Vec<String>,
    pub doubled: Vec<String>,
    pub foreign: Vec<String>,
    pub unlike: Vec<String>,
}

impl Published {
    /// Waits up to `timeout` for the stream to hold as many messages as
    /// the store has events (the relay may still be catching up), then
    /// reads every message back by its `Nats-Msg-Id`.
    pub async fn count(pool: &sqlx::AnyPool, nats: &async_nats::Client, timeout: Duration) -> Result<Published, String> {
        use futures::StreamExt;
        // What a message's body must say of its event, keyed by event id.
        let stored: std::collections::HashMap<String, serde_json::Value> =
            sqlx::query("SELECT event_id, stream_id, version, event_type, data, metadata FROM events")
                .fetch_all(pool)
                .await
                .map_err(|e| format!("events: {e}"))?
                .iter()
                .filter_map(|r| {
                    let (data, metadata): (String, String) = (r.try_get("data").ok()?, r.try_get("metadata").ok()?);
                    let body = serde_json::json!({
                        "event_id": r.try_get::<String, _>("event_id").ok()?,
                        "stream_id": r.try_get::<String, _>("stream_id").ok()?,
                        "version": r.try_get::<i64, _>("version").ok()?,
                        "type": r.try_get::<String, _>("event_type").ok()?,
                        "data": serde_json::from_str::<serde_json::Value>(&data).ok()?,
                        "metadata": serde_json::from_str::<serde_json::Value>(&metadata).ok()?,
                    });
                    Some((body["event_id"].as_str()?.to_string(), body))
                })
                .collect();
        let ids: std::collections::HashSet<String> = stored.keys().cloned().collect();
        let mut unlike = Vec::new();
        let js = async_nats::jetstream::new(nats.clone());
        let mut stream = js.get_stream("ESO_EVENTS").await.map_err(|e| format!("event stream: {e}"))?;
        let deadline = Instant::now() + timeout;
        let messages = loop {
            let messages = stream.info().await.map(|i| i.state.messages).unwrap_or(0);
            if messages >= ids.len() as u64 || Instant::now() >= deadline {
                break messages;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let consumer = stream.create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default()).await.map_err(|e| format!("consumer: {e}"))?;
        let mut stream_messages = consumer.messages().await.map_err(|e| format!("messages: {e}"))?;
        let mut seen = std::collections::HashMap::<String, usize>::new();
        for _ in 0..messages {
            let message = tokio::time::timeout(Duration::from_secs(5), stream_messages.next()).await.ok().flatten();
            let Some(Ok(message)) = message else { return Err("could not read the event stream back".into()) };
            let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.to_string()).unwrap_or_default();
            if let Some(expected) = stored.get(&id) {
                let mut body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap_or_default();
                let recorded = body.as_object_mut().and_then(|b| b.remove("recorded_at"));
                if &body != expected || !recorded.as_ref().and_then(|t| t.as_str()).is_some_and(|t| t.ends_with('Z')) {
                    unlike.push(format!("{id}: {}", String::from_utf8_lossy(&message.payload)));
                }
            }
            *seen.entry(id).or_default() += 1;
        }
        let mut published = Published { events: ids.len(), messages, unlike, ..Published::default() };
        for (id, copies) in &seen {
            if !ids.contains(id) {
                published.foreign.push(id.clone());
            }
            published.doubled.extend(std::iter::repeat_n(id.clone(), copies.saturating_sub(1)));
        }
        published.lost = ids.into_iter().filter(|id| !seen.contains_key(id)).collect();
        Ok(published)
    }

    pub fn problems(&self) -> Vec<String> {
        let mut problems = vec![];
        if !self.lost.is_empty() {
            problems.push(format!("{} of {} events never reached JetStream (e.g. {:?})", self.lost.len(), self.events, &self.lost[..self.lost.len().min(5)]));
        }
        if !self.doubled.is_empty() {
            problems.push(format!("{} extra copies of events in JetStream (e.g. {:?})", self.doubled.len(), &self.doubled[..self.doubled.len().min(5)]));
        }
        if !self.unlike.is_empty() {
            problems.push(format!(
                "{} messages are not the event stored under their id (e.g. {:?})",
                self.unlike.len(),
                &self.unlike[..self.unlike.len().min(2)]
            ));
        }
        if !self.foreign.is_empty() {
            problems.push(format!("JetStream holds {} messages that are no event of the store: {:?}", self.foreign.len(), self.foreign));
        }
        problems
    }
}

/// Every event is in JetStream exactly once: its message id is the event id.
pub async fn assert_events_published_once(pool: &sqlx::AnyPool, nats: &async_nats::Client, timeout: Duration) {
    let published = Published::count(pool, nats, timeout).await.unwrap_or_else(|e| panic!("{e}"));
    let problems = published.problems();
    assert!(problems.is_empty(), "after {timeout:?}: {}", problems.join("; "));
}
