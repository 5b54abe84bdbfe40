//! Retention: a task of the server that removes `done` and `dead` events and messages in a final
//! status once they are older than `[store] retention_days`, and expired dashboard sessions
//! (also when events and messages are kept forever), in small batches with pauses between them,
//! so callbacks never wait long behind it.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::{Pruned, Store, now_ms};

/// How the pruner paces itself. Retention is housekeeping: while callbacks and sends arrive
/// it takes small bites far apart, and it works at full pace only while the store is quiet.
/// Every row it deletes costs the writer and the log the same whatever else is going on, so
/// the rate of deletion, not the size of one batch, is what callbacks feel.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// While the store is quiet.
    quiet: Step,
    /// While this process writes at least `busy_writes_per_s`.
    busy: Step,
    busy_writes_per_s: f64,
    /// Rest once nothing old is left (and after a failed batch).
    idle: Duration,
}

/// One batch of the pruner and the pause after it.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// Rows of each table one batch removes at most.
    batch: usize,
    pause: Duration,
}

/// Quiet: 2,000 rows of each table a second, which clears a backlog of millions within hours.
/// Busy: 100 a second, still 8.6 million a day, far more than any host stores in one. On the
/// 2-core benchmark machine the quiet pace cost callbacks about a quarter of their rate.
const PACE: Pace = Pace {
    quiet: Step {
        batch: 500,
        pause: Duration::from_millis(250),
    },
    busy: Step {
        batch: 100,
        pause: Duration::from_secs(1),
    },
    busy_writes_per_s: 20.0,
    idle: Duration::from_secs(60),
};

/// The store's write rate since the pruner last looked.
struct Load {
    writes: u64,
    at: tokio::time::Instant,
}

impl Load {
    fn now(store: &Store) -> Load {
        Load {
            writes: store.writes(),
            at: tokio::time::Instant::now(),
        }
    }

    /// Writes per second since `self`, and the new reference point.
    fn since(self, store: &Store) -> (f64, Load) {
        let now = Load::now(store);
        let secs = now.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let rate = now.writes.saturating_sub(self.writes) as f64 / secs;
        (rate, now)
    }
}

/// The running retention task; [`Pruner::stop`] ends it.
pub(crate) struct Pruner {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Pruner {
    /// Starts pruning events and messages older than `retention` (`None` keeps them forever)
    /// and expired sessions.
    pub(crate) fn start(store: Store, retention: Option<Duration>) -> Pruner {
        Pruner::start_with(store, retention, PACE)
    }

    fn start_with(store: Store, keep: Option<Duration>, pace: Pace) -> Pruner {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(store, keep, pace, stopped));
        Pruner { stop, task }
    }

    /// Stops the task, letting a batch in progress finish, and waits for it.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(store: Store, keep: Option<Duration>, pace: Pace, mut stopped: watch::Receiver<bool>) {
    let keep_ms = keep.map(|keep| i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
    match keep {
        Some(keep) => tracing::info!(
            retention_days = keep.as_secs() / 86_400,
            "pruning finished events and messages older than the retention"
        ),
        None => tracing::info!(
            "keeping events and messages forever ([store] retention_days = 0); pruning expired dashboard sessions only"
        ),
    }
    let mut load = Load::now(&store);
    // The first pass waits a quiet pause too, so it can tell whether the store is busy.
    if rest(&mut stopped, pace.quiet.pause).await {
        return;
    }
    loop {
        // Nothing is older than the oldest time: only sessions go.
        let before = keep_ms.map_or(i64::MIN, |keep| now_ms().saturating_sub(keep));
        let mut pass = Pruned::default();
        loop {
            let (rate, now) = load.since(&store);
            load = now;
            let step = if rate >= pace.busy_writes_per_s {
                pace.busy
            } else {
                pace.quiet
            };
            match store.prune(before, step.batch).await {
                Ok(batch) => {
                    pass.events += batch.events;
                    pass.messages += batch.messages;
                    pass.sessions += batch.sessions;
                    let more = batch.events as usize >= step.batch
                        || batch.messages as usize >= step.batch;
                    if !more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning failed; retrying later");
                    break;
                }
            }
            if rest(&mut stopped, step.pause).await {
                return;
            }
        }
        if pass.total() > 0 {
            tracing::info!(
                events = pass.events,
                messages = pass.messages,
                sessions = pass.sessions,
                "pruned rows older than the retention"
            );
        }
        if rest(&mut stopped, pace.idle).await {
            return;
        }
    }
}

/// Sleeps for `pause`; `true` when asked to stop meanwhile (or before).
async fn rest(stopped: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    if *stopped.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(pause) => *stopped.borrow(),
        _ = stopped.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        DispatchResult, EventFilter, Inserted, MessageFilter, SendRecord, send_record, status_event,
    };

    const DAY_MS: i64 = 86_400_000;

    fn send(sid: &str, status: &str) -> SendRecord {
        SendRecord {
            body: "hi".into(),
            status: status.into(),
            at: now_ms(),
            ..send_record("ops", "AC1", sid)
        }
    }

    #[tokio::test]
    async fn the_pruner_removes_exactly_the_old_final_rows_in_batches_and_stops_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Events: (sid, outcome, old?)
        let plan = [
            ("SM1", Some(DispatchResult::Done), true),
            (
                "SM2",
                Some(DispatchResult::Dead { error: "x".into() }),
                true,
            ),
            ("SM3", Some(DispatchResult::Done), true),
            ("SM4", None, true),
            (
                "SM5",
                Some(DispatchResult::Failed {
                    error: "x".into(),
                    next_attempt_at: 0,
                }),
                true,
            ),
            ("SM6", Some(DispatchResult::Done), false),
        ];
        let mut ids = Vec::new();
        for (sid, outcome, _) in &plan {
            let Inserted::New(id) = store
                .insert_event(status_event(sid, "sent", now_ms()))
                .await
                .unwrap()
            else {
                panic!("stored once");
            };
            if let Some(outcome) = outcome {
                store.finish_dispatch(id, 1, outcome.clone());
            }
            ids.push(id);
        }
        // Messages of another app, so the events above did not create them.
        for (sid, status) in [
            ("SM10", "delivered"),
            ("SM11", "failed"),
            ("SM12", "sent"),
            ("SM13", "read"),
        ] {
            store.record_send(send(sid, status));
        }
        store.flush().await.unwrap();
        let old_events: Vec<String> = plan
            .iter()
            .zip(&ids)
            .filter(|((_, _, old), _)| *old)
            .map(|(_, id)| id.to_string())
            .collect();
        let conn = rusqlite::Connection::open(dir.path().join("store.sqlite3")).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let long_ago = now_ms() - 3 * DAY_MS;
        conn.execute_batch(&format!(
            "UPDATE events SET updated_at = {long_ago} WHERE id IN ({});
             UPDATE messages SET updated_at = {long_ago} WHERE sid IN ('SM10', 'SM11', 'SM12');",
            old_events.join(",")
        ))
        .unwrap();
        drop(conn);

        let pruner = Pruner::start_with(
            store.clone(),
            Some(Duration::from_secs(86_400)),
            Pace {
                quiet: Step {
                    batch: 1,
                    pause: Duration::from_millis(1),
                },
                busy: Step {
                    batch: 1,
                    pause: Duration::from_millis(1),
                },
                busy_writes_per_s: f64::INFINITY,
                idle: Duration::from_secs(3600),
            },
        );
        let events_left = || async {
            let mut sids: Vec<String> = store
                .events(EventFilter::default())
                .await
                .unwrap()
                .into_iter()
                .filter_map(|e| e.message_sid)
                .collect();
            sids.sort();
            sids
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while events_left().await.len() > 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the pruner is stuck"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Stops while resting.
        tokio::time::timeout(Duration::from_secs(5), pruner.stop())
            .await
            .expect("the pruner stops when asked");
        assert_eq!(events_left().await, ["SM4", "SM5", "SM6"]);
        let mut messages: Vec<String> = store
            .messages(MessageFilter {
                app: Some("ops".into()),
                ..MessageFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| m.sid)
            .collect();
        messages.sort();
        assert_eq!(messages, ["SM12", "SM13"], "old sent and new read stay");
        store.close().await;
    }

    #[tokio::test]
    async fn while_callbacks_arrive_the_pruner_takes_small_bites_then_catches_up_when_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        const OLD: i64 = 40;
        for i in 0..OLD {
            let Inserted::New(id) = store
                .insert_event(status_event(&format!("SMold{i}"), "read", now_ms()))
                .await
                .unwrap()
            else {
                panic!("stored once");
            };
            store.finish_dispatch(id, 1, DispatchResult::Done);
        }
        store.flush().await.unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("store.sqlite3")).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute("UPDATE events SET updated_at = 1", [])
            .unwrap();
        let old_left = || -> i64 {
            conn.query_row(
                "SELECT count(*) FROM events WHERE updated_at = 1",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };

        // Callbacks arrive, one after another, as fast as the store takes them.
        let (stop_writing, mut writing_stopped) = watch::channel(false);
        let writer = tokio::spawn({
            let store = store.clone();
            async move {
                let mut n = 0;
                while !*writing_stopped.borrow_and_update() {
                    store
                        .insert_event(status_event(&format!("SMnew{n}"), "sent", now_ms()))
                        .await
                        .unwrap();
                    n += 1;
                }
            }
        });
        let step = Duration::from_millis(200);
        let pruner = Pruner::start_with(
            store.clone(),
            Some(Duration::from_secs(86_400)),
            Pace {
                quiet: Step {
                    batch: 1000,
                    pause: step,
                },
                busy: Step {
                    batch: 1,
                    pause: step,
                },
                busy_writes_per_s: 5.0,
                idle: Duration::from_secs(3600),
            },
        );
        let started = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let pruned_while_busy = OLD - old_left();
        let bites = started.elapsed().as_millis() / step.as_millis() + 1;
        stop_writing.send(true).unwrap();
        writer.await.unwrap();
        assert!(
            pruned_while_busy >= 1 && pruned_while_busy as u128 <= bites,
            "one row a step while callbacks arrive: {pruned_while_busy} in {bites} steps"
        );

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while old_left() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the pruner did not speed up once the store was quiet"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pruner.stop().await;
        store.close().await;
    }

    #[tokio::test]
    async fn without_a_retention_only_expired_sessions_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let Inserted::New(id) = store
            .insert_event(status_event("SM1", "sent", now_ms()))
            .await
            .unwrap()
        else {
            panic!("stored once");
        };
        store.finish_dispatch(id, 1, DispatchResult::Done);
        store.record_send(send("SM2", "read"));
        store.flush().await.unwrap();
        store.session_create("expired", "c", 1).await.unwrap();
        store.session_create("live", "c", i64::MAX).await.unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("store.sqlite3")).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute_batch("UPDATE events SET updated_at = 1; UPDATE messages SET updated_at = 1;")
            .unwrap();
        drop(conn);

        let pruner = Pruner::start(store.clone(), None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.session_get("expired").await.unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the pruner is stuck"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pruner.stop().await;
        assert!(store.session_get("live").await.unwrap().is_some());
        assert_eq!(store.events(EventFilter::default()).await.unwrap().len(), 1);
        // SM2's send, and the row SM1's callback made.
        let messages = store.messages(MessageFilter::default()).await.unwrap();
        assert_eq!(messages.len(), 2);
        store.close().await;
    }
}
