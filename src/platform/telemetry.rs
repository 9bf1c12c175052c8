//! Logs (tracing, pretty or JSON) and Prometheus metrics.
//!
//! The metrics recorder belongs to the running app rather than to a process-wide global, so
//! two apps in one process (tests, benches) keep separate counts.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder as _};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the process's log subscriber. Call once, from the binary (not from the app, which
/// tests start many times).
///
/// The server logs to stdout; one-shot commands log to stderr so their stdout is only their
/// answer (`kid=$(beep keys rotate)`).
pub fn init_logging(config: &TelemetryConfig, to_stderr: bool) -> Result<(), String> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = EnvFilter::try_new(&config.log_filter)
        .map_err(|err| format!("telemetry.log_filter: {err}"))?;
    let (writer, terminal) = if to_stderr {
        (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        )
    } else {
        (
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        )
    };
    // Colour only for a person at a terminal: escape codes in collected logs are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(terminal);
    let result = match config.log_format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    result.map_err(|err| err.to_string())
}

const REQUEST_DURATION: &str = "http_request_duration_seconds";
const REQUESTS_TOTAL: &str = "http_requests_total";
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Per-(route, method, status) handles, registered once, so the hot path is a map lookup and
/// two atomic updates rather than building label sets on every request.
type RequestSeries = HashMap<(Option<String>, &'static str, u16), (Counter, Histogram)>;

#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    request_series: Arc<Mutex<RequestSeries>>,
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), DURATION_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            // The buckets above are a non-empty constant, the only thing that can be refused.
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        Self {
            recorder: Arc::new(recorder),
            handle,
            request_series: Arc::default(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds histogram samples; the exporter expects this to run periodically.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, String)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &metadata())
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, String)]) -> Gauge {
        self.recorder
            .register_gauge(&key(name, labels), &metadata())
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, String)]) -> Histogram {
        self.recorder
            .register_histogram(&key(name, labels), &metadata())
    }

    /// Records one served request. `route` is the matched pattern (`/core/user/{id}`), never
    /// the raw path, so label cardinality stays bounded.
    pub fn record_request(
        &self,
        route: Option<String>,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let mut series = self
            .request_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (counter, histogram) =
            series
                .entry((route, method, status))
                .or_insert_with_key(|(route, _, _)| {
                    let labels = [
                        ("route", route.as_deref().unwrap_or("unmatched").to_owned()),
                        ("method", method.to_owned()),
                        ("status", status.to_string()),
                    ];
                    (
                        self.counter(REQUESTS_TOTAL, &labels),
                        self.histogram(REQUEST_DURATION, &labels[..2]),
                    )
                });
        counter.increment(1);
        histogram.record(elapsed.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect::<Vec<_>>(),
    )
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}
