//! Dispatch: runs each stored callback event through its app's action, records the outcome,
//! retries failures with backoff up to `max_attempts`, then marks them dead. Delivery is at
//! least once: whatever was stored but not finished is dispatched again on start.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;

use crate::js::{Engine, Program, RunError};
use crate::outbound::Caller;
use crate::settings::Settings;
use crate::store::{DispatchResult, Event, Store, now_ms};

/// One event on its way to an action.
#[derive(Debug, Clone)]
pub struct Work {
    pub event_id: i64,
    pub app: String,
    pub company: String,
    pub fields: Vec<(String, String)>,
    /// Attempts already made.
    pub attempts: u32,
}

impl From<Event> for Work {
    fn from(e: Event) -> Self {
        Work {
            event_id: e.id,
            app: e.app,
            company: e.company,
            fields: e.fields,
            attempts: e.attempts,
        }
    }
}

/// Handle for submitting events. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::UnboundedSender<Work>,
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<Settings>,
    store: Store,
    engine: Engine,
    /// Bounds runs in flight so the engine queue stays short and shutdown can wait for them.
    in_flight: Arc<Semaphore>,
    permits: u32,
    /// Events accepted and not yet done or dead, including those waiting for a retry.
    backlog: AtomicI64,
}

impl Dispatcher {
    /// Starts the dispatch loop. Returns the handle and the loop's task, which ends when every
    /// handle is dropped or [`Dispatcher::close`] is called.
    pub fn start(
        settings: Arc<Settings>,
        store: Store,
        engine: Engine,
    ) -> (Dispatcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let permits = (settings.actions.workers * 4).max(4) as u32;
        let inner = Arc::new(Inner {
            settings,
            store,
            engine,
            in_flight: Arc::new(Semaphore::new(permits as usize)),
            permits,
            backlog: AtomicI64::new(0),
        });
        let dispatcher = Dispatcher { tx, inner };
        let task = tokio::spawn(dispatcher.clone().run(rx));
        (dispatcher, task)
    }

    /// Submits a newly stored event.
    pub fn submit(&self, work: Work) {
        self.inner.backlog.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::backlog(self.backlog());
        let _ = self.tx.send(work);
    }

    /// Resubmits every event the store holds as pending or failed; returns how many.
    pub async fn recover(&self) -> Result<usize, crate::store::StoreError> {
        let events = self.inner.store.undispatched_events().await?;
        let count = events.len();
        let now = now_ms();
        for event in events {
            let delay = event
                .next_attempt_at
                .map_or(0, |at| (at - now).max(0) as u64);
            let work = Work::from(event);
            self.inner.backlog.fetch_add(1, Ordering::Relaxed);
            if delay == 0 {
                let _ = self.tx.send(work);
            } else {
                self.schedule(work, Duration::from_millis(delay));
            }
        }
        crate::telemetry::backlog(self.backlog());
        Ok(count)
    }

    /// Runs an event again now, with a fresh set of attempts, whatever its state.
    pub fn replay(&self, event: Event) {
        let mut work = Work::from(event);
        work.attempts = 0;
        self.submit(work);
    }

    pub fn backlog(&self) -> i64 {
        self.inner.backlog.load(Ordering::Relaxed)
    }

    /// Waits up to `grace` for runs in flight to finish. Events not finished stay pending in
    /// the store and run on the next start.
    pub async fn drain(&self, grace: Duration) -> bool {
        let all = self.inner.in_flight.clone();
        let permits = self.inner.permits;
        tokio::time::timeout(grace, all.acquire_many_owned(permits))
            .await
            .is_ok()
    }

    async fn run(self, mut rx: mpsc::UnboundedReceiver<Work>) {
        while let Some(work) = rx.recv().await {
            let Ok(permit) = self.inner.in_flight.clone().acquire_owned().await else {
                break;
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.dispatch(work).await;
                drop(permit);
            });
        }
    }

    async fn dispatch(&self, work: Work) {
        if let Err(Some((work, delay))) = self.attempt(work).await {
            self.schedule(work, delay);
        }
    }

    /// Runs an event now, once, with a fresh set of attempts, and records the outcome; for
    /// `whatsapp-host replay`. A failure is left for the next start to retry.
    pub async fn replay_once(&self, event: Event) -> Result<(), RunError> {
        let mut work = Work::from(event);
        work.attempts = 0;
        self.inner.backlog.fetch_add(1, Ordering::Relaxed);
        let mut error = None;
        let _ = self.attempt_with(work, &mut error).await;
        error.map_or(Ok(()), Err)
    }

    /// One attempt: run and record the outcome. `Err(Some(..))` says when to retry.
    async fn attempt(&self, work: Work) -> Result<(), Option<(Work, Duration)>> {
        self.attempt_with(work, &mut None).await
    }

    async fn attempt_with(
        &self,
        mut work: Work,
        error_out: &mut Option<RunError>,
    ) -> Result<(), Option<(Work, Duration)>> {
        let span = tracing::info_span!(
            "dispatch",
            event = work.event_id,
            app = %work.app,
            company = %work.company,
            sid = crate::twilio::webhook::message_sid(&work.fields).unwrap_or(""),
        );
        async {
            let started = std::time::Instant::now();
            work.attempts += 1;
            let result = self.run_action(&work).await;
            crate::telemetry::dispatch_latency(started.elapsed());
            let max = self.inner.settings.actions.max_attempts;
            let store = &self.inner.store;
            match result {
                Ok(()) => {
                    store.finish_dispatch(work.event_id, work.attempts, DispatchResult::Done);
                    self.finished("done");
                    Ok(())
                }
                Err(e) if work.attempts >= max => {
                    tracing::error!(attempts = work.attempts, error = %e, "action failed for the last time; event is dead");
                    let error = e.detail();
                    store.finish_dispatch(work.event_id, work.attempts, DispatchResult::Dead { error });
                    self.finished("dead");
                    *error_out = Some(e);
                    Err(None)
                }
                Err(e) => {
                    let delay = self.retry_delay(work.attempts);
                    tracing::warn!(attempts = work.attempts, ?delay, error = %e, "action failed; will retry");
                    let result = DispatchResult::Failed {
                        error: e.detail(),
                        next_attempt_at: now_ms() + delay.as_millis() as i64,
                    };
                    store.finish_dispatch(work.event_id, work.attempts, result);
                    crate::telemetry::action("failed");
                    *error_out = Some(e);
                    Err(Some((work, delay)))
                }
            }
        }
        .instrument(span)
        .await
    }

    fn finished(&self, outcome: &'static str) {
        self.inner.backlog.fetch_sub(1, Ordering::Relaxed);
        crate::telemetry::action(outcome);
        crate::telemetry::backlog(self.backlog());
    }

    async fn run_action(&self, work: &Work) -> Result<(), RunError> {
        let Some(app) = self.inner.settings.apps.get(&work.app) else {
            return Err(RunError::Threw {
                message: format!("app {:?} is no longer in the settings file", work.app),
                stack: None,
            });
        };
        let Some(action) = app.whatsapp.as_ref().and_then(|w| w.callback.clone()) else {
            // No callback configured: storing the event was all there was to do.
            return Ok(());
        };
        let mut vo = work.fields.clone();
        vo.push(("appId".into(), work.app.clone()));
        vo.push(("companyId".into(), work.company.clone()));
        let caller = Caller {
            app: app.clone(),
            company: work.company.clone(),
        };
        self.inner
            .engine
            .run(caller, Program::Action { id: action, vo })
            .await
            .map(|_| ())
    }

    /// Exponential: base, 2×base, 4×base… capped at `retry_max`.
    fn retry_delay(&self, attempts: u32) -> Duration {
        let a = &self.inner.settings.actions;
        a.retry_base
            .saturating_mul(1 << attempts.saturating_sub(1).min(20))
            .min(a.retry_max)
    }

    fn schedule(&self, work: Work, delay: Duration) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(work);
        });
    }
}
