//! Dashboard access: the operator password (compared in constant time), login sessions held in
//! memory behind an HttpOnly, SameSite=Strict cookie, a CSRF token per session for every POST,
//! and the per-address limit on failed logins.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "whatsapp_host_session";
/// How long a login lasts. Sessions live in memory, so a restart also ends them.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed logins from one address allowed within [`FAILURE_WINDOW`] before it gets 429.
pub const MAX_FAILURES: usize = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Bounds memory: the oldest session is dropped to make room past this many.
const MAX_SESSIONS: usize = 1024;

/// A logged-in operator's session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Must accompany every POST from this session; pages embed it in their forms.
    pub csrf: String,
    expires: Instant,
}

/// Password, sessions and the failed-login record. One per server.
pub struct Auth {
    /// SHA-256 of the password: comparing digests takes the same time whatever the candidate's
    /// length, and the password itself is not kept.
    password_digest: [u8; 32],
    /// Std mutexes: each is held only for a map lookup or insert, never across an await.
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl Auth {
    pub fn new(password: &SecretString) -> Self {
        Self {
            password_digest: digest(password.expose_secret()),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `candidate` is the operator password, in time independent of where they differ.
    pub fn is_password(&self, candidate: &str) -> bool {
        digest(candidate).ct_eq(&self.password_digest).into()
    }

    /// Starts a session; returns its cookie token and the session.
    pub fn start_session(&self) -> (String, Session) {
        self.start_session_at(Instant::now())
    }

    fn start_session_at(&self, now: Instant) -> (String, Session) {
        let token = random_token();
        let session = Session {
            csrf: random_token(),
            expires: now + SESSION_TTL,
        };
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(t, _)| t.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(token.clone(), session.clone());
        (token, session)
    }

    /// The live session a cookie token names, if any.
    pub fn session(&self, token: &str) -> Option<Session> {
        let now = Instant::now();
        let mut sessions = self.sessions.lock().expect("sessions lock");
        match sessions.get(token) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                sessions.remove(token);
                None
            }
            None => None,
        }
    }

    pub fn end_session(&self, token: &str) {
        self.sessions.lock().expect("sessions lock").remove(token);
    }

    /// When `ip` has failed [`MAX_FAILURES`] times within the window: how long until it may
    /// try again.
    pub fn locked_out(&self, ip: IpAddr) -> Option<Duration> {
        self.locked_out_at(ip, Instant::now())
    }

    fn locked_out_at(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut failures = self.failures.lock().expect("failures lock");
        let times = failures.get_mut(&ip)?;
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW)
        {
            times.pop_front();
        }
        if times.len() < MAX_FAILURES {
            return None;
        }
        let oldest = *times.front().expect("at least MAX_FAILURES entries");
        Some(FAILURE_WINDOW.saturating_sub(now.duration_since(oldest)))
    }

    /// Records a wrong password from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        self.failed_at(ip, Instant::now());
    }

    fn failed_at(&self, ip: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().expect("failures lock");
        // Forget addresses whose failures are all older than the window, so the map only holds
        // addresses that failed in the last minute.
        failures.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < FAILURE_WINDOW)
        });
        failures.entry(ip).or_default().push_back(now);
    }

    /// A correct password clears the address's record.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().expect("failures lock").remove(&ip);
    }
}

/// Whether a submitted CSRF token is the session's, in constant time.
pub fn csrf_matches(session: &Session, submitted: &str) -> bool {
    digest(submitted).ct_eq(&digest(&session.csrf)).into()
}

/// Reads one cookie from a `Cookie` request header.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
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
pub fn session_cookie(token: &str, path: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; Path={path}; Max-Age={}; HttpOnly; SameSite=Strict{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn cleared_cookie(path: &str, secure: bool) -> String {
    format!(
        "{COOKIE}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
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

    fn auth() -> Auth {
        Auth::new(&SecretString::from("correct horse"))
    }

    #[test]
    fn only_the_exact_password_is_accepted() {
        let auth = auth();
        assert!(auth.is_password("correct horse"));
        assert!(!auth.is_password("correct hors"));
        assert!(!auth.is_password("correct horse "));
        assert!(!auth.is_password(""));
    }

    #[test]
    fn five_failures_in_a_minute_lock_an_address_out_until_the_oldest_expires() {
        let auth = auth();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let start = Instant::now();
        for i in 0..MAX_FAILURES as u64 {
            assert_eq!(auth.locked_out_at(ip, start), None);
            auth.failed_at(ip, start + Duration::from_secs(i));
        }
        let wait = auth
            .locked_out_at(ip, start + Duration::from_secs(10))
            .unwrap();
        assert_eq!(wait, Duration::from_secs(50));
        assert_eq!(auth.locked_out_at(other, start), None);
        assert_eq!(auth.locked_out_at(ip, start + FAILURE_WINDOW), None);
    }

    #[test]
    fn sessions_carry_their_own_csrf_token_and_end_on_logout() {
        let auth = auth();
        let (token, session) = auth.start_session();
        let (other_token, other) = auth.start_session();
        assert_ne!(token, other_token);
        assert!(csrf_matches(&auth.session(&token).unwrap(), &session.csrf));
        assert!(!csrf_matches(&session, &other.csrf));
        auth.end_session(&token);
        assert!(auth.session(&token).is_none());
        assert!(auth.session(&other_token).is_some());
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
