//! Dashboard access: the operator password (compared in constant time), login sessions kept in
//! the store (so a login made through one instance is valid on every instance sharing it) behind
//! an HttpOnly, SameSite=Strict cookie, a CSRF token per session for every POST, the limit on
//! failed logins (per client and overall, in each instance's memory), and which address a login
//! comes from.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ipnet::{IpNet, Ipv6Net};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{Store, StoreError, StoredSession, now_ms};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "whatsapp_host_session";
/// How long a login lasts. Sessions live in the store, so a restart does not end them.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed logins from one client (see [`client_key`]) allowed within [`FAILURE_WINDOW`] before
/// it gets 429. Counted by each instance alone: behind a load balancer of `n` instances a client
/// may try up to `n` times as many.
pub(crate) const MAX_FAILURES: usize = 5;
/// Failed logins from all clients together allowed within [`FAILURE_WINDOW`]. Past it every
/// client gets 429 until the oldest of them leaves the window, so guessing from many addresses
/// is bounded too. The cost: such an attack also locks the operator out for that long.
pub(crate) const MAX_FAILURES_OVERALL: usize = 100;
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Bounds memory: clients with a failure on record at once. Past this, records whose failures
/// have all left the window are dropped, then the one whose last failure is oldest.
pub(crate) const MAX_TRACKED_CLIENTS: usize = 10_000;

/// A logged-in operator's session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Must accompany every POST from this session; pages embed it in their forms. Stored with
    /// the session, so it holds on every instance.
    pub(crate) csrf: String,
}

/// What a login attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Login {
    Accepted,
    /// A wrong password; it is on record.
    Wrong,
    /// Refused without looking at the password.
    LockedOut(Lockout),
}

/// Why logins are refused for now, and how long until the next try may count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lockout {
    /// This client failed [`MAX_FAILURES`] times within the window.
    Client(Duration),
    /// All clients together failed [`MAX_FAILURES_OVERALL`] times within the window.
    Everyone(Duration),
}

impl Lockout {
    pub(crate) fn wait(self) -> Duration {
        match self {
            Lockout::Client(wait) | Lockout::Everyone(wait) => wait,
        }
    }
}

/// Password, sessions and the failed-login record. One per server.
pub(crate) struct Auth {
    /// SHA-256 of the password: comparing digests takes the same time whatever the candidate's
    /// length, and the password itself is not kept.
    password_digest: [u8; 32],
    /// Where sessions live, each under the SHA-256 of its cookie token: every instance sharing
    /// the store sees them, and the store alone cannot be used to log in. Expired ones are
    /// removed by retention ([`Store::prune`]).
    store: Store,
    /// A std mutex: held only for one check and record (and one digest), never across an await.
    failures: Mutex<FailureLog>,
}

impl Auth {
    pub(crate) fn new(password: &SecretString, store: Store) -> Self {
        Self {
            password_digest: digest(password.expose_secret()),
            store,
            failures: Mutex::new(FailureLog::new(Limits::DEFAULT)),
        }
    }

    /// Whether `candidate` is the operator password, in time independent of where they differ.
    pub(crate) fn is_password(&self, candidate: &str) -> bool {
        digest(candidate).ct_eq(&self.password_digest).into()
    }

    /// Checks a password sent from `ip`, unless that client or everyone is locked out; records
    /// a wrong one and clears the client's record on the right one.
    pub(crate) fn log_in(&self, ip: IpAddr, candidate: &str) -> Login {
        self.log_in_at(ip, candidate, Instant::now())
    }

    fn log_in_at(&self, ip: IpAddr, candidate: &str, now: Instant) -> Login {
        let client = client_key(ip);
        // Check and record under one lock, so concurrent guesses cannot all pass the check
        // before any of them is recorded.
        let mut failures = self.failures.lock().expect("failures lock");
        if let Some(lockout) = failures.lockout(client, now) {
            return Login::LockedOut(lockout);
        }
        if self.is_password(candidate) {
            failures.clear(client);
            Login::Accepted
        } else {
            failures.record(client, now);
            Login::Wrong
        }
    }

    /// Starts a session, stored before it returns; returns its cookie token and the session.
    pub(crate) async fn start_session(&self) -> Result<(String, Session), StoreError> {
        self.start_session_at(now_ms()).await
    }

    async fn start_session_at(&self, now_ms: i64) -> Result<(String, Session), StoreError> {
        let token = random_token();
        let session = Session {
            csrf: random_token(),
        };
        let ttl = i64::try_from(SESSION_TTL.as_millis()).unwrap_or(i64::MAX);
        self.store
            .session_create(&token_hash(&token), &session.csrf, now_ms + ttl)
            .await?;
        Ok((token, session))
    }

    /// The live session a cookie token names, if any, whichever instance started it.
    pub(crate) async fn session(&self, token: &str) -> Result<Option<Session>, StoreError> {
        self.session_at(token, now_ms()).await
    }

    async fn session_at(&self, token: &str, now_ms: i64) -> Result<Option<Session>, StoreError> {
        let stored = self.store.session_get(&token_hash(token)).await?;
        Ok(stored
            .filter(|s: &StoredSession| s.expires_at > now_ms)
            .map(|s| Session { csrf: s.csrf }))
    }

    /// Ends a session on every instance.
    pub(crate) async fn end_session(&self, token: &str) -> Result<(), StoreError> {
        self.store.session_delete(&token_hash(token)).await
    }
}

/// The unit failed logins are counted by: an IPv4 address, or an IPv6 /64, the block one
/// subscriber usually gets, so walking through its addresses gains nothing. An IPv4-mapped IPv6
/// address (`::ffff:192.0.2.1`) counts as its IPv4 address.
pub(crate) fn client_key(ip: IpAddr) -> IpNet {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpNet::V6(Ipv6Net::new_assert(v6, 64).trunc()),
        v4 => IpNet::from(v4),
    }
}

/// The address a login is attributed to. The TCP peer's, unless the peer is one of the trusted
/// proxies: then the right-most `X-Forwarded-For` address that is not itself a trusted proxy
/// (every address left of it was written by the client and could be anything). When all are
/// trusted, the left-most; when the chain breaks (an entry that is not an address), the last
/// trusted hop before the break.
pub(crate) fn client_ip(peer: IpAddr, headers: &http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    // Split the raw bytes: a value that is not all ASCII must not hide the hops a proxy
    // appended to it.
    let hops: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .collect();
    for hop in hops.into_iter().rev() {
        let Some(ip) = forwarded_ip(hop) else { break };
        client = ip;
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, or an address with a port as some proxies write.
fn forwarded_ip(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(hop).ok()?.trim();
    let ip = hop
        .parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()?;
    Some(ip.to_canonical())
}

/// The failed-login limits; [`Limits::DEFAULT`] in the server, smaller in tests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    per_client: usize,
    overall: usize,
    window: Duration,
    max_clients: usize,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        per_client: MAX_FAILURES,
        overall: MAX_FAILURES_OVERALL,
        window: FAILURE_WINDOW,
        max_clients: MAX_TRACKED_CLIENTS,
    };
}

/// Failure times within the window, per client and overall. Each list keeps only as many
/// entries as its limit, so memory is bounded by the limits whatever the traffic.
struct FailureLog {
    limits: Limits,
    by_client: HashMap<IpNet, VecDeque<Instant>>,
    overall: VecDeque<Instant>,
}

impl FailureLog {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            by_client: HashMap::new(),
            overall: VecDeque::new(),
        }
    }

    /// Whether a login from `client` is refused at `now`, and for how long.
    fn lockout(&mut self, client: IpNet, now: Instant) -> Option<Lockout> {
        let window = self.limits.window;
        expire(&mut self.overall, now, window);
        if self.overall.len() >= self.limits.overall {
            return Some(Lockout::Everyone(wait(&self.overall, now, window)));
        }
        let times = self.by_client.get_mut(&client)?;
        expire(times, now, window);
        (times.len() >= self.limits.per_client).then(|| Lockout::Client(wait(times, now, window)))
    }

    fn record(&mut self, client: IpNet, now: Instant) {
        push_bounded(&mut self.overall, now, self.limits.overall);
        if !self.by_client.contains_key(&client) && self.by_client.len() >= self.limits.max_clients
        {
            self.make_room(now);
        }
        let times = self.by_client.entry(client).or_default();
        push_bounded(times, now, self.limits.per_client);
    }

    /// Drops every record whose failures have all left the window; if none has, the record
    /// whose last failure is oldest.
    fn make_room(&mut self, now: Instant) {
        let window = self.limits.window;
        self.by_client.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < window)
        });
        if self.by_client.len() >= self.limits.max_clients
            && let Some(oldest) = self
                .by_client
                .iter()
                .min_by_key(|(_, times)| times.back().copied())
                .map(|(client, _)| *client)
        {
            self.by_client.remove(&oldest);
        }
    }

    /// A correct password clears the client's record (not the overall one).
    fn clear(&mut self, client: IpNet) {
        self.by_client.remove(&client);
    }
}

/// Forgets failures that have left the window.
fn expire(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        times.pop_front();
    }
}

/// How long until the oldest failure on a full list leaves the window.
fn wait(times: &VecDeque<Instant>, now: Instant, window: Duration) -> Duration {
    times.front().map_or(Duration::ZERO, |t| {
        window.saturating_sub(now.duration_since(*t))
    })
}

/// Appends a failure, keeping the newest `limit`: only they decide a lockout.
fn push_bounded(times: &mut VecDeque<Instant>, now: Instant, limit: usize) {
    times.push_back(now);
    while times.len() > limit {
        times.pop_front();
    }
}

/// Whether a submitted CSRF token is the session's, in constant time.
pub(crate) fn csrf_matches(session: &Session, submitted: &str) -> bool {
    digest(submitted).ct_eq(&digest(&session.csrf)).into()
}

/// Reads one cookie from a `Cookie` request header.
pub(crate) fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for a session token, scoped to the dashboard's path.
pub(crate) fn session_cookie(token: &str, path: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; Path={path}; Max-Age={}; HttpOnly; SameSite=Strict{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn cleared_cookie(path: &str, secure: bool) -> String {
    format!(
        "{COOKIE}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// What the store keeps of a session's cookie token: its SHA-256, in hex. The token has 256
/// random bits, so a plain hash is enough: no salt or stretching would make it harder to guess.
fn token_hash(token: &str) -> String {
    digest(token).iter().map(|b| format!("{b:02x}")).collect()
}

/// 256 random bits, URL-safe: unguessable session and CSRF tokens.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `Auth` on a fresh embedded store, and the directory that store lives in.
    fn auth() -> (Auth, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (Auth::new(&SecretString::from("correct horse"), store), dir)
    }

    #[test]
    fn only_the_exact_password_is_accepted() {
        let (auth, _dir) = auth();
        assert!(auth.is_password("correct horse"));
        assert!(!auth.is_password("correct hors"));
        assert!(!auth.is_password("correct horse "));
        assert!(!auth.is_password(""));
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn five_failures_in_a_minute_lock_an_address_out_until_the_oldest_expires() {
        let (auth, _dir) = auth();
        let me = ip("192.0.2.1");
        let start = Instant::now();
        for i in 0..MAX_FAILURES as u64 {
            assert_eq!(auth.log_in_at(me, "guess", start + secs(i)), Login::Wrong);
        }
        // Locked out: even the right password is not checked.
        assert_eq!(
            auth.log_in_at(me, "correct horse", start + secs(10)),
            Login::LockedOut(Lockout::Client(secs(50)))
        );
        assert_eq!(
            auth.log_in_at(ip("192.0.2.2"), "correct horse", start + secs(10)),
            Login::Accepted,
            "another address is not affected"
        );
        // The oldest failure leaves the window: one more try counts, and fails again.
        assert_eq!(
            auth.log_in_at(me, "guess", start + FAILURE_WINDOW),
            Login::Wrong
        );
        assert!(matches!(
            auth.log_in_at(me, "correct horse", start + FAILURE_WINDOW),
            Login::LockedOut(Lockout::Client(_))
        ));
        assert_eq!(
            auth.log_in_at(me, "correct horse", start + FAILURE_WINDOW + secs(5)),
            Login::Accepted
        );
    }

    #[test]
    fn the_right_password_clears_the_addresss_record() {
        let (auth, _dir) = auth();
        let me = ip("192.0.2.1");
        let start = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            assert_eq!(auth.log_in_at(me, "guess", start), Login::Wrong);
        }
        assert_eq!(auth.log_in_at(me, "correct horse", start), Login::Accepted);
        for _ in 0..MAX_FAILURES - 1 {
            assert_eq!(auth.log_in_at(me, "guess", start), Login::Wrong);
        }
        assert_eq!(auth.log_in_at(me, "correct horse", start), Login::Accepted);
    }

    #[test]
    fn the_login_limiters_global_budget_holds_across_many_source_addresses() {
        let (auth, _dir) = auth();
        let start = Instant::now();
        // Each address stays under its own limit; together they spend the overall budget.
        for i in 0..MAX_FAILURES_OVERALL {
            let source = if i % 2 == 0 {
                IpAddr::from([198, 18, (i / 256) as u8, (i % 256) as u8])
            } else {
                // Each in its own /64.
                format!("2001:db8:{i:x}::1").parse().unwrap()
            };
            let at = start + Duration::from_millis(i as u64 * 100);
            assert_eq!(auth.log_in_at(source, "guess", at), Login::Wrong, "try {i}");
        }
        // Now every address is refused, a fresh one with the right password too.
        let later = start + secs(20);
        for fresh in ["203.0.113.9", "2001:db8:ffff::1", "::ffff:203.0.113.10"] {
            assert_eq!(
                auth.log_in_at(ip(fresh), "correct horse", later),
                Login::LockedOut(Lockout::Everyone(secs(40))),
                "{fresh}"
            );
        }
        // Refusals are not failures: the budget frees as the first failures leave the window.
        let after = start + FAILURE_WINDOW;
        assert_eq!(
            auth.log_in_at(ip("203.0.113.9"), "correct horse", after),
            Login::Accepted
        );
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_block_and_mapped_ipv4_as_ipv4() {
        let (auth, _dir) = auth();
        let start = Instant::now();
        for i in 1..=MAX_FAILURES {
            let same_block = ip(&format!("2001:db8:1:2:{i:x}::{i:x}"));
            assert_eq!(auth.log_in_at(same_block, "guess", start), Login::Wrong);
        }
        assert!(matches!(
            auth.log_in_at(
                ip("2001:db8:1:2:ffff:ffff:ffff:ffff"),
                "correct horse",
                start
            ),
            Login::LockedOut(Lockout::Client(_))
        ));
        assert_eq!(
            auth.log_in_at(ip("2001:db8:1:3::1"), "correct horse", start),
            Login::Accepted,
            "the next /64 is another client"
        );

        for i in 0..MAX_FAILURES {
            let addr = if i % 2 == 0 {
                "::ffff:192.0.2.7"
            } else {
                "192.0.2.7"
            };
            assert_eq!(auth.log_in_at(ip(addr), "guess", start), Login::Wrong);
        }
        for addr in ["192.0.2.7", "::ffff:192.0.2.7"] {
            assert!(matches!(
                auth.log_in_at(ip(addr), "correct horse", start),
                Login::LockedOut(Lockout::Client(_))
            ));
        }
        assert_eq!(
            auth.log_in_at(ip("192.0.2.8"), "correct horse", start),
            Login::Accepted,
            "IPv4 counts by the full address"
        );
        assert_eq!(client_key(ip("192.0.2.7")).to_string(), "192.0.2.7/32");
        assert_eq!(
            client_key(ip("2001:db8:1:2:3:4:5:6")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn the_per_client_record_never_holds_more_than_its_bound() {
        let mut log = FailureLog::new(Limits {
            overall: usize::MAX,
            ..Limits::DEFAULT
        });
        let start = Instant::now();
        for i in 0..MAX_TRACKED_CLIENTS as u32 + 50 {
            log.record(client_key(IpAddr::from(i.to_be_bytes())), start);
        }
        assert_eq!(log.by_client.len(), MAX_TRACKED_CLIENTS);
    }

    #[test]
    fn a_full_record_drops_expired_clients_first_then_the_stalest() {
        let mut log = FailureLog::new(Limits {
            max_clients: 3,
            ..Limits::DEFAULT
        });
        let key = |text: &str| client_key(ip(text));
        let start = Instant::now();
        log.record(key("192.0.2.1"), start);
        log.record(key("192.0.2.2"), start + secs(30));
        log.record(key("192.0.2.3"), start + secs(40));
        // Full, none expired: the one whose last failure is oldest goes.
        log.record(key("192.0.2.4"), start + secs(50));
        assert!(!log.by_client.contains_key(&key("192.0.2.1")));
        assert_eq!(log.by_client.len(), 3);
        // Full, two expired (.2 at 30 s and .3 at 40 s, with the window at 60 s): both go.
        log.record(key("192.0.2.5"), start + secs(101));
        let mut left: Vec<_> = log.by_client.keys().map(|k| k.to_string()).collect();
        left.sort();
        assert_eq!(left, ["192.0.2.4/32", "192.0.2.5/32"]);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let headers = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.append("x-forwarded-for", value.parse().unwrap());
            headers
        };
        let xff = headers("198.51.100.1, 203.0.113.5, 10.1.2.3");
        // The right-most address that is not a trusted proxy; the left-most is the client's word.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &xff, &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(ip("::ffff:10.9.9.9"), &xff, &trusted),
            ip("203.0.113.5"),
            "a mapped peer address counts as IPv4"
        );
        // An untrusted peer's header is ignored.
        assert_eq!(client_ip(ip("192.0.2.1"), &xff, &trusted), ip("192.0.2.1"));
        assert_eq!(client_ip(ip("127.0.0.1"), &xff, &[]), ip("127.0.0.1"));
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &http::HeaderMap::new(), &trusted),
            ip("127.0.0.1")
        );
        // Every hop trusted: the left-most.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers("10.0.0.7, 10.0.0.8"), &trusted),
            ip("10.0.0.7")
        );
        // Several header lines are one list; ports and IPv6 brackets are understood.
        let mut split = headers("198.51.100.1");
        split.append("x-forwarded-for", "[2001:db8::5]:4711".parse().unwrap());
        assert_eq!(
            client_ip(ip("10.0.0.1"), &split, &trusted),
            ip("2001:db8::5")
        );
        // A hop that is not an address stops the walk at the last trusted hop.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers("203.0.113.5, unknown"), &trusted),
            ip("10.0.0.1")
        );
        let mut raw = http::HeaderMap::new();
        raw.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.6").unwrap(),
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &raw, &trusted),
            ip("203.0.113.6"),
            "bytes that are not text do not hide the proxy's hop"
        );
    }

    #[tokio::test]
    async fn sessions_carry_their_own_csrf_token_and_end_on_logout() {
        let (auth, _dir) = auth();
        let (token, session) = auth.start_session().await.unwrap();
        let (other_token, other) = auth.start_session().await.unwrap();
        assert_ne!(token, other_token);
        let found = auth.session(&token).await.unwrap().unwrap();
        assert!(csrf_matches(&found, &session.csrf));
        assert!(!csrf_matches(&session, &other.csrf));
        auth.end_session(&token).await.unwrap();
        assert!(auth.session(&token).await.unwrap().is_none());
        assert!(auth.session(&other_token).await.unwrap().is_some());
        auth.store.close().await;
    }

    #[tokio::test]
    async fn a_session_is_kept_in_the_store_hashed_and_seen_by_every_instance_on_it() {
        let (a, _dir) = auth();
        let b = Auth::new(&SecretString::from("correct horse"), a.store.clone());
        let (token, session) = a.start_session().await.unwrap();
        let on_b = b
            .session(&token)
            .await
            .unwrap()
            .expect("valid on the other instance");
        assert!(
            csrf_matches(&on_b, &session.csrf),
            "and so is its CSRF token"
        );
        // The store holds the token's hash, never the token.
        assert!(a.store.session_get(&token).await.unwrap().is_none());
        let stored = a.store.session_get(&token_hash(&token)).await.unwrap();
        assert_eq!(stored.map(|s| s.csrf), Some(session.csrf));
        b.end_session(&token).await.unwrap();
        assert!(
            a.session(&token).await.unwrap().is_none(),
            "logged out everywhere"
        );
        a.store.close().await;
    }

    #[tokio::test]
    async fn a_session_ends_when_its_time_is_up_and_retention_removes_it() {
        let (auth, _dir) = auth();
        let ttl = SESSION_TTL.as_millis() as i64;
        let now = now_ms();
        let (old, _) = auth.start_session_at(now - ttl).await.unwrap();
        let (live, _) = auth.start_session_at(now - ttl + 60_000).await.unwrap();
        assert!(auth.session_at(&old, now).await.unwrap().is_none());
        assert!(auth.session_at(&live, now).await.unwrap().is_some());
        let pruned = auth.store.prune(0, 500).await.unwrap();
        assert_eq!(pruned.sessions, 1);
        assert!(
            auth.store
                .session_get(&token_hash(&old))
                .await
                .unwrap()
                .is_none()
        );
        assert!(auth.session(&live).await.unwrap().is_some());
        auth.store.close().await;
    }

    #[test]
    fn cookie_header_is_parsed_by_name() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            "a=1; whatsapp_host_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
