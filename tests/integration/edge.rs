//! The edge holds against slow and large clients: each test drives raw TCP connections against
//! a server with short `[server]` limits and checks that the server closes them in time, keeps
//! its memory bounded and refuses connections over the cap. Also: `/healthz` and `/metrics` on
//! `server.admin_listen`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::helpers::{TestConfig, alone_in_a_process, spawn_app};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// The tests run one at a time: the memory test reads this process's RSS, which a server
/// starting in a parallel test would move.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Settings with the given `[server]` limits; any not named keep a value far above the test's
/// waits, so only the limit under test can close a connection.
fn limits(keys: &str) -> TestConfig {
    let mut server_toml = keys.to_string();
    for default in [
        "header_timeout_ms = 10000",
        "body_timeout_ms = 10000",
        "idle_timeout_ms = 10000",
    ] {
        let key = default.split(' ').next().unwrap_or(default);
        if !keys.contains(key) {
            server_toml = format!("{server_toml}\n{default}");
        }
    }
    let mut config = TestConfig::new();
    config.server_toml = server_toml;
    config
}

/// How a connection ended, as the client saw it.
struct Ended {
    after: Duration,
    received: Vec<u8>,
}

impl Ended {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

/// Reads until the server closes the connection (EOF or reset); `None` if it is still open
/// after `limit`.
async fn wait_for_close(stream: &mut TcpStream, limit: Duration) -> Option<Ended> {
    let start = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some(Ended {
                    after: start.elapsed(),
                    received,
                });
            }
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr)
        .await
        .expect("connect to the server")
}

/// `GET /healthz` on a connection that closes after the answer; returns what was received.
async fn get_healthz_and_close(addr: SocketAddr) -> String {
    let mut stream = connect(addr).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    wait_for_close(&mut stream, Duration::from_secs(3))
        .await
        .expect("the server closes a `Connection: close` request's connection")
        .text()
}

/// The resident set of this process, where the test server runs, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

#[tokio::test]
async fn a_half_sent_header_is_closed_within_the_header_timeout() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app(&limits("header_timeout_ms = 400")).await;
    let mut stream = connect(app.addr).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let ended = wait_for_close(&mut stream, Duration::from_secs(3))
        .await
        .expect("a half-sent header is closed within the header timeout");
    assert!(
        ended.after >= Duration::from_millis(300),
        "{:?}",
        ended.after
    );
    // A client that sends nothing at all is closed by the same timer.
    let mut silent = connect(app.addr).await;
    assert!(
        wait_for_close(&mut silent, Duration::from_secs(3))
            .await
            .is_some(),
        "a silent connection stayed open"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_half_sent_body_gets_408_and_is_closed_within_the_body_timeout() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app(&limits("body_timeout_ms = 400")).await;
    let mut stream = connect(app.addr).await;
    stream
        .write_all(
            b"POST /whatsapp/callback/crm/ACME HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n\
              MessageSid=SM",
        )
        .await
        .unwrap();
    let ended = wait_for_close(&mut stream, Duration::from_secs(3))
        .await
        .expect("a half-sent body is closed within the body timeout");
    assert!(ended.text().starts_with("HTTP/1.1 408"), "{}", ended.text());
    assert!(ended.text().contains("body_timeout_ms"), "{}", ended.text());
    app.stop().await;
}

#[tokio::test]
async fn a_body_trickled_a_byte_at_a_time_still_meets_the_body_deadline() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app(&limits("body_timeout_ms = 500")).await;
    let mut stream = connect(app.addr).await;
    stream
        .write_all(
            b"POST /whatsapp/callback/crm/ACME HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n",
        )
        .await
        .unwrap();
    // One byte every 100 ms: never a gap near the timeout, but the whole body would take 100 s.
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(3) {
        if stream.write_all(b"a").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(n)) => {
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(head.starts_with("HTTP/1.1 408"), "{head}");
                closed = true;
                break;
            }
            Ok(Err(_)) => {
                closed = true;
                break;
            }
        }
    }
    // Six times the deadline: a timer restarted by every byte would never have fired.
    assert!(closed, "a trickled body held the connection for 3 s");
    app.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_within_the_idle_timeout() {
    let _serial = SERIAL.lock().await;
    // The header timeout, which also bounds the wait for a next request, is well above the
    // idle timeout, so only the idle timeout can close the connection in time.
    let app = spawn_app(&limits("idle_timeout_ms = 400\nheader_timeout_ms = 4000")).await;
    let mut stream = connect(app.addr).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let ended = wait_for_close(&mut stream, Duration::from_secs(3))
        .await
        .expect("an idle kept-alive connection is closed within the idle timeout");
    assert!(ended.text().starts_with("HTTP/1.1 200"), "{}", ended.text());
    assert!(
        ended.after >= Duration::from_millis(300),
        "{:?}",
        ended.after
    );
    app.stop().await;
}

#[tokio::test]
async fn a_header_over_max_header_bytes_is_refused_without_waiting_for_the_rest() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app(&limits("max_header_bytes = 16384")).await;
    let mut stream = connect(app.addr).await;
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    head.resize(20 * 1024, b'a');
    stream.write_all(&head).await.unwrap();
    let ended = wait_for_close(&mut stream, Duration::from_secs(3))
        .await
        .expect("a header over the cap is refused");
    // 431 when it arrives before the reset of the bytes the server never read.
    let text = ended.text();
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn many_slow_and_large_clients_keep_memory_bounded_and_the_cap_refuses_the_rest() {
    // RSS is process-wide: the other tests of this binary would move it.
    if !alone_in_a_process(
        "edge::many_slow_and_large_clients_keep_memory_bounded_and_the_cap_refuses_the_rest",
    ) {
        return;
    }
    let _serial = SERIAL.lock().await;
    const CLIENTS: usize = 500;
    const CAP: usize = 400;
    let app = spawn_app(&limits(&format!(
        "max_connections = {CAP}\nmax_header_bytes = 16384\nheader_timeout_ms = 4000"
    )))
    .await;
    // Warm up on a connection that then closes, so it takes no slot.
    assert!(
        get_healthz_and_close(app.addr)
            .await
            .starts_with("HTTP/1.1 200")
    );
    let before = rss_bytes();

    // Slow: each client sends 12 KiB of a header it never finishes, as much as the buffer
    // holds, and waits.
    let mut prefix = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    prefix.resize(12 * 1024, b'a');
    let mut streams = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut stream = connect(app.addr).await;
        // A refused connection may already be closed: its write fails, which is fine.
        let _ = stream.write_all(&prefix).await;
        streams.push(stream);
    }
    let checks = streams.into_iter().map(|mut stream| async move {
        let closed = wait_for_close(&mut stream, Duration::from_millis(500))
            .await
            .is_some();
        (stream, closed)
    });
    let checked = futures::future::join_all(checks).await;
    let refused = checked.iter().filter(|(_, closed)| *closed).count();
    let held = rss_bytes().saturating_sub(before);
    assert_eq!(
        refused,
        CLIENTS - CAP,
        "connections over max_connections are closed, the rest held"
    );

    // Large: each held client goes on to the 380 KB of header that took the host from 41 to
    // 232 MB before; the server stops reading at max_header_bytes and closes.
    let rest = vec![b'a'; 368 * 1024];
    let larges = checked
        .into_iter()
        .filter(|(_, closed)| !closed)
        .map(|(mut stream, _)| {
            let rest = &rest;
            async move {
                let _ = timeout(Duration::from_secs(2), stream.write_all(rest)).await;
                wait_for_close(&mut stream, Duration::from_secs(2))
                    .await
                    .is_some()
            }
        });
    let closed = futures::future::join_all(larges).await;
    assert!(
        closed.iter().all(|c| *c),
        "{} of {CAP} clients over max_header_bytes stayed open",
        closed.iter().filter(|c| !**c).count()
    );
    let large = rss_bytes().saturating_sub(before);

    // Each held connection pins at most its 16 KiB read buffer, hyper's connection state and
    // write buffer (a few KiB) and its task: under 48 KiB, so 400 come to under 20 MB. Twice
    // that leaves room for the allocator; without the limits, 500 such clients took 190 MB.
    const BOUND: u64 = 40 * 1024 * 1024;
    assert!(
        held < BOUND,
        "RSS grew {held} bytes with {CAP} slow clients"
    );
    assert!(
        large < BOUND,
        "RSS grew {large} bytes with {CAP} large clients"
    );
    // The cap and the timeouts freed every slot: the server still answers.
    assert!(
        get_healthz_and_close(app.addr)
            .await
            .starts_with("HTTP/1.1 200")
    );
    app.stop().await;
}

#[tokio::test]
async fn with_admin_listen_healthz_and_metrics_answer_only_on_the_admin_address() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app(&limits("admin_listen = \"127.0.0.1:0\"")).await;
    let admin = app.admin_addr.expect("admin_listen is set");
    assert_ne!(admin, app.addr);
    for path in ["/healthz", "/metrics"] {
        let on_admin = app
            .http
            .get(format!("http://{admin}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(on_admin.status(), 200, "{path} on the admin listener");
        let on_main = app
            .http
            .get(format!("{}{path}", app.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(on_main.status(), 404, "{path} on the main listener");
    }
    // Callbacks stay on the main listener.
    let callback = app.post_status("ACME", "SM0123", "sent").await;
    assert_eq!(callback.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn shutdown_is_not_held_open_by_a_stalled_client() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app(&limits("header_timeout_ms = 500")).await;
    let mut stream = connect(app.addr).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    timeout(Duration::from_secs(4), app.stop())
        .await
        .expect("shutdown finishes once the stalled client's header timeout passes");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}
