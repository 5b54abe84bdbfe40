//! The wire between the host and its JS worker processes: the messages each side sends, and
//! their framing (a little-endian `u32` length, then the message in postcard). Both sides are
//! this same binary, so the host refuses a worker whose [`VERSION`] differs rather than guess.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

pub(crate) use super::MediaItem;
pub(crate) use crate::outbound::{Media, Variables};

/// Bumped whenever a message changes shape. A worker reports it in [`Up::Ready`].
pub(crate) const VERSION: u32 = 2;

/// The largest frame either side accepts: a whole script, or a send's reply, is far smaller.
pub(crate) const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Limits a worker applies to the contexts it builds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ContextLimits {
    pub(crate) loop_iterations: u64,
    pub(crate) recursion: usize,
}

/// From the host to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Down {
    /// The first message: everything a worker needs, since it may open no file afterwards.
    Init {
        actions: Vec<(String, String)>,
        limits: ContextLimits,
        /// Bytes of memory the worker may map (`RLIMIT_DATA`); 0 for none.
        memory_limit: u64,
        /// Whether to compile every action once and report the errors in [`Up::Ready`].
        check: bool,
    },
    /// Run one program. Several may be queued; the worker runs them in order.
    Run { job: u64, program: Job },
    /// The host's answer to [`Up::Call`].
    Reply {
        call: u32,
        result: Result<String, CallError>,
    },
}

/// What a [`Down::Run`] runs.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Job {
    /// A compiled action in `app`'s own context, with `vo` as its argument.
    Action {
        app: String,
        id: String,
        vo: Vec<(String, String)>,
        /// `vo.media`, for an inbound message; see [`super::Program::Action`].
        media: Option<Vec<MediaItem>>,
    },
    /// A whole script, in a fresh context of its own.
    Script { name: String, source: String },
    /// Parse a script without running it (`check`).
    Parse { name: String, source: String },
}

/// From a worker to the host.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Up {
    Ready {
        version: u32,
        compile_errors: Vec<Failure>,
    },
    /// A `utils` function that needs the host; the script waits for the [`Down::Reply`].
    Call { call: u32, request: Call },
    /// A line a script logged, with the level's name.
    Log { level: Level, message: String },
    Done {
        job: u64,
        /// The completion value as JSON text, when it has one.
        result: Result<Option<String>, Failure>,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

/// The `utils` calls the host answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Call {
    Send(SendArgs),
    /// `utils.sendWhatsappTemplate`.
    Template(TemplateArgs),
    /// `utils.getParameter(name)`: the answer is JSON text, `null` when unset.
    GetParameter(String),
    /// `utils.whatsappSessionOpen([fromNr, ]toPhoneNumber)`: `from` is `None` for the app's own
    /// number. The answer is `true` or `false`.
    SessionOpen {
        from: Option<String>,
        to: String,
    },
}

/// `utils.sendWhatsappMessage`'s arguments, already sorted into their form by the worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SendArgs {
    /// A tenant's `(accountId, secretKey, fromNr)`; `None` sends with the app's account.
    pub(crate) tenant: Option<(String, String, String)>,
    pub(crate) to: String,
    pub(crate) body: String,
    pub(crate) media: Media,
}

/// `utils.sendWhatsappTemplate`'s arguments, already sorted into their form by the worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TemplateArgs {
    /// A tenant's `(accountId, secretKey, fromNr)`; `None` sends with the app's account.
    pub(crate) tenant: Option<(String, String, String)>,
    pub(crate) to: String,
    pub(crate) content_sid: String,
    /// The variables object's own enumerable keys in order, each value as a string (numbers
    /// converted as JS does) or `None` for null or undefined, which the host refuses; `None`
    /// when `variables` was null.
    pub(crate) variables: Option<Variables>,
}

/// A refused call: thrown in the script as a `TypeError` when `usage`, else an `Error`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CallError {
    pub(crate) usage: bool,
    pub(crate) message: String,
}

/// Why a program failed inside the worker; the host maps it to [`super::RunError`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Failure {
    UnknownAction(String),
    Compile {
        name: String,
        message: String,
    },
    Threw {
        message: String,
        stack: Option<String>,
    },
    Limit(String),
}

/// Appends one frame holding `message` to `buffer`.
pub(crate) fn encode<T: Serialize>(message: &T, buffer: &mut Vec<u8>) {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; 4]);
    let body = postcard::to_extend(message, std::mem::take(buffer))
        .expect("postcard writes every message type to a Vec");
    *buffer = body;
    let len = (buffer.len() - start - 4) as u32;
    buffer[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Decodes one frame's body.
pub(crate) fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> io::Result<T> {
    postcard::from_bytes(body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad frame: {e}")))
}

/// [`Down::Run`] with its job borrowed: the host keeps the job to hand it to a replacement
/// should the worker go first. Same variant index and fields, so it decodes as `Down::Run`.
#[derive(Serialize)]
enum RunRef<'a> {
    _Init,
    Run { job: u64, program: &'a Job },
}

/// A message's body, for the host's framed socket, which writes the length itself.
pub(crate) fn body<T: Serialize>(message: &T) -> Vec<u8> {
    postcard::to_stdvec(message).expect("postcard writes every message type to a Vec")
}

/// The body of `Down::Run { job, program }`.
pub(crate) fn run_body(job: u64, program: &Job) -> Vec<u8> {
    body(&RunRef::Run { job, program })
}

/// Reads one frame's body into `buffer`: the worker side, on blocking I/O. `Ok(false)` at a
/// clean end of stream (the host went away).
pub(crate) fn read_frame(input: &mut impl Read, buffer: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    buffer.resize(len, 0);
    input.read_exact(buffer)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_through_the_blocking_reader() {
        let mut wire = Vec::new();
        let message = Down::Run {
            job: 7,
            program: Job::Action {
                app: "crm".into(),
                id: "onStatus".into(),
                vo: vec![("MessageSid".into(), "SM1".into())],
                media: Some(vec![MediaItem {
                    url: "https://m/0".into(),
                    content_type: "image/jpeg".into(),
                }]),
            },
        };
        encode(&message, &mut wire);
        encode(
            &Up::Log {
                level: Level::Info,
                message: "x".into(),
            },
            &mut wire,
        );
        let mut input = wire.as_slice();
        let mut body = Vec::new();
        assert!(read_frame(&mut input, &mut body).unwrap());
        match decode::<Down>(&body).unwrap() {
            Down::Run {
                job: 7,
                program: Job::Action { app, id, vo, media },
            } => {
                assert_eq!((app.as_str(), id.as_str()), ("crm", "onStatus"));
                assert_eq!(vo, [("MessageSid".to_string(), "SM1".to_string())]);
                assert_eq!(media.unwrap()[0].content_type, "image/jpeg");
            }
            other => panic!("decoded {other:?}"),
        }
        assert!(read_frame(&mut input, &mut body).unwrap());
        assert!(matches!(decode::<Up>(&body).unwrap(), Up::Log { .. }));
        assert!(!read_frame(&mut input, &mut body).unwrap(), "clean end");
    }

    #[test]
    fn a_borrowed_run_decodes_as_a_run() {
        let program = Job::Script {
            name: "s".into(),
            source: "1".into(),
        };
        let body = run_body(3, &program);
        assert!(matches!(
            decode::<Down>(&body).unwrap(),
            Down::Run {
                job: 3,
                program: Job::Script { .. }
            }
        ));
    }

    #[test]
    fn an_oversized_length_is_refused_before_any_allocation() {
        let wire = (MAX_FRAME as u32 + 1).to_le_bytes();
        let error = read_frame(&mut wire.as_slice(), &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("over the"), "{error}");
    }
}
