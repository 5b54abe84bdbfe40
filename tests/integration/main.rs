//! The integration tests, as one binary: each former `tests/*.rs` file is a module here, and
//! `helpers` holds what they share (settings in a temporary folder, a server on port 0, typed
//! requests, and the Twilio, media and Cloud Storage stand-ins). One binary links the crate once
//! instead of once per file, which is most of what `cargo test` spends on a two-core machine.

mod helpers;

mod callbacks;
mod cli;
mod conversation;
mod crash_safety;
mod dashboard;
mod dashboard_browser;
mod edge;
mod inbound;
mod instances;
mod media_guard;
mod metrics;
mod outbound;
mod prism;
mod signature_examples;
mod signed_url;
mod templates;
mod tenants;
mod workers;
