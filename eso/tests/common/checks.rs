//! Load and the promises checked after it: nothing lost, nothing doubled.

use super::*;

/// POSTs `n` orders concurrently to the given base URLs (round robin) with
/// a mix of descriptions; returns their ids. Retries a POST that could not
/// connect (the target may be restarting); a 2xx means the order is durable.
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
            let give_up = Instant::now() + Duration::from_secs(60);
            loop {
                assert!(Instant::now() < give_up, "POST {url} not accepted for 60 s");
                match http.post(&url).json(&json!({ "amount": 10.50, "description": description })).send().await {
                    Ok(r) if r.status().is_success() => {
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        return body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok());
                    }
                    // Not accepted (connection refused, 503): the client retries, as clients do.
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    });
    futures::future::join_all(posts).await.into_iter().flatten().collect()
}

/// `POST url` with `body` as a client should: a request shed by admission
/// control (`429`, or `503` with `Retry-After`) is sent again after the
/// `Retry-After` seconds plus a jitter, for up to a minute.
pub async fn post_retrying(http: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut jitter = 0u64;
    loop {
        let response = http.post(url).json(body).send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let shed = response.status() == 429 || (response.status() == 503 && retry_after.is_some());
        if !shed || Instant::now() > give_up {
            return response;
        }
        // A cheap spread, so clients turned away together come back apart.
        jitter = (jitter * 7 + 131) % 500;
        tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1)) + Duration::from_millis(jitter)).await;
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

/// Checks the promises that must hold after any crash: each order has
/// exactly one payment record, money moved back for every cancelled order
/// whose charge was confirmed, and no order is both delivered and refunded.
pub async fn assert_no_double_charge(pool: &sqlx::AnyPool, orders: &[Uuid]) {
    let doubled: Vec<String> = sqlx::query("SELECT order_id FROM payments GROUP BY order_id HAVING COUNT(*) > 1")
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .filter_map(|r| r.try_get("order_id").ok())
        .collect();
    assert!(doubled.is_empty(), "orders with more than one payment record: {doubled:?}");
    let unpaid: i64 = sqlx::query("SELECT COUNT(*) AS n FROM orders o WHERE o.status = 'delivered' AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id AND p.outcome = 'confirmed' AND p.refunded = 0)")
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get("n"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unpaid, 0, "delivered orders without exactly one kept charge");
    let kept: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM orders o JOIN payments p ON p.order_id = o.id WHERE o.status = 'cancelled' AND p.outcome = 'confirmed' AND p.refunded = 0",
    )
    .fetch_one(pool)
    .await
    .and_then(|r| r.try_get("n"))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kept, 0, "cancelled orders that kept the customer's money");
    let known: i64 = sqlx::query("SELECT COUNT(*) AS n FROM orders").fetch_one(pool).await.and_then(|r| r.try_get("n")).unwrap_or(-1);
    assert!(known as usize >= orders.len(), "accepted orders lost: {known} stored, {} accepted", orders.len());
    for id in orders {
        let found = sqlx::query("SELECT 1 FROM orders WHERE id = $1").bind(id.to_string()).fetch_optional(pool).await.ok().flatten();
        assert!(found.is_some(), "accepted order {id} is not in the store");
    }
}

/// Every event is in JetStream exactly once: the stream holds as many
/// messages as the events table has rows, and their message ids are the
/// event ids.
pub async fn assert_events_published_once(pool: &sqlx::AnyPool, nats: &async_nats::Client, timeout: Duration) {
    use futures::StreamExt;
    let events: i64 = sqlx::query("SELECT COUNT(*) AS n FROM events").fetch_one(pool).await.and_then(|r| r.try_get("n")).unwrap_or(-1);
    let js = async_nats::jetstream::new(nats.clone());
    let deadline = Instant::now() + timeout;
    let mut stream = js.get_stream("ESO_EVENTS").await.unwrap_or_else(|e| panic!("event stream: {e}"));
    loop {
        let messages = stream.info().await.map(|i| i.state.messages).unwrap_or(0) as i64;
        if messages == events {
            break;
        }
        assert!(messages <= events, "{messages} messages in JetStream for {events} events: duplicates");
        assert!(Instant::now() < deadline, "only {messages} of {events} events reached JetStream after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let consumer = stream.create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default()).await.unwrap_or_else(|e| panic!("consumer: {e}"));
    let mut messages = consumer.messages().await.unwrap_or_else(|e| panic!("messages: {e}"));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..events {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next()).await.ok().flatten();
        let Some(Ok(message)) = message else { panic!("could not read the event stream back") };
        let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.to_string()).unwrap_or_default();
        assert!(seen.insert(id.clone()), "event {id} is in JetStream twice");
    }
    let ids: std::collections::HashSet<String> =
        sqlx::query("SELECT event_id FROM events").fetch_all(pool).await.unwrap_or_default().iter().filter_map(|r| r.try_get("event_id").ok()).collect();
    assert_eq!(seen, ids, "JetStream holds other events than the store");
}
