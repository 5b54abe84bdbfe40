//! The PostgreSQL backend, for several instances sharing one store: a connection pool, the
//! embedded migrations applied under an advisory lock, and the lease each instance takes on the
//! events it runs, so no two instances run one event at once while both are alive.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::{BackendError, StoreError};

pub(super) mod features;
use crate::settings::StoreSettings;

mod embedded {
    refinery::embed_migrations!("src/store/postgres/migrations");
}

/// The advisory lock key migrations run under, so instances starting together apply each
/// migration once: the others wait, then find it applied.
const MIGRATION_LOCK: i64 = 0x7768_6174_7361_7070; // "whatsapp"

/// The backend's handle. Cloning is cheap; clones share the pool.
#[derive(Clone)]
pub(super) struct Postgres {
    pub(super) pool: Pool,
    /// Who this process is in `events.lease_owner`: random per start, so a restarted instance
    /// never mistakes a lease of its previous life for its own.
    pub(super) instance: Arc<str>,
    /// How long a claimed event stays this instance's.
    pub(super) lease: Duration,
    /// The server, password hidden: what errors and logs name.
    pub(super) location: Arc<str>,
}

impl Postgres {
    /// Connects to `url`, applies the migrations and checks the server answers: a bad URL or an
    /// unreachable server fails here, at start, naming the server but never its password.
    pub(super) async fn connect(
        url: &str,
        settings: &StoreSettings,
    ) -> Result<Postgres, StoreError> {
        let location: Arc<str> = super::redact(url).into();
        let open_err = |source: BackendError| StoreError::Open {
            path: location.to_string().into(),
            source,
        };
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| open_err(BackendError::new(e)))?;
        migrate_with(&config)
            .await
            .map_err(|e| open_err(BackendError::new(e)))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.max_connections)
            .build()
            .map_err(|e| open_err(BackendError::new(e)))?;
        Ok(Postgres {
            pool,
            instance: instance_id().into(),
            lease: settings.lease,
            location,
        })
    }
}

/// Applies every embedded migration not yet applied, on a connection of its own that holds
/// [`MIGRATION_LOCK`] meanwhile. Returns the migrations it applied.
pub(super) async fn migrate(url: &str) -> Result<Vec<String>, StoreError> {
    let location = super::redact(url);
    let config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Open {
        path: location.clone().into(),
        source: BackendError::new(e),
    })?;
    migrate_with(&config).await.map_err(|e| StoreError::Open {
        path: location.into(),
        source: BackendError::new(e),
    })
}

#[derive(Debug, thiserror::Error)]
enum MigrateError {
    #[error("{0}")]
    Connect(#[from] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
}

async fn migrate_with(config: &tokio_postgres::Config) -> Result<Vec<String>, MigrateError> {
    let (mut client, connection) = config.connect(NoTls).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "the store's migration connection ended with an error");
        }
    });
    // A session lock: held until this connection closes, whatever happens in between.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(&mut client)
        .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    drop(client);
    let _ = driver.await;
    let applied = report?
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect();
    Ok(applied)
}

/// `<host>-<pid>-<random>`: readable in `events.lease_owner`, unique per process start.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}
