//! The JS surface, in one table: every global a script can call is installed by [`install`].
//! Each entry only converts arguments and hands the call to the host over the worker's
//! channel ([`HostLink`]): sends, parameters and logs are all the host's, never the worker's.

use std::rc::Rc;

use boa_engine::builtins::object::OrdinaryObject;
use boa_engine::object::ObjectInitializer;
use boa_engine::object::builtins::JsArray;
use boa_engine::property::Attribute;
use boa_engine::{Context, JsNativeError, JsObject, JsResult, JsString, JsValue, NativeFunction};

use super::protocol::{
    Call, CallError, Level, Media, MediaItem, SendArgs, TemplateArgs, Variables,
};

/// The worker's way to the host, shared by every context in the worker. A call blocks the
/// script until the host answers; a log line is sent without waiting.
pub(crate) trait HostLink {
    fn call(&self, call: Call) -> Result<String, CallError>;
    fn log(&self, level: Level, message: String);
}

/// What every context keeps as its data, for the native functions to reach the host.
pub(crate) type Host = Rc<dyn HostLink>;

type Native = fn(&JsValue, &[JsValue], &mut Context) -> JsResult<JsValue>;

/// `utils.*`: name, arity, function.
const UTILS: &[(&str, usize, Native)] = &[
    ("sendWhatsappMessage", 7, send_whatsapp_message),
    ("sendWhatsappTemplate", 6, send_whatsapp_template),
    ("getParameter", 1, get_parameter),
    ("whatsappSessionOpen", 2, whatsapp_session_open),
    ("log", 2, log),
    ("info", 1, log_info),
    ("warn", 1, log_warn),
    ("debug", 1, log_debug),
    ("error", 1, log_error),
];

/// `console.*`: the same logging, for code written against the usual console.
const CONSOLE: &[(&str, usize, Native)] = &[
    ("log", 1, log_info),
    ("info", 1, log_info),
    ("warn", 1, log_warn),
    ("debug", 1, log_debug),
    ("error", 1, log_error),
];

/// Installs `utils` and `console` as read-only globals, talking to `host`.
pub(crate) fn install(context: &mut Context, host: Host) -> JsResult<()> {
    context.insert_data(host);
    for (name, table) in [("utils", UTILS), ("console", CONSOLE)] {
        let mut object = ObjectInitializer::new(context);
        for (fname, arity, f) in table {
            object.function(
                NativeFunction::from_fn_ptr(*f),
                JsString::from(*fname),
                *arity,
            );
        }
        let object = object.build();
        context.register_global_property(
            JsString::from(name),
            object,
            Attribute::READONLY | Attribute::NON_ENUMERABLE,
        )?;
    }
    Ok(())
}

/// An object with string-valued properties: how `vo` is handed to actions.
///
/// Built with a shared shape and plain inserts rather than `CreateDataProperty` on a fresh
/// unique-shaped object: the result is the same ordinary object (writable, enumerable,
/// configurable data properties in field order, a repeated name keeping its last value) for
/// less, because every event's record takes the same shape transitions.
pub(crate) fn string_record(
    fields: &[(String, String)],
    context: &mut Context,
) -> JsResult<JsObject> {
    let mut record = ObjectInitializer::with_native_data(OrdinaryObject, context);
    for (k, v) in fields {
        record.property(
            JsString::from(k.as_str()),
            JsString::from(v.as_str()),
            Attribute::all(),
        );
    }
    Ok(record.build())
}

/// Sets `vo.media` to an array of `{ url, contentType }`: an inbound message's attachments.
pub(crate) fn set_media(vo: &JsObject, media: &[MediaItem], context: &mut Context) -> JsResult<()> {
    let items: Vec<JsValue> = media
        .iter()
        .map(|item| {
            ObjectInitializer::new(context)
                .property(
                    JsString::from("url"),
                    JsString::from(item.url.as_str()),
                    Attribute::all(),
                )
                .property(
                    JsString::from("contentType"),
                    JsString::from(item.content_type.as_str()),
                    Attribute::all(),
                )
                .build()
                .into()
        })
        .collect();
    let array = JsArray::from_iter(items, context);
    vo.create_data_property_or_throw(JsString::from("media"), array, context)?;
    Ok(())
}

fn host(context: &Context) -> JsResult<Host> {
    context.get_data::<Host>().cloned().ok_or_else(|| {
        JsNativeError::error()
            .with_message("utils is not available outside a whatsapp-host run")
            .into()
    })
}

/// Asks the host for `call` on behalf of `func`. A refusal that is the script's mistake throws a
/// `TypeError`, anything else an `Error`; both name `func`.
fn ask(context: &Context, func: &str, call: Call) -> JsResult<String> {
    host(context)?.call(call).map_err(|e| {
        let error = if e.usage {
            JsNativeError::typ()
        } else {
            JsNativeError::error()
        };
        error.with_message(format!("{func}: {}", e.message)).into()
    })
}

/// A tenant's `(accountId, secretKey, fromNr)`: the first three arguments of `func`'s tenant
/// forms.
fn tenant_args(func: &str, args: &[JsValue]) -> JsResult<(String, String, String)> {
    Ok((
        string_arg_of(func, args, 0, "accountId", false)?,
        string_arg_of(func, args, 1, "secretKey", false)?,
        string_arg_of(func, args, 2, "fromNr", true)?,
    ))
}

fn type_error(message: impl Into<String>) -> boa_engine::JsError {
    JsNativeError::typ().with_message(message.into()).into()
}

const SEND: &str = "utils.sendWhatsappMessage";
const TEMPLATE: &str = "utils.sendWhatsappTemplate";
const SESSION: &str = "utils.whatsappSessionOpen";

/// A required string argument. Numbers are accepted for phone numbers, as scripts often keep
/// them numeric.
fn string_arg(args: &[JsValue], i: usize, name: &str, numbers_ok: bool) -> JsResult<String> {
    string_arg_of(SEND, args, i, name, numbers_ok)
}

/// [`string_arg`] for the function `func`, which its errors name.
fn string_arg_of(
    func: &str,
    args: &[JsValue],
    i: usize,
    name: &str,
    numbers_ok: bool,
) -> JsResult<String> {
    let value = args.get(i).cloned().unwrap_or_default();
    if let Some(s) = value.as_string() {
        return Ok(s.to_std_string_escaped());
    }
    if numbers_ok && let Some(n) = value.as_number() {
        return Ok(format!("{n:.0}"));
    }
    Err(type_error(format!(
        "{func}: {name} (argument {}) must be a string, got {}",
        i + 1,
        value.type_of()
    )))
}

/// An optional string argument: `null`, `undefined` or absent mean none.
fn optional_arg(args: &[JsValue], i: usize, name: &str) -> JsResult<Option<String>> {
    match args.get(i) {
        None => Ok(None),
        Some(v) if v.is_null_or_undefined() => Ok(None),
        Some(_) => string_arg(args, i, name, false).map(Some),
    }
}

/// Picks the form by argument count, as documented:
/// 2–3 `(to, message[, url])`, 4 `(to, message, bucket, file)`,
/// 5–6 `(accountId, secretKey, fromNr, to, message[, url])`,
/// 7 `(accountId, secretKey, fromNr, to, message, bucket, file)`.
fn parse_send(args: &[JsValue]) -> JsResult<SendArgs> {
    let (tenant, rest) = match args.len() {
        2..=4 => (None, 0),
        5..=7 => (Some(tenant_args(SEND, args)?), 3),
        n => {
            return Err(type_error(format!(
                "utils.sendWhatsappMessage takes (to, message[, publicMediaURL]), (to, message, bucketName, fileName) or the same preceded by accountId, secretKey, fromNr; got {n} arguments"
            )));
        }
    };
    let to = string_arg(args, rest, "to", true)?;
    let body = string_arg(args, rest + 1, "message", false)?;
    let media = match args.len() - rest {
        2 => Media::None,
        3 => optional_arg(args, rest + 2, "publicMediaURL")?.map_or(Media::None, Media::Url),
        _ => match (
            optional_arg(args, rest + 2, "bucketName")?,
            optional_arg(args, rest + 3, "fileName")?,
        ) {
            (None, None) => Media::None,
            (Some(bucket), Some(file)) => Media::Object { bucket, file },
            (Some(_), None) => {
                return Err(type_error(
                    "utils.sendWhatsappMessage: bucketName was given without fileName; pass both or neither",
                ));
            }
            (None, Some(_)) => {
                return Err(type_error(
                    "utils.sendWhatsappMessage: fileName was given without bucketName; pass both or neither",
                ));
            }
        },
    };
    Ok(SendArgs {
        tenant,
        to,
        body,
        media,
    })
}

fn send_whatsapp_message(
    _: &JsValue,
    args: &[JsValue],
    context: &mut Context,
) -> JsResult<JsValue> {
    let request = parse_send(args)?;
    let outcome = ask(context, SEND, Call::Send(request))?;
    Ok(JsString::from(outcome).into())
}

/// Picks the form by argument count: 2–3 `(to, contentSid[, variables])`, 5–6 `(accountId,
/// secretKey, fromNr, to, contentSid[, variables])`; a missing `variables` is null.
fn parse_template(args: &[JsValue], context: &mut Context) -> JsResult<TemplateArgs> {
    let (tenant, rest) = match args.len() {
        2..=3 => (None, 0),
        5..=6 => (Some(tenant_args(TEMPLATE, args)?), 3),
        n => {
            return Err(type_error(format!(
                "{TEMPLATE} takes (toPhoneNumber, contentSid, variables) or (accountId, secretKey, fromNr, toPhoneNumber, contentSid, variables); got {n} arguments"
            )));
        }
    };
    Ok(TemplateArgs {
        tenant,
        to: string_arg_of(TEMPLATE, args, rest, "toPhoneNumber", true)?,
        content_sid: string_arg_of(TEMPLATE, args, rest + 1, "contentSid", false)?,
        variables: template_variables(args.get(rest + 2), rest + 3, context)?,
    })
}

/// `variables`: null (or absent) for none, else a plain object whose own enumerable keys, in
/// `Object.keys` order, map to strings or numbers. A null or undefined value is passed on for
/// the host to refuse with Twilio's code; any other type is the script's mistake and throws.
fn template_variables(
    value: Option<&JsValue>,
    position: usize,
    context: &mut Context,
) -> JsResult<Option<Variables>> {
    let Some(value) = value.filter(|v| !v.is_null_or_undefined()) else {
        return Ok(None);
    };
    let object = match value.as_object() {
        Some(object) if !object.is_array() && !object.is_callable() => object.clone(),
        _ => {
            let got = if value.as_object().is_some_and(|o| o.is_array()) {
                "an array".to_string()
            } else {
                value.type_of().to_string()
            };
            return Err(type_error(format!(
                "{TEMPLATE}: variables (argument {position}) must be an object such as {{\"1\": \"Ana\"}} or null, got {got}"
            )));
        }
    };
    let keys = OrdinaryObject::keys(&JsValue::undefined(), &[object.clone().into()], context)?;
    let keys = JsArray::from_object(
        keys.as_object()
            .expect("Object.keys returns an array")
            .clone(),
    )?;
    let count = keys.length(context)?;
    let mut variables = Vec::with_capacity(count.min(128) as usize);
    for i in 0..count {
        let key = keys.get(i, context)?.to_string(context)?;
        let value = object.get(key.clone(), context)?;
        let key = key.to_std_string_escaped();
        let text = if value.is_null_or_undefined() {
            None
        } else if let Some(s) = value.as_string() {
            Some(s.to_std_string_escaped())
        } else if value.is_number() {
            Some(value.to_string(context)?.to_std_string_escaped())
        } else {
            return Err(type_error(format!(
                "{TEMPLATE}: variable {key:?} must be a string or a number, got {}",
                value.type_of()
            )));
        };
        variables.push((key, text));
    }
    Ok(Some(variables))
}

fn send_whatsapp_template(
    _: &JsValue,
    args: &[JsValue],
    context: &mut Context,
) -> JsResult<JsValue> {
    let request = parse_template(args, context)?;
    let outcome = ask(context, TEMPLATE, Call::Template(request))?;
    Ok(JsString::from(outcome).into())
}

fn get_parameter(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let name = match args.first().and_then(JsValue::as_string) {
        Some(s) => s.to_std_string_escaped(),
        None => {
            return Err(type_error(
                "utils.getParameter(name): name must be a string",
            ));
        }
    };
    let answer = host(context)?
        .call(Call::GetParameter(name))
        .map_err(|e| JsNativeError::error().with_message(e.message))?;
    let value: serde_json::Value = serde_json::from_str(&answer)
        .map_err(|e| JsNativeError::error().with_message(format!("utils.getParameter: {e}")))?;
    JsValue::from_json(&value, context)
}

/// `utils.whatsappSessionOpen(toPhoneNumber)` with the app's number, or
/// `utils.whatsappSessionOpen(fromNr, toPhoneNumber)`: whether that number may send free-form
/// text to the contact, who wrote to it in the last 24 hours.
fn whatsapp_session_open(
    _: &JsValue,
    args: &[JsValue],
    context: &mut Context,
) -> JsResult<JsValue> {
    let number = |i: usize, name: &str| string_arg_of(SESSION, args, i, name, true);
    let request = match args.len() {
        1 => Call::SessionOpen {
            from: None,
            to: number(0, "toPhoneNumber")?,
        },
        2 => Call::SessionOpen {
            from: Some(number(0, "fromNr")?),
            to: number(1, "toPhoneNumber")?,
        },
        n => {
            return Err(type_error(format!(
                "{SESSION} takes (toPhoneNumber) or (fromNr, toPhoneNumber); got {n} arguments"
            )));
        }
    };
    let answer = ask(context, SESSION, request)?;
    Ok(JsValue::from(answer == "true"))
}

/// `utils.log(msg, type)`: type is `INFO` (default), `WARN`, `DEBUG` or `ERROR`.
fn log(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let level = match args.get(1).and_then(JsValue::as_string) {
        None => Level::Info,
        Some(t) => match t.to_std_string_escaped().to_ascii_uppercase().as_str() {
            "INFO" => Level::Info,
            "WARN" | "WARNING" => Level::Warn,
            "DEBUG" => Level::Debug,
            "ERROR" => Level::Error,
            other => {
                return Err(type_error(format!(
                    "utils.log: type {other:?} is not one of INFO, WARN, DEBUG, ERROR"
                )));
            }
        },
    };
    emit(level, &args[..args.len().min(1)], context);
    Ok(JsValue::undefined())
}

fn log_info(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    emit(Level::Info, args, context);
    Ok(JsValue::undefined())
}

fn log_warn(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    emit(Level::Warn, args, context);
    Ok(JsValue::undefined())
}

fn log_debug(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    emit(Level::Debug, args, context);
    Ok(JsValue::undefined())
}

fn log_error(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    emit(Level::Error, args, context);
    Ok(JsValue::undefined())
}

fn emit(level: Level, args: &[JsValue], context: &mut Context) {
    let message = args
        .iter()
        .map(|v| match v.as_string() {
            Some(s) => s.to_std_string_escaped(),
            None => v
                .to_json(context)
                .ok()
                .flatten()
                .map_or_else(|| v.display().to_string(), |j| j.to_string()),
        })
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(host) = context.get_data::<Host>() {
        host.log(level, message);
    }
}
