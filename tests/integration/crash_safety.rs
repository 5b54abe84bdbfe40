//! Crash safety of the real binary: a callback acknowledged with 200 survives `kill -9` of the
//! server mid-load and is dispatched after the restart; SIGTERM then stops it cleanly.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use whatsapp_host::store::{Event, EventFilter, EventState, Store};

use crate::helpers::*;

/// Concurrent senders, and callbacks each sends: distinct MessageSids throughout.
const SENDERS: usize = 8;
const PER_SENDER: usize = 100;
/// Acknowledgements to wait for before the kill, so it lands in the middle of the load.
const KILL_AFTER: usize = 200;
/// Long enough for a slow CI machine; every wait ends as soon as its condition holds.
const WAIT: Duration = Duration::from_secs(30);

/// Writes the settings for a fresh port, starts the binary on them and waits for `/healthz`.
async fn start(config: &TestConfig, log: &Path) -> ServedBinary {
    config.serve_binary(log, "warn", WAIT).await
}

/// Posts one signed status callback; true when the server acknowledged it with 200.
async fn post(http: &reqwest::Client, base_url: &str, sid: &str) -> bool {
    let url = callback_url(base_url, APP, "ACME");
    let response = signed_callback(http, &url, &status_fields(sid, "delivered"))
        .send()
        .await;
    response.is_ok_and(|r| r.status() == 200)
}

/// Every stored event (the test stores fewer than 10,000).
async fn all_events(store: &Store) -> Vec<Event> {
    store
        .events(EventFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Whether an event still has to run: pending, or failed and waiting for a retry.
fn unfinished(state: EventState) -> bool {
    matches!(state, EventState::Pending | EventState::Failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_callbacks_survive_sigkill_and_are_dispatched_after_restart() {
    // A little work per event keeps dispatch behind the load, so the kill always leaves events
    // stored but not dispatched, and the restart has to finish them.
    // On PostgreSQL the killed instance holds its events until their lease ends: a short one
    // lets the restarted instance claim them within the test. The embedded store ignores it.
    let config = TestConfig::new()
        .action(
            "onStatus",
            "let n = 0;\nfor (let i = 0; i < 100000; i++) { n += i; }\nutils.debug(vo.MessageSid + ' ' + n);",
        )
        .store_setting("lease_seconds", 2)
        .store_setting("poll_ms", 200);
    let log = config.dir.path().join("server.log");
    let mut first = start(&config, &log).await;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (http, base_url) = (http.clone(), first.base_url.clone());
            let (acked, count) = (acked.clone(), count.clone());
            tokio::spawn(async move {
                for i in 0..PER_SENDER {
                    let sid = format!("SM{:032x}", s * 1_000 + i);
                    if post(&http, &base_url, &sid).await {
                        acked.lock().unwrap().push(sid);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while count.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} callbacks acknowledged before the kill:\n{}",
            count.load(Ordering::SeqCst),
            log_tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // `Child::kill` is SIGKILL on Unix: no shutdown code runs.
    first.child.kill().await.expect("SIGKILL the server");
    for sender in senders {
        sender.await.unwrap();
    }
    let acked: BTreeSet<String> = acked.lock().unwrap().drain(..).collect();
    let total = SENDERS * PER_SENDER;
    assert!(acked.len() >= KILL_AFTER);
    assert!(
        acked.len() < total,
        "all {total} callbacks were acknowledged: the kill came after the load"
    );

    // What the kill left: the restart must finish whatever was not yet dispatched.
    // Counted by state, not as `undispatched_events`: on PostgreSQL the killed instance still
    // holds its unfinished events until their leases end.
    let store = config.open_store().await;
    let at_kill = all_events(&store).await;
    let stored_at_kill = at_kill.len();
    let left = at_kill.iter().filter(|e| unfinished(e.state)).count();
    store.close().await;
    drop(store);
    println!(
        "killed with {} of {total} acknowledged, {stored_at_kill} stored, {left} not yet dispatched",
        acked.len()
    );
    assert!(
        left > 0,
        "the kill left nothing to dispatch; the restart would prove nothing"
    );

    let mut second = start(&config, &log).await;
    // Done when the store has nothing unfinished and the server nothing in flight; the store is
    // read beside the running server, as an operator's `events` would.
    let store = config.open_store().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let health: serde_json::Value = http
            .get(format!("{}/healthz", second.base_url))
            .send()
            .await
            .expect("healthz after restart")
            .json()
            .await
            .unwrap();
        let unfinished = all_events(&store)
            .await
            .iter()
            .filter(|e| unfinished(e.state))
            .count();
        if health["backlog"] == 0 && unfinished == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted server still has {unfinished} unfinished event(s): {health}\n{}",
            log_tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
    drop(store);
    let pid = second.child.id().expect("the server is running");
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM runs");
    assert!(signalled.success());
    let exit = tokio::time::timeout(WAIT, second.child.wait())
        .await
        .expect("the server stops after SIGTERM")
        .unwrap();
    assert!(
        exit.success(),
        "exit after SIGTERM: {exit}\n{}",
        log_tail(&log)
    );

    let store = config.open_store().await;
    let events = all_events(&store).await;
    store.close().await;
    let mut stored: HashMap<String, Vec<EventState>> = HashMap::new();
    for e in events {
        let sid = e.message_sid.clone().expect("status events carry a sid");
        stored.entry(sid).or_default().push(e.state);
    }
    let missing: Vec<_> = acked.iter().filter(|s| !stored.contains_key(*s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged callbacks were lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        missing.first()
    );
    for (sid, states) in &stored {
        assert_eq!(states, &[EventState::Done], "{sid} stored once and done");
    }
}
