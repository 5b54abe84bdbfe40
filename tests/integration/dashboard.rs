//! The dashboard over plain HTTP: access (password, 401, rate limit, cookie flags, disabled),
//! CSRF on replay, what the pages show, search, the live poll's 304, and that no page ever
//! carries an auth key.

use whatsapp_host::store::EventState;

use crate::helpers::dashboard::*;
use crate::helpers::stand_ins::{created, twilio_answering, twilio_answers};
use crate::helpers::*;

/// Every page of the dashboard a test can reach for one message and its first event.
async fn all_pages(app: &TestApp, sid: &str, event_id: i64) -> Vec<String> {
    let base = app.dashboard_url();
    vec![
        base.clone(),
        format!("{base}?q={sid}"),
        format!("{base}/messages/{sid}"),
        format!("{base}/events"),
        format!("{base}/events/{event_id}"),
        format!("{base}/auth/login"),
    ]
}

#[tokio::test]
async fn without_a_password_every_dashboard_route_answers_404_saying_how_to_enable_it() {
    let app = spawn_app(&TestConfig::new()).await;
    for path in ["", "/events", "/messages/SM1", "/auth/login"] {
        let (status, body) = get_page(&format!("{}{path}", app.dashboard_url()), None).await;
        assert_eq!(status, 404, "{path}");
        assert!(body.contains("the dashboard is disabled"), "{body}");
        assert!(body.contains("WHATSAPP_HOST_DASHBOARD_PASSWORD"), "{body}");
    }
    let login = http()
        .post(format!("{}/auth/login", app.dashboard_url()))
        .form(&[("password", "anything")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 404);
    // Callbacks are not affected.
    let sid = "SM00000000000000000000000000000001";
    assert_eq!(app.post_status(COMPANY, sid, "sent").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn pages_without_a_session_get_401_and_the_login_form_without_data() {
    let app = spawn_app(&TestConfig::new().with_dashboard()).await;
    let sid = "SM00000000000000000000000000000002";
    assert_eq!(
        app.post_status(COMPANY, sid, "delivered").await.status(),
        200
    );
    app.store().flush().await.unwrap();
    for url in all_pages(&app, sid, 1).await {
        if url.ends_with("/auth/login") {
            continue;
        }
        let (status, body) = get_page(&url, None).await;
        assert_eq!(status, 401, "{url}");
        assert!(
            body.contains("name=\"password\""),
            "{url} shows no login form"
        );
        assert!(!body.contains("+393331234567"), "{url} shows data");
        assert!(!body.contains("delivered"), "{url} shows data");
    }
    let (status, _) = get_page(
        &format!("{}/messages/{sid}", app.dashboard_url()),
        Some("whatsapp_host_session=made-up-token"),
    )
    .await;
    assert_eq!(status, 401, "an unknown session token is no session");
    let replay = http()
        .post(format!("{}/events/1/replay", app.dashboard_url()))
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn wrong_passwords_get_401_and_the_sixth_try_within_a_minute_gets_429() {
    let app = spawn_app(&TestConfig::new().with_dashboard()).await;
    let url = format!("{}/auth/login", app.dashboard_url());
    for attempt in 1..=5 {
        let response = http()
            .post(&url)
            .form(&[("password", format!("guess {attempt}"))])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "attempt {attempt}");
        assert!(response.headers().get("set-cookie").is_none());
        assert!(response.text().await.unwrap().contains("Wrong password."));
    }
    // Locked out: even the right password is not checked until the minute is over.
    let response = http()
        .post(&url)
        .form(&[("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(response.headers().get("set-cookie").is_none());
    app.stop().await;
}

#[tokio::test]
async fn the_right_password_sets_a_strict_httponly_cookie_and_returns_only_inside_the_dashboard() {
    let app = spawn_app(&TestConfig::new().with_dashboard()).await;
    let base = app.dashboard_url();
    let response = http()
        .post(format!("{base}/auth/login"))
        .form(&[
            ("password", PASSWORD),
            ("next", "/whatsapp/dashboard/events?state=dead"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()["location"],
        "/whatsapp/dashboard/events?state=dead"
    );
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/whatsapp/dashboard"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    for next in ["https://evil.example/", "//evil.example/x", "/elsewhere"] {
        let response = http()
            .post(format!("{base}/auth/login"))
            .form(&[("password", PASSWORD), ("next", next)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303);
        assert_eq!(
            response.headers()["location"],
            "/whatsapp/dashboard",
            "{next}"
        );
    }
    let session = app.login().await;
    let response = http()
        .get(format!("{base}/events"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );

    // Logging out needs the CSRF token and ends the session.
    let (_, page) = get_page(&format!("{base}/events"), Some(&session)).await;
    let logout = post_with_csrf(&format!("{base}/auth/logout"), &session, &csrf_in(&page)).await;
    assert_eq!(logout.status(), 303);
    let (status, _) = get_page(&format!("{base}/events"), Some(&session)).await;
    assert_eq!(status, 401);
    app.stop().await;
}

#[tokio::test]
async fn replay_needs_the_sessions_csrf_token() {
    let mut config =
        TestConfig::on_status("throw new Error('not yet: ' + vo.MessageStatus);").with_dashboard();
    config.actions_toml = "max_attempts = 1".into();
    let app = spawn_app(&config).await;
    let sid = "SM00000000000000000000000000000003";
    assert_eq!(app.post_status(COMPANY, sid, "read").await.status(), 200);
    app.wait_for_events(1, EventState::Dead).await;
    let dead = app.store().event(1).await.unwrap().unwrap();
    let session = app.login().await;
    let base = app.dashboard_url();
    let (status, page) = get_page(&format!("{base}/events/1"), Some(&session)).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("not yet: read"),
        "the page shows the action's error"
    );

    for csrf in ["", "forged-token"] {
        let response = post_with_csrf(&format!("{base}/events/1/replay"), &session, csrf).await;
        assert_eq!(response.status(), 403, "csrf {csrf:?}");
    }
    // Another session's token is not this session's.
    let (_, other_page) = get_page(&format!("{base}/events/1"), Some(&app.login().await)).await;
    let response = post_with_csrf(
        &format!("{base}/events/1/replay"),
        &session,
        &csrf_in(&other_page),
    )
    .await;
    assert_eq!(response.status(), 403);

    let response = post_with_csrf(
        &format!("{base}/events/1/replay"),
        &session,
        &csrf_in(&page),
    )
    .await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()["location"],
        "/whatsapp/dashboard/events/1?replayed=1"
    );
    let store = app.store().clone();
    app.wait_for("the replay to run", WAIT, || {
        let store = store.clone();
        let before = dead.updated_at;
        async move {
            let e = store.event(1).await.unwrap().unwrap();
            e.state == EventState::Dead && e.updated_at > before
        }
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn only_failed_or_dead_events_can_be_replayed() {
    let app = spawn_app(&TestConfig::new().with_dashboard()).await;
    let sid = "SM00000000000000000000000000000004";
    assert_eq!(app.post_status(COMPANY, sid, "sent").await.status(), 200);
    app.wait_for_events(1, EventState::Done).await;
    let session = app.login().await;
    let base = app.dashboard_url();
    let (_, page) = get_page(&format!("{base}/events/1"), Some(&session)).await;
    assert!(
        !page.contains("data-replay"),
        "a done event has no Replay button"
    );
    let response = post_with_csrf(
        &format!("{base}/events/1/replay"),
        &session,
        &csrf_in(&page),
    )
    .await;
    assert_eq!(response.status(), 409);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("only failed or dead events can be replayed")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failed_callback_shows_twilios_meaning_of_its_error_code() {
    let app = spawn_app(&TestConfig::new().with_dashboard()).await;
    let sid = "SM00000000000000000000000000000005";
    // Twilio's failed callbacks carry ErrorCode 63016 here (see status_fields).
    assert_eq!(app.post_status(COMPANY, sid, "failed").await.status(), 200);
    app.store().flush().await.unwrap();
    let session = app.login().await;
    let (status, page) = get_page(
        &format!("{}/messages/{sid}", app.dashboard_url()),
        Some(&session),
    )
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("63016"), "{page}");
    assert!(
        page.contains("outside the 24-hour customer service window"),
        "{page}"
    );
    assert!(page.contains("Twilio reported it failed"), "{page}");
    app.stop().await;
}

#[tokio::test]
async fn a_send_refused_before_twilio_has_a_page_with_its_error_even_without_a_sid() {
    let app = spawn_app(&TestConfig::new().with_dashboard()).await;
    let outcome = app.send("12", "hello").await;
    assert!(outcome.is_failed());
    app.store().flush().await.unwrap();
    let session = app.login().await;
    let base = app.dashboard_url();
    let (_, list) = get_page(&base, Some(&session)).await;
    assert!(list.contains("(no sid: send failed)"), "{list}");
    let href = "/whatsapp/dashboard/messages/1";
    assert!(list.contains(href), "{list}");
    let (status, page) = get_page(&format!("{}{href}", app.base_url), Some(&session)).await;
    assert_eq!(status, 200);
    assert!(page.contains("Send failed"), "{page}");
    assert!(page.contains("21211"), "{page}");
    assert!(page.contains("invalid 'To' phone number"), "{page}");
    let (status, _) = get_page(&format!("{base}/messages/SMnope"), Some(&session)).await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn messages_are_found_by_phone_number_sid_status_and_app() {
    let twilio = twilio_answering(created("SM0000000000000000000000000000aaaa", TO)).await;
    let app = spawn_app(&TestConfig::new().api_base(twilio.uri()).with_dashboard()).await;
    app.send("+39 333 123 4567", "to the first").await;
    twilio.reset().await;
    twilio_answers(
        &twilio,
        created("SM0000000000000000000000000000bbbb", "+393471112222"),
    )
    .await;
    app.send("+39 347 111 2222", "to the second").await;
    app.store().flush().await.unwrap();
    let session = app.login().await;
    let base = app.dashboard_url();
    let find = |query: &'static str| {
        let url = format!("{base}?{query}");
        let session = session.clone();
        async move {
            let (status, page) = get_page(&url, Some(&session)).await;
            assert_eq!(status, 200);
            (
                page.contains("SM0000000000000000000000000000aaaa"),
                page.contains("SM0000000000000000000000000000bbbb"),
            )
        }
    };
    assert_eq!(find("").await, (true, true));
    assert_eq!(find("q=347+111").await, (false, true));
    assert_eq!(find("q=%2B393331234567").await, (true, false));
    assert_eq!(
        find("q=SM0000000000000000000000000000bbbb").await,
        (false, true)
    );
    assert_eq!(find("status=queued&app=crm").await, (true, true));
    assert_eq!(find("status=read").await, (false, false));
    assert_eq!(find("company=OTHER").await, (false, false));
    assert_eq!(
        find("since=2000-01-01T00%3A00&until=2000-01-02T00%3A00").await,
        (false, false)
    );
    assert_eq!(find("since=2000-01-01T00%3A00").await, (true, true));
    app.stop().await;
}

#[tokio::test]
async fn the_live_poll_gets_304_until_something_changes() {
    let app = spawn_app(&TestConfig::new().with_dashboard()).await;
    let session = app.login().await;
    let url = format!("{}/events", app.dashboard_url());
    let response = http()
        .get(&url)
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains(&format!("data-etag=\"{}\"", etag.replace('"', "&quot;")))
    );
    let poll = || async {
        http()
            .get(&url)
            .header("cookie", &session)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(poll().await, 304);
    let sid = "SM00000000000000000000000000000006";
    assert_eq!(app.post_status(COMPANY, sid, "sent").await.status(), 200);
    app.store().flush().await.unwrap();
    assert_eq!(poll().await, 200);
    app.stop().await;
}

#[tokio::test]
async fn no_page_shows_an_auth_key_even_when_a_callback_field_carries_one() {
    let app = spawn_app(&TestConfig::new().with_dashboard()).await;
    let sid = "SM00000000000000000000000000000007";
    let mut fields = status_fields(sid, "delivered");
    fields.push(("Body".into(), format!("pasted by mistake: {AUTH_KEY}")));
    let response = app
        .post_signed(&app.callback_url(APP, COMPANY), &fields)
        .await;
    assert_eq!(response.status(), 200);
    app.store().flush().await.unwrap();
    let stored = app.all_events().await;
    assert!(stored[0].fields.iter().any(|(_, v)| v.contains(AUTH_KEY)));
    let session = app.login().await;
    for url in all_pages(&app, sid, stored[0].id).await {
        let (status, page) = get_page(&url, Some(&session)).await;
        assert!(status == 200 || status == 303, "{url}: {status}");
        assert!(!page.contains(AUTH_KEY), "{url} shows the auth key");
    }
    let (_, event_page) = get_page(
        &format!("{}/events/{}", app.dashboard_url(), stored[0].id),
        Some(&session),
    )
    .await;
    assert!(
        event_page.contains("pasted by mistake: [redacted]"),
        "{event_page}"
    );
    app.stop().await;
}

#[tokio::test]
async fn static_assets_are_served_from_the_binary_without_a_session() {
    let app = spawn_app(&TestConfig::new().with_dashboard()).await;
    for (file, kind) in [("app.css", "text/css"), ("app.js", "text/javascript")] {
        let response = http()
            .get(format!("{}/static/{file}", app.dashboard_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        assert!(!response.text().await.unwrap().is_empty());
    }
    let (status, _) = get_page(&format!("{}/static/secret.txt", app.dashboard_url()), None).await;
    assert_eq!(status, 404);
    app.stop().await;
}

/// Posts a login as a proxy would forward it, with `X-Forwarded-For` when given; the status.
async fn login_forwarded_for(app: &TestApp, forwarded: Option<&str>, password: &str) -> u16 {
    let mut request = http()
        .post(format!("{}/auth/login", app.dashboard_url()))
        .form(&[("password", password)]);
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn forwarded_for_attributes_failed_logins_only_when_the_peer_is_a_trusted_proxy() {
    // The test client connects from 127.0.0.1, named here as the proxy.
    let mut config = TestConfig::new().with_dashboard();
    config.extra.push_str("trusted_proxies = [\"127.0.0.1\"]\n");
    let app = spawn_app(&config).await;
    for attempt in 1..=5 {
        let status = login_forwarded_for(&app, Some("203.0.113.7"), "guess").await;
        assert_eq!(status, 401, "attempt {attempt}");
    }
    assert_eq!(
        login_forwarded_for(&app, Some("203.0.113.7"), PASSWORD).await,
        429,
        "the forwarded address is locked out"
    );
    assert_eq!(
        login_forwarded_for(&app, Some("203.0.113.9, 203.0.113.7"), PASSWORD).await,
        429,
        "what the client wrote left of the proxy's entry changes nothing"
    );
    assert_eq!(
        login_forwarded_for(&app, Some("203.0.113.8"), PASSWORD).await,
        303,
        "another forwarded address is not"
    );
    assert_eq!(
        login_forwarded_for(&app, None, PASSWORD).await,
        303,
        "nor the proxy itself"
    );
    app.stop().await;

    // Without trusted proxies the header is ignored: every try counts against the peer.
    let app = spawn_app(&TestConfig::new().with_dashboard()).await;
    for attempt in 1..=5 {
        let forwarded = format!("203.0.113.{attempt}");
        let status = login_forwarded_for(&app, Some(&forwarded), "guess").await;
        assert_eq!(status, 401, "attempt {attempt}");
    }
    assert_eq!(
        login_forwarded_for(&app, Some("203.0.113.99"), PASSWORD).await,
        429
    );
    app.stop().await;
}
