//! Poison actions against the real binary (issue 9). JavaScript runs in supervised `js-worker`
//! child processes, so an action that overflows the stack, runs away inside a built-in, eats
//! memory or kills the host ends `dead` with a named cause. Every test checks from outside that
//! the host kept its pid and that a healthy app's callbacks, posted right behind the poison
//! event, are all done within seconds. Processes are read from `/proc`; the store is read
//! through the `events` command, as an operator would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::helpers::*;

/// The app whose action misbehaves. The healthy app is the helpers' [`APP`].
const POISON: &str = "poison";
/// The poison event's message.
const POISON_SID: &str = "SM0000000000000000000000000000dead";
/// Runs of the poison event before it is dead; small, so the tests are quick.
const MAX_ATTEMPTS: u32 = 2;
/// Worker processes, unless a test says otherwise.
const WORKERS: usize = 2;
/// The healthy app's callbacks posted right behind the poison event.
const HEALTHY: usize = 100;
/// The healthy app's action.
const HEALTHY_ACTION: &str = "utils.debug('healthy ' + vo.MessageSid);";
/// How long the healthy callbacks may take: "within seconds", with room for a loaded two-core
/// machine running a debug build.
const HEALTHY_WAIT: Duration = Duration::from_secs(20);
/// Starting the host, and the poison event reaching `dead`.
const WAIT: Duration = Duration::from_secs(30);
/// Above this the host's process tree is killed and the test fails: a memory bound that does
/// not hold must not take the machine down with it.
const TREE_RSS_CAP_MB: u64 = 2048;
/// What the host's own RSS may grow by while an action's memory bomb goes off.
const HOST_RSS_GROWTH_MB: u64 = 64;
/// CPU a process may use in one idle second (10 ms ticks): a spinning thread uses ~100.
const IDLE_TICKS: u64 = 20;

/// The tests here burn CPU on purpose and time a healthy app: one at a time, so they don't slow
/// each other's healthy callbacks past their wait.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- the poison actions ----

/// Deep nesting in `JSON.stringify`: the serializer recurses natively, once per level.
const DEEP_JSON: &str = "var o = {}, c = o;\n\
    for (var i = 0; i < 1e6; i++) { c.a = {}; c = c.a; }\n\
    JSON.stringify(o);";
/// Recursion through built-ins alone: `String` of a deeply nested array is `join` calling each
/// element's `toString`, which is `join` again, with no JavaScript frame in between, so boa's
/// recursion limit never sees it. (`[0].map(f)`, `forEach` and a `JSON.parse` reviver recurse
/// through JavaScript frames and stop at the recursion limit instead.)
const DEEP_BUILT_INS: &str = "var a = [];\n\
    for (var i = 0; i < 1e6; i++) { a = [a]; }\n\
    String(a);";
/// Catastrophic backtracking inside the regex engine, a built-in loop limits can't see.
const CATASTROPHIC_REGEX: &str = "/^(a+)+$/.test('a'.repeat(40) + '!');";
/// Loops spread across calls: each frame stays under any per-frame loop limit.
const LOOPS_ACROSS_CALLS: &str = "function f() { for (var i = 0; i < 5e6; i++) {} }\n\
    for (;;) f();";
/// Memory that is kept: a new 1 MiB string per iteration, forever. The MiB is made once:
/// boa counts `repeat`'s work against the loop limit, which would stop the issue's
/// `keep.push('x'.repeat(1<<20)+keep.length)` after ten iterations, long before any memory limit.
const MEMORY_BOMB: &str = "var mb = 'x'.repeat(1 << 20), keep = [];\n\
    for (;;) keep.push(mb + keep.length);";

// ---- /proc ----

/// `/proc/<pid>/stat`'s fields after the command name (which may hold spaces and parentheses):
/// `[0]` is the state, `[1]` the parent pid, `[11]` and `[12]` utime and stime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Every process whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat_fields(pid).is_some_and(|f| f.get(1).is_some_and(|p| *p == parent.to_string()))
        })
        .collect()
}

/// A process's command line, arguments joined by spaces.
fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// CPU used so far, user and system, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A line of `/proc/<pid>/status`, such as `NoNewPrivs`, without its name.
fn status_line(pid: &str, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// Resident memory in MiB.
fn rss_mb(pid: u32) -> Option<u64> {
    let kb = status_line(&pid.to_string(), "VmRSS")?;
    Some(kb.trim_end_matches("kB").trim().parse::<u64>().ok()? / 1024)
}

/// Whether `pid` is gone: exited, or a zombie nobody has reaped yet.
fn gone(pid: u32) -> bool {
    stat_fields(pid).is_none_or(|f| f.first().is_some_and(|s| s == "Z" || s == "X"))
}

/// SIGKILLs `pids`, quietly: some may have exited already.
fn sigkill(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(u32::to_string))
        .stderr(std::process::Stdio::null())
        .status();
}

/// Whether this kernel has seccomp: `/proc/self/status` then has a `Seccomp` line.
fn kernel_has_seccomp() -> bool {
    status_line("self", "Seccomp").is_some()
}

// ---- the store, read from outside ----

/// An event as `events --json` prints it: what these tests read.
#[derive(Debug, Deserialize)]
struct StoredEvent {
    app: String,
    message_sid: Option<String>,
    state: String,
    attempts: u32,
    last_error: Option<String>,
}

/// Every stored event.
struct Events(Vec<StoredEvent>);

impl Events {
    fn poison(&self) -> Option<&StoredEvent> {
        self.0
            .iter()
            .find(|e| e.message_sid.as_deref() == Some(POISON_SID))
    }

    /// The poison event, which the test posted.
    fn the_poison(&self) -> &StoredEvent {
        self.poison().expect("the poison event is stored")
    }

    fn poison_is(&self, state: &str) -> bool {
        self.poison().is_some_and(|e| e.state == state)
    }

    /// The healthy app's events that are done.
    fn healthy_done(&self) -> usize {
        self.0
            .iter()
            .filter(|e| e.app == APP && e.state == "done")
            .count()
    }

    /// Counts by app and state, the poison event in full, and one healthy failure if any: what
    /// a timed-out wait reports.
    fn summary(&self) -> String {
        let mut counts = std::collections::BTreeMap::<(&str, &str), usize>::new();
        for e in &self.0 {
            *counts.entry((&e.app, &e.state)).or_default() += 1;
        }
        let failed = self
            .0
            .iter()
            .find(|e| e.app == APP && e.last_error.is_some());
        format!(
            "{counts:?}; poison event: {:?}; a healthy one that failed: {failed:?}",
            self.poison()
        )
    }
}

// ---- the host ----

/// The real binary serving a test's settings, checked from outside.
struct Host {
    config: TestConfig,
    log: PathBuf,
    served: ServedBinary,
    /// The host's pid when it started: it must never change.
    pid: u32,
    http: reqwest::Client,
}

impl Host {
    async fn start(config: TestConfig) -> Host {
        let log = config.dir.path().join("server.log");
        let served = config.serve_binary(&log, "info", WAIT).await;
        let pid = served.pid();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Host {
            config,
            log,
            served,
            pid,
            http,
        }
    }

    /// SIGKILLs the host, as a poison event that takes the whole process down would; returns
    /// the worker processes it had.
    async fn kill(&mut self) -> Vec<u32> {
        let workers = self.workers();
        self.served.child.kill().await.expect("SIGKILL the host");
        workers
    }

    /// Starts the host again on the same settings and data, after [`Host::kill`].
    async fn restart(&mut self) {
        self.served = self.config.serve_binary(&self.log, "info", WAIT).await;
        self.pid = self.served.pid();
    }

    /// The host's `js-worker` children.
    fn workers(&self) -> Vec<u32> {
        children(self.pid)
            .into_iter()
            .filter(|&pid| cmdline(pid).contains("js-worker"))
            .collect()
    }

    /// Kills the host and its workers, for a test that is failing or done.
    fn kill_tree(&mut self) {
        let workers = self.workers();
        let _ = self.served.child.start_kill();
        sigkill(&workers);
    }

    /// Panics, with the log's tail, if the host has exited, or if its process tree holds more
    /// memory than a bounded action could (killing it first).
    fn assert_alive(&mut self, what: &str) {
        if let Ok(Some(status)) = self.served.child.try_wait() {
            panic!(
                "the host (pid {}) exited with {status} while {what}:\n{}",
                self.pid,
                log_tail(&self.log)
            );
        }
        let tree: u64 = std::iter::once(self.pid)
            .chain(children(self.pid))
            .filter_map(rss_mb)
            .sum();
        if tree > TREE_RSS_CAP_MB {
            self.kill_tree();
            panic!(
                "the host's process tree reached {tree} MB while {what}: nothing bounded the \
                 action's memory, so the test killed it"
            );
        }
    }

    /// The host is the process the test started: still running under the same pid, and still
    /// answering `/healthz`.
    async fn assert_same_host_serving(&mut self) {
        self.assert_alive("checking it is the same host");
        assert!(
            !gone(self.pid),
            "the host's pid {} is no longer running",
            self.pid
        );
        let (status, body) = self.healthz().await;
        assert_eq!(status, 200, "/healthz of pid {}: {body}", self.pid);
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.served.base_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the host (pid {}): {e}", self.pid))
    }

    async fn healthz(&self) -> (u16, Value) {
        let response = self.get("/healthz").await;
        let status = response.status().as_u16();
        (
            status,
            response.json().await.expect("/healthz answers JSON"),
        )
    }

    /// `/healthz`'s `js_workers` object.
    async fn js_workers(&self) -> Value {
        let (_, body) = self.healthz().await;
        match body.get("js_workers") {
            Some(workers) if workers.is_object() => workers.clone(),
            _ => panic!("/healthz has no js_workers object: {body}"),
        }
    }

    /// One sample of `/metrics`, by its series exactly as printed (`name{label="value"}`).
    async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.trim().parse().expect("a sample value"))
    }

    /// Posts a signed status callback for `app`; the host must acknowledge it.
    async fn post(&self, app: &str, sid: &str, status: &str) {
        let url = callback_url(&self.served.base_url, app, "ACME");
        let response = signed_callback(&self.http, &url, &status_fields(sid, status))
            .send()
            .await
            .unwrap_or_else(|e| panic!("posting {sid} for {app}: {e}"));
        assert_eq!(response.status(), 200, "callback {sid} for {app}");
    }

    /// Posts the healthy app's [`HEALTHY`] callbacks, numbered from `first`.
    async fn post_healthy(&self, first: usize) {
        for i in first..first + HEALTHY {
            self.post(APP, &format!("SM{i:032x}"), "delivered").await;
        }
    }

    /// Every stored event, read by the `events` command.
    async fn events(&self) -> Events {
        let out = tokio::process::Command::from(self.config.command())
            .args(["events", "--json", "--limit", "10000"])
            .output()
            .await
            .expect("the events command runs");
        assert!(
            out.status.success(),
            "events --json: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Events(serde_json::from_slice(&out.stdout).expect("events --json prints a list"))
    }

    /// Polls the store until `done` holds, checking between polls that the host is alive and
    /// that no healthy callback has ended dead; panics after `timeout` with what it saw last.
    async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Events) -> bool,
    ) -> Events {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_alive(&format!("waiting for {what}"));
            let events = self.events().await;
            assert!(
                !events.0.iter().any(|e| e.app == APP && e.state == "dead"),
                "a healthy callback ended dead while waiting for {what}; the store holds {}",
                events.summary()
            );
            if done(&events) {
                return events;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; the store holds {}\n{}",
                    events.summary(),
                    log_tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_for_healthy(&mut self, done: usize) {
        self.wait_for(
            &format!("{done} healthy callbacks to be done"),
            HEALTHY_WAIT,
            |e| e.healthy_done() == done,
        )
        .await;
    }

    /// Waits until `/healthz` reports `n` running workers and the host has `n` worker children.
    async fn wait_for_workers(&mut self, n: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.assert_alive("waiting for its workers");
            let running = self.js_workers().await["running"].clone();
            let found = self.workers();
            if running == n && found.len() == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} js-worker children of the host: /healthz says {running}, /proc \
                 shows {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The poison run was stopped for `cause` on every attempt, and its workers were replaced:
    /// `/healthz` and `/metrics` count it, and the full set of workers is back.
    async fn assert_stopped_by(&mut self, cause: &str) {
        let workers = self.js_workers().await;
        let restarts = workers["restarts"][cause].as_u64();
        assert!(
            restarts >= Some(u64::from(MAX_ATTEMPTS)),
            "/healthz js_workers.restarts.{cause}: {workers}"
        );
        for name in [
            "whatsapp_js_worker_restarts_total",
            "whatsapp_js_runs_stopped_total",
        ] {
            let series = format!("{name}{{cause=\"{cause}\"}}");
            let value = self.metric(&series).await;
            assert!(
                value >= Some(f64::from(MAX_ATTEMPTS)),
                "/metrics {series}: {value:?}"
            );
        }
        self.wait_for_workers(WORKERS).await;
        assert_eq!(
            self.metric("whatsapp_js_workers").await,
            Some(WORKERS as f64),
            "/metrics whatsapp_js_workers"
        );
    }

    /// Neither the host nor any child of it uses CPU over one second, sampled from `/proc`.
    async fn assert_nothing_burns_cpu(&self) {
        let pids: Vec<u32> = std::iter::once(self.pid)
            .chain(children(self.pid))
            .collect();
        let before: Vec<_> = pids.iter().map(|&p| cpu_ticks(p)).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy: Vec<String> = pids
            .iter()
            .zip(before)
            .filter_map(|(&pid, before)| {
                let used = cpu_ticks(pid)? - before?;
                (used > IDLE_TICKS).then(|| format!("pid {pid} ({}): {used}0 ms", cmdline(pid)))
            })
            .collect();
        assert!(
            busy.is_empty(),
            "still burning CPU in the second sampled, 2 s after the event was dead: {busy:?}"
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_tree();
    }
}

// ---- the scenario most tests share ----

/// A host with the healthy app ([`APP`], [`HEALTHY_ACTION`]) and the poison app ([`POISON`],
/// running `poison`), [`WORKERS`] workers and [`MAX_ATTEMPTS`] attempts.
fn two_apps(poison: &str) -> TestConfig {
    TestConfig::new()
        .action("healthy", HEALTHY_ACTION)
        .app(POISON, "poison", poison)
        .actions_setting("max_attempts", MAX_ATTEMPTS)
        .actions_setting("workers", WORKERS)
}

/// Posts the poison event and the healthy app's callbacks right behind it, and waits for all of
/// those to be done and the poison event to be dead after [`MAX_ATTEMPTS`] runs; checks that the
/// host is still the same process, and returns the events.
async fn poison_then_healthy(host: &mut Host) -> Events {
    poison_and_healthy_on(host).await;
    let events = host
        .wait_for("the poison event to be dead", WAIT, |e| e.poison_is("dead"))
        .await;
    let poison = events.the_poison();
    assert_eq!(poison.attempts, MAX_ATTEMPTS, "{poison:?}");
    host.assert_same_host_serving().await;
    events
}

/// Posts the poison event, then the healthy callbacks, and waits for those to be done.
async fn poison_and_healthy_on(host: &mut Host) {
    host.post(POISON, POISON_SID, "sent").await;
    host.post_healthy(0).await;
    host.wait_for_healthy(HEALTHY).await;
}

fn assert_cause(poison: &StoredEvent, fragments: &[&str]) {
    let error = poison.last_error.as_deref().unwrap_or_default();
    for fragment in fragments {
        assert!(error.contains(fragment), "{fragment:?} in {error:?}");
    }
}

// ---- stack overflow ----

async fn stack_overflow_crashes_only_its_worker(poison: &str) {
    let _serial = SERIAL.lock().await;
    let mut host = Host::start(two_apps(poison)).await;
    let events = poison_then_healthy(&mut host).await;
    assert_cause(events.the_poison(), &["worker crashed: stack overflow"]);
    host.assert_stopped_by("crash").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_in_json_stringify_crashes_only_its_worker_and_the_event_ends_dead() {
    stack_overflow_crashes_only_its_worker(DEEP_JSON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_through_built_ins_crashes_only_its_worker_and_the_event_ends_dead() {
    stack_overflow_crashes_only_its_worker(DEEP_BUILT_INS).await;
}

// ---- wall-clock budget ----

async fn runaway_is_stopped_at_the_budget_and_leaves_nothing_burning_cpu(poison: &str) {
    let _serial = SERIAL.lock().await;
    let config = two_apps(poison).actions_setting("budget_ms", 500);
    let mut host = Host::start(config).await;
    let events = poison_then_healthy(&mut host).await;
    assert_cause(events.the_poison(), &["wall-clock budget of", "exceeded"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    host.assert_nothing_burns_cpu().await;
    host.assert_stopped_by("budget").await;
    host.assert_same_host_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catastrophic_regex_is_stopped_at_the_budget_and_leaves_nothing_burning_cpu() {
    runaway_is_stopped_at_the_budget_and_leaves_nothing_burning_cpu(CATASTROPHIC_REGEX).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_across_calls_are_stopped_at_the_budget_and_leave_nothing_burning_cpu() {
    runaway_is_stopped_at_the_budget_and_leaves_nothing_burning_cpu(LOOPS_ACROSS_CALLS).await;
}

// ---- memory ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_stopped_at_memory_limit_and_the_hosts_own_rss_does_not_grow() {
    let _serial = SERIAL.lock().await;
    let config = two_apps(MEMORY_BOMB).actions_setting("memory_limit_mb", 128);
    let mut host = Host::start(config).await;
    let before = rss_mb(host.pid).expect("the host's VmRSS");
    let events = poison_then_healthy(&mut host).await;
    assert_cause(events.the_poison(), &["memory limit of 128 MB exceeded"]);
    host.assert_stopped_by("memory").await;
    let after = rss_mb(host.pid).expect("the host's VmRSS");
    assert!(
        after <= before + HOST_RSS_GROWTH_MB,
        "the host's own RSS grew from {before} MB to {after} MB"
    );
}

// ---- a poison event that kills the host ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_run_kills_the_host_is_dead_after_max_attempts_restarts_and_not_run_again() {
    let _serial = SERIAL.lock().await;
    // The budget outlasts the test: only the kills stop these runs.
    let config = two_apps(LOOPS_ACROSS_CALLS).actions_setting("budget_ms", 60_000);
    let mut host = Host::start(config).await;
    poison_and_healthy_on(&mut host).await;
    for attempt in 1..=MAX_ATTEMPTS {
        if attempt > 1 {
            host.restart().await;
        }
        host.wait_for(
            &format!("attempt {attempt} to be recorded before its run (it never finishes)"),
            Duration::from_secs(10),
            |e| e.poison().is_some_and(|p| p.attempts >= attempt),
        )
        .await;
        wait_for_a_busy_worker(&host).await;
        let workers = host.kill().await;
        wait_until_gone(&workers).await;
    }

    host.restart().await;
    let events = host
        .wait_for(
            &format!("the event to be dead after {MAX_ATTEMPTS} runs that killed the host"),
            WAIT,
            |e| e.poison_is("dead"),
        )
        .await;
    let poison = events.the_poison();
    assert_eq!(poison.attempts, MAX_ATTEMPTS, "not run again: {poison:?}");
    println!("last_error of the event that killed the host: {poison:?}");
    host.post_healthy(HEALTHY).await;
    host.wait_for_healthy(2 * HEALTHY).await;
    host.assert_same_host_serving().await;

    // Once dead it stays dead: another restart does not dispatch it.
    let workers = host.kill().await;
    wait_until_gone(&workers).await;
    host.restart().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    host.assert_nothing_burns_cpu().await;
    let events = host.events().await;
    let poison = events.the_poison();
    assert_eq!(
        (poison.state.as_str(), poison.attempts),
        ("dead", MAX_ATTEMPTS),
        "after one more restart: {poison:?}"
    );
    host.assert_same_host_serving().await;
}

/// Waits until one of the host's workers is using CPU: the poison action is running.
async fn wait_for_a_busy_worker(host: &Host) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let workers = host.workers();
        let before: Vec<_> = workers.iter().map(|&p| cpu_ticks(p)).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let busy = workers.iter().zip(before).any(|(&pid, before)| {
            cpu_ticks(pid)
                .zip(before)
                .is_some_and(|(now, then)| now - then >= 5)
        });
        if busy {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no js-worker child of the host is running the action: workers {workers:?}\n{}",
            log_tail(&host.log)
        );
    }
}

/// Waits until every process in `pids` has exited: a killed host's workers must not outlive
/// it and keep running its action. Kills any left, so the test leaves none behind.
async fn wait_until_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|&p| gone(p)) {
        if Instant::now() > deadline {
            let left: Vec<u32> = pids.iter().copied().filter(|&p| !gone(p)).collect();
            sigkill(&left);
            panic!("workers {left:?} outlived their killed host by 5 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- sandbox ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_without_new_privileges_under_seccomp_and_cannot_open_files_or_sockets() {
    let _serial = SERIAL.lock().await;
    let mut host = Host::start(two_apps(HEALTHY_ACTION)).await;
    host.post_healthy(0).await;
    host.wait_for_healthy(HEALTHY).await;
    host.wait_for_workers(WORKERS).await;
    let seccomp = kernel_has_seccomp();
    for pid in host.workers() {
        let pid = pid.to_string();
        assert_eq!(
            status_line(&pid, "NoNewPrivs").as_deref(),
            Some("1"),
            "NoNewPrivs of worker {pid}"
        );
        if seccomp {
            assert_eq!(
                status_line(&pid, "Seccomp").as_deref(),
                Some("2"),
                "Seccomp (2: filter) of worker {pid}"
            );
        }
    }

    let settings = host.config.path();
    assert!(
        std::fs::File::open(&settings).is_ok(),
        "the test itself can read the settings"
    );
    let out = probe(&settings).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "js-worker --probe exited with {}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(stdout.trim()).expect("the probe prints one JSON line");
    if seccomp {
        for what in ["open", "socket"] {
            let outcome = report[what].as_str().expect("a string per attempt");
            assert_ne!(outcome, "ok", "the sandboxed probe could {what}: {report}");
        }
    } else {
        println!("no seccomp on this kernel; the probe reported {report}");
    }
    host.assert_same_host_serving().await;
}

/// `whatsapp-host js-worker --probe <path>`: the worker's sandbox, then an open of `path` and a
/// TCP socket, reported as one JSON line.
async fn probe(path: &Path) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_whatsapp-host"))
        .arg("js-worker")
        .arg("--probe")
        .arg(path)
        .env_remove("WHATSAPP_HOST_SETTINGS")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("js-worker --probe answers within 10 s")
        .expect("the binary runs")
}

// ---- apps can't reach each other ----

/// App A: queues a job that logs whose `vo` it sees, changes every built-in it can reach
/// (each change may throw: the realm is frozen), and throws.
const TAMPERER: &str = r#"
Promise.resolve().then(() => utils.info('A-JOB ran in ' + vo.appId));
function attempt(change) { try { change(); } catch (e) {} }
const finished = () => ({ value: 'tampered', done: true });
attempt(() => { Iterator.prototype.map = function () { return 'tampered'; }; });
attempt(() => { Object.getPrototypeOf([].values()).next = finished; });
attempt(() => { Object.getPrototypeOf([].values().map((v) => v)).next = finished; });
attempt(() => { Object.getPrototypeOf(Iterator.from({ next: finished })).next = finished; });
attempt(() => { Array.prototype.push = function () { return -1; }; });
attempt(() => { globalThis.x = 'tampered'; });
attempt(() => { Object.defineProperty(globalThis, 'vo', { writable: false }); });
throw new Error('A');
"#;

/// App B: throws if it sees any of A's changes, so its events end `done` only when none
/// reached it. Records problems without `push`, which A tries to replace.
const CHECKER: &str = r#"
const problems = [];
const problem = (name) => { problems[problems.length] = name; };
if (vo.appId !== 'crm') problem('vo is ' + vo.appId);
if ('x' in globalThis) problem('globalThis.x');
const pushed = [];
if (pushed.push(1) !== 1 || pushed.length !== 1) problem('Array.prototype.push');
const values = [1, 2].values();
const first = values.next();
if (first.value !== 1 || first.done) problem('the array iterator next');
const mapped = [1, 2].values().map((v) => v * 2);
if (typeof mapped !== 'object' || typeof mapped.next !== 'function') {
  problem('Iterator.prototype.map');
} else {
  const a = mapped.next(), b = mapped.next(), c = mapped.next();
  if (a.value !== 2 || b.value !== 4 || !c.done) problem('the iterator helper next');
}
let count = 0;
const wrapped = Iterator.from({ next() { count += 1; return { value: count, done: count > 1 }; } });
if (wrapped.next().value !== 1 || !wrapped.next().done) problem('the wrapped iterator next');
if (problems.length > 0) throw new Error('changes from another app: ' + problems.join(', '));
utils.debug('B checked ' + vo.MessageSid);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_apps_jobs_and_built_in_changes_never_reach_another_app_on_the_same_worker() {
    let _serial = SERIAL.lock().await;
    // One worker: every event of both apps runs on it, A's first.
    let config = TestConfig::new()
        .action("checker", CHECKER)
        .app(POISON, "tamperer", TAMPERER)
        .actions_setting("max_attempts", MAX_ATTEMPTS)
        .actions_setting("workers", 1);
    let mut host = Host::start(config).await;
    poison_and_healthy_on(&mut host).await;
    let events = host
        .wait_for("A's event to be dead", WAIT, |e| e.poison_is("dead"))
        .await;
    assert_cause(events.the_poison(), &["Error: A"]);
    // B once more, after A's last attempt.
    host.post_healthy(HEALTHY).await;
    host.wait_for_healthy(2 * HEALTHY).await;
    host.assert_same_host_serving().await;

    let log = std::fs::read_to_string(&host.log).unwrap();
    let leaked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("A-JOB") && l.contains(APP))
        .collect();
    assert!(
        leaked.is_empty(),
        "A's promise job ran in B's event: {leaked:?}"
    );
}

// ---- what still behaves as today ----

/// Throws, loops, tries `eval` or replaces a `utils` function, by the status it is called for.
const MISBEHAVING: &str = r#"
switch (vo.MessageStatus) {
  case 'failed':
    throw new Error('thrown on purpose');
  case 'sent':
    while (true) {}
  case 'read': {
    let outcome;
    try { eval('1 + 1'); outcome = 'ran'; } catch (e) { outcome = e.name + ': ' + e.message; }
    throw new Error('eval: ' + outcome);
  }
  default: {
    let outcome;
    try { utils.info = function () {}; outcome = 'replaced'; } catch (e) { outcome = e.name; }
    throw new Error('utils: ' + outcome + ', frozen ' + Object.isFrozen(utils));
  }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throwing_looping_eval_and_utils_changes_behave_as_before_in_the_real_binary() {
    let _serial = SERIAL.lock().await;
    // Far under what a loop limit lets `while (true) {}` run, so the wall clock is what stops it.
    let config = two_apps(MISBEHAVING).actions_setting("budget_ms", 200);
    let mut host = Host::start(config).await;
    let cases = [
        (
            "failed",
            "SM000000000000000000000000000000f1",
            vec!["Error: thrown on purpose"],
        ),
        (
            "sent",
            "SM000000000000000000000000000000f2",
            vec!["wall-clock budget of 200ms exceeded"],
        ),
        (
            "read",
            "SM000000000000000000000000000000f3",
            vec!["eval: EvalError: ", "disabled"],
        ),
        (
            "undelivered",
            "SM000000000000000000000000000000f4",
            vec!["utils: TypeError, frozen true"],
        ),
    ];
    for (status, sid, _) in &cases {
        host.post(POISON, sid, status).await;
    }
    host.post_healthy(0).await;
    host.wait_for_healthy(HEALTHY).await;
    let events = host
        .wait_for("the misbehaving events to be dead", WAIT, |e| {
            e.0.iter()
                .filter(|e| e.app == POISON && e.state == "dead")
                .count()
                == cases.len()
        })
        .await;
    for (status, sid, fragments) in &cases {
        let event = events
            .0
            .iter()
            .find(|e| e.message_sid.as_deref() == Some(*sid))
            .unwrap();
        assert_eq!(event.attempts, MAX_ATTEMPTS, "{status}: {event:?}");
        assert_cause(event, fragments);
    }
    host.assert_same_host_serving().await;
}
