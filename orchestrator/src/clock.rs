//! The one place that reads the wall clock; the saga machine gets time
//! as an argument.

use sagas::Millis;

/// Microseconds since the Unix epoch (the clock of the `db` crate, which
/// the participants use too, so every `*_at` column shares one unit and one
/// source).
pub fn now_us() -> i64 {
    db::now_us()
}

pub fn now() -> Millis {
    Millis(now_us() / 1000)
}

/// RFC 3339 with microseconds, UTC (`2026-11-25T18:31:00.123456Z`).
pub fn rfc3339(us: i64) -> String {
    let nanos = i128::from(us) * 1000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok().and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()) {
        Some(text) => text,
        None => {
            // Out of RFC 3339's range: a corrupt row. Said, not shown as "".
            tracing::error!(microseconds = us, "a time out of RFC 3339's range");
            metrics::counter!("eso_serialization_errors_total", "what" => "time").increment(1);
            format!("invalid time ({us} µs since 1970)")
        }
    }
}

/// An RFC 3339 time (any offset) as microseconds since the Unix epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}
