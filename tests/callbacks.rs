//! The callback endpoint over real HTTP: signatures, bad input, durability and dispatch.

mod common;

use std::time::Duration;

use common::*;
use whatsapp_host::store::{EventFilter, EventState};

#[tokio::test]
async fn signed_callback_is_stored_and_dispatched() {
    let config = TestConfig::new().action("onStatus", "utils.info('got ' + vo.MessageStatus);");
    let app = spawn_app(&config).await;
    let response = app
        .post_status("ACME", "SM00000000000000000000000000000001", "delivered")
        .await;
    assert_eq!(response.status(), 200);
    app.wait_for("the event to be done", Duration::from_secs(5), || async {
        let events = app.store().events(EventFilter::default()).await.unwrap();
        events.len() == 1 && events[0].state == EventState::Done
    })
    .await;
    app.stop().await;
}
