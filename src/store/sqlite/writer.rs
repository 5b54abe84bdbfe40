//! The store's write path: one writer thread that commits writes in groups, a sync thread that
//! makes each group durable before anyone is answered, and a checkpoint thread that copies the
//! log into the database. Callers reach it only through [`Writer`]'s ops and their replies.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{BackendError, DispatchResult, Inserted, NewEvent, Pruned, SendRecord, StoreError};

/// Most writes a group commit takes at once; bounds the latency of the last one in a group.
const MAX_GROUP: usize = 2048;
/// A group keeps gathering while writes arrive less than this far apart...
const GATHER_GAP: Duration = Duration::from_micros(200);
/// ...but no longer than this after its first write. Under load, requests arrive every few
/// tens of µs: waiting turns many small commits into a few large ones, each paying the fixed
/// cost of a commit (the table and index pages every commit rewrites, and the fsync) once.
/// A lone write waits at most `GATHER_GAP`.
const GATHER_MAX: Duration = Duration::from_millis(1);
/// How long a group of writes nobody waits for (sends and dispatch outcomes) may gather: a
/// script sending one message after another then commits and syncs a few times a second
/// rather than once per message.
const UNAWAITED_GATHER: Duration = Duration::from_millis(20);
/// How often the checkpoint thread copies newly committed pages into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// Log length, in pages, at which the writer checkpoints by itself: only when the checkpoint
/// thread has fallen far behind, so the log stays bounded (about 128 MiB).
const WRITER_CHECKPOINT_PAGES: i64 = 32_768;

/// The sending side of the writer thread. Cloning is cheap; all clones share one thread.
#[derive(Clone)]
pub(super) struct Writer {
    ops: mpsc::Sender<Op>,
    /// Taken by the first `close`, which joins it so the log is checkpointed before it returns.
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Writer {
    /// Opens the writer's connection to `path`, creates or upgrades the schema and starts the
    /// writer thread.
    pub(super) fn start(path: &Path) -> Result<Writer, StoreError> {
        let open_err = |source: rusqlite::Error| StoreError::Open {
            path: path.to_path_buf(),
            source: BackendError::new(source),
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        super::configure(&conn).map_err(open_err)?;
        super::schema::set_up(&mut conn, path)?;
        // Commits leave the log unsynced; the writer's sync thread syncs it before anyone is
        // answered (see `writer_loop`). NORMAL still syncs the log and the database around
        // every checkpoint, so a checkpointed log is never overwritten before it is safe.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        // Checkpoints run on their own thread (see `checkpoint_loop`); the writer checkpoints
        // only if the log has grown this long anyway.
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
            .map_err(open_err)?;
        let (ops, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn({
                let path = path.to_path_buf();
                move || writer_loop(conn, rx, path)
            })
            .expect("spawning the store writer thread");
        Ok(Writer {
            ops,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    pub(super) async fn insert_event(&self, event: NewEvent) -> Result<Inserted, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::InsertEvent(event, tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) fn record_send(&self, record: SendRecord) -> Result<(), StoreError> {
        self.send(Op::RecordSend(record))
    }

    pub(super) fn finish_dispatch(
        &self,
        id: i64,
        attempts: u32,
        result: DispatchResult,
    ) -> Result<(), StoreError> {
        self.send(Op::Finish {
            id,
            attempts,
            result,
        })
    }

    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Barrier(tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues a change to the dashboard's sessions; [`Writer::flush`] waits for it.
    pub(super) fn session(&self, change: SessionChange) -> Result<(), StoreError> {
        self.send(Op::Session(change))
    }

    /// One batch of retention, in a transaction of its own right after the group it arrived
    /// with, so the callbacks in that group never wait for its deletes.
    pub(super) async fn prune(
        &self,
        before_ms: i64,
        batch: usize,
        now_ms: i64,
    ) -> Result<Pruned, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Prune(PruneRequest {
            before_ms,
            batch,
            now_ms,
            reply: tx,
        }))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Op::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        let handle = self.thread.lock().expect("store thread lock").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.ops.send(op).map_err(|_| StoreError::Closed)
    }
}

/// One write for the writer thread, with where to answer if someone waits.
enum Op {
    InsertEvent(NewEvent, oneshot::Sender<Result<Inserted, StoreError>>),
    RecordSend(SendRecord),
    /// Nobody waits: losing it in a crash only means the event is dispatched again.
    Finish {
        id: i64,
        attempts: u32,
        result: DispatchResult,
    },
    /// Answers once everything queued before it is committed and synced.
    Barrier(oneshot::Sender<Result<(), StoreError>>),
    /// A login or a logout; the caller flushes to wait for it.
    Session(SessionChange),
    /// Runs after its group, in a transaction of its own (see [`Writer::prune`]).
    Prune(PruneRequest),
    Close(oneshot::Sender<()>),
}

/// A retention batch and where to answer.
struct PruneRequest {
    before_ms: i64,
    batch: usize,
    now_ms: i64,
    reply: oneshot::Sender<Result<Pruned, StoreError>>,
}

/// A change to `dashboard_sessions`.
pub(super) enum SessionChange {
    Create {
        token_hash: String,
        csrf: String,
        expires_at: i64,
    },
    Delete {
        token_hash: String,
    },
}

impl Op {
    /// Whether a caller waits for this op's answer.
    fn is_awaited(&self) -> bool {
        match self {
            Op::InsertEvent(..) | Op::Barrier(_) | Op::Prune(_) | Op::Close(_) => true,
            Op::RecordSend(_) | Op::Finish { .. } | Op::Session(_) => false,
        }
    }

    /// Answers an op that was never applied with why; ops nobody waits for are dropped.
    fn refuse(self, why: &GroupFailed) {
        match self {
            Op::InsertEvent(_, reply) => {
                let _ = reply.send(Err(why.to_error()));
            }
            Op::Barrier(reply) => {
                let _ = reply.send(Err(why.to_error()));
            }
            Op::Prune(prune) => {
                let _ = prune.reply.send(Err(why.to_error()));
            }
            Op::RecordSend(_) | Op::Finish { .. } | Op::Session(_) | Op::Close(_) => {}
        }
    }
}

/// Why a whole group of writes is answered with an error. Shared by every op in the group, so
/// the cause is behind an `Arc`.
#[derive(Clone)]
enum GroupFailed {
    /// The transaction could not begin or commit: nothing in the group was applied.
    Commit(BackendError),
    /// The log could not be synced: the group may be lost, and nothing later is acknowledged.
    Sync(Arc<io::Error>),
}

impl GroupFailed {
    fn to_error(&self) -> StoreError {
        match self {
            GroupFailed::Commit(source) => StoreError::CommitFailed {
                source: source.clone(),
            },
            GroupFailed::Sync(source) => StoreError::SyncFailed {
                source: source.clone(),
            },
        }
    }
}

/// The writer thread: take one op, then what arrives right behind it (see [`GATHER_MAX`]),
/// apply them in one transaction and commit. The commit writes the log without syncing it; the
/// group's answers go to the [`sync_loop`] thread, which answers only after the log is synced.
/// So the next group is applied while the previous one is being synced, and one sync covers
/// every group committed before it started.
fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Op>, path: PathBuf) {
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let commits = Arc::new(AtomicU64::new(0));
    let (stop_checkpoints, stop_rx) = mpsc::channel::<()>();
    let checkpointer = {
        let commits = commits.clone();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || checkpoint_loop(&path, &commits, stop_rx))
            .expect("spawning the store checkpoint thread")
    };
    let (synced_tx, synced_rx) = mpsc::channel::<Vec<Reply>>();
    // Set once, by the sync thread, when a sync fails.
    let sync_failed = Arc::new(OnceLock::new());
    let syncer = {
        let sync_failed = sync_failed.clone();
        std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || sync_loop(&wal, synced_rx, &sync_failed))
            .expect("spawning the store sync thread")
    };
    let mut batch = Vec::with_capacity(MAX_GROUP);
    let mut prunes = Vec::new();
    let mut closing = None;
    while let Ok(first) = rx.recv() {
        // Until an op someone waits for arrives, the group may gather for much longer.
        let mut awaited = first.is_awaited();
        let mut until = Instant::now()
            + if awaited {
                GATHER_MAX
            } else {
                UNAWAITED_GATHER
            };
        batch.push(first);
        while batch.len() < MAX_GROUP {
            let left = until.saturating_duration_since(Instant::now());
            let wait = if awaited { GATHER_GAP.min(left) } else { left };
            match rx.recv_timeout(wait) {
                Ok(op) => {
                    if !awaited && op.is_awaited() {
                        awaited = true;
                        until = until.min(Instant::now() + GATHER_MAX);
                    }
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        if let Some(source) = sync_failed.get() {
            // After a failed sync nothing more is acknowledged: what the log holds is unknown.
            refuse_all(
                &mut batch,
                &GroupFailed::Sync(Arc::clone(source)),
                &mut closing,
            );
        } else {
            let mut replies = Vec::with_capacity(batch.len());
            match commit_group(
                &mut conn,
                &mut batch,
                &mut replies,
                &mut prunes,
                &mut closing,
            ) {
                Ok(()) => {
                    commits.fetch_add(1, Ordering::Relaxed);
                    // Nobody waits on a group of sends and dispatch outcomes: the next sync, or
                    // checkpoint, makes it durable.
                    if !replies.is_empty() {
                        let _ = synced_tx.send(replies);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "store commit failed; the writes in this group were not acknowledged");
                    let why = GroupFailed::Commit(BackendError::new(e));
                    for reply in replies {
                        reply.send(Err(&why));
                    }
                    // Ops the transaction never reached (it failed to begin) get the same answer.
                    refuse_all(&mut batch, &why, &mut closing);
                }
            }
            // Each after the group, alone: a prune never holds up a callback's commit.
            for prune in prunes.drain(..) {
                let pruned = prune_batch(&mut conn, prune.before_ms, prune.batch, prune.now_ms);
                if pruned.is_ok() {
                    commits.fetch_add(1, Ordering::Relaxed);
                }
                let pruned = pruned.map_err(|e| StoreError::Query(BackendError::new(e)));
                let _ = prune.reply.send(pruned);
            }
        }
        if closing.is_some() {
            break;
        }
    }
    // Every answer is out, and the checkpoint thread stopped, before the log is checkpointed
    // and the connection closed.
    drop(synced_tx);
    let _ = syncer.join();
    drop(stop_checkpoints);
    let _ = checkpointer.join();
    if let Err(e) = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
        tracing::warn!(error = %e, "store checkpoint at close failed");
    }
    drop(conn);
    if let Some(reply) = closing {
        let _ = reply.send(());
    }
}

/// Applies `batch` in one transaction and commits it, leaving in `replies` the answers owed
/// once the log is synced. On error the transaction is rolled back and nothing was applied.
fn commit_group(
    conn: &mut Connection,
    batch: &mut Vec<Op>,
    replies: &mut Vec<Reply>,
    prunes: &mut Vec<PruneRequest>,
    closing: &mut Option<oneshot::Sender<()>>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for op in batch.drain(..) {
        match op {
            Op::InsertEvent(ev, reply) => {
                replies.push(Reply::Event(reply, super::insert_event(&tx, &ev)))
            }
            Op::RecordSend(rec) => {
                if let Err(e) = super::record_send(&tx, &rec) {
                    tracing::error!(error = %e, "failed to record a send");
                }
            }
            Op::Finish {
                id,
                attempts,
                result,
            } => {
                if let Err(e) = super::finish(&tx, id, attempts, &result) {
                    tracing::error!(error = %e, event = id, "failed to record a dispatch outcome");
                }
            }
            Op::Barrier(reply) => replies.push(Reply::Barrier(reply)),
            Op::Session(change) => {
                if let Err(e) = super::change_session(&tx, &change) {
                    tracing::error!(error = %e, "failed to record a dashboard login or logout");
                }
            }
            Op::Prune(prune) => prunes.push(prune),
            Op::Close(reply) => *closing = Some(reply),
        }
    }
    tx.commit()
}

/// One retention batch in its own transaction: see [`super::prune`].
fn prune_batch(
    conn: &mut Connection,
    before_ms: i64,
    batch: usize,
    now_ms: i64,
) -> rusqlite::Result<Pruned> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let pruned = super::prune(&tx, before_ms, batch, now_ms)?;
    tx.commit()?;
    Ok(pruned)
}

/// Answers every op left in `batch` with `why`, keeping a `Close` for the caller.
fn refuse_all(batch: &mut Vec<Op>, why: &GroupFailed, closing: &mut Option<oneshot::Sender<()>>) {
    for op in batch.drain(..) {
        match op {
            Op::Close(reply) => *closing = Some(reply),
            op => op.refuse(why),
        }
    }
}

/// The checkpoint thread: while commits keep coming, copies them from the log into the
/// database every [`CHECKPOINT_EVERY`], on a connection of its own, so the writer never
/// stops for a checkpoint's copying and two syncs. The connection is `synchronous = FULL`:
/// the log is synced before copying and the database after, so once everything is copied
/// the writer may start the log over. Ends when the writer drops `stop`.
fn checkpoint_loop(path: &Path, commits: &AtomicU64, stop: mpsc::Receiver<()>) {
    let conn = match Connection::open(path).and_then(|c| super::configure(&c).map(|()| c)) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "the store's checkpoint thread could not open the store; the writer checkpoints alone");
            return;
        }
    };
    let mut seen = 0;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        let now = commits.load(Ordering::Relaxed);
        if now == seen {
            continue;
        }
        seen = now;
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "store checkpoint failed; the next one will retry");
        }
    }
}

/// The sync thread: takes every committed group waiting, syncs the log once, then answers
/// them all. A failed sync is final: its groups and every later write are answered with
/// [`StoreError::SyncFailed`], as the kernel may have dropped the unsynced pages and a later
/// sync that succeeds proves nothing about them.
fn sync_loop(wal: &Path, rx: mpsc::Receiver<Vec<Reply>>, failed: &OnceLock<Arc<io::Error>>) {
    let mut directory_synced = false;
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        groups.extend(rx.try_iter());
        let outcome = match failed.get() {
            Some(source) => Err(GroupFailed::Sync(Arc::clone(source))),
            None => sync_log(wal, &mut directory_synced).map_err(|e| {
                tracing::error!(log = %wal.display(), error = %e, "failed to sync the store's log; no further writes will be acknowledged");
                let source = Arc::new(e);
                let _ = failed.set(Arc::clone(&source));
                GroupFailed::Sync(source)
            }),
        };
        for reply in groups.into_iter().flatten() {
            reply.send(outcome.as_ref().map(|_| ()));
        }
    }
}

/// `fdatasync` of the write-ahead log, through a fresh descriptor so it is always the file
/// SQLite writes now. The first time, the directory too, so the log's entry is durable.
fn sync_log(wal: &Path, directory_synced: &mut bool) -> io::Result<()> {
    match std::fs::File::open(wal) {
        Ok(log) => log.sync_data()?,
        // No log yet: nothing was written, so there is nothing to sync.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if !*directory_synced {
        if let Some(dir) = wal.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        *directory_synced = true;
    }
    Ok(())
}

/// An answer owed for an applied op, sent once its group is committed and synced.
enum Reply {
    /// With the op's own outcome: a callback can fail alone while its group commits.
    Event(
        oneshot::Sender<Result<Inserted, StoreError>>,
        rusqlite::Result<Inserted>,
    ),
    Barrier(oneshot::Sender<Result<(), StoreError>>),
}

impl Reply {
    /// Answers with the op's own outcome, unless its whole group failed.
    fn send(self, group: Result<(), &GroupFailed>) {
        match self {
            Reply::Event(tx, own) => {
                let answer = match group {
                    Ok(()) => own.map_err(|e| StoreError::Query(BackendError::new(e))),
                    Err(why) => Err(why.to_error()),
                };
                let _ = tx.send(answer);
            }
            Reply::Barrier(tx) => {
                let _ = tx.send(group.map_err(GroupFailed::to_error));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sync_answers_as_a_sync_failure_now_and_for_every_later_group() {
        let dir = tempfile::tempdir().unwrap();
        // A log path under a regular file cannot be opened: the sync fails, and not with
        // "not found", which would mean there is nothing to sync.
        let file = dir.path().join("store.sqlite3");
        std::fs::write(&file, b"").unwrap();
        let wal = file.join("store.sqlite3-wal");
        let failed = OnceLock::new();
        let (groups, rx) = mpsc::channel();
        let (first, mut first_answer) = oneshot::channel();
        let (later, mut later_answer) = oneshot::channel();
        groups.send(vec![Reply::Barrier(first)]).unwrap();
        groups.send(vec![Reply::Barrier(later)]).unwrap();
        drop(groups);
        sync_loop(&wal, rx, &failed);
        for answer in [first_answer.try_recv(), later_answer.try_recv()] {
            let e = answer.unwrap().unwrap_err();
            assert!(matches!(e, StoreError::SyncFailed { .. }), "{e}");
            assert!(e.to_string().contains("could not be synced to disk"), "{e}");
        }
        assert!(failed.get().is_some());
    }
}
