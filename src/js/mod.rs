//! The JavaScript engine, behind a process boundary. JS runs only in worker processes (this
//! same binary, re-executed as `whatsapp-host js-worker`), each holding one locked-down boa
//! context per app. The host keeps HTTP, the store, Twilio, Cloud Storage, settings and
//! secrets; every `utils` call a script makes is a request over the worker's socket that the
//! host answers. A run over its budget, over its memory or that crashes its worker costs only
//! that worker, which is replaced at once. The rest of the program sees only [`Engine`].
//!
//! - [`supervisor`]: the host's side: the pool of workers, budgets, causes and replacements.
//! - [`worker`]: the worker process's main loop, and [`realm`] its boa contexts.
//! - [`runtime`]: the `utils` table scripts see; [`protocol`]: the messages between the two.
//! - [`sandbox`]: what a worker gives up after start-up.

#[cfg(test)]
mod harden_tests;
pub(crate) mod protocol;
mod realm;
pub(crate) mod runtime;
mod sandbox;
mod supervisor;
pub mod worker;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub use supervisor::Engine;

use crate::settings;

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
    /// The worker mapped more than `[actions] memory_limit_mb`.
    #[error("memory limit of {0} MB exceeded")]
    MemoryLimit(u64),
    /// The worker died under the run: a stack overflow, an abort, a signal.
    #[error("worker crashed: {0}")]
    Crashed(String),
    /// No worker could be started to run it.
    #[error("no javascript worker could start: {0}")]
    NoWorker(String),
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

impl From<protocol::Failure> for RunError {
    fn from(failure: protocol::Failure) -> Self {
        use protocol::Failure;
        match failure {
            Failure::UnknownAction(id) => RunError::UnknownAction(id),
            Failure::Compile { name, message } => RunError::Compile { name, message },
            Failure::Threw { message, stack } => RunError::Threw { message, stack },
            Failure::Limit(limit) => RunError::Limit(limit),
        }
    }
}

/// One attachment of an inbound message, as `vo.media` shows it: `{ url, contentType }`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MediaItem {
    pub url: String,
    pub content_type: String,
}

/// What to run.
#[derive(Debug, Clone)]
pub enum Program {
    /// An action, run in its app's context as a function of `vo`.
    Action {
        id: String,
        /// Every posted field as a string, plus `appId` and `companyId`.
        vo: Vec<(String, String)>,
        /// An inbound message's attachments, set as the array `vo.media`; `None` (a status
        /// callback) leaves `vo` without a `media` key.
        media: Option<Vec<MediaItem>>,
    },
    /// A whole script, compiled for this run (the `run` command).
    Script { name: String, source: String },
}

/// The completion value of a run, as JSON where it has one.
pub(crate) type RunOutput = Option<serde_json::Value>;

/// Limits applied to every run.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Wall-clock budget of one action run.
    pub(crate) budget: Duration,
    /// Wall-clock budget of a whole script (`run`, `serve --run`): scripts may send many
    /// messages, each possibly waiting for the sandbox's 3-second spacing.
    pub(crate) script_budget: Duration,
    /// Memory one worker process may map, in MiB.
    pub(crate) memory_limit_mb: u64,
    pub(crate) loop_iterations: u64,
    pub(crate) recursion: usize,
}

impl From<&settings::Actions> for Limits {
    fn from(a: &settings::Actions) -> Self {
        Self {
            budget: a.budget,
            script_budget: a.script_budget,
            memory_limit_mb: a.memory_limit_mb,
            loop_iterations: a.loop_iteration_limit,
            recursion: a.recursion_limit,
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
