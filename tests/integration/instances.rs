//! Several `whatsapp-host serve` processes on one PostgreSQL store (issue 10), always on a
//! fresh database of the server in `$WHATSAPP_HOST_TEST_PG_URL`: one instance SIGKILLed under
//! load loses and doubles nothing, sandbox sends stay 3 s apart across instances, and a
//! dashboard login and its CSRF token made on one instance work on the other.
//!
//! Each instance sends through its own path of one Twilio stand-in (`twilio.api_base` ends in
//! `/a`, `/b`, ...), so what the stand-in received says which instance ran what, and when.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use whatsapp_host::twilio::signature;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::dashboard::{COMPANY, PASSWORD, csrf_in, get_page, http, post_with_csrf};
use crate::helpers::stand_ins::{created, form};
use crate::helpers::*;

/// What every instance calls itself: the URL Twilio signs, as behind a load balancer.
const PUBLIC_URL: &str = "http://hooks.example.test";
/// A short lease, so a killed instance's events are claimed again within the test.
const LEASE: Duration = Duration::from_secs(2);
const POLL_MS: u64 = 200;
/// Long enough for a slow CI machine; every wait ends as soon as its condition holds.
const WAIT: Duration = Duration::from_secs(30);
/// Where the actions send.
const TO: &str = "+393331234567";

/// One create the Twilio stand-in received.
#[derive(Debug, Clone)]
struct Create {
    at: Instant,
    /// The first path segment: which instance (which `api_base`) sent it.
    instance: String,
    body: String,
}

/// A Twilio stand-in that accepts every create with a fresh sid and records it.
struct Recorder {
    log: Arc<Mutex<Vec<Create>>>,
    next_sid: AtomicU64,
}

impl Respond for Recorder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let instance = request
            .url
            .path_segments()
            .and_then(|mut s| s.next())
            .unwrap_or_default()
            .to_string();
        let body = form(request)
            .into_iter()
            .find(|(k, _)| k == "Body")
            .map(|(_, v)| v)
            .unwrap_or_default();
        self.log.lock().unwrap().push(Create {
            at: Instant::now(),
            instance,
            body,
        });
        let n = self.next_sid.fetch_add(1, Ordering::SeqCst);
        created(&format!("SMf{n:031x}"), TO)
    }
}

/// The recording stand-in and its log of creates.
async fn recording_twilio() -> (MockServer, Arc<Mutex<Vec<Create>>>) {
    let server = MockServer::start().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    Mock::given(any())
        .respond_with(Recorder {
            log: log.clone(),
            next_sid: AtomicU64::new(0),
        })
        .mount(&server)
        .await;
    (server, log)
}

/// Settings for one instance named `label`: the database `store_url`, [`PUBLIC_URL`], a short
/// lease, and sends through `{twilio}/{label}`; its callback action runs `source`.
fn instance(store_url: &str, twilio: &MockServer, label: &str, source: &str) -> TestConfig {
    let mut config = TestConfig::on_status(source)
        .api_base(format!("{}/{label}", twilio.uri()))
        .store_setting("lease_seconds", LEASE.as_secs())
        .store_setting("poll_ms", POLL_MS);
    config.store_url = Some(store_url.to_string());
    config.public_url = Some(PUBLIC_URL.to_string());
    config
}

/// Starts the binary on `config`, logging to `{label}.log` in its folder.
async fn serve(config: &TestConfig, label: &str) -> ServedBinary {
    let log = config.dir.path().join(format!("{label}.log"));
    config.serve_binary(&log, "warn", WAIT).await
}

/// Posts a status callback for `sid` to the instance at `base_url`, signed over the public
/// URL as Twilio signs it; true when it was acknowledged with 200.
async fn post_status(http: &reqwest::Client, base_url: &str, sid: &str, status: &str) -> bool {
    let fields = status_fields(sid, status);
    let signed = callback_url(PUBLIC_URL, APP, COMPANY);
    http.post(callback_url(base_url, APP, COMPANY))
        .header(
            "X-Twilio-Signature",
            signature::sign(AUTH_KEY, &signed, &fields),
        )
        .form(&fields)
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// A connection to the test database, for checking what the instances stored.
async fn database(store_url: &str) -> tokio_postgres::Client {
    pg::connect(&url::Url::parse(store_url).unwrap()).await
}

#[tokio::test]
async fn each_test_gets_its_own_empty_database() {
    let (first, second) = (pg::fresh_database().await, pg::fresh_database().await);
    assert_ne!(first, second);
    let client = database(&first).await;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "a fresh database has no tables");
    assert!(
        TestConfig::new()
            .postgres()
            .store_url
            .is_some_and(|u| u.starts_with("postgres")),
        "postgres() names a database"
    );
}

// ---- two instances, one dies ----------------------------------------------------------

/// Concurrent clients, the message sids each reports on, and the pause between posts that
/// spreads the load over a few seconds so the kill lands in its middle.
const CLIENTS: usize = 8;
const SIDS_PER_CLIENT: usize = 12;
const PAUSE: Duration = Duration::from_millis(80);
/// Acknowledgements to wait for before the kill.
const KILL_AFTER: usize = CLIENTS * SIDS_PER_CLIENT;
/// Lease ends are whole milliseconds of the instances' clocks, not the test's: some slack.
const SLACK: Duration = Duration::from_millis(100);

/// Each status callback's action sends once as it starts and once as it ends, naming its
/// event, so the stand-in records every run and how long it lasted. The 40 ms between keeps
/// dispatch a little behind the load, so the kill cuts runs and leaves events held.
const RECORD_RUNS: &str = "const key = vo.MessageSid + ' ' + vo.MessageStatus;\n\
     utils.sendWhatsappMessage('+393331234567', 'start ' + key);\n\
     const until = Date.now() + 40;\nwhile (Date.now() < until) {}\n\
     utils.sendWhatsappMessage('+393331234567', 'end ' + key);";

/// The statuses posted for the `j`th sid: in order, or with `read` before `delivered`, which
/// must not move the message back.
fn statuses(j: usize) -> [&'static str; 3] {
    if j.is_multiple_of(2) {
        ["sent", "delivered", "read"]
    } else {
        ["sent", "read", "delivered"]
    }
}

/// One run of an action on one instance, from its first send to its last (`None`: it never
/// got there).
#[derive(Debug)]
struct Run {
    instance: String,
    start: Instant,
    end: Option<Instant>,
}

/// The runs the stand-in recorded, per event (`"<sid> <status>"`).
fn runs(creates: &[Create]) -> BTreeMap<String, Vec<Run>> {
    let mut runs: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for create in creates {
        let (edge, key) = create
            .body
            .split_once(' ')
            .expect("start/end <sid> <status>");
        let list = runs.entry(key.to_string()).or_default();
        match edge {
            "start" => list.push(Run {
                instance: create.instance.clone(),
                start: create.at,
                end: None,
            }),
            "end" => {
                let run = list
                    .iter_mut()
                    .rev()
                    .find(|r| r.instance == create.instance && r.end.is_none())
                    .unwrap_or_else(|| panic!("an end without a start: {create:?}"));
                run.end = Some(create.at);
            }
            other => panic!("unexpected body {other:?}"),
        }
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_postgresql_lose_and_double_nothing_when_one_is_killed() {
    let (twilio, creates) = recording_twilio().await;
    let store_url = pg::fresh_database().await;
    let mut a = instance(&store_url, &twilio, "a1", RECORD_RUNS);
    let b = instance(&store_url, &twilio, "b", RECORD_RUNS);
    let mut first_a = serve(&a, "a").await;
    let served_b = serve(&b, "b").await;
    let a_addr = first_a.addr;
    let bases = [first_a.base_url.clone(), served_b.base_url.clone()];

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Each acknowledged event, and when its first post was sent.
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (http, acked, count) = (http.clone(), acked.clone(), count.clone());
            // Half the clients talk to A, half to B; each falls back on the other instance.
            let order = [bases[c % 2].clone(), bases[(c + 1) % 2].clone()];
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + WAIT;
                for j in 0..SIDS_PER_CLIENT {
                    let sid = format!("SM{:032x}", c * 1_000 + j);
                    for status in statuses(j) {
                        // The store can claim the event no earlier than this.
                        let posted = Instant::now();
                        'posted: loop {
                            for base in &order {
                                if post_status(&http, base, &sid, status).await {
                                    break 'posted;
                                }
                            }
                            assert!(
                                tokio::time::Instant::now() < deadline,
                                "neither instance acknowledged {sid} {status}"
                            );
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        acked
                            .lock()
                            .unwrap()
                            .insert(format!("{sid} {status}"), posted);
                        count.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(PAUSE).await;
                    }
                }
            })
        })
        .collect();

    let deadline = tokio::time::Instant::now() + WAIT;
    while count.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} callbacks acknowledged before the kill",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // `Child::kill` is SIGKILL on Unix: no shutdown code runs, its leases stay taken.
    first_a.child.kill().await.expect("SIGKILL instance A");
    let killed_at = Instant::now();
    let acked_at_kill = count.load(Ordering::SeqCst);
    let db = database(&store_url).await;
    let unfinished_at_kill: i64 = db
        .query_one("SELECT count(*) FROM events WHERE state <> 'done'", &[])
        .await
        .expect("the events table is there")
        .get(0);
    assert!(
        unfinished_at_kill > 0,
        "the kill left nothing unfinished; it would prove nothing"
    );
    // The same instance again, on the same port and store; its sends go through `/a2` so its
    // runs are told apart from the killed process's.
    a.api_base = format!("{}/a2", twilio.uri());
    let log_a = a.dir.path().join("a.log");
    let second_a = a.serve_binary_at(a_addr, &log_a, "warn", WAIT).await;
    for client in clients {
        client.await.expect("a client finished");
    }
    let acked: BTreeMap<String, Instant> = acked.lock().unwrap().clone();
    let total = CLIENTS * SIDS_PER_CLIENT * 3;
    assert_eq!(
        acked.len(),
        total,
        "every callback was acknowledged by one instance"
    );
    assert!(
        acked_at_kill < total,
        "the kill came after the load ({acked_at_kill} of {total} acknowledged)"
    );

    // Every acknowledged callback is stored once and done, whichever instance ran it.
    let deadline = tokio::time::Instant::now() + WAIT;
    let stored: BTreeMap<String, (i64, i64)> = loop {
        let rows = db
            .query(
                "SELECT message_sid || ' ' || message_status, count(*), \
                 count(*) FILTER (WHERE state = 'done') FROM events GROUP BY 1",
                &[],
            )
            .await
            .expect("the events table is there");
        let stored: BTreeMap<String, (i64, i64)> = rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        let finished = acked
            .keys()
            .all(|key| stored.get(key).is_some_and(|(_, done)| *done >= 1));
        if finished {
            break stored;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every acknowledged event is done after {WAIT:?}: {} of {} stored\nA: {}\nB: {}",
            stored.len(),
            acked.len(),
            log_tail(&log_a),
            log_tail(&b.dir.path().join("b.log"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (key, (rows, _)) in &stored {
        assert_eq!(*rows, 1, "{key} is stored exactly once");
    }

    // Statuses only moved forward: every message ends `read`, whatever order they came in.
    let sids: Vec<String> = acked
        .keys()
        .map(|key| key.split(' ').next().unwrap().to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows = db
        .query(
            "SELECT sid, status FROM messages WHERE sid = ANY($1)",
            &[&sids],
        )
        .await
        .expect("the messages table is there");
    assert_eq!(rows.len(), sids.len(), "one message row per sid");
    for row in rows {
        let (sid, status): (String, String) = (row.get(0), row.get(1));
        assert_eq!(status, "read", "{sid} ends at its most advanced status");
    }

    // Every event's action ran to its end at least once, and never on two instances at once
    // while the first still held its lease. A claim comes after the event's first post, so its
    // lease lasts at least until that post plus the lease: two runs that overlap, on two
    // instances, the later starting before then, ran while the earlier held the event. (The
    // actions here never fail, so no run lets go of its lease early.)
    let runs = runs(&creates.lock().unwrap());
    let killed = "a1";
    let mut rerun_after_kill = 0;
    for (key, posted) in &acked {
        let list = runs.get(key).map(Vec::as_slice).unwrap_or_default();
        assert!(
            list.iter().any(|r| r.end.is_some()),
            "the action for {key} never ran to its end: {list:?}"
        );
        for (i, one) in list.iter().enumerate() {
            for other in &list[i + 1..] {
                if one.instance == other.instance {
                    continue;
                }
                let end = |r: &Run| {
                    r.end.unwrap_or(if r.instance == killed {
                        killed_at
                    } else {
                        Instant::now()
                    })
                };
                let overlap = one.start < end(other) && other.start < end(one);
                let (earlier, later) = if one.start <= other.start {
                    (one, other)
                } else {
                    (other, one)
                };
                assert!(
                    !overlap || later.start + SLACK >= *posted + LEASE,
                    "{key} ran on {} and on {} at the same time, the later {:?} after the post, \
                     within the lease",
                    earlier.instance,
                    later.instance,
                    later.start - *posted
                );
                if earlier.instance == killed && earlier.end.is_none() {
                    rerun_after_kill += 1;
                }
            }
        }
    }
    println!(
        "killed A after {acked_at_kill} of {total} acknowledgements, with \
         {unfinished_at_kill} event(s) unfinished; {rerun_after_kill} run(s) cut by the kill \
         were run again elsewhere"
    );
    drop((second_a, served_b));
}

// ---- sandbox spacing across instances --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_sending_from_the_sandbox_number_space_their_creates_three_seconds_apart() {
    let (twilio, creates) = recording_twilio().await;
    let store_url = pg::fresh_database().await;
    let source = "utils.sendWhatsappMessage('+393331234567', 'sandbox ' + vo.MessageSid);";
    let configs: Vec<TestConfig> = ["a", "b"]
        .into_iter()
        .map(|label| {
            // A run waits for its sandbox turn, up to three turns here: within its budget.
            let mut config =
                instance(&store_url, &twilio, label, source).actions_setting("budget_ms", 30_000);
            config.app_toml = "sandbox = true\n".into();
            config
        })
        .collect();
    let served = [serve(&configs[0], "a").await, serve(&configs[1], "b").await];

    // Two callbacks on each instance at once: four sends from the sandbox number.
    let http = reqwest::Client::new();
    let posts: Vec<_> = (0..4)
        .map(|i| {
            let (http, base) = (http.clone(), served[i % 2].base_url.clone());
            tokio::spawn(async move {
                let sid = format!("SM{:032x}", 0x5a00 + i);
                assert!(post_status(&http, &base, &sid, "delivered").await, "{sid}");
            })
        })
        .collect();
    for post in posts {
        post.await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while creates.lock().unwrap().len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {:?} reached Twilio",
            creates.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut creates = creates.lock().unwrap().clone();
    assert_eq!(creates.len(), 4, "one send per callback: {creates:?}");
    creates.sort_by_key(|c| c.at);
    let senders: BTreeSet<&str> = creates.iter().map(|c| c.instance.as_str()).collect();
    assert_eq!(senders, BTreeSet::from(["a", "b"]), "both instances sent");
    for pair in creates.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_secs(3),
            "the sandbox sender got {} (from {}) and {} (from {}) {gap:?} apart",
            pair[0].body,
            pair[0].instance,
            pair[1].body,
            pair[1].instance
        );
    }
    drop(served);
}

// ---- the dashboard behind a load balancer ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_login_and_its_csrf_token_from_one_instance_work_on_the_other() {
    let (twilio, _) = recording_twilio().await;
    let store_url = pg::fresh_database().await;
    let source = "throw new Error('not yet: ' + vo.MessageStatus);";
    let configs: Vec<TestConfig> = ["a", "b"]
        .into_iter()
        .map(|label| {
            let mut config = instance(&store_url, &twilio, label, source).with_dashboard();
            config.actions_toml = "max_attempts = 1".into();
            config
        })
        .collect();
    let (a, b) = (serve(&configs[0], "a").await, serve(&configs[1], "b").await);
    let dashboard = |served: &ServedBinary| format!("{}/whatsapp/dashboard", served.base_url);

    let sid = "SM0000000000000000000000000000d00d";
    assert!(post_status(&http(), &a.base_url, sid, "read").await);
    let db = database(&store_url).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let (id, dead_at) = loop {
        let row = db
            .query_opt(
                "SELECT id, updated_at FROM events WHERE message_sid = $1 AND state = 'dead'",
                &[&sid],
            )
            .await
            .expect("the events table is there");
        if let Some(row) = row {
            break (row.get::<_, i64>(0), row.get::<_, i64>(1));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event never ended dead"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Log in on A.
    let response = http()
        .post(format!("{}/auth/login", dashboard(&a)))
        .form(&[("password", PASSWORD), ("next", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "login on A with the right password");
    let session = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let event_page = |served: &ServedBinary| format!("{}/events/{id}", dashboard(served));
    let (status, page_on_a) = get_page(&event_page(&a), Some(&session)).await;
    assert_eq!(status, 200, "A's own session on A");
    let csrf = csrf_in(&page_on_a);

    // The same session on B: its pages, and a POST with A's CSRF token.
    let (status, page_on_b) = get_page(&event_page(&b), Some(&session)).await;
    assert_eq!(status, 200, "A's session is valid on B");
    assert!(page_on_b.contains("not yet: read"), "B shows the event");
    let (status, _) = get_page(&event_page(&b), None).await;
    assert_eq!(status, 401, "B still wants a session");
    let replay = format!("{}/replay", event_page(&b));
    let forged = post_with_csrf(&replay, &session, "forged-token").await;
    assert_eq!(forged.status(), 403, "B still checks the token");
    let response = post_with_csrf(&replay, &session, &csrf).await;
    assert_eq!(response.status(), 303, "A's CSRF token is valid on B");

    // The replay ran again (on whichever instance) and ended dead again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row = db
            .query_one("SELECT state, updated_at FROM events WHERE id = $1", &[&id])
            .await
            .unwrap();
        let (state, updated_at): (String, i64) = (row.get(0), row.get(1));
        if state == "dead" && updated_at > dead_at {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replay never ran: the event is {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((a, b));
}
