//! The dashboard's HTML, rendered on the server with maud: the layout, the messages list, a
//! message's timeline, a conversation with one contact, the events list, an event with its
//! action error, and the login page.
//! Pure functions of their arguments: no store access, no secrets.

use maud::{DOCTYPE, Markup, html};

use crate::routes::{self, path_segment};
use crate::store::{
    Conversation, Direction, Entry, Event, EventState, Message, NumberWindow, Window,
};
use crate::twilio::codes;

use super::utc;

/// What every page needs to draw links and forms.
pub(crate) struct View<'a> {
    /// `{context}/whatsapp/dashboard`.
    pub(crate) base: &'a str,
    /// The session's CSRF token, embedded in every POST form.
    pub(crate) csrf: &'a str,
    /// App ids from the settings, for the filter menus.
    pub(crate) apps: Vec<&'a str>,
    /// Changes when the embedded CSS or JS changes, so browsers fetch the new one.
    pub(crate) asset_version: &'a str,
}

/// A page before layout: the part that live updates replace is `live`.
pub(crate) struct Page {
    pub(crate) title: String,
    /// Drawn above the live region and left alone by live updates (so typing is not lost).
    pub(crate) controls: Option<Markup>,
    pub(crate) live: Markup,
}

/// Statuses a message can have, in the order they happen; `received` is an inbound message's.
pub(crate) const STATUSES: &[&str] = &[
    "received",
    "accepted",
    "scheduled",
    "queued",
    "sending",
    "sent",
    "delivered",
    "read",
    "undelivered",
    "failed",
    "canceled",
];

/// What an operator must know wherever a message carries Twilio's 63016.
pub(crate) const WINDOW_CLOSED_NOTE: &str = "The 24-hour window was closed: send a template. WhatsApp delivers free-form text only within 24 hours of the contact's last message; an approved Content template (utils.sendWhatsappTemplate) opens the conversation again.";

/// The filters of the messages list, as typed (echoed back into the form and the links).
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub(crate) struct MessageQuery {
    pub(crate) app: String,
    pub(crate) company: String,
    pub(crate) status: String,
    /// A sid, or a phone number (any part of it).
    pub(crate) q: String,
    /// `datetime-local` values, read as UTC.
    pub(crate) since: String,
    pub(crate) until: String,
    /// `inbound`, `outbound`, or empty for both.
    pub(crate) direction: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) before: String,
}

/// The filters of the events list.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub(crate) struct EventQuery {
    pub(crate) app: String,
    pub(crate) state: String,
    pub(crate) sid: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) before: String,
}

/// The whole document around a page.
pub(crate) fn layout(view: &View, page: Page, etag: &str) -> Markup {
    let base = view.base;
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(base, &page.title, view.asset_version))
            body {
                header.top {
                    a.brand href=(base) { "whatsapp-host" }
                    nav {
                        a href=(base) { "Messages" }
                        a href=(format!("{base}/events")) { "Events" }
                    }
                    form.logout method="post" action=(format!("{base}/auth/logout")) {
                        input type="hidden" name="csrf" value=(view.csrf);
                        button.link type="submit" { "Log out" }
                    }
                }
                @if let Some(controls) = page.controls { (controls) }
                main #live data-etag=(etag) { (page.live) }
                footer {
                    span #live-status { "Live: this page updates by itself." }
                    " Times are UTC."
                }
                script src=(format!("{base}/static/app.js?v={}", view.asset_version)) defer {}
            }
        }
    }
}

fn head(base: &str, title: &str, asset_version: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="robots" content="noindex";
            title { (title) " · whatsapp-host" }
            link rel="stylesheet" href=(format!("{base}/static/app.css?v={asset_version}"));
        }
    }
}

/// The login form. `next` is where a correct password leads.
pub(crate) fn login(base: &str, asset_version: &str, next: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(base, "Log in", asset_version))
            body.login {
                main.card {
                    h1 { "whatsapp-host dashboard" }
                    p.muted { "Enter the operator password from the settings file." }
                    @if let Some(error) = error { p.error #login-error role="alert" { (error) } }
                    form method="post" action=(format!("{base}/auth/login")) {
                        input type="hidden" name="next" value=(next);
                        label for="password" { "Password" }
                        input #password type="password" name="password" autocomplete="current-password" required autofocus;
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

/// A short page that says what went wrong and what to do.
pub(crate) fn problem(base: &str, asset_version: &str, title: &str, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(base, title, asset_version))
            body {
                header.top { a.brand href=(base) { "whatsapp-host" } }
                main {
                    h1 { (title) }
                    p.error { (message) }
                    p { a href=(base) { "Back to messages" } }
                }
            }
        }
    }
}

/// The messages list with its filter form.
pub(crate) fn messages(
    view: &View,
    query: &MessageQuery,
    rows: &[Message],
    older: Option<i64>,
) -> Page {
    let base = view.base;
    let controls = html! {
        form.filters method="get" action=(base) {
            label { "App"
                select name="app" {
                    option value="" { "any" }
                    @for app in &view.apps { option value=(app) selected[query.app == *app] { (app) } }
                }
            }
            label { "Company" input type="text" name="company" value=(query.company) placeholder="any"; }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES { option value=(s) selected[query.status == *s] { (s) } }
                }
            }
            label { "Direction"
                select name="direction" {
                    option value="" { "both" }
                    @for d in [Direction::Inbound, Direction::Outbound] {
                        option value=(d.as_str()) selected[query.direction == d.as_str()] { (d.as_str()) }
                    }
                }
            }
            label.wide { "Sid or phone number"
                input type="search" name="q" value=(query.q) placeholder="SM… or +39 333…";
            }
            label { "From (UTC)" input type="datetime-local" name="since" value=(query.since); }
            label { "To (UTC)" input type="datetime-local" name="until" value=(query.until); }
            div.buttons {
                button type="submit" { "Filter" }
                a href=(base) { "Clear" }
            }
        }
    };
    let live = html! {
        h1 { "Messages" }
        @if rows.is_empty() {
            p.empty { "No messages match these filters." }
        } @else {
            div.table-wrap { table.list #messages {
                thead { tr { th { "Created" } th { "Sid" } th { "App" } th { "Company" } th { "Direction" } th { "Contact" } th { "Status" } th { "Error" } } }
                tbody {
                    @for m in rows {
                        tr data-direction=(m.direction.as_str()) {
                            td data-label="Created" { (utc::format(m.created_at)) }
                            td data-label="Sid" { a.sid href=(message_href(base, m)) { (m.sid.as_deref().unwrap_or("(no sid: send failed)")) } }
                            td data-label="App" { (m.app) }
                            td data-label="Company" { (m.company) }
                            td data-label="Direction" { (direction_badge(m.direction)) }
                            td data-label="Contact" {
                                @if let Some(contact) = contact(m) {
                                    a.contact href=(routes::conversation_path(base, &m.app, contact)) title="The conversation with this contact" { (contact) }
                                }
                            }
                            td data-label="Status" { (status_badge(&m.status)) }
                            td data-label="Error" { @if let Some(code) = &m.error_code { (error_code(code)) } }
                        }
                    }
                }
            } }
            @if let Some(before) = older {
                p.more { a href=(format!("{base}?{}", with_before(query, before))) { "Older messages →" } }
            }
        }
    };
    Page {
        title: "Messages".into(),
        controls: Some(controls),
        live,
    }
}

/// One message: what happened to it, in order.
pub(crate) fn message(view: &View, m: &Message, events: &[Event]) -> Page {
    let base = view.base;
    let sent_here = m.account_sid.is_some();
    let failed_actions = events
        .iter()
        .filter(|e| matches!(e.state, EventState::Failed | EventState::Dead))
        .count();
    let live = html! {
        h1 { "Message " code.sid { (m.sid.as_deref().unwrap_or("without sid")) } " " (status_badge(&m.status)) }
        p.verdict #verdict { (verdict(m, events)) }
        @if window_closed(m.error_code.as_deref()) { p.warning #window-closed { (WINDOW_CLOSED_NOTE) } }
        @if failed_actions > 0 {
            p.warning { "The callback action failed for " (failed_actions) " of this message's events; see the timeline." }
        }
        dl.facts {
            dt { "App" } dd { (m.app) }
            dt { "Company" } dd { (m.company) }
            dt { "Direction" } dd { (direction_badge(m.direction)) }
            @if let Some(contact) = contact(m) {
                dt { "Conversation" } dd { a #conversation-link href=(routes::conversation_path(base, &m.app, contact)) { "With " (contact) } }
            }
            dt { "To" } dd { (m.to.as_deref().unwrap_or("—")) }
            dt { "From" } dd { (m.from.as_deref().unwrap_or("—")) }
            @if let Some(account) = &m.account_sid { dt { "Account" } dd { code { (account) } } }
            @if let Some(body) = &m.body { dt { "Body" } dd.body { (body) } }
            @if let Some(media) = &m.media { dt { "Media" } dd { code { (media) } } }
            dt { "First seen" } dd { (utc::format(m.created_at)) }
            dt { "Last change" } dd { (utc::format(m.updated_at)) }
            @if let Some(code) = &m.error_code {
                dt { "Error" } dd { (error_code(code)) @if let Some(text) = &m.error_message { br; span.muted { (text) } } }
            }
        }
        h2 { "Timeline" }
        ol.timeline #timeline {
            li.step.send {
                time { (utc::format_precise(m.created_at)) }
                @if m.direction == Direction::Inbound {
                    span.what { "Received: the contact wrote to the app" }
                    span.muted { "From " (m.from.as_deref().unwrap_or("?")) " to " (m.to.as_deref().unwrap_or("?")) "." }
                } @else if !sent_here {
                    span.what { "First seen in a status callback" }
                    span.muted { "This host has no record of sending it (sent by another system, or before this store existed)." }
                } @else if m.sid.is_some() {
                    span.what { "Sent: Twilio accepted the message" }
                    span.muted { "From " (m.app) " / " (m.company) " to " (m.to.as_deref().unwrap_or("?")) "." }
                } @else {
                    span.what.bad { "Send failed" }
                    @if let Some(code) = &m.error_code { (error_code(code)) }
                    @if let Some(text) = &m.error_message { span.muted { (text) } }
                }
            }
            @for e in events {
                li.step.status data-status=(e.message_status.as_deref().unwrap_or("")) {
                    time { (utc::format_precise(e.received_at)) }
                    span.what {
                        @if let Some(status) = &e.message_status { (status_badge(status)) } @else { "callback" }
                    }
                    @if let Some(code) = e.error_code.as_deref().filter(|c| !c.is_empty()) { (error_code(code)) }
                    span.action {
                        "Action: " (state_badge(e.state)) " after " (attempts(e.attempts)) " · "
                        a href=(format!("{base}/events/{}", e.id)) { "event #" (e.id) }
                    }
                }
            }
        }
        @if events.is_empty() && m.direction == Direction::Outbound { p.empty { "No status callback has arrived for this message yet." } }
    };
    Page {
        title: format!("Message {}", m.sid.as_deref().unwrap_or("")),
        controls: None,
        live,
    }
}

/// The one-sentence answer to "what happened to this message?".
fn verdict(m: &Message, events: &[Event]) -> String {
    let at = |status: &str| {
        events
            .iter()
            .find(|e| e.message_status.as_deref() == Some(status))
            .map(|e| format!(" at {} UTC", utc::format(e.received_at)))
            .unwrap_or_default()
    };
    let error = || match &m.error_code {
        Some(code) => match codes::meaning_of(code) {
            Some(meaning) => format!(" Error {code}: {meaning}."),
            None => format!(" Error {code}."),
        },
        None => String::new(),
    };
    if m.direction == Direction::Inbound {
        return format!(
            "Received from {} at {} UTC.",
            m.from.as_deref().unwrap_or("the contact"),
            utc::format(m.created_at)
        );
    }
    match m.status.as_str() {
        "read" => format!("Delivered and read by the recipient{}.", at("read")),
        "delivered" => format!(
            "Delivered to the recipient's phone{}; not read yet, or the recipient has read receipts off.",
            at("delivered")
        ),
        "sent" => format!("Sent to WhatsApp{}; no delivery report yet.", at("sent")),
        "accepted" | "scheduled" | "queued" | "sending" => {
            "Accepted by Twilio; WhatsApp has not reported it sent yet.".to_string()
        }
        "failed" if m.sid.is_none() => {
            format!("The send failed; nothing was delivered.{}", error())
        }
        "failed" | "undelivered" => format!(
            "Twilio reported it {}{}; it was not delivered.{}",
            m.status,
            at(&m.status),
            error()
        ),
        "canceled" => "Canceled before it was sent.".to_string(),
        other => format!("Last reported status: {other}."),
    }
}

/// App `c.app`'s conversation with one contact: the window's state for each of the app's
/// numbers in `windows`, then every message in order, inbound on the left and outbound on the
/// right with its status.
pub(crate) fn conversation(view: &View, c: &Conversation, windows: &[NumberWindow]) -> Page {
    let base = view.base;
    let refused_outside_window = c
        .entries
        .iter()
        .any(|e| window_closed(e.message.error_code.as_deref()));
    let all_closed = windows.iter().all(|w| !w.window.is_open());
    let list = format!(
        "{base}?{}",
        serde_urlencoded::to_string([("app", c.app.as_str()), ("q", c.contact.as_str())])
            .unwrap_or_default()
    );
    let live = html! {
        h1 {
            "Conversation with "
            @if let Some(name) = &c.profile_name { span.profile { (name) } }
            code.contact { (c.contact) }
        }
        p.muted {
            "App " strong { (c.app) } " · "
            a href=(list) { "these messages in the list" }
        }
        section #window {
            @for w in windows { (window_state(w)) }
        }
        @if refused_outside_window && all_closed {
            p.warning #window-closed { (WINDOW_CLOSED_NOTE) }
        }
        @if c.truncated { p.muted { "Only the newest " (c.entries.len()) " messages are shown." } }
        @if c.entries.is_empty() {
            p.empty { "No message with this contact yet." }
        } @else {
            ol.conversation #conversation {
                @for e in &c.entries { (conversation_entry(base, c, e)) }
            }
        }
    };
    Page {
        title: format!("Conversation with {}", c.contact),
        controls: None,
        live,
    }
}

/// One number's window, as "open until 14:05 UTC" or "closed: send a template".
fn window_state(w: &NumberWindow) -> Markup {
    html! {
        @match w.window {
            Window::Open { until } => { p.window.open data-state="open" data-number=(w.app_number) {
                span.label { "24-hour window: " }
                strong.state { "open until " (utc::clock(until)) " UTC" }
                span.muted {
                    " (" (utc::date(until)) ") on " (w.app_number)
                    ": free-form replies are delivered until then."
                }
            } }
            Window::Closed { last_inbound } => { p.window.closed data-state="closed" data-number=(w.app_number) {
                span.label { "24-hour window: " }
                strong.state { "closed: send a template" }
                span.muted {
                    @if let Some(at) = last_inbound {
                        " on " (w.app_number) ": the contact last wrote at " (utc::format(at)) " UTC, more than 24 hours ago."
                    } @else {
                        " on " (w.app_number) ": the contact has not written to this number; only an approved template reaches them."
                    }
                }
            } }
        }
    }
}

fn conversation_entry(base: &str, c: &Conversation, e: &Entry) -> Markup {
    let m = &e.message;
    let inbound = m.direction == Direction::Inbound;
    let who = if inbound {
        c.profile_name.as_deref().unwrap_or(c.contact.as_str())
    } else {
        m.app.as_str()
    };
    html! {
        li class={ "msg " (m.direction.as_str()) } data-direction=(m.direction.as_str()) data-sid=[m.sid.as_deref()] {
            div.bubble {
                div.meta {
                    span.who { (who) }
                    time { (utc::format(m.created_at)) }
                }
                @if let Some(body) = m.body.as_deref().filter(|b| !b.is_empty()) { p.text { (body) } }
                @if !e.media.is_empty() {
                    ul.media {
                        @for item in &e.media {
                            li {
                                @if item.url.starts_with("https://") || item.url.starts_with("http://") {
                                    a href=(item.url) rel="noreferrer" { (item.url) }
                                } @else { code { (item.url) } }
                                @if let Some(kind) = &item.content_type { " " span.muted { (kind) } }
                            }
                        }
                    }
                }
                @if let Some(sid) = &e.content_sid {
                    p.template {
                        "Template " code { (sid) }
                        @if let Some(vars) = &e.content_variables { " " code.vars { (vars) } }
                    }
                }
                div.foot {
                    @if !inbound { span.status { (status_badge(&m.status)) } }
                    a.sid href=(message_href(base, m)) { (m.sid.as_deref().unwrap_or("(no sid: send failed)")) }
                }
                @if let Some(code) = &m.error_code {
                    div.error-code { (error_code(code)) }
                    @if window_closed(Some(code)) { p.window-note { (WINDOW_CLOSED_NOTE) } }
                }
            }
        }
    }
}

/// The events list with its filter form.
pub(crate) fn events(view: &View, query: &EventQuery, rows: &[Event], older: Option<i64>) -> Page {
    let base = view.base;
    let events_url = format!("{base}/events");
    let controls = html! {
        form.filters method="get" action=(events_url) {
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for s in ["pending", "done", "failed", "dead"] { option value=(s) selected[query.state == s] { (s) } }
                }
            }
            label { "App"
                select name="app" {
                    option value="" { "any" }
                    @for app in &view.apps { option value=(app) selected[query.app == *app] { (app) } }
                }
            }
            label.wide { "Message sid" input type="search" name="sid" value=(query.sid) placeholder="SM…"; }
            div.buttons {
                button type="submit" { "Filter" }
                a href=(events_url) { "Clear" }
            }
        }
    };
    let live = html! {
        h1 { "Events" }
        p.muted { "Status callbacks as received, and what their action did with them." }
        @if rows.is_empty() {
            p.empty { "No events match these filters." }
        } @else {
            div.table-wrap { table.list #events {
                thead { tr { th { "#" } th { "Received" } th { "App / company" } th { "Sid" } th { "Status" } th { "Action" } th { "Attempts" } th { "Error" } th {} } }
                tbody {
                    @for e in rows {
                        tr data-event=(e.id) data-state=(e.state.as_str()) {
                            td data-label="#" { a href=(format!("{base}/events/{}", e.id)) { (e.id) } }
                            td data-label="Received" { (stacked_time(e.received_at)) }
                            td data-label="App / company" { (e.app) " / " (e.company) }
                            td data-label="Sid" {
                                @if let Some(sid) = &e.message_sid { a.sid href=(format!("{base}/messages/{}", path_segment(sid))) { (sid) } }
                            }
                            td data-label="Status" {
                                @if let Some(s) = &e.message_status { (status_badge(s)) }
                                @if let Some(code) = e.error_code.as_deref().filter(|c| !c.is_empty()) { " " (error_code(code)) }
                            }
                            td data-label="Action" { (state_badge(e.state)) }
                            td data-label="Attempts" { (e.attempts) }
                            td data-label="Error" { @if let Some(err) = &e.last_error { span.error { (first_line(err)) } } }
                            td { @if replayable(e) { (replay_form(view, e.id)) } }
                        }
                    }
                }
            } }
            @if let Some(before) = older {
                p.more { a href=(format!("{events_url}?{}", with_before(query, before))) { "Older events →" } }
            }
        }
    };
    Page {
        title: "Events".into(),
        controls: Some(controls),
        live,
    }
}

/// One event: its dispatch state, the action's error and stack, and the fields Twilio posted.
pub(crate) fn event(view: &View, e: &Event, replayed: bool) -> Page {
    let base = view.base;
    let (error, stack) = match &e.last_error {
        Some(text) => match text.split_once('\n') {
            Some((first, rest)) => (Some(first), Some(rest)),
            None => (Some(text.as_str()), None),
        },
        None => (None, None),
    };
    let live = html! {
        h1 { "Event #" (e.id) " " (state_badge(e.state)) }
        @if replayed && !matches!(e.state, EventState::Done) {
            p.notice #replay-notice { "Replay queued. This page updates when the action finishes." }
        }
        @if replayed && e.state == EventState::Done {
            p.notice.ok #replay-notice { "Replayed: the action ran and succeeded." }
        }
        dl.facts {
            dt { "Action" } dd #event-state { (state_badge(e.state)) " after " (attempts(e.attempts)) }
            @if let (EventState::Failed, Some(next)) = (e.state, e.next_attempt_at) {
                dt { "Next attempt" } dd { (utc::format(next)) }
            }
            dt { "Received" } dd { (utc::format_precise(e.received_at)) }
            dt { "Last change" } dd { (utc::format(e.updated_at)) }
            dt { "App / company" } dd { (e.app) " / " (e.company) }
            @if let Some(sid) = &e.message_sid {
                dt { "Message" } dd { a.sid href=(format!("{base}/messages/{}", path_segment(sid))) { (sid) } }
            }
            @if let Some(status) = &e.message_status { dt { "Status" } dd { (status_badge(status)) } }
            @if let Some(code) = e.error_code.as_deref().filter(|c| !c.is_empty()) { dt { "Error code" } dd { (error_code(code)) } }
        }
        @if let Some(error) = error {
            h2 { "Action error" }
            p.error #action-error { (error) }
            @if let Some(stack) = stack { pre.stack #action-stack { (stack) } }
        }
        @if replayable(e) { (replay_form(view, e.id)) }
        h2 { "Fields Twilio posted" }
        table.fields {
            tbody { @for (k, v) in &e.fields { tr { th { (k) } td { (v) } } } }
        }
    };
    Page {
        title: format!("Event #{}", e.id),
        controls: None,
        live,
    }
}

fn replayable(e: &Event) -> bool {
    matches!(e.state, EventState::Failed | EventState::Dead)
}

fn replay_form(view: &View, id: i64) -> Markup {
    html! {
        form.replay method="post" action=(format!("{}/events/{id}/replay", view.base)) {
            input type="hidden" name="csrf" value=(view.csrf);
            button type="submit" data-replay=(id) { "Replay" }
        }
    }
}

fn status_badge(status: &str) -> Markup {
    let class = match status {
        "read" | "delivered" => "ok",
        "failed" | "undelivered" | "canceled" => "bad",
        _ => "info",
    };
    html! { span class={ "badge " (class) } { (status) } }
}

fn direction_badge(direction: Direction) -> Markup {
    let (class, text) = match direction {
        Direction::Inbound => ("in", "inbound"),
        Direction::Outbound => ("out", "outbound"),
    };
    html! { span class={ "badge dir " (class) } { (text) } }
}

/// The other party of a message: the sender of an inbound one, the recipient of an outbound one.
pub(crate) fn contact(m: &Message) -> Option<&str> {
    match m.direction {
        Direction::Inbound => m.from.as_deref(),
        Direction::Outbound => m.to.as_deref(),
    }
    .filter(|n| !n.is_empty())
}

/// Whether a stored error code is Twilio's "outside the 24-hour window".
fn window_closed(code: Option<&str>) -> bool {
    code.and_then(|c| c.trim().parse::<i64>().ok()) == Some(codes::OUTSIDE_SESSION_WINDOW)
}

fn state_badge(state: EventState) -> Markup {
    let class = match state {
        EventState::Done => "ok",
        EventState::Pending => "info",
        EventState::Failed => "warn",
        EventState::Dead => "bad",
    };
    html! { span class={ "badge " (class) } { (state.as_str()) } }
}

fn error_code(code: &str) -> Markup {
    html! {
        span.code {
            strong { (code) }
            @if let Some(meaning) = codes::meaning_of(code) { " " span.meaning { (meaning) } }
        }
    }
}

/// A time as date and clock, which a narrow column may put on two lines.
fn stacked_time(ms: i64) -> Markup {
    let text = utc::format(ms);
    let (date, clock) = text.split_once(' ').unwrap_or((&text, ""));
    html! { span.date { (date) } " " span.clock { (clock) } }
}

fn attempts(n: u32) -> String {
    match n {
        0 => "no attempt yet".into(),
        1 => "1 attempt".into(),
        n => format!("{n} attempts"),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// A message's page: by sid, or by row id when a failed send has none.
pub(crate) fn message_href(base: &str, m: &Message) -> String {
    match &m.sid {
        Some(sid) => format!("{base}/messages/{}", path_segment(sid)),
        None => format!("{base}/messages/{}", m.id),
    }
}

fn with_before<Q: serde::Serialize + Clone>(query: &Q, before: i64) -> String {
    let mut value = serde_json::to_value(query.clone()).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("before".into(), before.to_string().into());
        map.retain(|_, v| v.as_str().is_some_and(|s| !s.is_empty()));
    }
    let pairs: Vec<(String, String)> = value
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_link_keeps_the_filters_and_drops_empty_ones() {
        let q = MessageQuery {
            app: "crm".into(),
            q: "+39 333".into(),
            ..Default::default()
        };
        assert_eq!(with_before(&q, 42), "app=crm&before=42&q=%2B39+333");
    }
}
