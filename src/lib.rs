//! whatsapp-host runs application JavaScript that sends WhatsApp messages through Twilio, and
//! receives Twilio's status callbacks, stores them durably and hands them to JS actions.
//!
//! # Layout
//! - [`settings`]: the TOML settings file, validated at load; the only reader of the environment.
//! - [`phone`]: phone-number parsing to E.164.
//! - [`twilio`]: the Messages API client, webhook signatures, and the `simulate` stand-in.
//! - [`media`]: Cloud Storage signed URLs and media probing.
//! - [`store`]: the embedded SQLite store with group commit; the only module with SQL.
//! - [`outbound`]: the one send path behind every form of `utils.sendWhatsappMessage`.
//! - [`js`]: the boa engine in supervised worker processes, and the `utils` table scripts see.
//! - [`dispatch`]: stored events → actions, with retries and dead-lettering.
//! - [`retention`]: the server's task that prunes old finished events and messages.
//! - [`routes`]: every path the host serves and the callback URL, written once.
//! - [`server`]: the axum router, the callback endpoint and shutdown.
//! - [`edge`]: the listeners' accept loops and each connection's timeouts and limits.
//! - [`dashboard`]: the operator's web pages (messages, timelines, events, replay), behind a password.
//! - [`services`]: wiring of the above, shared by the server and the CLI.
//! - [`telemetry`]: logging and Prometheus metrics.
//! - [`cli`]: the `whatsapp-host` commands.

#![warn(unreachable_pub)]
// The docs are for people working on the crate (`cargo doc --document-private-items`), so they
// link to crate-private modules and items freely.
#![allow(rustdoc::private_intra_doc_links)]

pub mod cli;
mod dashboard;
mod dispatch;
mod edge;
pub mod js;
pub mod media;
pub mod outbound;
mod phone;
mod retention;
pub mod routes;
pub mod server;
pub mod services;
pub mod settings;
pub mod store;
mod telemetry;
pub mod twilio;
