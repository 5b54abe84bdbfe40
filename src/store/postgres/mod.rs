//! The PostgreSQL backend, for several instances sharing one store: a connection pool, the
//! embedded migrations applied under an advisory lock, and the lease each instance takes on the
//! events it runs, so no two instances run one event at once while both are alive. This file
//! holds the backend's handle, connecting and migrating, and the row mappings; `writer` the task
//! that commits writes in groups; `reads` the queries; `leases` claiming events and the wake-ups.

mod leases;
mod reads;
#[cfg(test)]
pub(super) mod tests;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::{
    BackendError, Direction, DispatchResult, Event, EventKind, EventState, Inserted, Message,
    NewEvent, SendRecord, StoreError,
};

pub(super) mod features;
use crate::settings::StoreSettings;

pub(super) use reads::Reader;

mod embedded {
    refinery::embed_migrations!("src/store/postgres/migrations");
}

/// The advisory lock key migrations run under, so instances starting together apply each
/// migration once: the others wait, then find it applied.
const MIGRATION_LOCK: i64 = 0x7768_6174_7361_7070; // "whatsapp"

/// The channel instances wake each other on when an event becomes claimable.
pub(super) const CHANNEL: &str = "whatsapp_host_events";

/// The backend's handle. Cloning is cheap; clones share the pool, the writer and the listener.
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
    writer: writer::Writer,
    pub(super) reader: Reader,
    /// Notified when another instance says an event became claimable.
    wakeups: Arc<tokio::sync::Notify>,
    /// Stops the listener at close.
    stop: CancellationToken,
}

impl Postgres {
    /// Connects to `url`, applies the migrations and checks the server answers: a bad URL or an
    /// unreachable server fails here, at start, naming the server but never its password.
    pub(super) async fn connect(
        url: &str,
        settings: &StoreSettings,
    ) -> Result<Postgres, StoreError> {
        let (config, location) = parse(url)?;
        migrate_with(&config)
            .await
            .map_err(|e| connect_err(&location, e))?;
        let pool = pool(config.clone(), settings.max_connections, &location)?;
        let instance: Arc<str> = instance_id().into();
        let lease = settings.lease;
        let writer = writer::Writer::start(pool.clone(), instance.clone(), lease);
        let wakeups = Arc::new(tokio::sync::Notify::new());
        let stop = CancellationToken::new();
        tracing::info!(server = %location, instance = %instance, "using the PostgreSQL store");
        tokio::spawn(leases::listen(
            config,
            location.clone(),
            wakeups.clone(),
            stop.clone(),
        ));
        Ok(Postgres {
            reader: Reader::new(pool.clone(), location.clone()),
            pool,
            instance,
            lease,
            location,
            writer,
            wakeups,
            stop,
        })
    }

    pub(super) async fn insert_event(&self, event: NewEvent) -> Result<Inserted, StoreError> {
        self.writer.insert_event(event).await
    }

    pub(super) fn record_send(&self, record: SendRecord) -> Result<(), StoreError> {
        self.writer.record_send(record)
    }

    pub(super) fn finish_dispatch(
        &self,
        id: i64,
        attempts: u32,
        result: DispatchResult,
    ) -> Result<(), StoreError> {
        self.writer.finish_dispatch(id, attempts, result)
    }

    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        self.writer.flush().await
    }

    /// Commits what is queued and stops the writer and the listener. Reads still work, as on
    /// the embedded store; the pool's connections close when the last handle is dropped.
    pub(super) async fn close(&self) {
        self.writer.close().await;
        self.stop.cancel();
        tracing::debug!(server = %self.location, "closed the PostgreSQL store");
    }

    pub(super) fn wakeups(&self) -> Arc<tokio::sync::Notify> {
        self.wakeups.clone()
    }
}

/// The URL's connection settings, with `synchronous_commit` on whatever the server's default
/// (an acknowledged write must be durable), and the server's name for messages.
fn parse(url: &str) -> Result<(tokio_postgres::Config, Arc<str>), StoreError> {
    let location: Arc<str> = super::redact(url).into();
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Connect {
        server: location.to_string(),
        source: BackendError::new(e),
    })?;
    let options = match config.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} -c synchronous_commit=on"),
        _ => "-c synchronous_commit=on".to_string(),
    };
    config.options(&options);
    if config.get_application_name().is_none() {
        config.application_name("whatsapp-host");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    Ok((config, location))
}

fn pool(
    config: tokio_postgres::Config,
    max: usize,
    location: &Arc<str>,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| StoreError::Connect {
            server: location.to_string(),
            source: BackendError::new(e),
        })
}

fn connect_err(location: &str, e: MigrateError) -> StoreError {
    match e {
        MigrateError::Connect(e) => StoreError::Connect {
            server: location.to_string(),
            source: BackendError::new(e),
        },
        e @ MigrateError::Migration(_) => StoreError::Open {
            path: location.into(),
            source: BackendError::new(e),
        },
    }
}

/// A reader alone, for commands that run beside a server: a small pool, no writer, no
/// listener, no migrations. Fails at once when the server cannot be reached.
pub(super) async fn read_only(url: &str) -> Result<Reader, StoreError> {
    let (config, location) = parse(url)?;
    let pool = pool(config, 2, &location)?;
    let client = pool.get().await.map_err(|e| StoreError::Connect {
        server: location.to_string(),
        source: BackendError::new(e),
    })?;
    let migrated: bool = client
        .query_one("SELECT to_regclass('events') IS NOT NULL", &[])
        .await
        .map_err(|e| StoreError::Connect {
            server: location.to_string(),
            source: BackendError::new(e),
        })?
        .get(0);
    drop(client);
    if !migrated {
        return Err(StoreError::NotMigrated {
            server: location.to_string(),
        });
    }
    Ok(Reader::new(pool, location))
}

/// Applies every embedded migration not yet applied, on a connection of its own that holds
/// [`MIGRATION_LOCK`] meanwhile. Returns the migrations it applied.
pub(super) async fn migrate(url: &str) -> Result<Vec<String>, StoreError> {
    let (config, location) = parse(url)?;
    migrate_with(&config)
        .await
        .map_err(|e| connect_err(&location, e))
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

/// An event read with [`sql::EVENT_COLUMNS`](crate::store::sql::EVENT_COLUMNS).
pub(super) fn event_from_row(r: &tokio_postgres::Row) -> Event {
    let fields: String = r.get(8);
    let state: String = r.get(9);
    let kind: String = r.get(14);
    let attempts: i32 = r.get(10);
    Event {
        id: r.get(0),
        app: r.get(1),
        company: r.get(2),
        kind: EventKind::parse(&kind),
        received_at: r.get(3),
        idempotency_token: r.get(4),
        message_sid: r.get(5),
        message_status: r.get(6),
        error_code: r.get(7),
        fields: serde_json::from_str(&fields).unwrap_or_default(),
        state: EventState::parse(&state).unwrap_or(EventState::Pending),
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_at: r.get(11),
        last_error: r.get(12),
        updated_at: r.get(13),
    }
}

/// A message read with [`sql::MESSAGE_COLUMNS`](crate::store::sql::MESSAGE_COLUMNS).
pub(super) fn message_from_row(r: &tokio_postgres::Row) -> Message {
    let direction: String = r.get(14);
    Message {
        id: r.get(0),
        direction: Direction::parse(&direction).unwrap_or_default(),
        sid: r.get(1),
        app: r.get(2),
        company: r.get(3),
        account_sid: r.get(4),
        to: r.get(5),
        from: r.get(6),
        body: r.get(7),
        media: r.get(8),
        status: r.get(9),
        error_code: r.get(10),
        error_message: r.get(11),
        created_at: r.get(12),
        updated_at: r.get(13),
        profile_name: r.get(15),
        wa_id: r.get(16),
    }
}

/// A query error as the store reports it.
pub(super) fn query_err(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Query(BackendError::new(e))
}
