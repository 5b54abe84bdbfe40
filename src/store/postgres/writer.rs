//! The PostgreSQL write path: one task gathers the writes that arrive together and commits each
//! group in one transaction on one pooled connection, its statements pipelined, while the next
//! group queues. A write is answered only once its group is committed with
//! `synchronous_commit` on: acknowledged means durable.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;

use super::{BackendError, CHANNEL, DispatchResult, Inserted, NewEvent, SendRecord, StoreError};
use crate::store::{EventKind, now_ms};
use crate::twilio::webhook::{self, status_rank};

/// Most writes one group commits; bounds the latency of the last one in a group.
const MAX_GROUP: usize = 1024;
/// How many times a group that lost a deadlock (or a serialization check) against another
/// instance's group is tried again before its writes are refused.
const RETRIES: u32 = 3;

/// The sending side of the writer task. Cloning is cheap; all clones share one task.
#[derive(Clone)]
pub(super) struct Writer {
    ops: mpsc::UnboundedSender<Op>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Writer {
    /// Starts the writer task on the current runtime.
    pub(super) fn start(pool: Pool, instance: Arc<str>, lease: Duration) -> Writer {
        let (ops, rx) = mpsc::unbounded_channel();
        let ctx = Ctx {
            pool,
            instance,
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
        };
        let task = tokio::spawn(run(rx, ctx));
        Writer {
            ops,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    pub(super) async fn insert_event(&self, event: NewEvent) -> Result<Inserted, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Write(Work::Insert(event), Some(Reply::Event(tx))))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) fn record_send(&self, record: SendRecord) -> Result<(), StoreError> {
        self.send(Op::Write(Work::Send(record), None))
    }

    pub(super) fn finish_dispatch(
        &self,
        id: i64,
        attempts: u32,
        result: DispatchResult,
    ) -> Result<(), StoreError> {
        self.send(Op::Write(
            Work::Finish {
                id,
                attempts,
                result,
            },
            None,
        ))
    }

    /// Answers once every write queued before it is committed.
    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Write(Work::Nothing, Some(Reply::Barrier(tx))))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Op::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        let task = self.task.lock().expect("store writer lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.ops.send(op).map_err(|_| StoreError::Closed)
    }
}

/// What every group needs: where to commit, and who this instance is.
struct Ctx {
    pool: Pool,
    instance: Arc<str>,
    lease_ms: i64,
}

#[allow(
    clippy::large_enum_variant,
    reason = "nearly every op is a write; boxing it would allocate per write for a rare close"
)]
enum Op {
    /// A write, with where to answer when someone waits.
    Write(Work, Option<Reply>),
    /// Commits what came before, then stops the writer.
    Close(oneshot::Sender<()>),
}

/// One write's statement.
enum Work {
    Insert(NewEvent),
    Send(SendRecord),
    /// Nobody waits: losing it in a crash only means the event is dispatched again.
    Finish {
        id: i64,
        attempts: u32,
        result: DispatchResult,
    },
    /// A barrier: no statement, answered when its group (and every earlier one) is committed.
    Nothing,
}

impl Work {
    /// The order a group applies its writes in: message rows by (app, sid), then events by
    /// id, so two instances' groups lock rows in the same order and never deadlock each other.
    fn order(&self) -> (u8, &str, &str, i64) {
        match self {
            Work::Insert(e) => (0, &e.app, e.callback.sid.as_deref().unwrap_or(""), 0),
            Work::Send(s) => (0, &s.app, s.sid.as_deref().unwrap_or(""), 0),
            Work::Finish { id, .. } => (1, "", "", *id),
            Work::Nothing => (2, "", "", 0),
        }
    }
}

enum Reply {
    Event(oneshot::Sender<Result<Inserted, StoreError>>),
    Barrier(oneshot::Sender<Result<(), StoreError>>),
}

/// The writer task: takes the next write and every write queued behind it, commits them as
/// one group, and answers them; what arrives meanwhile queues and forms the next group. One
/// group at a time: under load groups grow instead of multiplying, and each group's fixed
/// cost (a transaction, a flush of the log, a statement per kind of write) is shared by more
/// writes. On the 2-core benchmark machine four groups in flight cost PostgreSQL a third more
/// CPU per callback than one did, and more p99. It also keeps writes in order: a barrier is
/// answered once everything queued before it is committed.
async fn run(mut rx: mpsc::UnboundedReceiver<Op>, ctx: Ctx) {
    while let Some(first) = rx.recv().await {
        let mut group = Vec::new();
        let mut closing = None;
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                Op::Write(work, reply) => group.push((work, reply)),
                Op::Close(reply) => closing = Some(reply),
            }
            if closing.is_none() && group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit(&ctx, group).await;
        }
        if let Some(closing) = closing {
            let _ = closing.send(());
            break;
        }
    }
}

/// Commits one group and answers every write in it. When the server refuses a statement
/// (not a lost connection), one write may be at fault, as one failing statement aborts the
/// whole transaction: each write is then tried alone, so the others still commit and only the
/// faulty one is refused, as on the embedded store.
async fn commit(ctx: &Ctx, mut group: Vec<(Work, Option<Reply>)>) {
    group.sort_by(|a, b| a.0.order().cmp(&b.0.order()));
    let works: Vec<&Work> = group.iter().map(|(w, _)| w).collect();
    match apply_retrying(ctx, &works).await {
        Ok(inserted) => {
            for ((_, reply), inserted) in group.into_iter().zip(inserted) {
                answer(reply, Ok(inserted));
            }
        }
        Err(GroupError::Db(e)) if group.len() > 1 && e.code().is_some() => {
            tracing::warn!(error = %e, writes = group.len(), "the store refused a group of writes; trying each alone");
            for (work, reply) in group {
                let result = apply_retrying(ctx, &[&work]).await;
                if let Err(e) = &result {
                    tracing::error!(error = ?e, "store commit failed; the write was not acknowledged");
                }
                answer(
                    reply,
                    result
                        .map(|mut one| one.pop().flatten())
                        .map_err(GroupError::into_backend),
                );
            }
        }
        Err(e) => {
            let source = e.into_backend();
            tracing::error!(error = %source, "store commit failed; the writes in this group were not acknowledged");
            for (_, reply) in group {
                answer(reply, Err(source.clone()));
            }
        }
    }
}

/// [`apply`], tried again when the group lost a deadlock (or a serialization check) against
/// another instance's group.
async fn apply_retrying(ctx: &Ctx, works: &[&Work]) -> Result<Vec<Option<Inserted>>, GroupError> {
    let mut tries = 0;
    loop {
        match apply(ctx, works).await {
            Err(GroupError::Db(e))
                if tries < RETRIES
                    && matches!(
                        e.code(),
                        Some(&SqlState::T_R_DEADLOCK_DETECTED)
                            | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                    ) =>
            {
                tries += 1;
                tracing::debug!(error = %e, tries, "store group lost a deadlock; trying it again");
            }
            outcome => return outcome,
        }
    }
}

/// Answers one write, if someone waits: what its insert found, or why it was not committed.
fn answer(reply: Option<Reply>, result: Result<Option<Inserted>, BackendError>) {
    let failed = |source: BackendError| StoreError::CommitFailed { source };
    match reply {
        Some(Reply::Event(reply)) => {
            let _ = reply.send(
                result
                    .map(|inserted| inserted.unwrap_or(Inserted::Duplicate))
                    .map_err(failed),
            );
        }
        Some(Reply::Barrier(reply)) => {
            let _ = reply.send(result.map(|_| ()).map_err(failed));
        }
        None => {}
    }
}

#[derive(Debug)]
enum GroupError {
    Pool(deadpool_postgres::PoolError),
    Db(tokio_postgres::Error),
}

impl GroupError {
    fn into_backend(self) -> BackendError {
        match self {
            GroupError::Pool(e) => BackendError::new(e),
            GroupError::Db(e) => BackendError::new(e),
        }
    }
}

impl From<tokio_postgres::Error> for GroupError {
    fn from(e: tokio_postgres::Error) -> Self {
        GroupError::Db(e)
    }
}

/// One statement of a group: the answers it owes, as (index of the write, what it found).
type Step<'a> = Pin<
    Box<dyn Future<Output = Result<Vec<(usize, Inserted)>, tokio_postgres::Error>> + Send + 'a>,
>;

/// The status callbacks of a group that one statement can store together: each names a sid
/// and is the group's first insert naming its message (one statement may move a message row
/// only once, and an inbound message or an earlier callback for it must be stored first). The
/// rest are stored one statement each, after them.
fn batchable(works: &[&Work]) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    let batch: Vec<usize> = works
        .iter()
        .enumerate()
        .filter_map(|(i, work)| match work {
            Work::Insert(ev) => {
                let sid = ev.callback.sid.as_deref()?;
                let first = seen.insert((ev.app.as_str(), sid));
                (first && ev.kind == EventKind::Status).then_some(i)
            }
            _ => None,
        })
        .collect();
    // One alone gains nothing.
    if batch.len() < 2 { Vec::new() } else { batch }
}

/// Applies `works` in one transaction and commits it, in one round trip: `BEGIN`, the
/// statements and `COMMIT` are sent together, in order, before any answer is read. Sends go
/// first (a callback in the same group never overtakes its send), then the status callbacks
/// that can be stored together, in one statement, then every other write in order. When a
/// statement fails, the server turns the `COMMIT` into a rollback, so nothing was applied.
/// Returns, for each write in order, what an insert found.
async fn apply(ctx: &Ctx, works: &[&Work]) -> Result<Vec<Option<Inserted>>, GroupError> {
    let client = ctx.pool.get().await.map_err(GroupError::Pool)?;
    let statements = Statements {
        status: client.prepare_cached(INSERT_STATUS).await?,
        statuses: client.prepare_cached(INSERT_STATUSES).await?,
        inbound: client.prepare_cached(INSERT_INBOUND).await?,
        send: client.prepare_cached(RECORD_SEND).await?,
        finish: client.prepare_cached(FINISH).await?,
    };
    let pg: &tokio_postgres::Client = &client;
    let st = &statements;
    let now = now_ms();
    let lease_until = now.saturating_add(ctx.lease_ms);
    // A retry that is due already may be taken by any instance: wake them.
    let notify = works.iter().any(|work| {
        matches!(work, Work::Finish { result: DispatchResult::Failed { next_attempt_at, .. }, .. }
            if *next_attempt_at <= now)
    });
    let batch = batchable(works);
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(works.len() + 4);
    steps.push(Box::pin(async move {
        // Every statement here reaches rows by a key: an index scan, whatever the planner
        // thinks of a table that was empty when a statement was first planned.
        pg.batch_execute("BEGIN; SET LOCAL enable_seqscan = off")
            .await?;
        Ok(Vec::new())
    }));
    for rec in works.iter().filter_map(|w| match w {
        Work::Send(rec) => Some(rec),
        _ => None,
    }) {
        steps.push(Box::pin(async move {
            record_send(pg, st, rec).await?;
            Ok(Vec::new())
        }));
    }
    if !batch.is_empty() {
        let events: Vec<(usize, &NewEvent)> = batch
            .iter()
            .filter_map(|&i| match works[i] {
                Work::Insert(ev) => Some((i, ev)),
                _ => None,
            })
            .collect();
        steps.push(Box::pin(insert_statuses(
            pg,
            st,
            events,
            &ctx.instance,
            lease_until,
        )));
    }
    for (i, work) in works.iter().enumerate() {
        if batch.contains(&i) {
            continue;
        }
        match work {
            Work::Insert(ev) => steps.push(Box::pin(async move {
                let inserted = insert(pg, st, ev, &ctx.instance, lease_until).await?;
                Ok(inserted.map(|found| (i, found)).into_iter().collect())
            })),
            Work::Finish { .. } | Work::Send(_) | Work::Nothing => {}
        }
    }
    let outcomes = latest_outcomes(works);
    if !outcomes.is_empty() {
        let holder = Holder {
            instance: &ctx.instance,
            now,
            lease_until,
        };
        let step = finish(pg, st, outcomes, holder);
        steps.push(Box::pin(async move {
            step.await?;
            Ok(Vec::new())
        }));
    }
    if notify {
        steps.push(Box::pin(async move {
            pg.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
            Ok(Vec::new())
        }));
    }
    steps.push(Box::pin(async move {
        pg.batch_execute("COMMIT").await?;
        Ok(Vec::new())
    }));
    let mut results = in_order(steps).await;
    // The first error is the cause; those after it only say the transaction was aborted.
    if let Some(position) = results.iter().position(Result::is_err) {
        let Err(e) = results.swap_remove(position) else {
            unreachable!("an error at this position");
        };
        if !e.is_closed() {
            // The COMMIT was a rollback; make sure no transaction is left open either way.
            let _ = pg.batch_execute("ROLLBACK").await;
        }
        return Err(GroupError::Db(e));
    }
    let mut answers: Vec<Option<Inserted>> = vec![None; works.len()];
    for (i, found) in results.into_iter().flat_map(|r| r.unwrap_or_default()) {
        answers[i] = Some(found);
    }
    // An insert the statement returned nothing for was a repeat.
    for (answer, work) in answers.iter_mut().zip(works) {
        if matches!(work, Work::Insert(_)) && answer.is_none() {
            *answer = Some(Inserted::Duplicate);
        }
    }
    Ok(answers)
}

/// Runs `steps` to completion, first polling each once in order: tokio-postgres sends a
/// request when its future is first polled, so the requests go out in `steps`' order and are
/// pipelined on the one connection.
async fn in_order<T>(steps: Vec<Pin<Box<dyn Future<Output = T> + Send + '_>>>) -> Vec<T> {
    let mut steps: Vec<_> = steps.into_iter().map(futures::future::maybe_done).collect();
    for step in &mut steps {
        let _ = futures::poll!(Pin::new(step));
    }
    futures::future::join_all(steps.iter_mut().map(Pin::new)).await;
    steps
        .iter_mut()
        .map(|step| {
            Pin::new(step)
                .take_output()
                .expect("every step ran to completion")
        })
        .collect()
}

struct Statements {
    status: tokio_postgres::Statement,
    statuses: tokio_postgres::Statement,
    inbound: tokio_postgres::Statement,
    send: tokio_postgres::Statement,
    finish: tokio_postgres::Statement,
}

/// A status callback: the event, held by this instance with its first attempt counted, and,
/// only when the event is new, the message's row moved forward. Only a message of the event's
/// own app is moved (the conflict target is (app, sid)), only forward, never past a final
/// status, and only when the accounts agree: a message or an event that names no account
/// matches any.
const INSERT_STATUS: &str = "WITH ev AS ( \
     INSERT INTO events (app, company, received_at, idempotency_token, dedup_key, message_sid, \
       message_status, error_code, fields, attempts, updated_at, kind, lease_owner, lease_until) \
     VALUES ($1::text, $2::text, $3::bigint, $4::text, $5::text, $6::text, $7::text, $8::text, \
       $9::text, 1, $3, $10::text, $11::text, $12::bigint) \
     ON CONFLICT DO NOTHING RETURNING id), \
   msg AS ( \
     INSERT INTO messages AS m (sid, app, company, status, status_rank, error_code, to_number, \
       from_number, created_at, updated_at, account_sid) \
     SELECT $6, $1, $2, $7, $13::integer, $8, $14::text, $15::text, $3, $3, $16::text FROM ev \
     WHERE $6 IS NOT NULL AND $7 IS NOT NULL \
     ON CONFLICT (app, sid) DO UPDATE SET status = EXCLUDED.status, \
       status_rank = EXCLUDED.status_rank, updated_at = EXCLUDED.updated_at, \
       error_code = coalesce(EXCLUDED.error_code, m.error_code), \
       account_sid = coalesce(m.account_sid, EXCLUDED.account_sid) \
     WHERE EXCLUDED.status_rank > m.status_rank AND m.status_rank < 10 \
       AND (EXCLUDED.account_sid IS NULL OR m.account_sid IS NULL \
            OR EXCLUDED.account_sid = m.account_sid)) \
   SELECT id FROM ev";

/// Status callbacks stored together, one row of the arrays each, with what [`INSERT_STATUS`]
/// does for one: the events, held by this instance, and, for the new ones only, their messages
/// moved forward under the same rules. No two rows name one message (see [`batchable`]), so a
/// new event is matched to its row by (app, sid); the rows go in the group's order, (app, sid),
/// so instances lock them in the same order. Returns each new event's id with its row's
/// position (from 1).
const INSERT_STATUSES: &str = "WITH input AS ( \
     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
       $6::text[], $7::text[], $8::text[], $9::text[], $10::integer[], $11::text[], \
       $12::text[], $13::text[]) WITH ORDINALITY AS i(app, company, received_at, token, \
       dedup_key, sid, status, error_code, fields, rank, to_number, from_number, account_sid, \
       ord)), \
   ev AS ( \
     INSERT INTO events (app, company, received_at, idempotency_token, dedup_key, message_sid, \
       message_status, error_code, fields, attempts, updated_at, kind, lease_owner, lease_until) \
     SELECT app, company, received_at, token, dedup_key, sid, status, error_code, fields, 1, \
       received_at, 'status', $14::text, $15::bigint FROM input ORDER BY ord \
     ON CONFLICT DO NOTHING RETURNING id, app, message_sid), \
   msg AS ( \
     INSERT INTO messages AS m (sid, app, company, status, status_rank, error_code, to_number, \
       from_number, created_at, updated_at, account_sid) \
     SELECT i.sid, i.app, i.company, i.status, i.rank, i.error_code, i.to_number, \
       i.from_number, i.received_at, i.received_at, i.account_sid \
     FROM ev JOIN input AS i ON i.app = ev.app AND i.sid = ev.message_sid \
     WHERE i.status IS NOT NULL ORDER BY i.ord \
     ON CONFLICT (app, sid) DO UPDATE SET status = EXCLUDED.status, \
       status_rank = EXCLUDED.status_rank, updated_at = EXCLUDED.updated_at, \
       error_code = coalesce(EXCLUDED.error_code, m.error_code), \
       account_sid = coalesce(m.account_sid, EXCLUDED.account_sid) \
     WHERE EXCLUDED.status_rank > m.status_rank AND m.status_rank < 10 \
       AND (EXCLUDED.account_sid IS NULL OR m.account_sid IS NULL \
            OR EXCLUDED.account_sid = m.account_sid)) \
   SELECT ev.id, i.ord FROM ev JOIN input AS i ON i.app = ev.app AND i.sid = ev.message_sid";

/// An inbound message: the event, and, only when it is new, the message's row: received,
/// final, never moved by a status callback. A row the app already has for the sid is kept.
const INSERT_INBOUND: &str = "WITH ev AS ( \
     INSERT INTO events (app, company, received_at, idempotency_token, dedup_key, message_sid, \
       message_status, error_code, fields, attempts, updated_at, kind, lease_owner, lease_until) \
     VALUES ($1::text, $2::text, $3::bigint, $4::text, $5::text, $6::text, $7::text, $8::text, \
       $9::text, 1, $3, $10::text, $11::text, $12::bigint) \
     ON CONFLICT DO NOTHING RETURNING id), \
   msg AS ( \
     INSERT INTO messages (sid, app, company, account_sid, to_number, from_number, body, media, \
       status, status_rank, created_at, updated_at, direction, profile_name, wa_id) \
     SELECT $6, $1, $2, $16::text, $14::text, $15::text, $17::text, $18::text, $7, \
       $13::integer, $3, $3, 'inbound', $19::text, $20::text FROM ev \
     ON CONFLICT (app, sid) DO NOTHING) \
   SELECT id FROM ev";

/// A send's row for (app, sid); a row an early callback of the same app created is completed,
/// keeping the further status. A send without a sid (refused by Twilio) gets a row of its own.
const RECORD_SEND: &str = "INSERT INTO messages AS m (sid, app, company, account_sid, \
     to_number, from_number, body, media, status, status_rank, error_code, error_message, \
     created_at, updated_at, content_sid, content_variables) \
   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15) \
   ON CONFLICT (app, sid) DO UPDATE SET company = EXCLUDED.company, \
     account_sid = EXCLUDED.account_sid, to_number = EXCLUDED.to_number, \
     from_number = EXCLUDED.from_number, body = EXCLUDED.body, media = EXCLUDED.media, \
     content_sid = EXCLUDED.content_sid, content_variables = EXCLUDED.content_variables, \
     created_at = least(m.created_at, EXCLUDED.created_at), \
     error_message = coalesce(m.error_message, EXCLUDED.error_message), \
     status = CASE WHEN EXCLUDED.status_rank > m.status_rank \
                   THEN EXCLUDED.status ELSE m.status END, \
     status_rank = greatest(EXCLUDED.status_rank, m.status_rank)";

/// A group's dispatch outcomes, in one statement (one row of the arrays each), each written
/// only while this instance holds the event for that attempt; a final one (done, failed, dead)
/// releases the lease. `Started` counts the attempt and extends the lease. A dead outcome may
/// name the attempt before the one a claim counted: the claim of an event whose attempts were
/// all cut short counts one more, then the event is declared dead at the maximum.
const FINISH: &str = "UPDATE events AS e SET state = u.state, attempts = u.attempts, \
     last_error = coalesce(u.error, e.last_error), next_attempt_at = u.next, \
     updated_at = $7::bigint, \
     lease_owner = CASE WHEN u.release THEN NULL ELSE e.lease_owner END, \
     lease_until = CASE WHEN u.release THEN NULL ELSE $9::bigint END \
   FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::text[], $5::bigint[], \
     $6::boolean[]) AS u(id, state, attempts, error, next, release) \
   WHERE e.id = u.id AND e.lease_owner = $8::text \
     AND (e.attempts = u.attempts OR u.state = 'pending' \
          OR (u.state = 'dead' AND e.attempts = u.attempts + 1))";

async fn insert(
    tx: &tokio_postgres::Client,
    st: &Statements,
    ev: &NewEvent,
    instance: &str,
    lease_until: i64,
) -> Result<Option<Inserted>, tokio_postgres::Error> {
    let c = &ev.callback;
    let status = ev.status();
    let fields = serde_json::to_string(&c.fields).expect("string pairs serialize");
    let dedup_key = ev.dedup_key();
    let rank = status.map_or(0, |s| status_rank(s) as i32);
    let kind = ev.kind.as_str();
    // INSERT_STATUS's parameters, and INSERT_INBOUND's first sixteen (its rank is RECEIVED's).
    let received_rank = status_rank(webhook::RECEIVED) as i32;
    let event: [&(dyn tokio_postgres::types::ToSql + Sync); 16] = [
        &ev.app,
        &ev.company,
        &ev.received_at,
        &ev.idempotency_token,
        &dedup_key,
        &c.sid,
        &status,
        &c.error_code,
        &fields,
        &kind,
        &instance,
        &lease_until,
        match ev.kind {
            EventKind::Status => &rank,
            EventKind::Inbound => &received_rank,
        },
        &c.to,
        &c.from,
        &c.account_sid,
    ];
    let row = match ev.kind {
        EventKind::Status => tx.query_opt(&st.status, &event).await?,
        EventKind::Inbound => {
            let inbound = c.inbound();
            let media = super::super::inbound_media_json(&inbound.media);
            let message: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&inbound.body, &media, &inbound.profile_name, &inbound.wa_id];
            let params: Vec<_> = event.iter().chain(&message).copied().collect();
            tx.query_opt(&st.inbound, &params).await?
        }
    };
    Ok(Some(match row {
        Some(row) => Inserted::New(row.get(0)),
        None => Inserted::Duplicate,
    }))
}

/// Stores `events` (index of the write, event) with [`INSERT_STATUSES`]; returns the new
/// ones' ids by write index.
async fn insert_statuses(
    tx: &tokio_postgres::Client,
    st: &Statements,
    events: Vec<(usize, &NewEvent)>,
    instance: &str,
    lease_until: i64,
) -> Result<Vec<(usize, Inserted)>, tokio_postgres::Error> {
    let n = events.len();
    let mut app = Vec::with_capacity(n);
    let mut company = Vec::with_capacity(n);
    let mut received_at = Vec::with_capacity(n);
    let mut token = Vec::with_capacity(n);
    let mut dedup_key = Vec::with_capacity(n);
    let mut sid = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut error_code = Vec::with_capacity(n);
    let mut fields = Vec::with_capacity(n);
    let mut rank = Vec::with_capacity(n);
    let mut to = Vec::with_capacity(n);
    let mut from = Vec::with_capacity(n);
    let mut account = Vec::with_capacity(n);
    for (_, ev) in &events {
        let c = &ev.callback;
        app.push(ev.app.as_str());
        company.push(ev.company.as_str());
        received_at.push(ev.received_at);
        token.push(ev.idempotency_token.as_deref());
        dedup_key.push(ev.dedup_key());
        sid.push(c.sid.as_deref());
        status.push(ev.status());
        error_code.push(c.error_code.as_deref());
        fields.push(serde_json::to_string(&c.fields).expect("string pairs serialize"));
        rank.push(ev.status().map_or(0, |s| status_rank(s) as i32));
        to.push(c.to.as_deref());
        from.push(c.from.as_deref());
        account.push(c.account_sid.as_deref());
    }
    let rows = tx
        .query(
            &st.statuses,
            &[
                &app,
                &company,
                &received_at,
                &token,
                &dedup_key,
                &sid,
                &status,
                &error_code,
                &fields,
                &rank,
                &to,
                &from,
                &account,
                &instance,
                &lease_until,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let ord: i64 = row.get(1);
            let (i, _) = events.get(usize::try_from(ord).ok()?.checked_sub(1)?)?;
            Some((*i, Inserted::New(row.get(0))))
        })
        .collect())
}

async fn record_send(
    tx: &tokio_postgres::Client,
    st: &Statements,
    r: &SendRecord,
) -> Result<(), tokio_postgres::Error> {
    let rank = status_rank(&r.status) as i32;
    let error_code = r.error_code.map(|c| c.to_string());
    tx.execute(
        &st.send,
        &[
            &r.sid,
            &r.app,
            &r.company,
            &r.account_sid,
            &r.to,
            &r.from,
            &r.body,
            &r.media,
            &r.status,
            &rank,
            &error_code,
            &r.error_message,
            &r.at,
            &r.content_sid,
            &r.content_variables,
        ],
    )
    .await?;
    Ok(())
}

/// This instance, and the time a write is made at.
struct Holder<'a> {
    instance: &'a str,
    now: i64,
    /// Where a lease this write takes or extends ends.
    lease_until: i64,
}

/// One outcome per event: the one for its latest attempt, the last of those when several name
/// it. Applied one after another, the others would be ignored or overwritten anyway.
fn latest_outcomes<'a>(works: &[&'a Work]) -> Vec<(i64, u32, &'a DispatchResult)> {
    let mut outcomes: Vec<(i64, u32, &DispatchResult)> = Vec::new();
    for work in works {
        if let Work::Finish {
            id,
            attempts,
            result,
        } = work
        {
            match outcomes.iter_mut().find(|(seen, ..)| seen == id) {
                Some(kept) if kept.1 <= *attempts => *kept = (*id, *attempts, result),
                Some(_) => {}
                None => outcomes.push((*id, *attempts, result)),
            }
        }
    }
    outcomes
}

async fn finish(
    tx: &tokio_postgres::Client,
    st: &Statements,
    outcomes: Vec<(i64, u32, &DispatchResult)>,
    holder: Holder<'_>,
) -> Result<u64, tokio_postgres::Error> {
    let n = outcomes.len();
    let (mut ids, mut states, mut attempts, mut errors, mut nexts, mut releases) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (id, attempt, result) in outcomes {
        let (state, error, next, release) = match result {
            DispatchResult::Started => ("pending", None, None, false),
            DispatchResult::Done => ("done", None, None, true),
            DispatchResult::Failed {
                error,
                next_attempt_at,
            } => ("failed", Some(error.as_str()), Some(*next_attempt_at), true),
            DispatchResult::Dead { error } => ("dead", Some(error.as_str()), None, true),
        };
        ids.push(id);
        states.push(state);
        attempts.push(i32::try_from(attempt).unwrap_or(i32::MAX));
        errors.push(error);
        nexts.push(next);
        releases.push(release);
    }
    tx.execute(
        &st.finish,
        &[
            &ids,
            &states,
            &attempts,
            &errors,
            &nexts,
            &releases,
            &holder.now,
            &holder.instance,
            &holder.lease_until,
        ],
    )
    .await
}
