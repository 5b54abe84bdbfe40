//! A real PostgreSQL for the tests: a fresh, empty database per test on the server that
//! `$WHATSAPP_HOST_TEST_PG_URL` names (`scripts/test.sh` starts a throwaway one when it is
//! unset), and the switch that runs the backend-neutral suites on it
//! (`WHATSAPP_HOST_TEST_STORE=postgres`).

use tokio_postgres::NoTls;

/// The server the tests create their databases on: a `postgres://` URL whose user may
/// `CREATE DATABASE`.
pub const URL_VAR: &str = "WHATSAPP_HOST_TEST_PG_URL";
/// `postgres` runs every [`TestConfig`](super::TestConfig) on a fresh PostgreSQL database
/// instead of the embedded store; unset or `sqlite` keeps the embedded store.
pub const STORE_VAR: &str = "WHATSAPP_HOST_TEST_STORE";

/// Whether this run puts every test's store on PostgreSQL (`WHATSAPP_HOST_TEST_STORE`).
pub fn matrix_on_postgres() -> bool {
    match std::env::var(STORE_VAR).as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("{STORE_VAR}={other:?}: set it to postgres or sqlite, or unset it"),
    }
}

/// The server URL from `$WHATSAPP_HOST_TEST_PG_URL`; panics saying how to get one. A test that
/// needs PostgreSQL fails without it, never skips.
pub fn server_url() -> url::Url {
    let Ok(raw) = std::env::var(URL_VAR) else {
        panic!(
            "{URL_VAR} is not set: this test needs a PostgreSQL server. Run scripts/test.sh, \
             which starts a throwaway one, or set {URL_VAR} to a postgres://user:password@host:port/db \
             URL whose user may CREATE DATABASE"
        );
    };
    let parsed = url::Url::parse(&raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "postgres" | "postgresql"));
    parsed.unwrap_or_else(|| {
        panic!(
            "{URL_VAR} is not a postgres:// URL; write it as postgres://user:password@host:port/db"
        )
    })
}

/// A URL for logs and failure messages: the password, if any, is hidden.
pub fn redacted(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// Connects to `url` and runs `sql`, for setup and for reading what the server stored.
pub async fn connect(url: &url::Url) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url.as_str(), NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to the test PostgreSQL at {} ({e}); is it running? \
                 scripts/test.sh starts one",
                redacted(url)
            )
        });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Creates an empty database `wh_<random>` on the test server and returns its URL.
pub async fn fresh_database() -> String {
    let server = server_url();
    let name = format!("wh_{:016x}", rand::random::<u64>());
    let client = connect(&server).await;
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "CREATE DATABASE {name} on {} failed ({e}); the user in {URL_VAR} must be allowed \
                 to create databases",
                redacted(&server)
            )
        });
    let mut url = server;
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// [`fresh_database`] for code that is not async (building a
/// [`TestConfig`](super::TestConfig)): runs it on a thread of its own, so it also works inside
/// a test's runtime.
pub fn fresh_database_blocking() -> String {
    std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for creating the test database")
            .block_on(fresh_database())
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
