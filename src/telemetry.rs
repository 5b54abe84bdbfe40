//! Telemetry: the one place that sets up logging (`--log-format`, `RUST_LOG`) and names every
//! Prometheus metric, so the rest of the code records facts with one call and no strings.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides the default `info` filter.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (several servers in one test process);
        // this handle then renders only its own, which is still well-formed.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

pub fn callback_received() {
    metrics::counter!("whatsapp_callbacks_received_total").increment(1);
}

/// `reason` is one of a fixed set: signature, unknown_app, media_type, too_large, malformed, store.
pub fn callback_rejected(reason: &'static str) {
    metrics::counter!("whatsapp_callbacks_rejected_total", "reason" => reason).increment(1);
}

pub fn callback_stored(duplicate: bool) {
    let kind = if duplicate { "duplicate" } else { "new" };
    metrics::counter!("whatsapp_callbacks_stored_total", "kind" => kind).increment(1);
}

pub fn dispatch_latency(elapsed: Duration) {
    metrics::histogram!("whatsapp_dispatch_seconds").record(elapsed.as_secs_f64());
}

/// `outcome`: done, failed (will retry) or dead.
pub fn action(outcome: &'static str) {
    metrics::counter!("whatsapp_actions_total", "outcome" => outcome).increment(1);
}

pub fn backlog(events: i64) {
    metrics::gauge!("whatsapp_dispatch_backlog").set(events as f64);
}

/// One send, by outcome and error code (`""` on success).
pub fn send(outcome: &'static str, error_code: Option<i64>) {
    let code = error_code.map(|c| c.to_string()).unwrap_or_default();
    metrics::counter!("whatsapp_sends_total", "outcome" => outcome, "error_code" => code)
        .increment(1);
}

pub fn twilio_latency(elapsed: Duration) {
    metrics::histogram!("whatsapp_twilio_request_seconds").record(elapsed.as_secs_f64());
}
