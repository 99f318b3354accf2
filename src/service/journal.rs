//! The node's durable store: every accepted task, its progress and its final state,
//! written to SQLite in the node's data directory and read back when the node starts.
//!
//! The in-memory [`Store`](super::store::Store) still serves every read; the journal is
//! its write-ahead copy on disk, and the source of truth after a crash.
//!
//! # Protocol
//!
//! Actors: request handlers and resolvers (async tasks), the task's attempt wrapper on a
//! pool worker, the in-memory store's eviction, and one writer thread that owns the
//! SQLite connection.
//!
//! 1. Every write is an [`Op`] sent on one channel; the writer applies them in the order
//!    they were sent, so a task's insert comes before its start, its start before its
//!    finish, its finish before its delete.
//! 2. Group commit: the writer takes every op already waiting (up to [`MAX_BATCH`]),
//!    applies them in one transaction and commits it (WAL, `synchronous=FULL`: one sync
//!    for the whole batch), then answers each op's acknowledgement. An acknowledged op is
//!    on disk.
//! 3. The node answers `202` only after the task's insert is acknowledged, and shows a
//!    final state only after its finish is acknowledged (`app.rs`): kill -9 undoes
//!    nothing a client has seen.
//! 4. Starts, retries and deletes are not waited for: after a crash a task may show one
//!    attempt fewer than it had, and a record evicted just before the crash is evicted
//!    again at start.
//! 5. A commit that fails (disk full, an I/O error) fails every op of its batch and
//!    changes nothing on disk: a refused insert was never accepted (the client is told so),
//!    a refused finish is tried again by its resolver, and the task stays unfinished
//!    meanwhile.
//! 6. One node per data directory: the node holds an exclusive lock on `DIR/lock` for its
//!    lifetime (and SQLite's exclusive locking mode on the database).
//!
//! Why SQLite (through rusqlite, built from its bundled source): it is the most widely
//! deployed crash-safe embedded store, its WAL mode gives group commit and cheap appends,
//! and `PRAGMA quick_check` tells a corrupt file from a good one at start. redb (pure
//! Rust) was the alternative; both keep up with the HTTP path, and SQLite's file can be
//! inspected with the `sqlite3` shell, which operators know.

use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use rusqlite::{params, Connection};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::wire::State;

/// The most ops applied in one transaction.
pub(crate) const MAX_BATCH: usize = 4096;
/// The database file in the data directory.
pub(crate) const DB_FILE: &str = "tasks.sqlite3";
/// The lock file in the data directory.
const LOCK_FILE: &str = "lock";
/// The schema this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;
/// Free pages past which the writer gives space back to the file system.
const VACUUM_FREE_PAGES: i64 = 256;

/// Why the journal refused a write.
#[derive(Clone, Debug)]
pub(crate) struct StoreError {
    message: String,
    /// The store is closed (the node is past its end): trying again is no use.
    pub closed: bool,
}

impl StoreError {
    pub fn new(message: impl Into<String>) -> StoreError {
        StoreError {
            message: message.into(),
            closed: false,
        }
    }

    fn closed() -> StoreError {
        StoreError {
            message: "the store is closed".into(),
            closed: true,
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

type Ack = oneshot::Sender<Result<(), StoreError>>;

/// What a new task's row holds.
pub(crate) struct NewRow {
    pub seq: u64,
    pub id: Uuid,
    pub name: String,
    /// The submission's body (JSON), to run the task again after a restart.
    pub request: String,
    pub state: State,
    pub submitted_at_ms: u64,
    /// When a delayed task is due, in ms since the epoch.
    pub due_at_ms: Option<u64>,
    /// Attempts and interruptions carried over from before a restart.
    pub attempts: u32,
    pub interrupted: u32,
}

/// A final state to write.
pub(crate) struct Final {
    pub seq: u64,
    pub state: State,
    /// The result as JSON text.
    pub result: Option<String>,
    pub error: Option<String>,
    pub finished_at_ms: u64,
    pub attempts: u32,
}

/// One write (rule 1).
pub(crate) enum Op {
    Insert(NewRow, Ack),
    Started {
        seq: u64,
        attempts: u32,
        /// When the task's first attempt started (kept from the first start on).
        started_at_ms: u64,
    },
    Retry {
        seq: u64,
    },
    Finish(Final, Ack),
    Delete {
        seq: u64,
    },
    /// An unfinished task read back at start, queued again in `state`.
    Requeue {
        seq: u64,
        state: State,
        interrupted: u32,
    },
    /// Acknowledged once every op sent before it is on disk.
    Flush(Ack),
    /// As `Flush`; then the writer stops and closes the database.
    Close(Ack),
}

/// A task as read back at start.
pub(crate) struct StoredTask {
    pub seq: u64,
    pub id: Uuid,
    pub name: String,
    pub request: Option<String>,
    pub state: State,
    pub attempts: u32,
    pub interrupted: u32,
    pub submitted_at_ms: u64,
    pub due_at_ms: Option<u64>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub finished_at_ms: Option<u64>,
    pub started_at_ms: Option<u64>,
}

/// The sending side, cloned wherever the node writes (cheap to clone).
#[derive(Clone)]
pub(crate) struct JournalTx(mpsc::Sender<Op>);

impl JournalTx {
    /// Sends an op that is not waited for (rule 4). After the writer stopped it is
    /// dropped: the node is past its end.
    pub fn send(&self, op: Op) {
        let _ = self.0.send(op);
    }

    /// Sends `op` (built around its acknowledgement) and waits until it is on disk.
    pub async fn write(&self, op: impl FnOnce(Ack) -> Op) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.0.send(op(tx)).map_err(|_| StoreError::closed())?;
        rx.await.unwrap_or_else(|_| Err(StoreError::closed()))
    }
}

/// The open journal: its sender, its writer thread, and the data directory's lock.
pub(crate) struct Journal {
    tx: JournalTx,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Held (locked) until the journal is closed (rule 6).
    lock: Mutex<Option<File>>,
}

impl Journal {
    /// Opens (or creates) the store in `dir`: takes the directory's lock, checks the
    /// database, reads every task back, and starts the writer. `max_bytes` caps the
    /// database file (then writes fail as on a full disk).
    pub fn open(
        dir: &Path,
        max_bytes: Option<u64>,
    ) -> Result<(Journal, Vec<StoredTask>), OpenError> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| OpenError::io(format!("cannot create {}", dir.display()), e))?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| OpenError::io(format!("cannot open {}", lock_path.display()), e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OpenError::InUse(format!(
                    "the data directory {} is in use by another node; stop it first, or pick \
                     another directory (--data-dir / WEFT_DATA_DIR)",
                    dir.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(OpenError::io(
                    format!("cannot lock {}", lock_path.display()),
                    e,
                ))
            }
        }
        let path = dir.join(DB_FILE);
        let corrupt = |e: &dyn std::fmt::Display| {
            OpenError::Corrupt(format!(
                "the store {} cannot be read ({e}); refusing to start rather than lose what it \
                 holds: move it aside to start empty, or restore it from a backup",
                path.display()
            ))
        };
        let conn = Connection::open(&path).map_err(|e| corrupt(&e))?;
        setup(&conn, max_bytes).map_err(|e| corrupt(&e))?;
        let tasks = read_all(&conn).map_err(|e| corrupt(&e))?;
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("weft-store".into())
            .spawn(move || write_loop(conn, rx))
            .map_err(|e| OpenError::io("cannot start the store's writer", e))?;
        let journal = Journal {
            tx: JournalTx(tx),
            writer: Mutex::new(Some(writer)),
            lock: Mutex::new(Some(lock)),
        };
        Ok((journal, tasks))
    }

    pub fn tx(&self) -> &JournalTx {
        &self.tx
    }

    /// Waits until every op sent so far is on disk; then stops the writer (later ops are
    /// dropped), closes the database and unlocks the directory.
    pub async fn close(&self) -> Result<(), StoreError> {
        let closed = self.tx.write(Op::Close).await;
        let writer = self.writer.lock().take();
        if let Some(w) = writer {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        self.lock.lock().take();
        closed
    }
}

/// Why the journal could not open.
pub(crate) enum OpenError {
    /// Another node holds the directory.
    InUse(String),
    /// The database cannot be read.
    Corrupt(String),
    Io(String),
}

impl OpenError {
    fn io(what: impl std::fmt::Display, e: std::io::Error) -> OpenError {
        OpenError::Io(format!("{what}: {e}"))
    }
}

/// WAL, full syncs, one connection holding the file, incremental vacuum, the schema.
fn setup(conn: &Connection, max_bytes: Option<u64>) -> rusqlite::Result<()> {
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "it was written by a newer weft (schema {version}; this one reads {SCHEMA_VERSION})"
        )));
    }
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "quick_check: {check}"
        )));
    }
    if version == 0 {
        // auto_vacuum must be set before the first table exists.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "cannot use WAL mode (got {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    if let Some(max) = max_bytes {
        let page: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let pages = i64::try_from(max).unwrap_or(i64::MAX) / page.max(1);
        conn.pragma_update(None, "max_page_count", pages.max(1))?;
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS tasks (
            seq INTEGER PRIMARY KEY,
            id BLOB NOT NULL,
            name TEXT NOT NULL,
            request TEXT,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            interrupted INTEGER NOT NULL,
            submitted_at_ms INTEGER NOT NULL,
            due_at_ms INTEGER,
            result TEXT,
            error TEXT,
            finished_at_ms INTEGER,
            started_at_ms INTEGER
        );",
    )?;
    if version == 1 {
        // Schema 1 (before the dashboard) had no start time.
        conn.execute_batch("ALTER TABLE tasks ADD COLUMN started_at_ms INTEGER;")?;
    }
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

fn parse_state(s: &str) -> Option<State> {
    serde_json::from_value(serde_json::Value::from(s)).ok()
}

fn read_all(conn: &Connection) -> rusqlite::Result<Vec<StoredTask>> {
    let mut stmt = conn.prepare(
        "SELECT seq, id, name, request, state, attempts, interrupted, submitted_at_ms,
                due_at_ms, result, error, finished_at_ms, started_at_ms FROM tasks ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        let id: Vec<u8> = r.get(1)?;
        let state: String = r.get(4)?;
        let bad = |what: String| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into())
        };
        Ok(StoredTask {
            seq: r.get::<_, i64>(0)? as u64,
            id: Uuid::from_slice(&id).map_err(|e| bad(format!("bad task id: {e}")))?,
            name: r.get(2)?,
            request: r.get(3)?,
            state: parse_state(&state).ok_or_else(|| bad(format!("bad state {state:?}")))?,
            attempts: r.get(5)?,
            interrupted: r.get(6)?,
            submitted_at_ms: r.get::<_, i64>(7)? as u64,
            due_at_ms: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
            result: r.get(9)?,
            error: r.get(10)?,
            finished_at_ms: r.get::<_, Option<i64>>(11)?.map(|v| v as u64),
            started_at_ms: r.get::<_, Option<i64>>(12)?.map(|v| v as u64),
        })
    })?;
    rows.collect()
}

/// The writer thread (rules 1, 2, 5).
fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Op>) {
    let mut batch = Vec::with_capacity(64);
    let mut stop = false;
    let mut failing = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let result = apply(&mut conn, &batch).map_err(|e| StoreError::new(e.to_string()));
        // Logged when writes start failing and when they work again, not at each batch.
        match (&result, failing) {
            (Err(e), false) => eprintln!("weft node: cannot write to the store: {e}"),
            (Ok(()), true) => eprintln!("weft node: the store takes writes again"),
            _ => {}
        }
        failing = result.is_err();
        for op in batch.drain(..) {
            stop |= matches!(op, Op::Close(_));
            if let Op::Insert(_, ack) | Op::Finish(_, ack) | Op::Flush(ack) | Op::Close(ack) = op {
                let _ = ack.send(result.clone());
            }
        }
    }
    drop(conn);
}

/// One transaction for the batch; then, if deletes left many free pages, gives them back.
fn apply(conn: &mut Connection, batch: &[Op]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let mut deleted = false;
    for op in batch {
        match op {
            Op::Insert(row, _) => {
                tx.prepare_cached(
                    "INSERT INTO tasks (seq, id, name, request, state, attempts, interrupted,
                        submitted_at_ms, due_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    row.seq as i64,
                    &row.id.as_bytes()[..],
                    row.name,
                    row.request,
                    row.state.as_str(),
                    row.attempts,
                    row.interrupted,
                    row.submitted_at_ms as i64,
                    row.due_at_ms.map(|v| v as i64),
                ])?;
            }
            Op::Started {
                seq,
                attempts,
                started_at_ms,
            } => {
                tx.prepare_cached(
                    "UPDATE tasks SET state = 'STARTED', attempts = ?2,
                        started_at_ms = coalesce(started_at_ms, ?3) WHERE seq = ?1",
                )?
                .execute(params![*seq as i64, attempts, *started_at_ms as i64])?;
            }
            Op::Retry { seq } => {
                tx.prepare_cached("UPDATE tasks SET state = 'RETRY' WHERE seq = ?1")?
                    .execute(params![*seq as i64])?;
            }
            Op::Finish(f, _) => {
                tx.prepare_cached(
                    "UPDATE tasks SET state = ?2, result = ?3, error = ?4, finished_at_ms = ?5,
                        attempts = ?6 WHERE seq = ?1",
                )?
                .execute(params![
                    f.seq as i64,
                    f.state.as_str(),
                    f.result,
                    f.error,
                    f.finished_at_ms as i64,
                    f.attempts,
                ])?;
            }
            Op::Requeue {
                seq,
                state,
                interrupted,
            } => {
                tx.prepare_cached("UPDATE tasks SET state = ?2, interrupted = ?3 WHERE seq = ?1")?
                    .execute(params![*seq as i64, state.as_str(), interrupted])?;
            }
            Op::Delete { seq } => {
                tx.prepare_cached("DELETE FROM tasks WHERE seq = ?1")?
                    .execute(params![*seq as i64])?;
                deleted = true;
            }
            Op::Flush(_) | Op::Close(_) => {}
        }
    }
    tx.commit()?;
    if deleted {
        let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
        if free > VACUUM_FREE_PAGES {
            conn.execute_batch("PRAGMA incremental_vacuum")?;
        }
    }
    Ok(())
}
