//! Raw rows in a test's store, on whichever backend it runs: for the few tests that must write
//! what no route can (a message dated hours back) or read a column no page shows. Statements
//! are written once, with SQLite's numbered placeholders (`?1`), which become PostgreSQL's
//! (`$1`) on that backend.

use super::{TestConfig, pg};

/// One parameter of a statement: the store's columns are text or integers.
pub enum Param<'a> {
    Text(&'a str),
    Int(i64),
}

impl TestConfig {
    /// Runs `sql` on the test's store, beside a running server.
    pub async fn store_execute(&self, sql: &str, params: &[Param<'_>]) {
        match &self.store_url {
            None => {
                let conn = self.sqlite_connection();
                conn.execute(
                    sql,
                    rusqlite::params_from_iter(params.iter().map(sqlite_value)),
                )
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            Some(url) => {
                let client = pg::connect(&url::Url::parse(url).unwrap()).await;
                client
                    .execute(&postgres_sql(sql), &pg_params(params))
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }

    /// The first row `sql` returns, each column read as text (`None` for NULL).
    pub async fn store_row(&self, sql: &str, params: &[Param<'_>]) -> Vec<Option<String>> {
        match &self.store_url {
            None => {
                let conn = self.sqlite_connection();
                conn.query_row(
                    sql,
                    rusqlite::params_from_iter(params.iter().map(sqlite_value)),
                    |row| {
                        (0..row.as_ref().column_count())
                            .map(|i| row.get::<_, Option<String>>(i))
                            .collect()
                    },
                )
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            Some(url) => {
                let client = pg::connect(&url::Url::parse(url).unwrap()).await;
                let row = client
                    .query_one(&postgres_sql(sql), &pg_params(params))
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                (0..row.len()).map(|i| row.get(i)).collect()
            }
        }
    }

    fn sqlite_connection(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(self.data_dir().join("store.sqlite3"))
            .expect("the store file opens: start a server on these settings first");
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        conn
    }
}

fn sqlite_value(param: &Param<'_>) -> rusqlite::types::Value {
    match param {
        Param::Text(text) => rusqlite::types::Value::Text(text.to_string()),
        Param::Int(n) => rusqlite::types::Value::Integer(*n),
    }
}

/// `?N` placeholders as `$N`. The test statements hold no `?` anywhere else.
fn postgres_sql(sql: &str) -> String {
    sql.replace('?', "$")
}

fn pg_params<'a>(params: &'a [Param<'_>]) -> Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|param| -> &(dyn tokio_postgres::types::ToSql + Sync) {
            match param {
                Param::Text(text) => text,
                Param::Int(n) => n,
            }
        })
        .collect()
}
