//! The store's rules that hold whichever backend keeps it, written once: each test is a body
//! over a [`Store`], run by [`on_both_backends!`] on a fresh embedded store and on a fresh
//! PostgreSQL database (`$WHATSAPP_HOST_TEST_PG_URL`, as `scripts/test.sh` provides).

use std::time::Duration;

use super::{
    Direction, DispatchResult, EventFilter, EventKind, EventState, Inserted, MessageFilter,
    NewEvent, NumberWindow, SendRecord, Store, WINDOW_MS, Window, send_record, status_event,
};
use crate::twilio::simulate;
use crate::twilio::webhook::StatusCallback;

/// Makes `sqlite::NAME` and `postgres::NAME` tests of each body `NAME` in this module.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$name(crate::store::Store::open(dir.path()).unwrap()).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let url = crate::store::postgres::features::tests::fresh_database().await;
                    super::$name(crate::store::postgres::tests::instance(&url).await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    status_only_moves_forward_and_failed_is_final,
    repeats_by_token_or_by_sid_status_and_code_are_stored_once,
    an_idempotency_token_is_a_repeat_within_an_app_and_new_in_another,
    a_send_recorded_after_its_callback_keeps_the_further_status,
    another_apps_event_naming_a_sid_leaves_the_owners_message_and_dedupe_untouched,
    an_event_naming_another_account_does_not_move_the_apps_message,
    an_inbound_message_is_stored_as_an_event_and_a_received_message_row_once,
    the_window_is_open_for_24_hours_after_the_contacts_last_message_to_that_number,
    a_conversation_holds_both_directions_of_one_contact_in_order,
    the_session_window_is_per_app_number_and_moves_with_the_clock,
    a_search_finds_a_sid_whole_and_a_number_by_its_digits,
    listings_filter_and_page_newest_first,
);

/// A status event as app `app`'s callback route stores it, naming `account`.
pub(super) fn app_status(app: &str, account: &str, sid: &str, status: &str, at: i64) -> NewEvent {
    let mut event = status_event(sid, status, at);
    event.app = app.into();
    event.callback.account_sid = Some(account.into());
    event
}

/// An inbound message with one picture from `contact` to `app_number` of app `crm`, as the
/// inbound route stores it.
pub(super) fn inbound_event(sid: &str, contact: &str, app_number: &str, at: i64) -> NewEvent {
    let media = [("https://m/0".to_string(), "image/jpeg".to_string())];
    let fields = simulate::inbound_message_fields("AC1", contact, app_number, "Ana", "hi", &media);
    let mut callback = StatusCallback::from_fields(fields);
    callback.sid = Some(sid.into());
    NewEvent {
        kind: EventKind::Inbound,
        callback,
        ..status_event(sid, "", at)
    }
}

/// The id of an event that must have been stored as new.
pub(super) fn new_id(inserted: Inserted) -> i64 {
    match inserted {
        Inserted::New(id) => id,
        Inserted::Duplicate => panic!("stored as a repeat"),
    }
}

async fn status_only_moves_forward_and_failed_is_final(store: Store) {
    for (i, s) in ["read", "sent", "delivered"].iter().enumerate() {
        store
            .insert_event(status_event("SM1", s, i as i64))
            .await
            .unwrap();
    }
    let (m, events) = store.message("SM1").await.unwrap().unwrap();
    assert_eq!(m.status, "read");
    assert_eq!(events.len(), 3);
    store
        .insert_event(status_event("SM2", "failed", 1))
        .await
        .unwrap();
    store
        .insert_event(status_event("SM2", "delivered", 2))
        .await
        .unwrap();
    assert_eq!(
        store.message("SM2").await.unwrap().unwrap().0.status,
        "failed"
    );
    store.close().await;
}

async fn repeats_by_token_or_by_sid_status_and_code_are_stored_once(store: Store) {
    let first = store
        .insert_event(status_event("SM1", "sent", 1))
        .await
        .unwrap();
    assert!(matches!(first, Inserted::New(_)));
    let again = store
        .insert_event(status_event("SM1", "sent", 2))
        .await
        .unwrap();
    assert_eq!(again, Inserted::Duplicate);
    let mut with_token = status_event("SM1", "delivered", 3);
    with_token.idempotency_token = Some("tok".into());
    assert!(matches!(
        store.insert_event(with_token.clone()).await.unwrap(),
        Inserted::New(_)
    ));
    with_token.callback.status = Some("read".into());
    assert_eq!(
        store.insert_event(with_token).await.unwrap(),
        Inserted::Duplicate
    );
    // In one group: the second of two equal events is the repeat.
    let (x, y) = tokio::join!(
        store.insert_event(status_event("SM2", "sent", 1)),
        store.insert_event(status_event("SM2", "sent", 1)),
    );
    let mut outcomes = [x.unwrap(), y.unwrap()];
    outcomes.sort_by_key(|o| matches!(o, Inserted::Duplicate));
    assert!(matches!(outcomes, [Inserted::New(_), Inserted::Duplicate]));
    store.close().await;
}

async fn an_idempotency_token_is_a_repeat_within_an_app_and_new_in_another(store: Store) {
    let with_token = |app: &str, sid: &str| {
        let mut event = app_status(app, "AC1", sid, "sent", 1);
        event.idempotency_token = Some("ID-shared".into());
        event
    };
    assert!(matches!(
        store.insert_event(with_token("crm", "SM1")).await.unwrap(),
        Inserted::New(_)
    ));
    assert!(matches!(
        store.insert_event(with_token("ops", "SM2")).await.unwrap(),
        Inserted::New(_)
    ));
    assert_eq!(
        store.insert_event(with_token("crm", "SM3")).await.unwrap(),
        Inserted::Duplicate
    );
    let events = store.events(EventFilter::default()).await.unwrap();
    let stored: Vec<_> = events
        .iter()
        .rev()
        .map(|e| (e.app.as_str(), e.message_sid.as_deref().unwrap()))
        .collect();
    assert_eq!(stored, [("crm", "SM1"), ("ops", "SM2")]);
    store.close().await;
}

async fn a_send_recorded_after_its_callback_keeps_the_further_status(store: Store) {
    store
        .insert_event(status_event("SM9", "delivered", 5))
        .await
        .unwrap();
    store.record_send(SendRecord {
        at: 4,
        body: "hi".into(),
        ..send_record("crm", "AC1", "SM9")
    });
    store.flush().await.unwrap();
    let (m, _) = store.message("SM9").await.unwrap().unwrap();
    assert_eq!(m.status, "delivered");
    assert_eq!(m.body.as_deref(), Some("hi"));
    assert_eq!(m.created_at, 4);
    // A send Twilio refused has no sid and a row of its own each time.
    for _ in 0..2 {
        store.record_send(SendRecord {
            sid: None,
            status: "failed".into(),
            error_code: Some(21211),
            error_message: Some("invalid To".into()),
            ..send_record("crm", "AC1", "")
        });
    }
    store.flush().await.unwrap();
    let failed = store
        .messages(MessageFilter {
            status: Some("failed".into()),
            ..MessageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0].error_code.as_deref(), Some("21211"));
    store.close().await;
}

async fn another_apps_event_naming_a_sid_leaves_the_owners_message_and_dedupe_untouched(
    store: Store,
) {
    store.record_send(send_record("crm", "AC_A", "SM1"));
    store
        .insert_event(app_status("crm", "AC_A", "SM1", "delivered", 2))
        .await
        .unwrap();

    // App B, with its own valid token, names A's sid with A's next and a final status.
    for status in ["failed", "read"] {
        let forged = app_status("ops", "AC_B", "SM1", status, 3);
        assert!(matches!(
            store.insert_event(forged).await.unwrap(),
            Inserted::New(_)
        ));
    }
    let (a, a_events) = store.app_message("crm", "SM1").await.unwrap().unwrap();
    assert_eq!(
        (a.status.as_str(), a.account_sid.as_deref()),
        ("delivered", Some("AC_A"))
    );
    assert_eq!(a.error_code, None);
    assert_eq!(a_events.len(), 1, "B's events are not A's history");

    // A's genuine `read` is new, not a repeat of B's, and moves A's message.
    let genuine = store
        .insert_event(app_status("crm", "AC_A", "SM1", "read", 4))
        .await
        .unwrap();
    assert!(matches!(genuine, Inserted::New(_)), "{genuine:?}");
    let (a, a_events) = store.app_message("crm", "SM1").await.unwrap().unwrap();
    assert_eq!(a.status, "read");
    let history: Vec<_> = a_events
        .iter()
        .map(|e| e.message_status.as_deref().unwrap())
        .collect();
    assert_eq!(history, ["delivered", "read"]);

    // B's events only ever touched a row of B's own; a lookup by sid alone finds A's send.
    let (b, b_events) = store.app_message("ops", "SM1").await.unwrap().unwrap();
    assert_eq!((b.status.as_str(), b_events.len()), ("failed", 2));
    let (by_sid, _) = store.message("SM1").await.unwrap().unwrap();
    assert_eq!((by_sid.app.as_str(), by_sid.id), ("crm", a.id));
    store.close().await;
}

async fn an_event_naming_another_account_does_not_move_the_apps_message(store: Store) {
    store.record_send(send_record("crm", "AC_A", "SM1"));
    store
        .insert_event(app_status("crm", "AC_OTHER", "SM1", "failed", 2))
        .await
        .unwrap();
    let (m, _) = store.app_message("crm", "SM1").await.unwrap().unwrap();
    assert_eq!(
        (m.status.as_str(), m.account_sid.as_deref()),
        ("queued", Some("AC_A"))
    );
    // An event that names no account is matched by app alone, as before.
    store
        .insert_event(status_event("SM1", "sent", 3))
        .await
        .unwrap();
    store
        .insert_event(app_status("crm", "AC_A", "SM1", "delivered", 4))
        .await
        .unwrap();
    let (m, _) = store.app_message("crm", "SM1").await.unwrap().unwrap();
    assert_eq!(m.status, "delivered");
    store.close().await;
}

async fn an_inbound_message_is_stored_as_an_event_and_a_received_message_row_once(store: Store) {
    let (contact, number) = ("+393331234567", "+14155238886");
    let event = inbound_event("SM1", contact, number, 5);
    let id = new_id(store.insert_event(event.clone()).await.unwrap());
    assert_eq!(
        store.insert_event(event).await.unwrap(),
        Inserted::Duplicate
    );
    let stored = store.event(id).await.unwrap().unwrap();
    assert_eq!(stored.kind, EventKind::Inbound);
    assert_eq!(stored.message_status.as_deref(), Some("received"));
    assert_eq!(stored.attempts, 1);

    // A status callback naming the sid does not move the received message.
    store
        .insert_event(status_event("SM1", "read", 6))
        .await
        .unwrap();
    let (m, _) = store.app_message("crm", "SM1").await.unwrap().unwrap();
    assert_eq!(
        (m.direction, m.status.as_str()),
        (Direction::Inbound, "received")
    );
    assert_eq!(
        (m.from.as_deref(), m.to.as_deref(), m.body.as_deref()),
        (Some(contact), Some(number), Some("hi"))
    );
    assert_eq!(
        (m.profile_name.as_deref(), m.wa_id.as_deref()),
        (Some("Ana"), Some("393331234567"))
    );
    let media: serde_json::Value = serde_json::from_str(m.media.as_deref().unwrap()).unwrap();
    assert_eq!(
        media,
        serde_json::json!([{"url": "https://m/0", "contentType": "image/jpeg"}])
    );
    assert_eq!(m.created_at, 5);

    store.record_send(send_record("crm", "AC1", "SM2"));
    store.flush().await.unwrap();
    let only = |direction| MessageFilter {
        direction: Some(direction),
        ..MessageFilter::default()
    };
    let inbound = store.messages(only(Direction::Inbound)).await.unwrap();
    let outbound = store.messages(only(Direction::Outbound)).await.unwrap();
    assert_eq!(inbound.len(), 1);
    assert_eq!(outbound.len(), 1);
    assert_eq!(outbound[0].sid.as_deref(), Some("SM2"));
    store.close().await;
}

async fn the_window_is_open_for_24_hours_after_the_contacts_last_message_to_that_number(
    store: Store,
) {
    let (contact, number) = ("+393331234567", "+14155238886");
    let at = 1_000_000_000;
    store
        .insert_event(inbound_event("SM1", contact, number, at))
        .await
        .unwrap();
    let open = |app: &'static str, from: &'static str, to: &'static str, now: i64| {
        let store = store.clone();
        async move { store.session_open(app, from, to, now).await.unwrap() }
    };
    assert!(open("crm", number, contact, at).await);
    assert!(open("crm", number, contact, at + WINDOW_MS).await);
    assert!(!open("crm", number, contact, at + WINDOW_MS + 1).await);
    assert!(!open("crm", number, contact, at - 1).await, "not yet sent");
    assert!(
        !open("crm", "+14155238887", contact, at).await,
        "another number"
    );
    assert!(
        !open("crm", number, "+393331234568", at).await,
        "another contact"
    );
    assert!(!open("ops", number, contact, at).await, "another app");
    // A message the app sent to the contact opens nothing.
    store.record_send(send_record("crm", "AC1", "SM2"));
    store.flush().await.unwrap();
    assert!(!open("crm", number, contact, at + WINDOW_MS + 1).await);

    let clock = store.clock().clone();
    let before = clock.now_ms();
    store.clock().advance(Duration::from_secs(24 * 3600));
    assert!(clock.now_ms() - before >= WINDOW_MS, "clones move together");
    store.close().await;
}

const HOUR: i64 = 60 * 60 * 1000;
const CONTACT: &str = "+393331234567";
const APP_NUMBER: &str = "+14155238886";

/// App `app`'s inbound message `sid` from `from` to [`APP_NUMBER`].
fn inbound_to_app(app: &str, sid: &str, from: &str, at: i64) -> NewEvent {
    NewEvent {
        app: app.into(),
        ..inbound_event(sid, from, APP_NUMBER, at)
    }
}

/// App `crm`'s reply `sid` to `to`, with a picture.
fn reply(sid: &str, to: &str, at: i64) -> SendRecord {
    SendRecord {
        to: to.into(),
        body: "hello Ana".into(),
        media: Some("https://example.com/a.jpg".into()),
        at,
        ..send_record("crm", "AC1", sid)
    }
}

async fn a_conversation_holds_both_directions_of_one_contact_in_order(store: Store) {
    let t0 = 1_700_000_000_000;
    store
        .insert_event(inbound_to_app("crm", "SMin1", CONTACT, t0))
        .await
        .unwrap();
    store.record_send(reply("SMout1", CONTACT, t0 + 1_000));
    // Another contact, another app, and a reply to another contact are not part of it.
    let other = "+393470000000";
    store
        .insert_event(inbound_to_app("crm", "SMin2", other, t0 + 2_000))
        .await
        .unwrap();
    store
        .insert_event(inbound_to_app("ops", "SMin3", CONTACT, t0 + 3_000))
        .await
        .unwrap();
    store.record_send(reply("SMout2", other, t0 + 4_000));
    store.flush().await.unwrap();
    store
        .insert_event(status_event("SMout1", "read", t0 + 5_000))
        .await
        .unwrap();

    let c = store.conversation("crm", CONTACT, t0 + HOUR).await.unwrap();
    let sids: Vec<_> = c
        .entries
        .iter()
        .map(|e| (e.message.sid.as_deref().unwrap(), e.message.direction))
        .collect();
    assert_eq!(
        sids,
        [
            ("SMin1", Direction::Inbound),
            ("SMout1", Direction::Outbound)
        ]
    );
    assert_eq!(c.entries[1].message.status, "read");
    assert_eq!(
        c.entries[0].media[0].content_type.as_deref(),
        Some("image/jpeg")
    );
    assert_eq!(c.profile_name.as_deref(), Some("Ana"));
    assert!(!c.truncated);
    assert_eq!(
        c.windows,
        [NumberWindow {
            app_number: APP_NUMBER.into(),
            window: Window::Open {
                until: t0 + 24 * HOUR
            }
        }]
    );
    let later = store
        .conversation("crm", CONTACT, t0 + 25 * HOUR)
        .await
        .unwrap();
    assert!(!later.windows[0].window.is_open());
    store.close().await;
}

async fn the_session_window_is_per_app_number_and_moves_with_the_clock(store: Store) {
    let t0 = 1_700_000_000_000;
    let window = |number: &'static str, now: i64| {
        let store = store.clone();
        async move {
            store
                .session_window("crm", number, CONTACT, now)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        window(APP_NUMBER, t0).await,
        Window::Closed { last_inbound: None }
    );
    store
        .insert_event(inbound_to_app("crm", "SMin1", CONTACT, t0))
        .await
        .unwrap();
    // A reply does not open the window; only the contact's message does.
    store.record_send(reply("SMout1", CONTACT, t0 + 30 * HOUR));
    store.flush().await.unwrap();
    assert!(window(APP_NUMBER, t0 + 23 * HOUR).await.is_open());
    assert!(!window(APP_NUMBER, t0 + 25 * HOUR).await.is_open());
    assert!(!window("+447911123456", t0 + HOUR).await.is_open());
    store.close().await;
}

async fn a_search_finds_a_sid_whole_and_a_number_by_its_digits(store: Store) {
    let at = 1_000_000_000;
    store
        .insert_event(inbound_to_app("crm", "SM1", CONTACT, at))
        .await
        .unwrap();
    store.record_send(SendRecord {
        at: at + 1_000,
        ..send_record("crm", "AC1", "SMout")
    });
    store.flush().await.unwrap();
    let search = |text: &str| MessageFilter {
        search: Some(text.into()),
        ..MessageFilter::default()
    };
    assert_eq!(store.messages(search("SMout")).await.unwrap().len(), 1);
    assert_eq!(store.messages(search("SMo")).await.unwrap().len(), 0);
    assert_eq!(store.messages(search("333 123")).await.unwrap().len(), 2);
    assert_eq!(store.messages(search("+1 415")).await.unwrap().len(), 2);
    store.close().await;
}

async fn listings_filter_and_page_newest_first(store: Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut event = status_event(&format!("SM{i}"), "sent", i);
        if i % 2 == 1 {
            event.app = "ops".into();
        }
        ids.push(new_id(store.insert_event(event).await.unwrap()));
    }
    store.finish_dispatch(ids[0], 1, DispatchResult::Done);
    store.flush().await.unwrap();
    let list = |filter: EventFilter| {
        let store = store.clone();
        async move {
            store
                .events(filter)
                .await
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(EventFilter::default()).await,
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
    let ops = EventFilter {
        app: Some("ops".into()),
        ..EventFilter::default()
    };
    assert_eq!(list(ops).await, [ids[3], ids[1]]);
    let done = EventFilter {
        state: Some(EventState::Done),
        ..EventFilter::default()
    };
    assert_eq!(list(done).await, [ids[0]]);
    let page = EventFilter {
        before_id: Some(ids[3]),
        limit: 2,
        ..EventFilter::default()
    };
    assert_eq!(list(page).await, [ids[2], ids[1]]);
    let sid = EventFilter {
        message_sid: Some("SM4".into()),
        ..EventFilter::default()
    };
    assert_eq!(list(sid).await, [ids[4]]);
    store.close().await;
}
