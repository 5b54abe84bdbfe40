//! Dispatch: runs each stored event through its app's action (`callback` for a status callback,
//! `inbound` for a message a contact sent), records the outcome,
//! retries failures with backoff up to `max_attempts`, then marks them dead. Delivery is at
//! least once: whatever was stored but not finished is dispatched again on start.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::js::{Engine, MediaItem, Program, RunError};
use crate::outbound::Caller;
use crate::settings::Settings;
use crate::store::{DispatchResult, Event, EventKind, EventState, Store, now_ms};
use crate::twilio::webhook;

/// One event on its way to an action.
#[derive(Debug, Clone)]
pub(crate) struct Work {
    pub(crate) event_id: i64,
    pub(crate) app: String,
    pub(crate) company: String,
    /// Which of the app's actions runs it.
    pub(crate) kind: EventKind,
    pub(crate) fields: Vec<(String, String)>,
    /// Attempts already made.
    pub(crate) attempts: u32,
    /// Whether the store already counts the next attempt: an event is stored with its first.
    pub(crate) recorded: bool,
}

impl From<Event> for Work {
    fn from(e: Event) -> Self {
        Work {
            event_id: e.id,
            app: e.app,
            company: e.company,
            kind: e.kind,
            fields: e.fields,
            attempts: e.attempts,
            recorded: false,
        }
    }
}

/// Why an event's dispatch failed: what is recorded as its `last_error` and what `replay`
/// reports.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum DispatchError {
    /// The event names an app that has left the settings file since the callback was stored.
    #[error(
        "app {app:?} is no longer in the settings file {}: add its [apps.{app}] section back and replay the event",
        settings.display()
    )]
    UnknownApp { app: String, settings: PathBuf },
    /// The app's callback action did not complete.
    #[error(transparent)]
    Action(#[from] RunError),
    /// The attempt could not be recorded, so it did not run.
    #[error("the store could not record the attempt: {0}")]
    Store(String),
    /// Another instance holds the event: it is running there, or claimed to run.
    #[error("event {0} is being run by another instance; replay it again once that run has ended")]
    HeldElsewhere(i64),
}

impl DispatchError {
    /// The message and, when the action threw, its stack: what operators need to fix it.
    pub(crate) fn detail(&self) -> String {
        match self {
            DispatchError::Action(e) => e.detail(),
            other => other.to_string(),
        }
    }
}

/// What one attempt came to. The outcome is already recorded in the store when this is returned.
enum Attempt {
    /// The action ran (or the app has no callback action).
    Done,
    /// Failed with attempts left: run `work` again `after` this long.
    Retry {
        work: Work,
        after: Duration,
        error: DispatchError,
    },
    /// Failed for the last time: the event is dead.
    Dead(DispatchError),
    /// Not run: another instance holds the event.
    Held,
}

/// Handle for submitting events. Cheap to clone.
///
/// Shutdown follows mini-redis: [`Dispatcher::shutdown`] cancels a token that the loop and every
/// retry waiting for its delay watch, so the loop stops taking work and returns by itself, and
/// the waiting retries end (their events stay `failed` in the store with their due time and run
/// on the next start). Runs in flight get the grace period, then the loop's task is awaited.
/// The loop also ends once every handle is dropped: it and the retries hold only a weak sender.
#[derive(Clone)]
pub(crate) struct Dispatcher {
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
    /// Where retries are resubmitted. Weak, so a retry waiting for its delay does not keep the
    /// loop alive once every [`Dispatcher`] is dropped.
    retry_tx: mpsc::WeakUnboundedSender<Work>,
    /// Cancelled by [`Dispatcher::shutdown`]: the loop stops taking work and waiting retries end.
    shutdown: CancellationToken,
    /// The loop's task, taken and awaited once by [`Dispatcher::shutdown`]. A std `Mutex`: it is
    /// held only to take the handle, never across an `.await`.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Dispatcher {
    /// Starts the dispatch loop; [`Dispatcher::shutdown`] stops it. Must run inside a tokio
    /// runtime.
    pub(crate) fn start(settings: Arc<Settings>, store: Store, engine: Engine) -> Dispatcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let permits = (settings.actions.workers * 4).max(4) as u32;
        let inner = Arc::new(Inner {
            settings,
            store,
            engine,
            in_flight: Arc::new(Semaphore::new(permits as usize)),
            permits,
            backlog: AtomicI64::new(0),
            retry_tx: tx.downgrade(),
            shutdown: CancellationToken::new(),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(inner.clone().run(rx));
        *inner.task.lock().expect("dispatcher task lock") = Some(task);
        Dispatcher { tx, inner }
    }

    /// Submits a newly stored event.
    pub(crate) fn submit(&self, work: Work) {
        self.inner.backlog.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::backlog(self.backlog());
        let _ = self.tx.send(work);
    }

    /// Resubmits every event the store holds as pending or failed that no live instance holds;
    /// returns how many. A pending event whose attempts are all used up was running each time
    /// the host stopped: it is dead, not run again, so an action that takes the host down
    /// cannot do so forever. From then on, this instance also claims what other instances
    /// leave (see `claim_loop`): only a serving host does, never a command-line run.
    pub(crate) async fn recover(&self) -> Result<usize, crate::store::StoreError> {
        let events = self.inner.store.undispatched_events().await?;
        let max = self.inner.settings.actions.max_attempts;
        let (interrupted, events): (Vec<Event>, Vec<Event>) = events
            .into_iter()
            .partition(|e| e.state == EventState::Pending && e.attempts >= max);
        for event in interrupted {
            // Taken first, so an instance that reclaims it at the same moment doesn't run it.
            if self
                .inner
                .store
                .begin_attempt(event.id, event.attempts)
                .await?
            {
                self.inner.interrupted(event.id, event.attempts);
            }
        }
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
                self.inner.schedule(work, Duration::from_millis(delay));
            }
        }
        crate::telemetry::backlog(self.backlog());
        tokio::spawn(self.inner.clone().claim_loop());
        Ok(count)
    }

    /// Runs an event again now, with a fresh set of attempts, whatever its state.
    pub(crate) fn replay(&self, event: Event) {
        let mut work = Work::from(event);
        work.attempts = 0;
        self.submit(work);
    }

    /// Runs an event now, once, with a fresh set of attempts, and records the outcome; for
    /// `whatsapp-host replay`. A failure is left for the next start to retry. The event is in
    /// the backlog only while it runs.
    pub(crate) async fn replay_once(&self, event: Event) -> Result<(), DispatchError> {
        let mut work = Work::from(event);
        work.attempts = 0;
        self.inner.backlog.fetch_add(1, Ordering::Relaxed);
        let id = work.event_id;
        match self.inner.attempt(work).await {
            Attempt::Done => Ok(()),
            Attempt::Dead(error) => Err(error),
            Attempt::Held => Err(DispatchError::HeldElsewhere(id)),
            // Not retried from here, so it leaves the backlog; `Done` and `Dead` already left.
            Attempt::Retry { error, .. } => {
                self.inner.leave_backlog();
                Err(error)
            }
        }
    }

    pub(crate) fn backlog(&self) -> i64 {
        self.inner.backlog.load(Ordering::Relaxed)
    }

    /// Stops dispatching: the loop takes no more work, retries waiting for their delay end, runs
    /// in flight get up to `grace` to finish, then the loop's task is awaited. Returns whether
    /// every run finished in time; events not finished stay pending in the store and run on the
    /// next start.
    pub(crate) async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.shutdown.cancel();
        let drained = self.drain(grace).await;
        let task = self.inner.task.lock().expect("dispatcher task lock").take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the dispatch loop ended with an error");
        }
        drained
    }

    /// Waits up to `grace` for runs in flight to finish.
    async fn drain(&self, grace: Duration) -> bool {
        let all = self.inner.in_flight.clone();
        let permits = self.inner.permits;
        tokio::time::timeout(grace, all.acquire_many_owned(permits))
            .await
            .is_ok()
    }
}

impl Inner {
    /// The loop: takes each submitted event and runs it under a permit. Ends when shutdown is
    /// signalled or every sender is gone.
    async fn run(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Work>) {
        loop {
            let work = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                work = rx.recv() => match work {
                    Some(work) => work,
                    None => break,
                },
            };
            let permit = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                permit = self.in_flight.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let this = self.clone();
            tokio::spawn(async move {
                if let Attempt::Retry { work, after, .. } = this.attempt(work).await {
                    this.schedule(work, after);
                }
                drop(permit);
            });
        }
        tracing::debug!("dispatch loop stopped");
    }

    /// One attempt: run the event's action and record the outcome.
    async fn attempt(&self, mut work: Work) -> Attempt {
        let span = tracing::info_span!(
            "dispatch",
            event = work.event_id,
            app = %crate::telemetry::untrusted(&work.app),
            company = %crate::telemetry::untrusted(&work.company),
            sid = %crate::telemetry::untrusted(crate::twilio::webhook::message_sid(&work.fields).unwrap_or("")),
        );
        async {
            let started = std::time::Instant::now();
            work.attempts += 1;
            if !std::mem::take(&mut work.recorded) {
                // Counted and committed before the action starts (see `DispatchResult::Started`).
                match self.store.begin_attempt(work.event_id, work.attempts).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!("another instance holds the event; not run here");
                        self.leave_backlog();
                        return Attempt::Held;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not record the attempt; the event stays for the next start");
                        self.leave_backlog();
                        return Attempt::Dead(DispatchError::Store(e.to_string()));
                    }
                }
            }
            let result = self.run_action(&work).await;
            crate::telemetry::dispatch_latency(started.elapsed());
            let max = self.settings.actions.max_attempts;
            match result {
                Ok(()) => {
                    self.store.finish_dispatch(work.event_id, work.attempts, DispatchResult::Done);
                    self.finished("done");
                    Attempt::Done
                }
                Err(e) if work.attempts >= max => {
                    tracing::error!(attempts = work.attempts, error = %e, "action failed for the last time; event is dead");
                    let error = e.detail();
                    self.store.finish_dispatch(work.event_id, work.attempts, DispatchResult::Dead { error });
                    self.finished("dead");
                    Attempt::Dead(e)
                }
                Err(e) => {
                    let after = self.retry_delay(work.attempts);
                    tracing::warn!(attempts = work.attempts, delay = ?after, error = %e, "action failed; will retry");
                    let result = DispatchResult::Failed {
                        error: e.detail(),
                        next_attempt_at: now_ms() + after.as_millis() as i64,
                    };
                    self.store.finish_dispatch(work.event_id, work.attempts, result);
                    crate::telemetry::action("failed");
                    Attempt::Retry { work, after, error: e }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Marks dead an event whose every attempt was cut short by its host stopping: an action
    /// that takes the host down is not run forever.
    fn interrupted(&self, id: i64, attempts: u32) {
        let max = self.settings.actions.max_attempts;
        let error = format!(
            "the host stopped while attempt {attempts} of {max} ran, every time; the event is not run again: fix the action, then replay the event"
        );
        tracing::error!(event = id, attempts, "{error}");
        self.store
            .finish_dispatch(id, attempts, DispatchResult::Dead { error });
        crate::telemetry::action("dead");
    }

    /// Claims the events no live instance holds and that are due (their instance died, or they
    /// wait for a retry another instance would have made), whenever the store signals or
    /// `store.poll` passes, and runs them like newly stored ones. Leaves claiming to others
    /// while this instance's own queue is long.
    async fn claim_loop(self: Arc<Self>) {
        let wakeups = self.store.wakeups();
        let poll = self.settings.store.poll;
        let limit = self.permits as usize;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                () = wakeups.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
            if self.retry_tx.upgrade().is_none() {
                // Every handle is gone: nothing could run what this claims.
                break;
            }
            if self.backlog.load(Ordering::Relaxed) >= i64::from(self.permits) {
                continue;
            }
            let events = match self.store.claim_due(limit).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim due events; trying again at the next poll");
                    continue;
                }
            };
            let max = self.settings.actions.max_attempts;
            for event in events {
                if event.attempts > max {
                    // The claim counted one attempt too many: each earlier one ended with its
                    // host gone.
                    self.interrupted(event.id, max);
                    continue;
                }
                let Some(tx) = self.retry_tx.upgrade() else {
                    return;
                };
                let mut work = Work::from(event);
                work.attempts -= 1;
                work.recorded = true;
                self.backlog.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(work);
            }
            crate::telemetry::backlog(self.backlog.load(Ordering::Relaxed));
        }
    }

    fn finished(&self, outcome: &'static str) {
        crate::telemetry::action(outcome);
        self.leave_backlog();
    }

    /// Takes one event off the backlog: it is done, dead, or no longer waiting here for a retry.
    fn leave_backlog(&self) {
        self.backlog.fetch_sub(1, Ordering::Relaxed);
        crate::telemetry::backlog(self.backlog.load(Ordering::Relaxed));
    }

    async fn run_action(&self, work: &Work) -> Result<(), DispatchError> {
        let Some(app) = self.settings.apps.get(&work.app) else {
            return Err(DispatchError::UnknownApp {
                app: work.app.clone(),
                settings: self.settings.source.clone(),
            });
        };
        let whatsapp = app.whatsapp.as_ref();
        let (action, media) = match work.kind {
            EventKind::Status => (whatsapp.and_then(|w| w.callback.clone()), None),
            EventKind::Inbound => {
                let media = webhook::inbound_media(&work.fields)
                    .into_iter()
                    .map(|(url, content_type)| MediaItem { url, content_type })
                    .collect();
                (whatsapp.and_then(|w| w.inbound.clone()), Some(media))
            }
        };
        let Some(action) = action else {
            // No action for this kind of event: storing it was all there was to do.
            return Ok(());
        };
        let mut vo = work.fields.clone();
        vo.push(("appId".into(), work.app.clone()));
        vo.push(("companyId".into(), work.company.clone()));
        let caller = Caller {
            app: app.clone(),
            company: work.company.clone(),
        };
        self.engine
            .run(
                caller,
                Program::Action {
                    id: action,
                    vo,
                    media,
                },
            )
            .await
            .map(|_| ())
            .map_err(DispatchError::from)
    }

    /// Exponential: base, 2×base, 4×base… capped at `retry_max`.
    fn retry_delay(&self, attempts: u32) -> Duration {
        let a = &self.settings.actions;
        a.retry_base
            .saturating_mul(1 << attempts.saturating_sub(1).min(20))
            .min(a.retry_max)
    }

    /// Resubmits `work` after `delay`, unless shutdown comes first or every sender is gone; the
    /// event then stays `failed` in the store with its due time and runs on the next start.
    fn schedule(&self, work: Work, delay: Duration) {
        let tx = self.retry_tx.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(delay) => {
                    if let Some(tx) = tx.upgrade() {
                        let _ = tx.send(work);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use super::*;
    use crate::services::Services;
    use crate::store::{Inserted, NewEvent};
    use crate::twilio::webhook::StatusCallback;

    /// Services whose `crm` app runs an action that always throws, with a first retry a minute
    /// away: long enough that nothing here may wait for it.
    async fn services(dir: &Path) -> Services {
        std::fs::create_dir_all(dir.join("actions")).unwrap();
        std::fs::write(dir.join("actions/fails.js"), "throw new Error('boom');").unwrap();
        let text = r#"
            [twilio]
            api_base = "http://127.0.0.1:9"
            [actions]
            workers = 1
            retry_base_ms = 60000
            retry_max_ms = 60000
            [apps.crm.WHATSAPP]
            account_id = "AC0123456789abcdef0123456789abcdef"
            auth_key = "test-auth-key"
            from_number = "+14155238886"
            callback = "fails"
        "#;
        let path = dir.join("whatsapp-host.toml");
        let settings = Settings::from_toml(text, &path, &[]).unwrap();
        Services::start(Arc::new(settings)).await.unwrap()
    }

    async fn stored(services: &Services, app: &str) -> Event {
        let event = NewEvent {
            app: app.into(),
            company: "ACME".into(),
            kind: EventKind::Status,
            callback: StatusCallback::from_fields(vec![("MessageSid".into(), "SM1".into())]),
            idempotency_token: None,
            received_at: now_ms(),
        };
        let Ok(Inserted::New(id)) = services.store.insert_event(event).await else {
            panic!("event not stored");
        };
        services.store.event(id).await.unwrap().unwrap()
    }

    /// Polls the store until the event has failed once; outcomes are written in the background.
    async fn failed(services: &Services, id: i64) -> Event {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let event = services.store.event(id).await.unwrap().unwrap();
            if event.state == EventState::Failed && event.last_error.is_some() {
                return event;
            }
            assert!(Instant::now() < deadline, "event {id} never failed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_ends_the_loop_without_waiting_for_a_scheduled_retry() {
        let dir = tempfile::tempdir().unwrap();
        let services = services(dir.path()).await;
        let event = stored(&services, "crm").await;
        services.dispatcher.replay(event.clone());
        let event = failed(&services, event.id).await;
        assert!(event.next_attempt_at.is_some(), "a retry is due later");
        let stopping = services.dispatcher.shutdown(Duration::from_secs(5));
        let drained = tokio::time::timeout(Duration::from_secs(2), stopping)
            .await
            .expect("shutdown returns without waiting for the retry");
        assert!(drained, "nothing was in flight");
        services.store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_loop_ends_by_itself_once_every_handle_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let services = services(dir.path()).await;
        let dispatcher = Dispatcher::start(
            services.settings.clone(),
            services.store.clone(),
            services.engine.clone(),
        );
        let task = dispatcher.inner.task.lock().unwrap().take().unwrap();
        let event = stored(&services, "crm").await;
        dispatcher.replay(event.clone());
        failed(&services, event.id).await;
        drop(dispatcher);
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("a pending retry does not keep the loop alive")
            .unwrap();
        services.store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_for_an_app_no_longer_in_the_settings_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let services = services(dir.path()).await;
        let event = stored(&services, "gone").await;
        let error = services.dispatcher.replay_once(event.clone()).await;
        assert!(
            matches!(&error, Err(DispatchError::UnknownApp { app, .. }) if app == "gone"),
            "{error:?}"
        );
        let event = failed(&services, event.id).await;
        let last_error = event.last_error.unwrap();
        assert!(
            last_error.contains("app \"gone\" is no longer in the settings file"),
            "{last_error}"
        );
        assert!(last_error.contains("[apps.gone]"), "{last_error}");
        services.dispatcher.shutdown(Duration::from_secs(1)).await;
        services.store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_once_that_fails_and_would_be_retried_leaves_the_backlog_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let services = services(dir.path()).await;
        let before = services.dispatcher.backlog();
        let event = stored(&services, "crm").await;
        for _ in 0..3 {
            let error = services.dispatcher.replay_once(event.clone()).await;
            assert!(matches!(error, Err(DispatchError::Action(_))), "{error:?}");
            let event = failed(&services, event.id).await;
            assert!(event.next_attempt_at.is_some(), "a retry is due later");
            assert_eq!(services.dispatcher.backlog(), before);
        }
        services.dispatcher.shutdown(Duration::from_secs(1)).await;
        services.store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_failed_attempt_is_dead_with_the_actions_error() {
        let dir = tempfile::tempdir().unwrap();
        let services = services(dir.path()).await;
        let event = stored(&services, "crm").await;
        let mut work = Work::from(event);
        work.attempts = services.settings.actions.max_attempts - 1;
        match services.dispatcher.inner.attempt(work).await {
            Attempt::Dead(DispatchError::Action(RunError::Threw { message, .. })) => {
                assert!(message.contains("boom"), "{message}")
            }
            _ => panic!("the last attempt should be dead with the action's error"),
        }
        services.dispatcher.shutdown(Duration::from_secs(1)).await;
        services.store.close().await;
    }
}
