//! A JS worker process: `whatsapp-host js-worker`, started by the host with one end of a
//! socket pair as its stdin. It takes its actions and limits in the first message, locks
//! itself down ([`super::sandbox`]), and then runs jobs one after another until the host goes
//! away, asking the host for everything `utils` does.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::rc::Rc;

use super::protocol::{
    self, Call, CallError, ContextLimits, Down, Failure, Job, Level, Up, VERSION,
};
use super::realm::{self, AppRealm};
use super::runtime::{Host, HostLink};
use super::sandbox;

/// Stack of the thread that runs JS: deep but bounded JS recursion must not overflow it.
/// Native recursion that goes deeper (a million nested objects in `JSON.stringify`) does, and
/// kills only this process.
const JS_STACK: usize = 16 * 1024 * 1024;

/// Log lines gathered before they are written without waiting for a reply or a result.
const LOG_BUFFER: usize = 64 * 1024;

/// The worker's entry point. Runs everything on a thread with a large stack.
pub fn main() -> ExitCode {
    let spawned = std::thread::Builder::new()
        .name("js".into())
        .stack_size(JS_STACK)
        .spawn(serve);
    match spawned.map(|t| t.join()) {
        Ok(Ok(Ok(()))) => ExitCode::SUCCESS,
        Ok(Ok(Err(e))) => {
            eprintln!("js worker: {e}");
            ExitCode::FAILURE
        }
        Ok(Err(_)) => ExitCode::from(101),
        Err(e) => {
            eprintln!("js worker: failed to start its thread: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `js-worker --probe PATH`: applies the worker's sandbox, then tries what a worker must not
/// be able to do, and prints what happened as one JSON line. For tests and operators checking
/// what the kernel enforces.
pub fn probe(path: &std::path::Path) -> ExitCode {
    let applied = sandbox::apply(0);
    let outcome = |r: io::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let open = outcome(std::fs::File::open(path).map(drop));
    let socket = outcome(std::net::UdpSocket::bind("127.0.0.1:0").map(drop));
    let line = serde_json::json!({
        "sandbox": applied.describe(),
        "open": open,
        "socket": socket,
    });
    println!("{line}");
    ExitCode::SUCCESS
}

fn serve() -> io::Result<()> {
    sandbox::die_with_host();
    // stdin is the host's socket. A duplicate of it is ours to own as a stream.
    let socket = UnixStream::from(io::stdin().as_fd().try_clone_to_owned()?);
    let link = Rc::new(Link::new(socket)?);
    let Some(Down::Init {
        actions,
        limits,
        memory_limit,
        check,
    }) = link.next_down()?
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the host's first message was not Init",
        ));
    };
    let applied = sandbox::apply(memory_limit);
    if let Some(problem) = applied.problem() {
        eprintln!("js worker: {problem}");
    }
    let host: Host = link.clone();
    let compile_errors = if check {
        realm::check_compiles(&actions, &limits, host.clone())
    } else {
        Vec::new()
    };
    link.send(&Up::Ready {
        version: VERSION,
        compile_errors,
    })?;
    let mut worker = Worker {
        actions: actions.into_iter().collect(),
        limits,
        host,
        realms: HashMap::new(),
    };
    while let Some((job, program)) = link.next_run()? {
        let result = worker.run(program);
        link.send(&Up::Done { job, result })?;
    }
    Ok(())
}

/// What a worker holds between jobs.
struct Worker {
    actions: HashMap<String, String>,
    limits: ContextLimits,
    host: Host,
    /// One context per app: no realm, job queue or built-in is shared between apps.
    realms: HashMap<String, AppRealm>,
}

impl Worker {
    fn run(&mut self, program: Job) -> Result<Option<String>, Failure> {
        match program {
            Job::Action { app, id, vo, media } => {
                let mut realm = match self.realms.remove(&app) {
                    Some(realm) => realm,
                    None => AppRealm::new(&self.limits, self.host.clone())?,
                };
                let source = self.actions.get(&id).map(String::as_str);
                let result = realm.run_action(&id, source, &vo, media.as_deref());
                // A run that threw or hit a limit may have left state behind (a queued job, a
                // half-built object): its realm goes, and the app's next event builds another.
                if !matches!(result, Err(Failure::Threw { .. } | Failure::Limit(_))) {
                    self.realms.insert(app, realm);
                }
                result
            }
            Job::Script { name, source } => {
                realm::run_script(&name, &source, &self.limits, self.host.clone())
            }
            Job::Parse { name, source } => {
                realm::parse_script(&name, &source, &self.limits, self.host.clone()).map(|()| None)
            }
        }
    }
}

/// The worker's end of the socket: reads the host's messages, writes its own, and keeps runs
/// that arrive while a script waits for a reply until their turn.
struct Link {
    io: RefCell<LinkIo>,
}

struct LinkIo {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    frame: Vec<u8>,
    /// Frames waiting to be written; log lines wait here for the next reply or result.
    out: Vec<u8>,
    queued: VecDeque<(u64, Job)>,
    next_call: u32,
}

impl Link {
    fn new(socket: UnixStream) -> io::Result<Link> {
        let writer = socket.try_clone()?;
        Ok(Link {
            io: RefCell::new(LinkIo {
                reader: BufReader::with_capacity(64 * 1024, socket),
                writer,
                frame: Vec::new(),
                out: Vec::with_capacity(LOG_BUFFER),
                queued: VecDeque::new(),
                next_call: 0,
            }),
        })
    }

    fn next_down(&self) -> io::Result<Option<Down>> {
        self.io.borrow_mut().read()
    }

    /// The next job: one that arrived during a call, or the next message. `None` when the
    /// host closed the channel.
    fn next_run(&self) -> io::Result<Option<(u64, Job)>> {
        let mut io = self.io.borrow_mut();
        if let Some(run) = io.queued.pop_front() {
            return Ok(Some(run));
        }
        match io.read()? {
            Some(Down::Run { job, program }) => Ok(Some((job, program))),
            Some(other) => Err(unexpected(&other)),
            None => Ok(None),
        }
    }

    fn send(&self, message: &Up) -> io::Result<()> {
        let mut io = self.io.borrow_mut();
        protocol::encode(message, &mut io.out);
        io.flush()
    }
}

impl LinkIo {
    fn read(&mut self) -> io::Result<Option<Down>> {
        if !protocol::read_frame(&mut self.reader, &mut self.frame)? {
            return Ok(None);
        }
        protocol::decode(&self.frame).map(Some)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }
}

fn unexpected(message: &Down) -> io::Error {
    let kind = match message {
        Down::Init { .. } => "Init",
        Down::Run { .. } => "Run",
        Down::Reply { .. } => "Reply",
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected {kind} message from the host"),
    )
}

impl HostLink for Link {
    fn call(&self, request: Call) -> Result<String, CallError> {
        let lost = |e: io::Error| CallError {
            usage: false,
            message: format!("the host did not answer: {e}"),
        };
        let mut io = self.io.borrow_mut();
        io.next_call = io.next_call.wrapping_add(1);
        let call = io.next_call;
        protocol::encode(&Up::Call { call, request }, &mut io.out);
        io.flush().map_err(lost)?;
        loop {
            match io.read().map_err(lost)? {
                Some(Down::Reply { call: id, result }) if id == call => return result,
                Some(Down::Run { job, program }) => io.queued.push_back((job, program)),
                Some(other) => return Err(lost(unexpected(&other))),
                None => return Err(lost(io::ErrorKind::UnexpectedEof.into())),
            }
        }
    }

    fn log(&self, level: Level, message: String) {
        let mut io = self.io.borrow_mut();
        protocol::encode(&Up::Log { level, message }, &mut io.out);
        if io.out.len() >= LOG_BUFFER {
            // A host that went away ends the worker at its next read.
            let _ = io.flush();
        }
    }
}
