//! Tests of the PostgreSQL backend against a real server: `$WHATSAPP_HOST_TEST_PG_URL`, each
//! test on a database of its own. Two `Store`s on one database stand for two instances.

use std::collections::HashSet;
use std::time::Duration;

use super::Postgres;
use super::features::tests::{client, fresh_database, server_url};
use crate::settings::StoreSettings;
use crate::store::backend_tests::{app_status, inbound_event, new_id};
use crate::store::{
    Backend, DispatchResult, EventFilter, EventState, Inserted, NewEvent, Store, StoreError,
};
use crate::store::{send_record, status_event};
use crate::twilio::simulate;
use crate::twilio::webhook::StatusCallback;

fn settings(lease: Duration) -> StoreSettings {
    StoreSettings {
        url: None,
        retention: None,
        lease,
        poll: Duration::from_millis(100),
        max_connections: 16,
    }
}

/// A store on `url`, as one instance opens it.
pub(in crate::store) async fn instance(url: &str) -> Store {
    instance_with(url, Duration::from_secs(60)).await
}

async fn instance_with(url: &str, lease: Duration) -> Store {
    Store::on(Backend::Postgres(
        Postgres::connect(url, &settings(lease)).await.unwrap(),
    ))
}

/// Runs `sql` on the test database directly, as another process would.
async fn exec(url: &str, sql: &str) {
    client(url).await.batch_execute(sql).await.unwrap();
}

#[tokio::test]
async fn repeats_are_stored_once_across_two_instances() {
    let url = fresh_database().await;
    let (a, b) = (instance(&url).await, instance(&url).await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        for store in [&a, &b] {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut token = status_event(&format!("SMt{i}"), "sent", i);
                token.idempotency_token = Some(format!("tok{i}"));
                let by_key = store
                    .insert_event(status_event(&format!("SM{i}"), "sent", i))
                    .await
                    .unwrap();
                let by_token = store.insert_event(token).await.unwrap();
                (by_key, by_token)
            }));
        }
    }
    let mut new = 0;
    for task in tasks {
        let (by_key, by_token) = task.await.unwrap();
        new += matches!(by_key, Inserted::New(_)) as usize;
        new += matches!(by_token, Inserted::New(_)) as usize;
    }
    assert_eq!(new, 80, "each key is new exactly once, on one instance");
    let events = b
        .events(EventFilter {
            limit: 1000,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 80);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn status_only_moves_forward_whichever_instance_sees_which_event() {
    let url = fresh_database().await;
    let (a, b) = (instance(&url).await, instance(&url).await);
    let orders: [[&str; 3]; 6] = [
        ["sent", "delivered", "read"],
        ["sent", "read", "delivered"],
        ["delivered", "sent", "read"],
        ["delivered", "read", "sent"],
        ["read", "sent", "delivered"],
        ["read", "delivered", "sent"],
    ];
    for (n, order) in orders.iter().enumerate() {
        let sid = format!("SM{n}");
        for (i, status) in order.iter().enumerate() {
            let store = if i % 2 == 0 { &a } else { &b };
            store
                .insert_event(status_event(&sid, status, i as i64))
                .await
                .unwrap();
        }
        let (m, events) = a.message(&sid).await.unwrap().unwrap();
        assert_eq!((m.status.as_str(), events.len()), ("read", 3), "{order:?}");
    }
    // All at once, on both instances.
    let mut tasks = Vec::new();
    for (i, status) in ["sending", "sent", "delivered", "read", "queued"]
        .iter()
        .enumerate()
    {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let event = status_event("SMrace", status, i as i64);
        tasks.push(tokio::spawn(async move {
            store.insert_event(event).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(a.message("SMrace").await.unwrap().unwrap().0.status, "read");
    // Failed is final.
    a.insert_event(status_event("SMf", "failed", 1))
        .await
        .unwrap();
    b.insert_event(status_event("SMf", "read", 2))
        .await
        .unwrap();
    assert_eq!(b.message("SMf").await.unwrap().unwrap().0.status, "failed");
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn a_write_the_server_refuses_fails_alone_and_its_group_still_commits() {
    let url = fresh_database().await;
    let store = instance(&url).await;
    // PostgreSQL refuses NUL in text: this inbound message's body cannot be stored.
    let mut poison = inbound_event("SMbad", "+393331234567", "+14155238886", 1);
    poison.callback.fields.retain(|(k, _)| k != "Body");
    poison.callback.fields.push(("Body".into(), "a\0b".into()));
    let writes: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            let event = if i == 7 {
                poison.clone()
            } else {
                status_event(&format!("SM{i}"), "sent", i)
            };
            tokio::spawn(async move { store.insert_event(event).await })
        })
        .collect();
    let mut refused = 0;
    for write in writes {
        match write.await.unwrap() {
            Ok(inserted) => {
                new_id(inserted);
            }
            Err(e) => {
                assert!(matches!(e, StoreError::CommitFailed { .. }), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 1);
    assert_eq!(
        store.events(EventFilter::default()).await.unwrap().len(),
        19
    );
    store.close().await;
}

#[tokio::test]
async fn callbacks_stored_together_keep_every_rule_of_one_at_a_time() {
    let url = fresh_database().await;
    let store = instance(&url).await;
    store.record_send(send_record("crm", "AC_A", "SMacct"));
    store.flush().await.unwrap();
    // Arriving together, so most are stored by one statement: new ones, repeats of each other
    // by key and by token, and one naming another account.
    let mut events = Vec::new();
    for i in 0..30 {
        events.push(status_event(&format!("SM{i}"), "delivered", i));
        events.push(status_event(&format!("SM{i}"), "delivered", i));
    }
    for sid in ["SMtokA", "SMtokB"] {
        let mut event = status_event(sid, "sent", 1);
        event.idempotency_token = Some("shared".into());
        events.push(event);
    }
    events.push(app_status("crm", "AC_OTHER", "SMacct", "failed", 2));
    let writes: Vec<_> = events
        .into_iter()
        .map(|event| {
            let store = store.clone();
            tokio::spawn(async move { store.insert_event(event).await.unwrap() })
        })
        .collect();
    let mut new_ids = HashSet::new();
    for write in writes {
        if let Inserted::New(id) = write.await.unwrap() {
            assert!(new_ids.insert(id), "id {id} answered twice");
        }
    }
    assert_eq!(new_ids.len(), 30 + 1 + 1);
    let stored = store
        .events(EventFilter {
            limit: 1000,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    let stored_ids: HashSet<i64> = stored.iter().map(|e| e.id).collect();
    assert_eq!(stored_ids, new_ids, "each answer names the event it stored");
    for event in &stored {
        assert_eq!(event.attempts, 1);
        let sid = event.message_sid.as_deref().unwrap();
        let (m, history) = store.app_message("crm", sid).await.unwrap().unwrap();
        if sid == "SMacct" {
            assert_eq!(m.status, "queued", "another account's event moves nothing");
        } else {
            assert_eq!(m.status, event.message_status.clone().unwrap());
            assert_eq!(history.len(), 1);
        }
    }
    let tokens = stored
        .iter()
        .filter(|e| e.idempotency_token.is_some())
        .count();
    assert_eq!(tokens, 1);
    store.close().await;
}

#[tokio::test]
async fn an_outcome_is_written_only_while_the_lease_is_this_instances() {
    let url = fresh_database().await;
    let (a, b) = (instance(&url).await, instance(&url).await);
    let id = new_id(
        a.insert_event(status_event("SM1", "sent", 1))
            .await
            .unwrap(),
    );
    // A holds it: B may not take it, and B's outcome is ignored.
    assert!(!b.begin_attempt(id, 2).await.unwrap());
    b.finish_dispatch(id, 1, DispatchResult::Done);
    b.flush().await.unwrap();
    let event = a.event(id).await.unwrap().unwrap();
    assert_eq!((event.state, event.attempts), (EventState::Pending, 1));
    assert!(
        a.undispatched_events().await.unwrap().is_empty(),
        "A holds it"
    );
    // A's lease runs out (A died, say): B takes it.
    exec(
        &url,
        &format!("UPDATE events SET lease_until = 0 WHERE id = {id}"),
    )
    .await;
    assert_eq!(b.undispatched_events().await.unwrap().len(), 1);
    assert!(b.begin_attempt(id, 2).await.unwrap());
    // A, back from the dead, is too late: its outcome for attempt 1 is not written.
    a.finish_dispatch(id, 1, DispatchResult::Done);
    a.flush().await.unwrap();
    let event = a.event(id).await.unwrap().unwrap();
    assert_eq!((event.state, event.attempts), (EventState::Pending, 2));
    // B's own outcome for an earlier attempt is stale too; the right one is written and
    // releases the lease.
    b.finish_dispatch(id, 1, DispatchResult::Done);
    b.flush().await.unwrap();
    assert_eq!(
        a.event(id).await.unwrap().unwrap().state,
        EventState::Pending
    );
    b.finish_dispatch(
        id,
        2,
        DispatchResult::Failed {
            error: "boom".into(),
            next_attempt_at: i64::MAX,
        },
    );
    b.flush().await.unwrap();
    let event = a.event(id).await.unwrap().unwrap();
    assert_eq!(
        (event.state, event.last_error.as_deref()),
        (EventState::Failed, Some("boom"))
    );
    // Released: any instance may begin the retry (a replay, say).
    assert!(a.begin_attempt(id, 3).await.unwrap());
    a.finish_dispatch(id, 3, DispatchResult::Done);
    a.flush().await.unwrap();
    let row = client(&url)
        .await
        .query_one(
            "SELECT state, attempts, lease_owner, lease_until FROM events WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "done");
    assert_eq!(row.get::<_, i32>(1), 3);
    assert_eq!(row.get::<_, Option<String>>(2), None);
    assert_eq!(row.get::<_, Option<i64>>(3), None);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn claim_due_takes_expired_leases_and_due_retries_only() {
    let url = fresh_database().await;
    let (a, b) = (instance(&url).await, instance(&url).await);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(new_id(
            a.insert_event(status_event(&format!("SM{i}"), "sent", i))
                .await
                .unwrap(),
        ));
    }
    // 0: held by A (live). 1: A died (expired). 2: failed, retry due. 3: failed, retry later.
    // 4: done.
    for (i, result) in [
        (
            2,
            DispatchResult::Failed {
                error: "x".into(),
                next_attempt_at: 0,
            },
        ),
        (
            3,
            DispatchResult::Failed {
                error: "x".into(),
                next_attempt_at: i64::MAX,
            },
        ),
        (4, DispatchResult::Done),
    ] {
        a.finish_dispatch(ids[i], 1, result);
    }
    a.flush().await.unwrap();
    exec(
        &url,
        &format!("UPDATE events SET lease_until = 0 WHERE id = {}", ids[1]),
    )
    .await;
    let claimed = b.claim_due(10).await.unwrap();
    let got: Vec<_> = claimed.iter().map(|e| (e.id, e.attempts)).collect();
    assert_eq!(got, [(ids[1], 2), (ids[2], 2)]);
    assert!(claimed.iter().all(|e| e.state == EventState::Pending));
    // Now B's: nobody else claims them again.
    assert!(a.claim_due(10).await.unwrap().is_empty());
    assert!(!a.begin_attempt(ids[1], 3).await.unwrap());
    // With every attempt used up, the dispatcher declares a claimed event dead at the maximum,
    // one below what the claim counted; that outcome is written and releases the lease.
    b.finish_dispatch(
        ids[1],
        1,
        DispatchResult::Dead {
            error: "interrupted".into(),
        },
    );
    b.flush().await.unwrap();
    let dead = b.event(ids[1]).await.unwrap().unwrap();
    assert_eq!((dead.state, dead.attempts), (EventState::Dead, 1));
    assert!(
        a.begin_attempt(ids[1], 1).await.unwrap(),
        "released: a replay may take it"
    );
    a.close().await;
    b.close().await;
}

/// The claim's cached plan on a store like a busy one's after an outage: many finished events,
/// many failed ones waiting for a retry that is not due, a few claimable, and statistics
/// gathered while all were in flight. It must read the claimable events alone.
#[tokio::test]
async fn a_claim_reads_only_the_claimable_events_however_many_are_finished_or_waiting() {
    let url = fresh_database().await;
    let store = instance(&url).await;
    let inserts =
        (0..20_000).map(|i| store.insert_event(status_event(&format!("SM{i}"), "sent", i)));
    let ids: Vec<i64> = futures::future::join_all(inserts)
        .await
        .into_iter()
        .map(|inserted| new_id(inserted.unwrap()))
        .collect();
    exec(&url, "ANALYZE events").await;
    let (finished, open) = ids.split_at(ids.len() - 11);
    let (done, waiting) = finished.split_at(finished.len() - 2_000);
    for &id in done {
        store.finish_dispatch(id, 1, DispatchResult::Done);
    }
    for &id in waiting.iter().chain(&open[10..]) {
        let next_attempt_at = if id == open[10] { 0 } else { i64::MAX };
        let error = "down".to_string();
        store.finish_dispatch(
            id,
            1,
            DispatchResult::Failed {
                error,
                next_attempt_at,
            },
        );
    }
    store.flush().await.unwrap();
    // Claimable: three of the ten still pending, held by an instance that died, and the one
    // failed event whose retry is due.
    exec(
        &url,
        &format!(
            "UPDATE events SET lease_until = 0 WHERE id IN ({}, {}, {})",
            open[0], open[5], open[9]
        ),
    )
    .await;

    // The plan a pooled connection caches for the claim: generic, under the claim's settings.
    let now = crate::store::now_ms();
    let explain = format!(
        "{}; SET LOCAL plan_cache_mode = force_generic_plan; \
         PREPARE claim(text, bigint, bigint, bigint) AS {}; \
         EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim('probe', {}, {now}, 10)",
        super::leases::CLAIM_PLANNER_SETTINGS,
        *super::leases::CLAIM_DUE,
        now + 60_000,
    );
    let mut pg = client(&url).await;
    let tx = pg.transaction().await.unwrap();
    let answer = tx.simple_query(&explain).await.unwrap();
    tx.rollback().await.unwrap();
    let json = answer
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a plan");
    let plan: serde_json::Value = serde_json::from_str(&json).unwrap();

    /// Every scan of events: its index, and the rows it returned and threw away in all loops.
    fn scans(node: &serde_json::Value, found: &mut Vec<(String, i64, i64)>) {
        let scan = node["Node Type"]
            .as_str()
            .is_some_and(|t| t.ends_with("Scan"));
        if scan && node["Relation Name"] == "events" {
            let loops = node["Actual Loops"].as_i64().unwrap_or(1);
            found.push((
                node["Index Name"].as_str().unwrap_or("(none)").to_string(),
                node["Actual Rows"].as_i64().unwrap_or(0) * loops,
                node["Rows Removed by Filter"].as_i64().unwrap_or(0) * loops,
            ));
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            scans(child, found);
        }
    }
    let mut found = Vec::new();
    scans(&plan[0]["Plan"], &mut found);
    assert_eq!(plan[0]["Plan"]["Actual Rows"], 4, "claimed: {found:?}");
    let used: HashSet<&str> = found.iter().map(|(index, ..)| index.as_str()).collect();
    assert!(
        used.contains("events_pending") && used.contains("events_retry"),
        "{found:?}"
    );
    let read: i64 = found.iter().map(|(_, rows, removed)| rows + removed).sum();
    assert!(
        read <= 30,
        "the claim read {read} rows to claim 4 among 11 open and 2,000 waiting: {found:?}"
    );
    store.close().await;
}

#[tokio::test]
async fn concurrent_claimers_never_return_the_same_event() {
    let url = fresh_database().await;
    let stores = [
        instance(&url).await,
        instance(&url).await,
        instance(&url).await,
    ];
    for i in 0..300 {
        stores[0]
            .insert_event(status_event(&format!("SM{i}"), "sent", i))
            .await
            .unwrap();
    }
    exec(&url, "UPDATE events SET lease_until = 0").await;
    let mut tasks = Vec::new();
    for store in &stores {
        for _ in 0..2 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let claimed = store.claim_due(7).await.unwrap();
                    if claimed.is_empty() {
                        break mine;
                    }
                    mine.extend(claimed.into_iter().map(|e| e.id));
                }
            }));
        }
    }
    let mut seen = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(seen.insert(id), "event {id} was claimed twice");
        }
    }
    assert_eq!(seen.len(), 300);
    for store in stores {
        store.close().await;
    }
}

#[tokio::test]
async fn a_due_retry_wakes_the_other_instances() {
    let url = fresh_database().await;
    let (a, b) = (instance(&url).await, instance(&url).await);
    let wakeups = b.wakeups();
    // The listener is connected once a notification arrives; retry until one does.
    let id = new_id(
        a.insert_event(status_event("SM1", "sent", 1))
            .await
            .unwrap(),
    );
    let mut attempts = 1;
    let woken = loop {
        a.finish_dispatch(
            id,
            attempts,
            DispatchResult::Failed {
                error: "x".into(),
                next_attempt_at: 0,
            },
        );
        a.flush().await.unwrap();
        if tokio::time::timeout(Duration::from_millis(500), wakeups.notified())
            .await
            .is_ok()
        {
            break true;
        }
        attempts += 1;
        assert!(a.begin_attempt(id, attempts).await.unwrap());
        if attempts > 20 {
            break false;
        }
    };
    assert!(woken, "no wake-up arrived");
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn the_listener_reconnects_and_listens_again_after_its_connection_is_killed() {
    let url = fresh_database().await;
    let store = instance(&url).await;
    let wakeups = store.wakeups();
    let admin = client(&url).await;
    let listener = || async {
        admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, i32>(0))
    };
    let wait_for_listener = |not: Option<i32>| async move {
        for _ in 0..100 {
            if let Some(pid) = listener().await.filter(|pid| Some(*pid) != not) {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no listener connection");
    };
    let first = wait_for_listener(None).await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .unwrap();
    let second = wait_for_listener(Some(first)).await;
    assert_ne!(first, second);
    // Woken once for the reconnection (notifications meanwhile were lost), then by a NOTIFY.
    tokio::time::timeout(Duration::from_secs(5), wakeups.notified())
        .await
        .expect("woken after reconnecting");
    admin
        .batch_execute("NOTIFY whatsapp_host_events")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), wakeups.notified())
        .await
        .expect("woken by a notification after reconnecting");
    store.close().await;
}

#[tokio::test]
async fn migrations_apply_once_whether_run_twice_or_at_once() {
    let url = fresh_database().await;
    let runs = futures::future::join_all((0..4).map(|_| super::migrate(&url))).await;
    let mut applied: Vec<String> = runs.into_iter().flat_map(|r| r.unwrap()).collect();
    applied.sort();
    let mut embedded: Vec<String> = super::embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(ToString::to_string)
        .collect();
    embedded.sort();
    assert!(
        embedded.iter().any(|m| m.contains("initial")),
        "{embedded:?}"
    );
    assert_eq!(applied, embedded, "each migration applied once in all");
    assert!(super::migrate(&url).await.unwrap().is_empty());
    // Instances starting together on a fresh database are fine as well.
    let url = fresh_database().await;
    let (a, b) = tokio::join!(instance(&url), instance(&url));
    a.insert_event(status_event("SM1", "sent", 1))
        .await
        .unwrap();
    assert_eq!(b.events(EventFilter::default()).await.unwrap().len(), 1);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn a_reader_alone_needs_a_migrated_store_and_reads_beside_a_writer() {
    let url = fresh_database().await;
    let Err(e) = super::read_only(&url).await else {
        panic!("an empty database read as a store");
    };
    assert!(matches!(e, StoreError::NotMigrated { .. }), "{e}");
    assert!(e.to_string().contains("whatsapp-host migrate"), "{e}");
    let store = instance(&url).await;
    store
        .insert_event(status_event("SM1", "sent", 1))
        .await
        .unwrap();
    let reader = crate::store::StoreReader::Postgres(super::read_only(&url).await.unwrap());
    assert_eq!(
        reader.events(EventFilter::default()).await.unwrap().len(),
        1
    );
    assert_eq!(reader.location(), crate::store::redact(&url));
    store.close().await;
}

#[tokio::test]
async fn flush_and_close_answer_and_later_writes_fail() {
    let url = fresh_database().await;
    let store = instance(&url).await;
    assert!(store.is_writable().await);
    store.record_send(send_record("crm", "AC1", "SM1"));
    store.close().await;
    assert!(matches!(
        store.insert_event(status_event("SM1", "sent", 1)).await,
        Err(StoreError::Closed)
    ));
    assert!(!store.is_writable().await);
    let again = instance(&url).await;
    assert!(
        again.message("SM1").await.unwrap().is_some(),
        "closing committed the send"
    );
    again.close().await;
}

#[tokio::test]
async fn an_unreachable_server_fails_at_start_naming_the_setting_but_never_the_password() {
    // Nothing listens on port 1.
    let url = "postgres://wh:s3cret-Pa55@127.0.0.1:1/store";
    let Err(e) = Postgres::connect(url, &settings(Duration::from_secs(60))).await else {
        panic!("connected to nothing");
    };
    let mut shown = format!("{e} {e:?}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        shown.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    assert!(!shown.contains("s3cret-Pa55"), "{shown}");
    assert!(shown.contains("store.url"), "{shown}");
    assert!(shown.contains("127.0.0.1:1"), "{shown}");
    assert!(shown.contains("***"), "{shown}");
    for bad in [
        super::read_only(url).await.err(),
        super::migrate(url).await.err(),
    ] {
        let text = format!("{:?}", bad.expect("failed"));
        assert!(!text.contains("s3cret-Pa55"), "{text}");
    }
    // A bad password on a reachable server: the server's answer names no password either.
    let mut wrong = url::Url::parse(&server_url()).unwrap();
    let _ = wrong.set_password(Some("s3cret-Pa55"));
    if let Err(e) = super::read_only(wrong.as_str()).await {
        assert!(!format!("{e} {e:?}").contains("s3cret-Pa55"), "{e:?}");
    }
}

#[test]
fn redact_hides_a_password_wherever_the_url_gives_it() {
    let shown = crate::store::redact("postgres://wh:s3cret@db:5432/store?sslmode=disable");
    assert_eq!(shown, "postgres://wh:***@db:5432/store?sslmode=disable");
    let shown = crate::store::redact("postgres://wh@db/store?password=s3cret&connect_timeout=5");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("connect_timeout=5"), "{shown}");
    assert!(!crate::store::redact("postgres://wh:s3cret@[::1").contains("s3cret"));
}

/// Not a test: a measurement of how many callbacks a second one instance stores. Run with
/// `cargo test --lib store::postgres::tests::insert_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn insert_throughput() {
    measure(1).await;
}

/// The same with two instances on one database, the 64 clients split between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn insert_throughput_two_instances() {
    measure(2).await;
}

/// 64 clients each store 400 callbacks, one after another, as Twilio posts them (every field
/// Twilio sends), and record a done outcome for each, as dispatch would.
async fn measure(instances: usize) {
    let url = fresh_database().await;
    let mut stores = Vec::new();
    for _ in 0..instances {
        stores.push(instance(&url).await);
    }
    let clients = 64;
    let per_client = 400;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let store = stores[c % instances].clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let sid = format!("SM{c:016}{i:016}");
                    let fields = simulate::status_callback_fields(
                        &sid,
                        "AC00000000000000000000000000000000",
                        "+14155238886",
                        "+393331234567",
                        "delivered",
                    );
                    let event = NewEvent {
                        callback: StatusCallback::from_fields(fields),
                        ..status_event(&sid, "delivered", 1)
                    };
                    let at = std::time::Instant::now();
                    let id = new_id(store.insert_event(event).await.unwrap());
                    latencies.push(at.elapsed());
                    store.finish_dispatch(id, 1, DispatchResult::Done);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    for store in &stores {
        store.flush().await.unwrap();
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{instances} instance(s): {} callbacks (+ a done outcome each) by {clients} clients in {elapsed:?}: {:.0}/s, p50 {:?}, p99 {:?}",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        p(0.5),
        p(0.99)
    );
    for store in stores {
        store.close().await;
    }
    let name = url.rsplit('/').next().unwrap().to_string();
    client(&server_url())
        .await
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}
