//! The JavaScript engine: owns every boa `Context`, each on a dedicated worker thread with a
//! large stack, and bounds untrusted code (no `eval`, loop and recursion limits, a wall-clock
//! budget). The rest of the program sees only [`Engine`], a `Send` handle with an async `run`.
//!
//! This module does no I/O of its own: the functions scripts call live in [`runtime`] and hand
//! their work to plain Rust services.

pub(crate) mod runtime;

#[cfg(test)]
mod harden_tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use boa_engine::context::HostHooks;
use boa_engine::object::builtins::JsFunction;
use boa_engine::realm::Realm;
use boa_engine::{Context, JsError, JsNativeError, JsResult, JsString, JsValue, Source, js_string};
use tokio::sync::oneshot;

use crate::outbound::{Caller, Outbound};
use crate::settings;

/// Stack for worker threads: deep but bounded JS recursion must not overflow the Rust stack.
const WORKER_STACK: usize = 16 * 1024 * 1024;

/// Why an action or script did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunError {
    #[error("action {0:?} does not exist: create actions/{0}.js")]
    UnknownAction(String),
    #[error("{name} failed to compile: {message}")]
    Compile { name: String, message: String },
    #[error("{message}")]
    Threw {
        message: String,
        stack: Option<String>,
    },
    #[error("runtime limit exceeded: {0}")]
    Limit(String),
    #[error("wall-clock budget of {0:?} exceeded")]
    TimedOut(Duration),
    #[error("the javascript engine is shut down")]
    Closed,
}

impl RunError {
    /// The stack trace, when the script threw one.
    pub(crate) fn stack(&self) -> Option<&str> {
        match self {
            RunError::Threw { stack, .. } => stack.as_deref(),
            _ => None,
        }
    }

    /// The message and, where there is one, the stack: what operators need to fix it.
    pub(crate) fn detail(&self) -> String {
        match self.stack() {
            Some(stack) if !stack.is_empty() => format!("{self}\n{stack}"),
            _ => self.to_string(),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub enum Program {
    /// A compiled action, run as a function body with a fresh `vo` as its argument.
    Action {
        id: String,
        vo: Vec<(String, String)>,
    },
    /// A whole script, compiled for this run (the `run` command).
    Script { name: String, source: String },
}

/// The completion value of a run, as JSON where it has one.
pub(crate) type RunOutput = Option<serde_json::Value>;

/// Limits applied to every context.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Wall-clock budget of one action run.
    pub(crate) budget: Duration,
    /// Wall-clock budget of a whole script (`run`, `serve --run`): scripts may send many
    /// messages, each possibly waiting for the sandbox's 3-second spacing.
    pub(crate) script_budget: Duration,
    pub(crate) loop_iterations: u64,
    pub(crate) recursion: usize,
}

impl From<&settings::Actions> for Limits {
    fn from(a: &settings::Actions) -> Self {
        Self {
            budget: a.budget,
            script_budget: a.script_budget,
            loop_iterations: a.loop_iteration_limit,
            recursion: a.recursion_limit,
        }
    }
}

const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const ABANDONED: u8 = 2;

struct Job {
    caller: Caller,
    program: Program,
    /// The caller's span (a callback's `dispatch`, a command's), entered on the worker so lines
    /// a script logs carry its app, company, event and sid.
    span: tracing::Span,
    reply: oneshot::Sender<Result<RunOutput, RunError>>,
    progress: Arc<Progress>,
}

/// What the caller and the worker of one job both see, without waking each other.
struct Progress {
    /// Whether the caller still waits. The caller marks a job abandoned when its budget runs
    /// out; the worker, finding it so, leaves the pool because a replacement was started.
    state: AtomicU8,
    /// When a worker picked the job up, in µs since [`Shared::epoch`] plus one; 0 while it is
    /// queued. The caller reads it only when a deadline passes, so starting a job wakes no one.
    started: AtomicU64,
}

struct Shared {
    jobs: crossbeam_channel::Receiver<Job>,
    sources: Arc<BTreeMap<String, String>>,
    outbound: Arc<Outbound>,
    runtime: tokio::runtime::Handle,
    limits: Limits,
    /// The origin of [`Progress::started`].
    epoch: Instant,
}

/// A pool of JS worker threads. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Engine {
    queue: crossbeam_channel::Sender<Job>,
    shared: Arc<Shared>,
    compile_errors: Arc<Vec<RunError>>,
}

impl Engine {
    /// Loads every `*.js` in `actions_dir`, compiles each once to report errors early, and starts
    /// `workers` threads, each of which compiles the actions into its own locked-down context.
    ///
    /// Must be called inside a tokio runtime: sends made by scripts run on it.
    pub(crate) fn start(
        actions_dir: &Path,
        workers: usize,
        limits: Limits,
        outbound: Arc<Outbound>,
    ) -> std::io::Result<Engine> {
        let sources = load_actions(actions_dir)?;
        let compile_errors = check_compiles(&sources, &limits);
        for e in &compile_errors {
            tracing::error!(error = %e, "action does not compile; its events will fail");
        }
        let (queue, jobs) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            jobs,
            sources: Arc::new(sources),
            outbound,
            runtime: tokio::runtime::Handle::current(),
            limits,
            epoch: Instant::now(),
        });
        for _ in 0..workers.max(1) {
            spawn_worker(&shared)?;
        }
        Ok(Engine {
            queue,
            shared,
            compile_errors: Arc::new(compile_errors),
        })
    }

    /// Actions that failed to compile at start; `/healthz` is unhealthy while any exist.
    pub(crate) fn compile_errors(&self) -> &[RunError] {
        &self.compile_errors
    }

    /// Runs a program on a free worker. The budget counts from when a worker picks the job up;
    /// a run over budget is reported at once and its worker is replaced.
    pub async fn run(&self, caller: Caller, program: Program) -> Result<RunOutput, RunError> {
        let budget = match program {
            Program::Action { .. } => self.shared.limits.budget,
            Program::Script { .. } => self.shared.limits.script_budget,
        };
        let (reply_tx, mut reply_rx) = oneshot::channel();
        let progress = Arc::new(Progress {
            state: AtomicU8::new(RUNNING),
            started: AtomicU64::new(0),
        });
        self.queue
            .send(Job {
                caller,
                program,
                span: tracing::Span::current(),
                reply: reply_tx,
                progress: progress.clone(),
            })
            .map_err(|_| RunError::Closed)?;
        // The budget starts when a worker picks the job up. Rather than be woken then, wait a
        // whole budget from now and, when that passes, move the deadline to pickup + budget.
        let mut deadline = tokio::time::Instant::now() + budget;
        loop {
            match tokio::time::timeout_at(deadline, &mut reply_rx).await {
                Ok(reply) => return reply.map_err(|_| RunError::Closed)?,
                Err(_) => match progress.started.load(Ordering::Acquire) {
                    0 => deadline += budget,
                    started => {
                        let picked_up = self.shared.epoch + Duration::from_micros(started - 1);
                        let end = tokio::time::Instant::from_std(picked_up + budget);
                        if end <= tokio::time::Instant::now() {
                            break;
                        }
                        deadline = end;
                    }
                },
            }
        }
        if progress
            .state
            .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(
                ?budget,
                "javascript run exceeded its budget; replacing its worker"
            );
            if let Err(e) = spawn_worker(&self.shared) {
                tracing::error!(error = %e, "failed to start a replacement js worker");
            }
            Err(RunError::TimedOut(budget))
        } else {
            // It finished just as the budget ran out: take its answer.
            reply_rx.await.map_err(|_| RunError::Closed)?
        }
    }
}

/// The actions in `dir` by id; files whose names are not valid action ids are skipped with a warning.
pub(crate) fn load_actions(dir: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let mut sources = load_sources(dir)?;
    sources.retain(|id, _| {
        let valid = settings::is_valid_id(id);
        if !valid {
            tracing::warn!(dir = %dir.display(), file = %id, "skipping action: its name is not a valid action id");
        }
        valid
    });
    Ok(sources)
}

/// Every `*.js` file in `dir`, by file stem; a missing folder holds none. The engine and
/// `check` both read through this (actions via [`load_actions`]), so `check` sees exactly the
/// files the server loads.
pub(crate) fn load_sources(dir: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let mut sources = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %dir.display(), "folder not found; no scripts loaded from it");
            return Ok(sources);
        }
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("js") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        sources.insert(stem.to_string(), std::fs::read_to_string(&path)?);
    }
    Ok(sources)
}

/// Compiles every action and script once in a throwaway context; used at start and by `check`.
pub(crate) fn check_compiles(sources: &BTreeMap<String, String>, limits: &Limits) -> Vec<RunError> {
    let mut context = match new_context(limits) {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    sources
        .iter()
        .filter_map(|(id, src)| compile_action(&mut context, id, src).err())
        .collect()
}

/// Checks that a script parses, without running it.
pub(crate) fn check_script(name: &str, source: &str) -> Result<(), RunError> {
    let mut context = open_context(&Limits {
        budget: Duration::from_secs(1),
        script_budget: Duration::from_secs(1),
        loop_iterations: 1,
        recursion: 1,
    })?;
    boa_engine::Script::parse(Source::from_bytes(source), None, &mut context)
        .map(|_| ())
        .map_err(|e| RunError::Compile {
            name: name.to_string(),
            message: e.to_string(),
        })
}

fn spawn_worker(shared: &Arc<Shared>) -> std::io::Result<()> {
    let shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("js-worker".into())
        .stack_size(WORKER_STACK)
        .spawn(move || worker(&shared));
    spawned.map(|_| ())
}

/// A worker: one locked-down context with every action compiled once, then jobs until the
/// queue closes. The lockdown is what makes reuse safe: one app's action cannot wrap
/// `JSON.stringify` or `utils.sendWhatsappMessage` for the events that follow.
fn worker(shared: &Shared) {
    let mut context = match new_context(&shared.limits) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "js worker could not create a context");
            return;
        }
    };
    let mut actions = BTreeMap::new();
    for (id, source) in shared.sources.iter() {
        if let Ok(f) = compile_action(&mut context, id, source) {
            actions.insert(id.clone(), f);
        }
    }
    while let Ok(job) = shared.jobs.recv() {
        let picked_up = shared.epoch.elapsed().as_micros() as u64 + 1;
        job.progress.started.store(picked_up, Ordering::Release);
        let _entered = job.span.enter();
        let current = runtime::Current {
            caller: job.caller,
            outbound: shared.outbound.clone(),
            runtime: shared.runtime.clone(),
        };
        let result = match &job.program {
            Program::Action { id, vo } => match actions.get(id) {
                Some(f) => {
                    context.insert_data(current);
                    run_action(&mut context, f, vo)
                }
                // Present but not compiled: this event's error is the compile error.
                None => match shared.sources.get(id) {
                    Some(source) => compile_action(&mut context, id, source).map(|_| None),
                    None => Err(RunError::UnknownAction(id.clone())),
                },
            },
            Program::Script { name, source } => run_script(&shared.limits, current, name, source),
        };
        if job
            .progress
            .state
            .compare_exchange(RUNNING, FINISHED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Abandoned over budget: a replacement worker took this one's place.
            return;
        }
        let _ = job.reply.send(result);
    }
}

/// Refuses to compile strings at run time: `eval`, `new Function` and their async and
/// generator forms all go through this hook.
struct NoEval;

impl HostHooks for NoEval {
    fn ensure_can_compile_strings(
        &self,
        _realm: Realm,
        _parameters: &[JsString],
        _body: &JsString,
        _direct: bool,
        _context: &mut Context,
    ) -> JsResult<()> {
        Err(JsNativeError::eval()
            .with_message("eval and new Function are disabled in whatsapp-host scripts")
            .into())
    }
}

/// A context for actions: limits, runtime and a sealed global.
fn new_context(limits: &Limits) -> Result<Context, RunError> {
    let mut context = open_context(limits)?;
    // Nothing one event changes can reach the next: built-ins, `utils` and the global are frozen.
    context
        .eval(Source::from_bytes(LOCKDOWN))
        .map_err(|e| RunError::Compile {
            name: "lockdown".into(),
            message: e.to_string(),
        })?;
    Ok(context)
}

/// Freezes the intrinsics, `utils`, `console` and the global object. See the file's comment.
const LOCKDOWN: &str = include_str!("lockdown.js");

/// A context with limits and the runtime installed, global left open (for whole scripts).
fn open_context(limits: &Limits) -> Result<Context, RunError> {
    let mut context = Context::builder()
        .host_hooks(Rc::new(NoEval))
        .build()
        .map_err(|e| RunError::Compile {
            name: "context".into(),
            message: e.to_string(),
        })?;
    let rl = context.runtime_limits_mut();
    rl.set_loop_iteration_limit(limits.loop_iterations);
    rl.set_recursion_limit(limits.recursion);
    runtime::install(&mut context).map_err(|e| RunError::Compile {
        name: "runtime".into(),
        message: e.to_string(),
    })?;
    Ok(context)
}

/// Compiles an action file as the body of a strict-mode function, so top-level `let`/`const`
/// are fresh on every call. The wrapper starts on the body's first line to keep line numbers.
fn compile_action(context: &mut Context, id: &str, source: &str) -> Result<JsFunction, RunError> {
    let wrapped = format!("(function(vo){{\"use strict\";{source}\n}})");
    let compile_error = |message: String| RunError::Compile {
        name: format!("action {id:?}"),
        message,
    };
    let value = context
        .eval(Source::from_bytes(&wrapped))
        .map_err(|e| compile_error(e.to_string()))?;
    value
        .as_object()
        .and_then(JsFunction::from_object)
        .ok_or_else(|| compile_error("the action did not compile to a function".into()))
}

fn run_action(
    context: &mut Context,
    action: &JsFunction,
    vo: &[(String, String)],
) -> Result<RunOutput, RunError> {
    let object = runtime::string_record(vo, context).map_err(|e| to_run_error(e, context))?;
    let result = action.call(&JsValue::undefined(), &[object.into()], context);
    let result = result.and_then(|v| context.run_jobs().map(|()| v));
    finish(result, context)
}

/// Runs a whole script in a fresh context of its own, so its top-level declarations neither
/// clash with nor outlive another run.
fn run_script(
    limits: &Limits,
    current: runtime::Current,
    name: &str,
    source: &str,
) -> Result<RunOutput, RunError> {
    let context = &mut open_context(limits)?;
    context.insert_data(current);
    let script =
        boa_engine::Script::parse(Source::from_bytes(source), None, context).map_err(|e| {
            RunError::Compile {
                name: name.to_string(),
                message: e.to_string(),
            }
        })?;
    let result = script.evaluate(context);
    let result = result.and_then(|v| context.run_jobs().map(|()| v));
    finish(result, context)
}

fn finish(result: JsResult<JsValue>, context: &mut Context) -> Result<RunOutput, RunError> {
    let value = result.map_err(|e| to_run_error(e, context))?;
    if value.is_undefined() {
        return Ok(None);
    }
    Ok(value.to_json(context).ok().flatten())
}

fn to_run_error(error: JsError, context: &mut Context) -> RunError {
    if let Some(engine_error) = error.as_engine() {
        return RunError::Limit(engine_error.to_string());
    }
    let stack = error
        .as_opaque()
        .and_then(JsValue::as_object)
        .and_then(|o| o.get(js_string!("stack"), context).ok())
        .and_then(|s| s.as_string().map(|s| s.to_std_string_escaped()));
    let message = match error.try_native(context) {
        Ok(native) => native.to_string(),
        Err(_) => error
            .as_opaque()
            .map(|v| v.display().to_string())
            .unwrap_or_else(|| error.to_string()),
    };
    RunError::Threw { message, stack }
}
