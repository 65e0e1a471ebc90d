//! The telemetry settings, read once from the environment.
//!
//! Every knob is a standard variable (the OpenTelemetry SDK environment
//! specification, `RUST_LOG`, plus our `LOG_FORMAT`), so operators configure
//! eso the way they configure any other OpenTelemetry service. Parsing lives
//! here, in one place, and takes a lookup function instead of reading the
//! process environment directly so it can be tested without `set_var`.

use opentelemetry_sdk::trace::Sampler;

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (tracing-subscriber's "full" format).
    Text,
    /// One JSON object per line, with the fields of the current span and its
    /// parents, for log collectors.
    Json,
}

/// The effective telemetry configuration. `Debug` prints it without secrets
/// (OTLP headers are never read here), so binaries may log it at start-up.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name`: `OTEL_SERVICE_NAME`, else `service.name` from
    /// `OTEL_RESOURCE_ATTRIBUTES`, else the binary's default.
    pub service_name: String,
    /// `RUST_LOG` directives for the log output (default `info`).
    pub log_filter: String,
    /// `LOG_FORMAT`: `json` selects JSON lines, anything else text.
    pub log_format: LogFormat,
    /// The OTLP/gRPC collector, e.g. `http://jaeger:4317`:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    /// `None` (unset, empty, or `OTEL_TRACES_EXPORTER=none`) means no exporter
    /// at all: spans still get ids, but nothing is sent anywhere.
    pub otlp_endpoint: Option<String>,
    /// The head sampler, from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`
    /// (default `parentbased_always_on`).
    pub sampler: SamplerConfig,
    /// Settings we read but cannot honour, logged once the subscriber is up.
    pub warnings: Vec<String>,
}

/// The sampler as configured, kept as data so it can be printed and tested.
#[derive(Debug, Clone, PartialEq)]
pub enum SamplerConfig {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

impl SamplerConfig {
    /// Parses the spec values of `OTEL_TRACES_SAMPLER`. Unknown or unsupported
    /// values (e.g. `jaeger_remote`) fall back to the spec default,
    /// `parentbased_always_on`, rather than failing start-up; a missing or
    /// invalid ratio means 1.0, as the spec says.
    pub fn parse(name: Option<&str>, arg: Option<&str>) -> Self {
        let ratio = || arg.and_then(|a| a.trim().parse::<f64>().ok()).filter(|r| (0.0..=1.0).contains(r)).unwrap_or(1.0);
        match name.map(|n| n.trim().to_ascii_lowercase()).as_deref() {
            Some("always_on") => Self::AlwaysOn,
            Some("always_off") => Self::AlwaysOff,
            Some("traceidratio") => Self::TraceIdRatio(ratio()),
            Some("parentbased_always_off") => Self::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => Self::ParentBasedTraceIdRatio(ratio()),
            _ => Self::ParentBasedAlwaysOn,
        }
    }

    pub(crate) fn to_sampler(&self) -> Sampler {
        let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
        match *self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => parent_based(Sampler::AlwaysOn),
            Self::ParentBasedAlwaysOff => parent_based(Sampler::AlwaysOff),
            Self::ParentBasedTraceIdRatio(r) => parent_based(Sampler::TraceIdRatioBased(r)),
        }
    }
}

impl TelemetryConfig {
    /// Reads the process environment.
    pub fn from_env(default_service_name: &str) -> Self {
        Self::from_lookup(default_service_name, |key| std::env::var(key).ok())
    }

    /// Builds the configuration from any key → value lookup (tests pass a map).
    pub fn from_lookup(default_service_name: &str, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());

        let service_name = non_empty("OTEL_SERVICE_NAME")
            .or_else(|| non_empty("OTEL_RESOURCE_ATTRIBUTES").and_then(|attrs| resource_attribute(&attrs, "service.name")))
            .unwrap_or_else(|| default_service_name.to_owned());

        let log_format = match non_empty("LOG_FORMAT") {
            Some(f) if f.trim().eq_ignore_ascii_case("json") => LogFormat::Json,
            _ => LogFormat::Text,
        };

        let exporter_disabled = non_empty("OTEL_TRACES_EXPORTER").is_some_and(|e| e.trim().eq_ignore_ascii_case("none"));
        let otlp_endpoint =
            if exporter_disabled { None } else { non_empty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| non_empty("OTEL_EXPORTER_OTLP_ENDPOINT")) };

        let mut warnings = Vec::new();
        if let Some(protocol) = non_empty("OTEL_EXPORTER_OTLP_PROTOCOL").filter(|p| !p.trim().eq_ignore_ascii_case("grpc")) {
            warnings.push(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; exporting with grpc \
                 (point the endpoint at the collector's gRPC port, 4317 for Jaeger)"
            ));
        }

        Self {
            service_name,
            log_filter: non_empty("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
            log_format,
            otlp_endpoint,
            sampler: SamplerConfig::parse(non_empty("OTEL_TRACES_SAMPLER").as_deref(), non_empty("OTEL_TRACES_SAMPLER_ARG").as_deref()),
            warnings,
        }
    }
}

/// Finds `key` in an `OTEL_RESOURCE_ATTRIBUTES` value (`k1=v1,k2=v2`).
fn resource_attribute(attrs: &str, key: &str) -> Option<String> {
    attrs.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key && !v.trim().is_empty()).then(|| v.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> TelemetryConfig {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TelemetryConfig::from_lookup("eso-test", |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_make_a_quiet_local_setup() {
        let c = config(&[]);
        assert_eq!(c.service_name, "eso-test");
        assert_eq!(c.log_filter, "info");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.otlp_endpoint, None);
        assert_eq!(c.sampler, SamplerConfig::ParentBasedAlwaysOn);
    }

    #[test]
    fn service_name_precedence_follows_the_spec() {
        let attrs = ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=dev,service.name=from-attrs");
        assert_eq!(config(&[attrs]).service_name, "from-attrs");
        let both = config(&[attrs, ("OTEL_SERVICE_NAME", "from-env")]);
        assert_eq!(both.service_name, "from-env");
        assert_eq!(config(&[("OTEL_SERVICE_NAME", "")]).service_name, "eso-test");
    }

    #[test]
    fn exporter_only_when_an_endpoint_is_set() {
        assert_eq!(config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).otlp_endpoint, None);
        let set = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317");
        assert_eq!(config(&[set]).otlp_endpoint.as_deref(), Some("http://jaeger:4317"));
        assert_eq!(config(&[set, ("OTEL_TRACES_EXPORTER", "none")]).otlp_endpoint, None);
        let http = config(&[set, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]);
        assert_eq!(http.warnings.len(), 1);
        let grpc = config(&[set, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert!(grpc.warnings.is_empty());
    }

    #[test]
    fn log_format_json_is_case_insensitive() {
        assert_eq!(config(&[("LOG_FORMAT", "JSON")]).log_format, LogFormat::Json);
        assert_eq!(config(&[("LOG_FORMAT", "pretty")]).log_format, LogFormat::Text);
    }

    #[test]
    fn sampler_values_from_the_spec() {
        let parse = SamplerConfig::parse;
        assert_eq!(parse(Some("always_off"), None), SamplerConfig::AlwaysOff);
        assert_eq!(parse(Some("traceidratio"), Some("0.25")), SamplerConfig::TraceIdRatio(0.25));
        assert_eq!(parse(Some("traceidratio"), Some("7")), SamplerConfig::TraceIdRatio(1.0));
        assert_eq!(parse(Some("parentbased_traceidratio"), Some("0.5")), SamplerConfig::ParentBasedTraceIdRatio(0.5));
        assert_eq!(parse(Some("jaeger_remote"), None), SamplerConfig::ParentBasedAlwaysOn);
    }
}
