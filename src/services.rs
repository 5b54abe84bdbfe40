//! Wiring: builds, once per process, the store, the Twilio and media clients, the outbound path,
//! the JS engine and the dispatcher from validated settings. The server and every CLI command
//! start here.

use std::sync::Arc;

use anyhow::Context as _;

use crate::dispatch::Dispatcher;
use crate::js::{Engine, Limits};
use crate::media::{Probe, UrlSigner};
use crate::outbound::Outbound;
use crate::settings::Settings;
use crate::store::Store;
use crate::twilio;

/// The long-lived parts of a running host. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    /// The validated settings every part was built from.
    pub settings: Arc<Settings>,
    /// The one store handle; `pub` so tests and benches can read what a run stored.
    pub store: Store,
    /// The send path; `pub` so tests can send as a script would, without the engine.
    pub outbound: Arc<Outbound>,
    /// The JS workers; `pub` so benches and tests can run actions and scripts directly.
    pub engine: Engine,
    /// Runs stored events through their actions. Started here so the server and `replay` share
    /// one; its loop idles until something submits, and stops on [`Dispatcher::shutdown`].
    pub(crate) dispatcher: Dispatcher,
}

impl Services {
    /// Opens the store, loads the signing key, compiles the actions, starts the JS workers and
    /// the dispatch loop. Must run inside a tokio runtime.
    pub async fn start(settings: Arc<Settings>) -> anyhow::Result<Services> {
        Self::start_with(settings, twilio::RetryPolicy::default()).await
    }

    /// Like [`Services::start`] with a chosen Twilio retry policy (tests shorten the delays).
    pub async fn start_with(
        settings: Arc<Settings>,
        retry: twilio::RetryPolicy,
    ) -> anyhow::Result<Services> {
        let store = Store::connect(&settings).await?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("whatsapp-host/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(
                settings
                    .twilio
                    .timeout
                    .min(std::time::Duration::from_secs(5)),
            )
            .pool_max_idle_per_host(64)
            .build()
            .context("failed to build the HTTP client")?;
        let twilio = twilio::Client::new(&settings.twilio, http).with_retry(retry);
        let probe = Probe::new(&settings.media, settings.twilio.timeout)
            .context("failed to build the media probe's HTTP client")?;
        let signer = UrlSigner::from_settings(settings.gcs.as_ref())?;
        let outbound = Arc::new(Outbound::new(
            settings.clone(),
            twilio,
            probe,
            signer,
            store.clone(),
        ));
        let engine = Engine::start(
            &settings.server.actions_dir,
            settings.actions.workers,
            Limits::from(&settings.actions),
            Some(outbound.clone()),
        )
        .with_context(|| {
            format!(
                "failed to load actions from {}",
                settings.server.actions_dir.display()
            )
        })?;
        let dispatcher = Dispatcher::start(settings.clone(), store.clone(), engine.clone());
        Ok(Services {
            settings,
            store,
            outbound,
            engine,
            dispatcher,
        })
    }
}
