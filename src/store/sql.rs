//! The SQL both backends share: the columns an event and a message are read with, and the
//! dashboard's listings, built from a filter once, with each backend's own placeholders.

use super::{EventFilter, MessageFilter};

/// An event's columns, in the order each backend's `event_from_row` reads them.
pub(super) const EVENT_COLUMNS: &str = "id, app, company, received_at, idempotency_token, \
     message_sid, message_status, error_code, fields, state, attempts, next_attempt_at, \
     last_error, updated_at, kind";

/// A message's columns, in the order each backend's `message_from_row` reads them.
pub(super) const MESSAGE_COLUMNS: &str = "id, sid, app, company, account_sid, to_number, \
     from_number, body, media, status, error_code, error_message, created_at, updated_at, \
     direction, profile_name, wa_id";

/// Where the backends' SQL differs in a listing.
pub(super) struct Dialect {
    /// Comes before a parameter's number: `?1` on SQLite, `$1` on PostgreSQL.
    placeholder: char,
    /// The function that finds a text in another, called as `f(haystack, needle)`, which is
    /// above 0 when it does.
    position: &'static str,
}

pub(super) const SQLITE: Dialect = Dialect {
    placeholder: '?',
    position: "instr",
};

pub(super) const POSTGRES: Dialect = Dialect {
    placeholder: '$',
    position: "strpos",
};

/// One value a listing's query is run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Arg {
    Text(String),
    Int(i64),
}

impl From<String> for Arg {
    fn from(s: String) -> Self {
        Arg::Text(s)
    }
}

impl From<i64> for Arg {
    fn from(n: i64) -> Self {
        Arg::Int(n)
    }
}

/// A listing's query, newest first, and the values of its numbered parameters.
#[derive(Debug)]
pub(super) struct Listing {
    pub(super) sql: String,
    pub(super) args: Vec<Arg>,
}

impl Listing {
    fn new(select: String) -> Self {
        Listing {
            sql: select,
            args: Vec::new(),
        }
    }

    /// Appends a clause; every `?` in it is `value`.
    fn and(&mut self, dialect: &Dialect, clause: &str, value: impl Into<Arg>) {
        self.args.push(value.into());
        let placeholder = format!("{}{}", dialect.placeholder, self.args.len());
        self.sql.push_str(&clause.replace('?', &placeholder));
    }

    fn newest_first(mut self, limit: usize) -> Self {
        let limit = if limit == 0 { 100 } else { limit.min(10_000) };
        self.sql
            .push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        self
    }
}

/// The events `filter` selects.
pub(super) fn events(filter: EventFilter, dialect: &Dialect) -> Listing {
    let mut listing = Listing::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE true"));
    if let Some(app) = filter.app {
        listing.and(dialect, " AND app = ?", app);
    }
    if let Some(state) = filter.state {
        listing.and(dialect, " AND state = ?", state.as_str().to_string());
    }
    if let Some(sid) = filter.message_sid {
        listing.and(dialect, " AND message_sid = ?", sid);
    }
    if let Some(before) = filter.before_id {
        listing.and(dialect, " AND id < ?", before);
    }
    listing.newest_first(filter.limit)
}

/// The messages `filter` selects.
pub(super) fn messages(filter: MessageFilter, dialect: &Dialect) -> Listing {
    let mut listing = Listing::new(format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE true"));
    if let Some(app) = filter.app {
        listing.and(dialect, " AND app = ?", app);
    }
    if let Some(company) = filter.company {
        listing.and(dialect, " AND company = ?", company);
    }
    if let Some(status) = filter.status {
        listing.and(dialect, " AND status = ?", status);
    }
    if let Some(direction) = filter.direction {
        listing.and(
            dialect,
            " AND direction = ?",
            direction.as_str().to_string(),
        );
    }
    if let Some(search) = filter.search {
        // A sid is matched whole; a phone number by its digits anywhere in to or from.
        let search = search.trim();
        let digits: String = search.chars().filter(char::is_ascii_digit).collect();
        let needle = if search.starts_with("SM") || digits.is_empty() {
            search.to_string()
        } else {
            digits
        };
        let position = dialect.position;
        listing.and(
            dialect,
            &format!(
                " AND (sid = ? OR {position}(to_number, ?) > 0 OR {position}(from_number, ?) > 0)"
            ),
            needle,
        );
    }
    if let Some(since) = filter.since {
        listing.and(dialect, " AND created_at >= ?", since);
    }
    if let Some(until) = filter.until {
        listing.and(dialect, " AND created_at < ?", until);
    }
    if let Some(before) = filter.before_id {
        listing.and(dialect, " AND id < ?", before);
    }
    listing.newest_first(filter.limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventState;

    #[test]
    fn each_clause_numbers_its_parameter_in_the_backends_syntax() {
        let filter = EventFilter {
            app: Some("crm".into()),
            state: Some(EventState::Failed),
            before_id: Some(7),
            limit: 0,
            ..EventFilter::default()
        };
        let on_sqlite = events(filter.clone(), &SQLITE);
        assert!(
            on_sqlite.sql.ends_with(
                "WHERE true AND app = ?1 AND state = ?2 AND id < ?3 ORDER BY id DESC LIMIT 100"
            ),
            "{}",
            on_sqlite.sql
        );
        let on_postgres = events(filter, &POSTGRES);
        assert!(
            on_postgres.sql.ends_with(
                "WHERE true AND app = $1 AND state = $2 AND id < $3 ORDER BY id DESC LIMIT 100"
            ),
            "{}",
            on_postgres.sql
        );
        assert_eq!(
            on_postgres.args,
            [
                Arg::Text("crm".into()),
                Arg::Text("failed".into()),
                Arg::Int(7)
            ]
        );
    }

    #[test]
    fn a_search_is_one_parameter_named_three_times_and_a_number_is_matched_by_its_digits() {
        let filter = MessageFilter {
            search: Some(" +1 (555) 0100 ".into()),
            limit: 20_000,
            ..MessageFilter::default()
        };
        let listing = messages(filter, &POSTGRES);
        assert!(
            listing.sql.ends_with(
                "AND (sid = $1 OR strpos(to_number, $1) > 0 OR strpos(from_number, $1) > 0) \
                 ORDER BY id DESC LIMIT 10000"
            ),
            "{}",
            listing.sql
        );
        assert_eq!(listing.args, [Arg::Text("15550100".into())]);
        let by_sid = messages(
            MessageFilter {
                search: Some("SM123".into()),
                ..MessageFilter::default()
            },
            &SQLITE,
        );
        assert!(
            by_sid.sql.contains("instr(to_number, ?1)"),
            "{}",
            by_sid.sql
        );
        assert_eq!(by_sid.args, [Arg::Text("SM123".into())]);
    }
}
