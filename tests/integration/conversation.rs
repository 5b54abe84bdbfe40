//! The conversation page over plain HTTP: one app's messages with one contact in both
//! directions and in order, each reply with its status; the 24-hour window open or closed; the
//! messages list's direction filter and its links to the conversation; and the 63016 note.
//!
//! Most tests write inbound messages straight into the store (either backend), as the inbound
//! route stores them, so that a message can be dated hours or days back (the route stamps the
//! time it arrives). The last test goes through the real inbound route end to end.

use whatsapp_host::store::now_ms;

use crate::helpers::dashboard::*;
use crate::helpers::rows::Param;
use crate::helpers::stand_ins::{created, twilio_answering};
use crate::helpers::*;

const HOUR: i64 = 60 * 60 * 1000;
/// The contact's inbound message in these tests.
pub const INBOUND_SID: &str = "SMd4e5f60718293a4b5c6d7e8f90a1b2c3";
/// What the note says wherever a message carries error 63016.
const WINDOW_CLOSED: &str = "The 24-hour window was closed: send a template.";

/// Stores a message the contact `from` sent to the test app's number at `at` (Unix ms), as the
/// inbound route stores it: direction 'inbound', numbers E.164 without the channel prefix,
/// status 'received' (ranked final, so no status callback moves it), media as a JSON array.
/// Written directly so that `at` can be in the past: see the module's note.
pub async fn insert_inbound(config: &TestConfig, sid: &str, from: &str, body: &str, at: i64) {
    config
        .store_execute(
            "INSERT INTO messages (sid, app, company, account_sid, to_number, from_number, body, \
             media, status, status_rank, created_at, updated_at, direction, profile_name, wa_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '[]', 'received', 10, ?8, ?8, 'inbound', 'Ana', \
             ?9)",
            &[
                Param::Text(sid),
                Param::Text(APP),
                Param::Text(COMPANY),
                Param::Text(ACCOUNT_SID),
                Param::Text(FROM),
                Param::Text(from),
                Param::Text(body),
                Param::Int(at),
                Param::Text(from.trim_start_matches('+')),
            ],
        )
        .await;
}

/// `HH:MM` of `ms` in UTC, as the page writes the window's end.
fn clock(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .unwrap()
        .strftime("%H:%M")
        .to_string()
}

/// The conversation page's URL for the test app and `contact`.
fn conversation_url(app: &TestApp, contact: &str) -> String {
    format!("{}/apps/{APP}/conversations/{contact}", app.dashboard_url())
}

/// A server with the dashboard on, whose Twilio stand-in accepts every send as `reply_sid`.
async fn spawn_with_reply(reply_sid: &str) -> (TestApp, TestConfig, wiremock::MockServer) {
    let twilio = twilio_answering(created(reply_sid, TO)).await;
    let config = TestConfig::new().api_base(twilio.uri()).with_dashboard();
    let app = spawn_app(&config).await;
    (app, config, twilio)
}

#[tokio::test]
async fn the_page_shows_the_inbound_message_then_the_reply_with_its_status_and_an_open_window() {
    let reply = "SM2b0000000000000000000000000000ou";
    let (app, config, _twilio) = spawn_with_reply(reply).await;
    let inbound_at = now_ms() - HOUR;
    insert_inbound(&config, INBOUND_SID, TO, "hi", inbound_at).await;
    assert_eq!(
        app.send(TO, "Hello Ana! How can we help?").await.sid(),
        Some(reply)
    );
    assert_eq!(
        app.post_status(COMPANY, reply, "delivered").await.status(),
        200
    );
    app.store().flush().await.unwrap();

    let session = app.login().await;
    let (status, page) = get_page(&conversation_url(&app, TO), Some(&session)).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Conversation with"), "{page}");
    assert!(page.contains("Ana"), "the contact's profile name: {page}");
    let hi = page.find(">hi<").expect("the inbound message");
    let hello = page.find("Hello Ana! How can we help?").expect("the reply");
    assert!(hi < hello, "oldest first");
    assert!(page.contains("data-direction=\"inbound\""), "{page}");
    assert!(page.contains("data-direction=\"outbound\""), "{page}");
    let outbound = &page[page.find("data-direction=\"outbound\"").unwrap()..];
    assert!(
        outbound.contains("delivered"),
        "the reply has its status: {page}"
    );
    let open = format!("open until {} UTC", clock(inbound_at + 24 * HOUR));
    assert!(page.contains(&open), "{open:?} is not in {page}");
    assert!(!page.contains("closed: send a template"), "{page}");
    assert!(!page.contains(WINDOW_CLOSED), "{page}");
    // Each message links to its own page, which links back to the conversation.
    assert!(
        page.contains(&format!("/whatsapp/dashboard/messages/{INBOUND_SID}")),
        "{page}"
    );
    let (status, message) = get_page(
        &format!("{}/messages/{INBOUND_SID}", app.dashboard_url()),
        Some(&session),
    )
    .await;
    assert_eq!(status, 200);
    assert!(message.contains("Received from +393331234567"), "{message}");
    assert!(
        message.contains("/whatsapp/dashboard/apps/crm/conversations/+393331234567"),
        "{message}"
    );
    // The contact can be written the way Twilio writes it, or without the `+`.
    for typed in ["whatsapp:%2B393331234567", "393331234567"] {
        let (status, same) = get_page(&conversation_url(&app, typed), Some(&session)).await;
        assert_eq!(status, 200, "{typed}");
        assert!(same.contains("Hello Ana! How can we help?"), "{typed}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_window_is_closed_a_day_after_the_contacts_last_message_or_when_they_never_wrote() {
    let (app, config, _twilio) = spawn_with_reply("SM3c0000000000000000000000000000ou").await;
    let session = app.login().await;
    let (status, page) = get_page(&conversation_url(&app, TO), Some(&session)).await;
    assert_eq!(status, 200);
    assert!(page.contains("closed: send a template"), "{page}");
    assert!(page.contains("has not written to this number"), "{page}");
    assert!(page.contains("No message with this contact yet."), "{page}");

    insert_inbound(&config, INBOUND_SID, TO, "hi", now_ms() - 25 * HOUR).await;
    let (_, page) = get_page(&conversation_url(&app, TO), Some(&session)).await;
    assert!(page.contains("closed: send a template"), "{page}");
    assert!(page.contains("more than 24 hours ago"), "{page}");
    assert!(!page.contains("open until"), "{page}");
    assert!(page.contains(">hi<"), "{page}");

    // A newer message from the contact opens it again.
    let again = now_ms() - 2 * HOUR;
    insert_inbound(
        &config,
        "SM4d0000000000000000000000000000in",
        TO,
        "are you there?",
        again,
    )
    .await;
    let (_, page) = get_page(&conversation_url(&app, TO), Some(&session)).await;
    let open = format!("open until {} UTC", clock(again + 24 * HOUR));
    assert!(page.contains(&open), "{open:?} is not in {page}");

    // An app that is neither in the settings nor in the store has no conversation.
    let (status, _) = get_page(
        &format!("{}/apps/nope/conversations/{TO}", app.dashboard_url()),
        Some(&session),
    )
    .await;
    assert_eq!(status, 404);
    // Nor is any of it shown without a session.
    let (status, page) = get_page(&conversation_url(&app, TO), None).await;
    assert_eq!(status, 401);
    assert!(!page.contains("are you there?"));
    app.stop().await;
}

#[tokio::test]
async fn the_messages_list_filters_by_direction_and_links_each_message_to_its_conversation() {
    let reply = "SM5e0000000000000000000000000000ou";
    let (app, config, _twilio) = spawn_with_reply(reply).await;
    insert_inbound(&config, INBOUND_SID, TO, "hi", now_ms() - HOUR).await;
    app.send(TO, "Hello Ana!").await;
    app.store().flush().await.unwrap();
    let session = app.login().await;
    let base = app.dashboard_url();
    let list = |query: &'static str| {
        let url = format!("{base}?{query}");
        let session = session.clone();
        async move {
            let (status, page) = get_page(&url, Some(&session)).await;
            assert_eq!(status, 200);
            page
        }
    };
    let both = list("").await;
    assert!(both.contains(INBOUND_SID) && both.contains(reply), "{both}");
    let link = "href=\"/whatsapp/dashboard/apps/crm/conversations/+393331234567\"";
    assert_eq!(both.matches(link).count(), 2, "each row links: {both}");
    assert!(both.contains("<option value=\"inbound\">inbound</option>"));

    let inbound = list("direction=inbound").await;
    assert!(
        inbound.contains(INBOUND_SID) && !inbound.contains(reply),
        "{inbound}"
    );
    assert!(inbound.contains("<option value=\"inbound\" selected>inbound</option>"));
    let outbound = list("direction=outbound").await;
    assert!(
        !outbound.contains(INBOUND_SID) && outbound.contains(reply),
        "{outbound}"
    );
    // The other filters still apply beside it.
    let none = list("direction=inbound&status=read").await;
    assert!(!none.contains(INBOUND_SID), "{none}");
    app.stop().await;
}

#[tokio::test]
async fn a_reply_that_failed_with_63016_says_the_window_was_closed_and_a_template_is_needed() {
    let reply = "SM6f0000000000000000000000000000ou";
    let (app, config, _twilio) = spawn_with_reply(reply).await;
    insert_inbound(&config, INBOUND_SID, TO, "hi", now_ms() - 30 * HOUR).await;
    app.send(TO, "Sorry for the wait!").await;
    // Twilio's failed callbacks carry ErrorCode 63016 here (see status_fields).
    assert_eq!(
        app.post_status(COMPANY, reply, "failed").await.status(),
        200
    );
    app.store().flush().await.unwrap();
    let session = app.login().await;

    let (status, page) = get_page(&conversation_url(&app, TO), Some(&session)).await;
    assert_eq!(status, 200);
    assert!(page.contains("63016"), "{page}");
    assert!(page.contains(WINDOW_CLOSED), "{page}");
    assert!(page.contains("id=\"window-closed\""), "{page}");
    assert!(page.contains("closed: send a template"), "{page}");
    let outbound = &page[page.find("data-direction=\"outbound\"").unwrap()..];
    assert!(outbound.contains("failed"), "{page}");

    let (status, message) = get_page(
        &format!("{}/messages/{reply}", app.dashboard_url()),
        Some(&session),
    )
    .await;
    assert_eq!(status, 200);
    assert!(message.contains(WINDOW_CLOSED), "{message}");

    // A message that failed for another reason carries no such note.
    let (_, inbound) = get_page(
        &format!("{}/messages/{INBOUND_SID}", app.dashboard_url()),
        Some(&session),
    )
    .await;
    assert!(!inbound.contains(WINDOW_CLOSED), "{inbound}");
    app.stop().await;
}

/// The whole loop through the real routes: a contact's message posted to the inbound route as
/// Twilio would, the app's reply, its status callback, and the page that shows them.
#[tokio::test]
async fn a_message_posted_to_the_inbound_route_and_its_reply_make_the_conversation() {
    let reply = "SM2b0000000000000000000000000000rl";
    let (app, _config, _twilio) = spawn_with_reply(reply).await;
    let base = url::Url::parse(&app.base_url).unwrap();
    let url = whatsapp_host::routes::inbound_url(&base, APP, COMPANY);
    let fields = whatsapp_host::twilio::simulate::inbound_message_fields(
        ACCOUNT_SID,
        TO,
        FROM,
        "Ana",
        "hi from the route",
        &[],
    );
    assert_eq!(app.post_signed(&url, &fields).await.status(), 200);
    assert_eq!(app.send(TO, "Hello from the app").await.sid(), Some(reply));
    assert_eq!(app.post_status(COMPANY, reply, "read").await.status(), 200);
    app.store().flush().await.unwrap();

    let session = app.login().await;
    let (status, page) = get_page(&conversation_url(&app, TO), Some(&session)).await;
    assert_eq!(status, 200, "{page}");
    let hi = page.find("hi from the route").expect("the inbound message");
    let hello = page.find("Hello from the app").expect("the reply");
    assert!(hi < hello, "oldest first: {page}");
    let outbound = &page[page.find("data-direction=\"outbound\"").unwrap()..];
    assert!(outbound.contains("read"), "the reply's status: {page}");
    assert!(
        page.contains("open until"),
        "the window just opened: {page}"
    );
    app.stop().await;
}
