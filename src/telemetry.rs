//! Telemetry: the one place that sets up logging (`--log-format`, `RUST_LOG`) and names every
//! Prometheus metric, so the rest of the code records facts with one call and no strings.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides the default `info` filter.
pub(crate) fn init_logging(format: LogFormat) {
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

/// The most characters of one untrusted value a log line carries; the rest is cut, with `…`.
pub(crate) const MAX_LOGGED_CHARS: usize = 64;

/// Text from a request (path parameters, form values, a URL) as a log line may carry it: every
/// character a terminal or a log reader could take for structure (newlines, escapes, quotes,
/// other control characters) escaped as in a Rust string literal, and cut at
/// [`MAX_LOGGED_CHARS`]. A `%0A` can't forge a log line and a `%1B` can't drive a terminal.
/// Log it with `%`: `tracing::info!(company = %telemetry::untrusted(&company))`.
pub(crate) fn untrusted(text: &str) -> Untrusted<'_> {
    Untrusted {
        text,
        max_chars: MAX_LOGGED_CHARS,
    }
}

/// See [`untrusted`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Untrusted<'a> {
    text: &'a str,
    max_chars: usize,
}

impl Untrusted<'_> {
    /// Allows up to `max_chars` characters, for values longer than an id, such as URLs.
    pub(crate) fn max_chars(self, max_chars: usize) -> Self {
        Self { max_chars, ..self }
    }
}

impl std::fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut chars = self.text.chars();
        for c in chars.by_ref().take(self.max_chars) {
            std::fmt::Display::fmt(&c.escape_debug(), f)?;
        }
        if chars.next().is_some() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
pub(crate) fn prometheus() -> &'static PrometheusHandle {
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

pub(crate) fn callback_received() {
    metrics::counter!("whatsapp_callbacks_received_total").increment(1);
}

/// `reason` is one of a fixed set: signature, unknown_app, account, media_type, too_large,
/// malformed, store.
pub(crate) fn callback_rejected(reason: &'static str) {
    metrics::counter!("whatsapp_callbacks_rejected_total", "reason" => reason).increment(1);
}

pub(crate) fn callback_stored(duplicate: bool) {
    let kind = if duplicate { "duplicate" } else { "new" };
    metrics::counter!("whatsapp_callbacks_stored_total", "kind" => kind).increment(1);
}

pub(crate) fn dispatch_latency(elapsed: Duration) {
    metrics::histogram!("whatsapp_dispatch_seconds").record(elapsed.as_secs_f64());
}

/// `outcome`: done, failed (will retry) or dead.
pub(crate) fn action(outcome: &'static str) {
    metrics::counter!("whatsapp_actions_total", "outcome" => outcome).increment(1);
}

pub(crate) fn backlog(events: i64) {
    metrics::gauge!("whatsapp_dispatch_backlog").set(events as f64);
}

/// One send, by outcome and error code (`""` on success).
pub(crate) fn send(outcome: &'static str, error_code: Option<i64>) {
    let code = error_code.map(|c| c.to_string()).unwrap_or_default();
    metrics::counter!("whatsapp_sends_total", "outcome" => outcome, "error_code" => code)
        .increment(1);
}

pub(crate) fn twilio_latency(elapsed: Duration) {
    metrics::histogram!("whatsapp_twilio_request_seconds").record(elapsed.as_secs_f64());
}

/// JS worker processes alive now.
pub(crate) fn js_workers(running: usize) {
    metrics::gauge!("whatsapp_js_workers").set(running as f64);
}

/// A worker was replaced; `cause` is budget, memory or crash. A worker that died between runs
/// counts here only.
pub(crate) fn js_worker_restart(cause: &'static str) {
    metrics::counter!("whatsapp_js_worker_restarts_total", "cause" => cause).increment(1);
}

/// A run was stopped with its worker; `cause` is budget, memory or crash.
pub(crate) fn js_run_stopped(cause: &'static str) {
    metrics::counter!("whatsapp_js_runs_stopped_total", "cause" => cause).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_escaped_and_cut() {
        assert_eq!(untrusted("Acme Srl €").to_string(), "Acme Srl €");
        assert_eq!(
            untrusted("x\nFORGED\u{1b}[31m\"q\"").to_string(),
            "x\\nFORGED\\u{1b}[31m\\\"q\\\""
        );
        let long = "a".repeat(MAX_LOGGED_CHARS + 1);
        assert_eq!(
            untrusted(&long).to_string(),
            format!("{}…", &long[..MAX_LOGGED_CHARS])
        );
        assert_eq!(untrusted(&long[1..]).to_string(), long[1..]);
        assert_eq!(untrusted("abcdef").max_chars(3).to_string(), "abc…");
    }
}
