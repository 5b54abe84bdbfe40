//! `/metrics` over real HTTP: after a known sequence of callbacks and sends, every counter moved
//! by exactly what that sequence did. The recorder is process-wide and the other tests move it
//! too, so the test runs alone in a process of its own and compares before/after deltas.

use std::collections::BTreeMap;
use std::time::Duration;

use whatsapp_host::store::{EventFilter, EventState};

use crate::helpers::dashboard::{COMPANY, TO};
use crate::helpers::stand_ins::{created, twilio_answering};
use crate::helpers::*;

/// Samples by series: the metric name and its labels, sorted, as `name{a="1",b="2"}`.
type Samples = BTreeMap<String, f64>;

async fn scrape(app: &TestApp) -> Samples {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    parse(&response.text().await.unwrap())
}

/// Reads the Prometheus text format: `name{label="value",...} number` per line.
fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value.parse().expect("a sample value");
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_string(),
        };
        samples.insert(key, value);
    }
    samples
}

fn delta(before: &Samples, after: &Samples, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move_by_exactly_what_a_known_sequence_of_requests_did() {
    if !alone_in_a_process(
        "metrics::counters_move_by_exactly_what_a_known_sequence_of_requests_did",
    ) {
        return;
    }
    let twilio = twilio_answering(created("SM11111111111111111111111111111111", TO)).await;
    let config =
        TestConfig::on_status("utils.info('status ' + vo.MessageStatus);").api_base(twilio.uri());
    let app = spawn_app(&config).await;

    let before = scrape(&app).await;
    // The first scrape already holds the backlog recorded while the server started: the
    // recorder is installed before anything is recorded, not on the first scrape.
    assert_eq!(
        before.get("whatsapp_dispatch_backlog"),
        Some(&0.0),
        "{before:?}"
    );

    // Three new signed callbacks.
    let sids: Vec<String> = (1..=3).map(|i| format!("SM{i:032}")).collect();
    for sid in &sids {
        assert_eq!(
            app.post_status(COMPANY, sid, "delivered").await.status(),
            200
        );
    }
    // The first again: acknowledged, stored as a duplicate, not dispatched.
    assert_eq!(
        app.post_status(COMPANY, &sids[0], "delivered")
            .await
            .status(),
        200
    );
    // A forged signature.
    let fields = status_fields("SM99999999999999999999999999999999", "read");
    let url = app.callback_url(APP, COMPANY);
    let forged = app
        .post_form(&url, &fields, Some("bm90IGEgc2lnbmF0dXJl"), None)
        .await;
    assert_eq!(forged.status(), 403);
    // An app the settings do not have.
    let unknown = app
        .post_signed(
            &app.callback_url("nope", COMPANY),
            &[("MessageSid", "SM1"), ("MessageStatus", "sent")],
        )
        .await;
    assert_eq!(unknown.status(), 403);
    // A body over the limit.
    let huge = "x".repeat(whatsapp_host::server::MAX_CALLBACK_BYTES + 1);
    let too_large = app
        .post_signed(&app.callback_url(APP, COMPANY), &[("Body", &huge)])
        .await;
    assert_eq!(too_large.status(), 413);
    // One send Twilio accepts, and one refused before Twilio for its number.
    assert!(app.send(TO, "hello").await.sid().is_some());
    let refused = app.send("12", "hello").await;
    assert_eq!(refused.to_json()["error_code"], 21211);

    let store = app.store().clone();
    app.wait_for("three events done", Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            let done = EventFilter {
                state: Some(EventState::Done),
                ..EventFilter::default()
            };
            store.events(done).await.unwrap().len() == 3
        }
    })
    .await;
    let after = scrape(&app).await;

    let expected = [
        ("whatsapp_callbacks_received_total", 7.0),
        (
            "whatsapp_callbacks_rejected_total{reason=\"signature\"}",
            1.0,
        ),
        (
            "whatsapp_callbacks_rejected_total{reason=\"unknown_app\"}",
            1.0,
        ),
        (
            "whatsapp_callbacks_rejected_total{reason=\"too_large\"}",
            1.0,
        ),
        ("whatsapp_callbacks_stored_total{kind=\"new\"}", 3.0),
        ("whatsapp_callbacks_stored_total{kind=\"duplicate\"}", 1.0),
        ("whatsapp_actions_total{outcome=\"done\"}", 3.0),
        ("whatsapp_actions_total{outcome=\"failed\"}", 0.0),
        ("whatsapp_actions_total{outcome=\"dead\"}", 0.0),
        ("whatsapp_dispatch_seconds_count", 3.0),
        (
            "whatsapp_sends_total{error_code=\"\",outcome=\"sent\"}",
            1.0,
        ),
        (
            "whatsapp_sends_total{error_code=\"21211\",outcome=\"refused\"}",
            1.0,
        ),
        ("whatsapp_twilio_request_seconds_count", 1.0),
    ];
    let moved: Vec<(&str, f64)> = expected
        .iter()
        .map(|(series, _)| (*series, delta(&before, &after, series)))
        .collect();
    assert_eq!(moved, expected, "all series after:\n{after:#?}");
    assert_eq!(after.get("whatsapp_dispatch_backlog"), Some(&0.0));
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("whatsapp_dispatch_seconds_bucket{le=")),
        "dispatch latency is a histogram with buckets"
    );
    app.stop().await;
}
