//! The host's side of the process boundary: a fixed number of worker slots, each a task that
//! keeps one worker process alive, feeds it runs from the shared queue, answers its `utils`
//! calls, and stops it (SIGKILL) when a run passes its budget. A worker that dies, for
//! whatever reason, fails the run it had with a named cause and is replaced at once; runs it
//! had queued go to the replacement untouched.

use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use secrecy::SecretString;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::protocol::{self, Call, CallError, ContextLimits, Down, Failure, Job, Level, Up};
use super::{Limits, Program, RunError, RunOutput};
use crate::outbound::{
    Account, Caller, Outbound, Request, SendRequest, TemplateRequest, UsageError,
};
use crate::telemetry;

/// Most runs handed to a worker in one write. An idle worker takes a batch only of runs that
/// are already queued, and no more than its share of them (the queue's length over the
/// number of workers), so under light load every run goes alone and none waits behind another
/// while a worker is free. Under load, a batch costs one wake-up and one write for all its runs
/// instead of one each; runs queued behind a run that gets stuck go to the replacement.
const BATCH: usize = 16;

/// How long a new worker may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Wait before retrying a worker that could not start; runs that arrive meanwhile fail.
const START_BACKOFF: Duration = Duration::from_secs(1);

/// Lines of a dead worker's stderr kept to tell why it died.
const STDERR_TAIL: usize = 16;

/// Why a worker was stopped or replaced: the label of the restart and stop metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Budget,
    Memory,
    Crash,
}

impl Cause {
    const ALL: [Cause; 3] = [Cause::Budget, Cause::Memory, Cause::Crash];

    fn label(self) -> &'static str {
        match self {
            Cause::Budget => "budget",
            Cause::Memory => "memory",
            Cause::Crash => "crash",
        }
    }

    fn of(error: &RunError) -> Cause {
        match error {
            RunError::TimedOut(_) => Cause::Budget,
            RunError::MemoryLimit(_) => Cause::Memory,
            _ => Cause::Crash,
        }
    }
}

/// What `/healthz` says about the workers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkerStatus {
    pub(crate) running: usize,
    pub(crate) restarts: std::collections::BTreeMap<&'static str, u64>,
    /// How long the last worker started took to be ready, in ms.
    pub(crate) last_start_ms: f64,
}

/// One run on its way to a worker.
struct Task {
    /// Whom `utils` acts for; `None` for a parse, which calls nothing.
    caller: Option<Caller>,
    job: Job,
    budget: Duration,
    /// The submitter's span (a callback's `dispatch`, a command's): the lines a script logs
    /// carry its app, company, event and sid.
    span: tracing::Span,
    reply: oneshot::Sender<Result<Option<String>, RunError>>,
}

struct Shared {
    queue: Mutex<mpsc::UnboundedReceiver<Task>>,
    /// Worker slots: how many share the queue.
    slots: usize,
    program: PathBuf,
    actions: Vec<(String, String)>,
    limits: Limits,
    /// The send path; `None` for an engine that only checks code (`check`).
    outbound: Option<Arc<Outbound>>,
    /// Whether the next worker to start should compile every action and report errors: true
    /// until one has.
    check_pending: AtomicBool,
    checked: watch::Sender<Option<Arc<Vec<RunError>>>>,
    running: AtomicUsize,
    restarts: [AtomicU64; 3],
    last_start_us: AtomicU64,
}

/// The pool of JS worker processes. Cheap to clone; `Send + Sync`. The workers stop once
/// every handle is dropped.
#[derive(Clone)]
pub struct Engine {
    queue: mpsc::UnboundedSender<Task>,
    shared: Arc<Shared>,
}

impl Engine {
    /// Loads every `*.js` in `actions_dir` and starts `workers` worker slots. Must be called
    /// inside a tokio runtime. Without `outbound`, scripts cannot send (for `check`).
    pub(crate) fn start(
        actions_dir: &std::path::Path,
        workers: usize,
        limits: Limits,
        outbound: Option<Arc<Outbound>>,
    ) -> std::io::Result<Engine> {
        let actions = super::load_actions(actions_dir)?.into_iter().collect();
        let program = worker_program()?;
        let (queue, jobs) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(jobs),
            slots: workers.max(1),
            program,
            actions,
            limits,
            outbound,
            check_pending: AtomicBool::new(true),
            checked: watch::Sender::new(None),
            running: AtomicUsize::new(0),
            restarts: Default::default(),
            last_start_us: AtomicU64::new(0),
        });
        for slot in 0..workers.max(1) {
            tokio::spawn(supervise(shared.clone(), slot));
        }
        Ok(Engine { queue, shared })
    }

    /// Actions that failed to compile, as the first worker found them; `/healthz` is
    /// unhealthy while any exist.
    pub(crate) async fn compile_errors(&self) -> Vec<RunError> {
        let mut checked = self.shared.checked.subscribe();
        match tokio::time::timeout(START_TIMEOUT, checked.wait_for(Option::is_some)).await {
            Ok(Ok(errors)) => errors.as_deref().cloned().unwrap_or_default(),
            _ => vec![RunError::NoWorker(
                "no worker finished compiling the actions; see the host's log".into(),
            )],
        }
    }

    /// Runs a program in a worker. The budget counts from when the worker starts it; a run
    /// over budget is stopped by killing its worker.
    pub async fn run(&self, caller: Caller, program: Program) -> Result<RunOutput, RunError> {
        let limits = &self.shared.limits;
        let (budget, job) = match program {
            Program::Action { id, vo, media } => (
                limits.budget,
                Job::Action {
                    app: caller.app.id.clone(),
                    id,
                    vo,
                    media,
                },
            ),
            Program::Script { name, source } => {
                (limits.script_budget, Job::Script { name, source })
            }
        };
        let output = self.submit(Some(caller), job, budget).await?;
        Ok(output.and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// Checks that a script parses, without running it (`check`).
    pub(crate) async fn check_script(&self, name: &str, source: &str) -> Result<(), RunError> {
        let job = Job::Parse {
            name: name.to_string(),
            source: source.to_string(),
        };
        self.submit(None, job, self.shared.limits.budget)
            .await
            .map(drop)
    }

    /// Worker counts for `/healthz`.
    pub(crate) fn status(&self) -> WorkerStatus {
        let shared = &self.shared;
        WorkerStatus {
            running: shared.running.load(Ordering::Relaxed),
            restarts: Cause::ALL
                .iter()
                .map(|c| {
                    (
                        c.label(),
                        shared.restarts[*c as usize].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            last_start_ms: shared.last_start_us.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }

    async fn submit(
        &self,
        caller: Option<Caller>,
        job: Job,
        budget: Duration,
    ) -> Result<Option<String>, RunError> {
        let (reply, answer) = oneshot::channel();
        let task = Task {
            caller,
            job,
            budget,
            span: tracing::Span::current(),
            reply,
        };
        self.queue.send(task).map_err(|_| RunError::Closed)?;
        answer.await.map_err(|_| RunError::Closed)?
    }
}

/// The executable to start workers from: this binary, or, when this is a test or bench
/// harness, the `whatsapp-host` binary cargo built beside it. `WHATSAPP_HOST_WORKER` overrides
/// both, for an install that renamed the binary.
fn worker_program() -> std::io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("WHATSAPP_HOST_WORKER") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    if exe.file_stem().is_some_and(|s| s == "whatsapp-host") {
        return Ok(exe);
    }
    // target/<profile>/deps/<harness> → target/<profile>/whatsapp-host
    let built = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("whatsapp-host"));
    match built {
        Some(path) if path.exists() => Ok(path),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "cannot find the whatsapp-host binary to start javascript workers from {}: build it (cargo build) or set WHATSAPP_HOST_WORKER",
                exe.display()
            ),
        )),
    }
}

/// A slot: keeps one worker alive for as long as the engine has handles.
async fn supervise(shared: Arc<Shared>, slot: usize) {
    let mut carried: VecDeque<Task> = VecDeque::new();
    loop {
        let started = Instant::now();
        let worker = match Worker::start(&shared).await {
            Ok(worker) => worker,
            Err(error) => {
                tracing::error!(slot, %error, "a javascript worker failed to start");
                let error = RunError::NoWorker(error);
                for task in carried.drain(..) {
                    let _ = task.reply.send(Err(error.clone()));
                }
                // Fail what arrives while waiting to retry, so no caller waits on a worker that
                // may never come.
                let retry_at = tokio::time::Instant::now() + START_BACKOFF;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(retry_at) => break,
                        tasks = next_tasks(&shared) => {
                            if tasks.is_empty() {
                                return;
                            }
                            for task in tasks {
                                let _ = task.reply.send(Err(error.clone()));
                            }
                        }
                    }
                }
                continue;
            }
        };
        let ready = started.elapsed();
        shared
            .last_start_us
            .store(ready.as_micros() as u64, Ordering::Relaxed);
        tracing::debug!(slot, pid = worker.pid, ?ready, "javascript worker ready");
        let running = shared.running.fetch_add(1, Ordering::Relaxed) + 1;
        telemetry::js_workers(running);
        let end = worker.serve(&shared, &mut carried).await;
        let running = shared.running.fetch_sub(1, Ordering::Relaxed) - 1;
        telemetry::js_workers(running);
        match end {
            End::Closed => return,
            End::Stopped(cause) => {
                shared.restarts[cause as usize].fetch_add(1, Ordering::Relaxed);
                telemetry::js_worker_restart(cause.label());
            }
        }
    }
}

/// The next runs from the shared queue: the first to come, and as many more already waiting
/// as this worker's share of them. Empty once every engine handle is gone.
async fn next_tasks(shared: &Shared) -> Vec<Task> {
    let mut queue = shared.queue.lock().await;
    let Some(first) = queue.recv().await else {
        return Vec::new();
    };
    let share = (queue.len() / shared.slots).min(BATCH - 1);
    let mut tasks = Vec::with_capacity(share + 1);
    tasks.push(first);
    while tasks.len() <= share {
        match queue.try_recv() {
            Ok(task) => tasks.push(task),
            Err(_) => break,
        }
    }
    tasks
}

/// Why a worker did not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("it died at start: {0}")]
    Died(RunError),
    #[error("{0}")]
    Other(String),
}

impl From<String> for StartError {
    fn from(error: String) -> Self {
        StartError::Other(error)
    }
}

/// How a worker's service ended.
enum End {
    /// The engine is gone: the worker was told to stop.
    Closed,
    /// The worker was stopped or died.
    Stopped(Cause),
}

/// A run handed to a worker.
struct InFlight {
    id: u64,
    task: Task,
    /// When its budget ends; set once the worker starts it.
    deadline: Option<tokio::time::Instant>,
}

type PendingCall = Pin<Box<dyn Future<Output = (u32, Result<String, CallError>)> + Send>>;

/// One live worker process and its socket, framed.
struct Worker {
    child: tokio::process::Child,
    pid: u32,
    io: Framed<tokio::net::UnixStream, LengthDelimitedCodec>,
    /// The last lines of the worker's stderr, once it closes.
    stderr: JoinHandle<String>,
    next_job: u64,
}

impl Worker {
    /// Starts a worker, hands it the actions and waits for it to be ready.
    async fn start(shared: &Shared) -> Result<Worker, String> {
        let check = shared.check_pending.swap(false, Ordering::AcqRel);
        match Self::spawn(shared, check).await {
            Ok((worker, errors)) => {
                if check {
                    let errors: Vec<RunError> = errors.into_iter().map(RunError::from).collect();
                    for e in &errors {
                        tracing::error!(error = %e, "action does not compile; its events will fail");
                    }
                    shared.checked.send_replace(Some(Arc::new(errors)));
                }
                Ok(worker)
            }
            Err(StartError::Died(error)) if check => {
                // Compiling the actions killed it (a parser overflowing its stack on some
                // source): say so, and start this slot's worker without the check.
                let error = RunError::Compile {
                    name: "the actions".into(),
                    message: format!("the worker compiling them died: {error}"),
                };
                tracing::error!(%error, "an action cannot be compiled; its events will fail");
                shared.checked.send_replace(Some(Arc::new(vec![error])));
                Self::spawn(shared, false)
                    .await
                    .map(|(worker, _)| worker)
                    .map_err(|e| e.to_string())
            }
            Err(e) => {
                if check {
                    shared.check_pending.store(true, Ordering::Release);
                }
                Err(e.to_string())
            }
        }
    }

    async fn spawn(shared: &Shared, check: bool) -> Result<(Worker, Vec<Failure>), StartError> {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        ours.set_nonblocking(true)
            .map_err(|e| format!("socketpair: {e}"))?;
        let mut child = tokio::process::Command::new(&shared.program)
            .arg("js-worker")
            // Nothing of the host's environment (auth keys may be there) enters a worker.
            .env_clear()
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", shared.program.display()))?;
        let pid = child.id().unwrap_or_default();
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr = tokio::spawn(forward_stderr(stderr, pid));
        let stream =
            tokio::net::UnixStream::from_std(ours).map_err(|e| format!("socketpair: {e}"))?;
        let codec = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .little_endian()
            .max_frame_length(protocol::MAX_FRAME)
            .new_codec();
        let mut worker = Worker {
            child,
            pid,
            io: Framed::new(stream, codec),
            stderr,
            next_job: 0,
        };
        let limits = &shared.limits;
        worker
            .send(&Down::Init {
                actions: shared.actions.clone(),
                limits: ContextLimits {
                    loop_iterations: limits.loop_iterations,
                    recursion: limits.recursion,
                },
                memory_limit: limits.memory_limit_mb * 1024 * 1024,
                check,
            })
            .await;
        let first = tokio::time::timeout(START_TIMEOUT, worker.io.next()).await;
        match first.map(|m| m.map(|frame| frame.and_then(|f| protocol::decode::<Up>(&f)))) {
            Ok(Some(Ok(Up::Ready {
                version,
                compile_errors,
            }))) if version == protocol::VERSION => Ok((worker, compile_errors)),
            Ok(Some(Ok(Up::Ready { version, .. }))) => Err(format!(
                "{} speaks protocol {version}, this host {}: point WHATSAPP_HOST_WORKER at the same build",
                shared.program.display(),
                protocol::VERSION
            )
            .into()),
            Ok(Some(Ok(_))) => Err(String::from("the worker's first message was not Ready").into()),
            Ok(Some(Err(e))) => {
                Err(format!("the worker's first message was unreadable: {e}").into())
            }
            Ok(None) => Err(StartError::Died(
                worker.death(limits.memory_limit_mb).await,
            )),
            Err(_) => Err(format!("it was not ready within {START_TIMEOUT:?}").into()),
        }
    }

    /// Writes a message. The worker always reads when the host writes (it is idle, or waits
    /// for a reply), so this never waits on the worker's own writes. A write that fails means
    /// a dead worker, which the next read reports.
    async fn send(&mut self, message: &Down) {
        let _ = self
            .io
            .send(bytes::Bytes::from(protocol::body(message)))
            .await;
    }

    /// Runs tasks until the engine closes or the worker is stopped or dies. Runs queued on a
    /// worker that goes are left in `carried` for its replacement.
    async fn serve(self, shared: &Shared, carried: &mut VecDeque<Task>) -> End {
        let mut call: Option<PendingCall> = None;
        let end = self.serve_calls(shared, carried, &mut call).await;
        if let Some(call) = call {
            // The worker went while the host answered its call. A send may already have
            // reached Twilio: it runs to the end, so it is recorded, and its answer is dropped.
            tokio::spawn(call);
        }
        end
    }

    async fn serve_calls(
        mut self,
        shared: &Shared,
        carried: &mut VecDeque<Task>,
        call: &mut Option<PendingCall>,
    ) -> End {
        let mut flight: VecDeque<InFlight> = VecDeque::new();
        let mut closed = false;
        let queued = std::mem::take(carried).into();
        self.hand_over(queued, &mut flight).await;
        // One timer for the running run's budget, moved when the head changes, rather than a
        // new timer registered on every message the worker sends.
        let budget_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(budget_timer);
        loop {
            if closed && flight.is_empty() {
                return End::Closed;
            }
            let deadline = flight.front().and_then(|f| f.deadline);
            if let Some(deadline) = deadline
                && budget_timer.deadline() != deadline
            {
                budget_timer.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                message = self.io.next() => match message.map(|frame| frame.and_then(|f| protocol::decode::<Up>(&f))) {
                    Some(Ok(Up::Done { job, result })) => {
                        let Some(done) = flight.pop_front().filter(|f| f.id == job) else {
                            return self.stop(flight, carried, protocol_error("a result for a run it was not running"));
                        };
                        let _ = done.task.reply.send(result.map_err(RunError::from));
                        if let Some(next) = flight.front_mut() {
                            next.deadline = Some(tokio::time::Instant::now() + next.task.budget);
                        }
                    }
                    Some(Ok(Up::Call { call: id, request })) => {
                        let Some(head) = flight.front() else {
                            return self.stop(flight, carried, protocol_error("a call outside any run"));
                        };
                        *call = Some(answer(shared.outbound.clone(), head.task.caller.clone(), head.task.span.clone(), id, request));
                    }
                    Some(Ok(Up::Log { level, message })) => {
                        if let Some(head) = flight.front() {
                            log(&head.task, level, &message);
                        }
                    }
                    Some(Ok(Up::Ready { .. })) => {
                        return self.stop(flight, carried, protocol_error("a second Ready"));
                    }
                    Some(Err(e)) => {
                        return self.stop(flight, carried, protocol_error(&e.to_string()));
                    }
                    None => {
                        let error = self.death(shared.limits.memory_limit_mb).await;
                        return self.fail_head(flight, carried, error);
                    }
                },
                (id, result) = async { call.as_mut().expect("guarded").await }, if call.is_some() => {
                    *call = None;
                    self.send(&Down::Reply { call: id, result }).await;
                }
                () = &mut budget_timer, if deadline.is_some() => {
                    let budget = flight.front().map(|f| f.task.budget).unwrap_or_default();
                    tracing::warn!(pid = self.pid, ?budget, "javascript run exceeded its budget; replacing its worker");
                    return self.stop(flight, carried, RunError::TimedOut(budget));
                }
                tasks = next_tasks(shared), if !closed && flight.is_empty() => {
                    if tasks.is_empty() {
                        closed = true;
                    }
                    self.hand_over(tasks, &mut flight).await;
                }
            }
        }
    }

    /// Sends runs to the worker in one write; the first one's budget starts now, each next
    /// one's when the one before it is done. The tasks keep their jobs, to hand them to a
    /// replacement should this worker go before starting them.
    async fn hand_over(&mut self, tasks: Vec<Task>, flight: &mut VecDeque<InFlight>) {
        if tasks.is_empty() {
            return;
        }
        for task in tasks {
            self.next_job += 1;
            let id = self.next_job;
            let body = bytes::Bytes::from(protocol::run_body(id, &task.job));
            // A write that fails means a dead worker, which the next read reports.
            let _ = self.io.feed(body).await;
            let deadline = flight
                .is_empty()
                .then(|| tokio::time::Instant::now() + task.budget);
            flight.push_back(InFlight { id, task, deadline });
        }
        let _ = SinkExt::<bytes::Bytes>::flush(&mut self.io).await;
    }

    /// Kills the worker and fails its current run with `error`.
    fn stop(
        self,
        flight: VecDeque<InFlight>,
        carried: &mut VecDeque<Task>,
        error: RunError,
    ) -> End {
        let mut child = self.child;
        let _ = child.start_kill();
        // Reaped in the background: nothing waits on a killed worker.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let cause = Cause::of(&error);
        fail(flight, carried, error);
        End::Stopped(cause)
    }

    /// The worker died by itself: fails its current run with why.
    fn fail_head(
        self,
        flight: VecDeque<InFlight>,
        carried: &mut VecDeque<Task>,
        error: RunError,
    ) -> End {
        tracing::warn!(pid = self.pid, %error, "a javascript worker died; replacing it");
        let cause = Cause::of(&error);
        fail(flight, carried, error);
        End::Stopped(cause)
    }

    /// Why the worker died, from its exit status and the last lines it wrote to stderr.
    async fn death(&mut self, memory_limit_mb: u64) -> RunError {
        let status = self.child.wait().await;
        let tail = (&mut self.stderr).await.unwrap_or_default();
        match status {
            Ok(status) => death_cause(status, &tail, memory_limit_mb),
            Err(e) => RunError::Crashed(format!("its exit status is unknown: {e}")),
        }
    }
}

/// Fails the run a worker was running with `error` and keeps the ones queued behind it for the
/// replacement.
fn fail(mut flight: VecDeque<InFlight>, carried: &mut VecDeque<Task>, error: RunError) {
    let head = flight.pop_front();
    carried.extend(flight.into_iter().map(|f| f.task));
    if let Some(head) = head {
        head.task
            .span
            .in_scope(|| tracing::warn!(%error, "javascript run stopped"));
        telemetry::js_run_stopped(Cause::of(&error).label());
        let _ = head.task.reply.send(Err(error));
    }
}

fn protocol_error(what: &str) -> RunError {
    RunError::Crashed(format!("protocol error: {what}"))
}

/// Names why a worker died. Rust's runtime says so on stderr before it aborts: on a failed
/// allocation, which past `RLIMIT_DATA` is the memory limit, and on a stack overflow.
fn death_cause(status: ExitStatus, stderr_tail: &str, memory_limit_mb: u64) -> RunError {
    if stderr_tail.contains("memory allocation of") {
        return RunError::MemoryLimit(memory_limit_mb);
    }
    if stderr_tail.contains("overflowed its stack") {
        return RunError::Crashed("stack overflow".into());
    }
    if let Some(signal) = status.signal() {
        return RunError::Crashed(signal_name(signal));
    }
    if stderr_tail.contains("panicked") {
        return RunError::Crashed("panic (its message is in the host's log)".into());
    }
    RunError::Crashed(format!("it exited with {status}"))
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSYS => "SIGSYS",
        libc::SIGXCPU => "SIGXCPU",
        _ => return format!("signal {signal}"),
    };
    format!("signal {signal} ({name})")
}

/// Answers one `utils` call for the run in progress, in its span.
fn answer(
    outbound: Option<Arc<Outbound>>,
    caller: Option<Caller>,
    span: tracing::Span,
    id: u32,
    request: Call,
) -> PendingCall {
    use tracing::Instrument;
    Box::pin(
        async move {
            let (Some(caller), Some(outbound)) = (caller, outbound) else {
                let message = "utils is not available while checking code".to_string();
                return (
                    id,
                    Err(CallError {
                        usage: true,
                        message,
                    }),
                );
            };
            let result = match request {
                Call::Send(args) => send(&outbound, &caller, args).await,
                Call::Template(args) => template(&outbound, &caller, args).await,
                Call::GetParameter(name) => Ok(caller
                    .app
                    .whatsapp
                    .as_ref()
                    .and_then(|w| w.public_parameter(&name))
                    .unwrap_or_default()
                    .to_string()),
                Call::SessionOpen { from, to } => outbound
                    .session_open(&caller, from.as_deref(), &to)
                    .await
                    .map(|open| open.to_string())
                    .map_err(|e| CallError {
                        usage: e.is_usage(),
                        message: e.to_string(),
                    }),
            };
            (id, result)
        }
        .instrument(span),
    )
}

async fn send(
    outbound: &Outbound,
    caller: &Caller,
    args: protocol::SendArgs,
) -> Result<String, CallError> {
    let request = SendRequest {
        account: account(args.tenant),
        to: args.to,
        body: args.body,
        media: args.media,
    };
    send_request(outbound, caller, request.into()).await
}

async fn template(
    outbound: &Outbound,
    caller: &Caller,
    args: protocol::TemplateArgs,
) -> Result<String, CallError> {
    let request = TemplateRequest {
        account: account(args.tenant),
        to: args.to,
        content_sid: args.content_sid,
        variables: args.variables,
    };
    send_request(outbound, caller, request.into()).await
}

/// The account a script's arguments name: a tenant's `(accountId, secretKey, fromNr)`, or the
/// app's own.
fn account(tenant: Option<(String, String, String)>) -> Account {
    match tenant {
        None => Account::App,
        Some((account_sid, secret, from)) => Account::Tenant {
            account_sid,
            auth_token: SecretString::from(secret),
            from,
        },
    }
}

/// Sends through the outbound path: the outcome's JSON, or the script's mistake to throw.
async fn send_request(
    outbound: &Outbound,
    caller: &Caller,
    request: Request,
) -> Result<String, CallError> {
    match outbound.send(caller, request).await {
        Ok(outcome) => Ok(outcome.to_json().to_string()),
        Err(e) => Err(CallError {
            usage: matches!(e, UsageError::BadAccountSid(_) | UsageError::Missing(_)),
            message: e.to_string(),
        }),
    }
}

/// A line a script logged, under its run's span with its app and company.
fn log(task: &Task, level: Level, message: &str) {
    let (app, company) = task
        .caller
        .as_ref()
        .map_or(("", ""), |c| (c.app.id.as_str(), c.company.as_str()));
    let _entered = task.span.enter();
    match level {
        Level::Error => tracing::error!(target: "js", app, company, "{message}"),
        Level::Warn => tracing::warn!(target: "js", app, company, "{message}"),
        Level::Debug => tracing::debug!(target: "js", app, company, "{message}"),
        Level::Info => tracing::info!(target: "js", app, company, "{message}"),
    }
}

/// Copies a worker's stderr into the host's log; returns its last lines once it closes.
async fn forward_stderr(stderr: tokio::process::ChildStderr, pid: u32) -> String {
    let mut lines = BufReader::new(stderr).lines();
    let mut tail = VecDeque::with_capacity(STDERR_TAIL);
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::warn!(target: "js_worker", pid, "{line}");
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    Vec::from(tail).join("\n")
}
