//! Locked-down boa contexts, inside a worker process: one per app, built on its first event,
//! with that app's actions compiled into it once; a fresh one per script. Nothing here knows
//! about processes or the wire beyond the [`Failure`] it reports.

use std::collections::HashMap;
use std::rc::Rc;

use boa_engine::context::HostHooks;
use boa_engine::object::builtins::JsFunction;
use boa_engine::realm::Realm;
use boa_engine::{Context, JsError, JsNativeError, JsResult, JsString, JsValue, Source};

use super::protocol::{ContextLimits, Failure, MediaItem};
use super::runtime;

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

/// Freezes every intrinsic reachable from the realm, `utils`, `console` and the global
/// object. See the file's comment.
const LOCKDOWN: &str = include_str!("lockdown.js");

/// One app's context and the actions compiled into it so far.
pub(crate) struct AppRealm {
    context: Context,
    actions: HashMap<String, JsFunction>,
}

impl AppRealm {
    /// A sealed context: limits, the runtime, then every built-in and the global frozen, so
    /// nothing one event changes reaches the next.
    pub(crate) fn new(limits: &ContextLimits, host: runtime::Host) -> Result<AppRealm, Failure> {
        let mut context = open_context(limits, host)?;
        context
            .eval(Source::from_bytes(LOCKDOWN))
            .map_err(|e| internal("lockdown", e))?;
        Ok(AppRealm {
            context,
            actions: HashMap::new(),
        })
    }

    /// Runs action `id` with `vo` as its argument (and `media`, when given, as `vo.media`),
    /// compiling it on first use. The job queue is
    /// run before returning, so a promise job never outlives its event; a run that fails anyway
    /// is reported so the caller throws this realm away with whatever it left behind.
    pub(crate) fn run_action(
        &mut self,
        id: &str,
        source: Option<&str>,
        vo: &[(String, String)],
        media: Option<&[MediaItem]>,
    ) -> Result<Option<String>, Failure> {
        let context = &mut self.context;
        let action = match self.actions.get(id) {
            Some(f) => f.clone(),
            None => {
                let source = source.ok_or_else(|| Failure::UnknownAction(id.to_string()))?;
                let f = compile_action(context, id, source)?;
                self.actions.insert(id.to_string(), f.clone());
                f
            }
        };
        let vo = runtime::string_record(vo, context).map_err(|e| to_failure(e, context))?;
        if let Some(media) = media {
            runtime::set_media(&vo, media, context).map_err(|e| to_failure(e, context))?;
        }
        let result = action.call(&JsValue::undefined(), &[vo.into()], context);
        let result = result.and_then(|v| context.run_jobs().map(|()| v));
        finish(result, context)
    }
}

/// Compiles every action once in a throwaway context; the first worker does this at start
/// so `/healthz` and `check` can name actions that will never run.
pub(crate) fn check_compiles(
    actions: &[(String, String)],
    limits: &ContextLimits,
    host: runtime::Host,
) -> Vec<Failure> {
    let mut context = match open_context(limits, host) {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    actions
        .iter()
        .filter_map(|(id, src)| compile_action(&mut context, id, src).err())
        .collect()
}

/// Checks that a script parses, without running it.
pub(crate) fn parse_script(
    name: &str,
    source: &str,
    limits: &ContextLimits,
    host: runtime::Host,
) -> Result<(), Failure> {
    let mut context = open_context(limits, host)?;
    boa_engine::Script::parse(Source::from_bytes(source), None, &mut context)
        .map(|_| ())
        .map_err(|e| Failure::Compile {
            name: name.to_string(),
            message: e.to_string(),
        })
}

/// Runs a whole script in a fresh context of its own, global left open so its top-level
/// declarations work; the context is dropped after, so nothing outlives the run.
pub(crate) fn run_script(
    name: &str,
    source: &str,
    limits: &ContextLimits,
    host: runtime::Host,
) -> Result<Option<String>, Failure> {
    let context = &mut open_context(limits, host)?;
    let script =
        boa_engine::Script::parse(Source::from_bytes(source), None, context).map_err(|e| {
            Failure::Compile {
                name: name.to_string(),
                message: e.to_string(),
            }
        })?;
    let result = script.evaluate(context);
    let result = result.and_then(|v| context.run_jobs().map(|()| v));
    finish(result, context)
}

/// A context with limits and the runtime installed, global left open.
fn open_context(limits: &ContextLimits, host: runtime::Host) -> Result<Context, Failure> {
    let mut context = Context::builder()
        .host_hooks(Rc::new(NoEval))
        .build()
        .map_err(|e| internal("context", e))?;
    let rl = context.runtime_limits_mut();
    rl.set_loop_iteration_limit(limits.loop_iterations);
    rl.set_recursion_limit(limits.recursion);
    runtime::install(&mut context, host).map_err(|e| internal("runtime", e))?;
    Ok(context)
}

fn internal(name: &str, e: JsError) -> Failure {
    Failure::Compile {
        name: name.to_string(),
        message: e.to_string(),
    }
}

/// Compiles an action file as the body of a strict-mode function of `vo`, so top-level
/// `let`/`const` are fresh on every call. The wrapper starts on the body's first line to keep
/// line numbers.
fn compile_action(context: &mut Context, id: &str, source: &str) -> Result<JsFunction, Failure> {
    let wrapped = format!("(function(vo){{\"use strict\";{source}\n}})");
    let compile_error = |message: String| Failure::Compile {
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

fn finish(result: JsResult<JsValue>, context: &mut Context) -> Result<Option<String>, Failure> {
    let value = result.map_err(|e| to_failure(e, context))?;
    if value.is_undefined() {
        return Ok(None);
    }
    Ok(value
        .to_json(context)
        .ok()
        .flatten()
        .map(|json| json.to_string()))
}

fn to_failure(error: JsError, context: &mut Context) -> Failure {
    if let Some(engine_error) = error.as_engine() {
        return Failure::Limit(engine_error.to_string());
    }
    let stack = error
        .as_opaque()
        .and_then(JsValue::as_object)
        .and_then(|o| o.get(boa_engine::js_string!("stack"), context).ok())
        .and_then(|s| s.as_string().map(|s| s.to_std_string_escaped()));
    let message = match error.try_native(context) {
        Ok(native) => native.to_string(),
        Err(_) => error
            .as_opaque()
            .map(|v| v.display().to_string())
            .unwrap_or_else(|| error.to_string()),
    };
    Failure::Threw { message, stack }
}

/// Contexts for tests of the lockdown, with a host that answers no call.
#[cfg(test)]
pub(super) mod testing {
    use super::*;
    use crate::js::protocol::{Call, CallError, Level};
    use crate::js::runtime::HostLink;

    struct NoHost;

    impl HostLink for NoHost {
        fn call(&self, _: Call) -> Result<String, CallError> {
            Err(CallError {
                usage: true,
                message: "no host in this test".into(),
            })
        }

        fn log(&self, _: Level, _: String) {}
    }

    /// A context locked down as every app's is.
    pub(in crate::js) fn new_context(limits: &ContextLimits) -> Result<Context, Failure> {
        AppRealm::new(limits, Rc::new(NoHost)).map(|realm| realm.context)
    }

    /// A context with the runtime installed and nothing frozen.
    pub(in crate::js) fn open_context(limits: &ContextLimits) -> Result<Context, Failure> {
        super::open_context(limits, Rc::new(NoHost))
    }
}
