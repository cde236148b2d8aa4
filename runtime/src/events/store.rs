//! The durable side of events: asynchronous invocations and the last tick of each schedule,
//! in one redb database in the data directory (`events.redb`, owner-only).
//!
//! An invocation is answered 202 only after its record and body are committed (fsynced), so
//! a `kill -9` after the 202 loses nothing. An fsync is the whole cost of an enqueue, so
//! writes go through one writer thread that **group-commits**: it takes every write waiting
//! when it starts a transaction and commits them together, then answers each. One client
//! waits one fsync; a hundred concurrent ones wait about two, not a hundred (the enqueue
//! rate is in benches/results). Reads (the start-up scan, a delivery's body, a result) are
//! redb read transactions beside the writer, never blocked by it.
//!
//! Tables: `invocations` (id → the record, JSON: small, and readable when debugging),
//! `requests` (id → the request body), `results` (id → the response body kept), `ticks`
//! (schedule key → the last tick run, ms).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::api::InvocationInfo;

const INVOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("invocations");
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
const RESULTS: TableDefinition<&str, &[u8]> = TableDefinition::new("results");
const TICKS: TableDefinition<&str, u64> = TableDefinition::new("ticks");

/// Most writes one transaction takes: bounds a commit's size (and the time the first
/// writer waits) under a flood.
const MAX_BATCH: usize = 4096;

/// A header as stored: its name, and its value's bytes (not necessarily UTF-8).
pub type StoredHeader = (String, Vec<u8>);

/// An invocation as stored: what the API shows, the request's head, and the head of the
/// result once there is one (the bodies are in their own tables).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredInvocation {
    /// What the API shows.
    pub info: InvocationInfo,
    /// The request's headers.
    pub headers: Vec<StoredHeader>,
    /// The client's address and the listener's, as the request path saw them (a CGI
    /// module's `REMOTE_ADDR` must be the client's on every attempt, never loopback's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// The last attempt's response head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<StoredResult>,
}

/// A response head kept for the client to read at the invocation's `Location`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredResult {
    /// Its status.
    pub status: u16,
    /// Its headers.
    pub headers: Vec<StoredHeader>,
    /// The body was longer than the host keeps; what is kept is its start.
    #[serde(default)]
    pub truncated: bool,
}

/// One change, applied in a batch with others.
pub enum Write {
    /// A new invocation, with its request body.
    Accept(Box<StoredInvocation>, Bytes),
    /// A changed record.
    Update(Box<StoredInvocation>),
    /// A changed record with the result body to keep.
    Finish(Box<StoredInvocation>, Bytes),
    /// An invocation gone (discarded, or past its retention).
    Remove(String),
    /// A schedule ran a tick (ms).
    Tick(String, u64),
}

struct Batch {
    writes: Vec<Write>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The database and its writer.
pub struct EventStore {
    db: Arc<Database>,
    writer: std::sync::mpsc::Sender<Batch>,
}

impl EventStore {
    /// Opens (creating) the database at `path`, readable by its owner only, and starts its
    /// writer thread (which ends when the store is dropped).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let db = Database::create(path)?;
        crate::datadir::make_private_file(path)?;
        let txn = db.begin_write()?;
        txn.open_table(INVOCATIONS)?;
        txn.open_table(REQUESTS)?;
        txn.open_table(RESULTS)?;
        txn.open_table(TICKS)?;
        txn.commit()?;
        let db = Arc::new(db);
        let (writer, batches) = std::sync::mpsc::channel::<Batch>();
        let thread_db = db.clone();
        std::thread::Builder::new()
            .name("thaw-events-store".into())
            .spawn(move || group_commit(&thread_db, &batches))?;
        Ok(Self { db, writer })
    }

    /// Applies `writes` in one transaction (with whatever else is waiting), durably.
    pub async fn write(&self, writes: Vec<Write>) -> anyhow::Result<()> {
        let (done, committed) = oneshot::channel();
        self.writer
            .send(Batch { writes, done })
            .map_err(|_| anyhow::anyhow!("the event store's writer has stopped"))?;
        committed
            .await
            .map_err(|_| anyhow::anyhow!("the event store's writer has stopped"))?
            .map_err(|e| anyhow::anyhow!("the event store refused a write: {e}"))
    }

    /// Every stored invocation (at start-up: the queue is rebuilt from it).
    pub fn all(&self) -> anyhow::Result<Vec<StoredInvocation>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INVOCATIONS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (id, record) = entry?;
            match serde_json::from_slice::<StoredInvocation>(record.value()) {
                Ok(record) => out.push(record),
                Err(e) => tracing::warn!(id = id.value(), "an unreadable invocation record: {e}"),
            }
        }
        Ok(out)
    }

    /// One invocation.
    pub fn get(&self, id: &str) -> anyhow::Result<Option<StoredInvocation>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INVOCATIONS)?;
        Ok(match table.get(id)? {
            Some(record) => Some(serde_json::from_slice(record.value())?),
            None => None,
        })
    }

    /// An invocation's request body.
    pub fn request_body(&self, id: &str) -> anyhow::Result<Bytes> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REQUESTS)?;
        Ok(table
            .get(id)?
            .map(|body| Bytes::copy_from_slice(body.value()))
            .unwrap_or_default())
    }

    /// An invocation's kept result body.
    pub fn result_body(&self, id: &str) -> anyhow::Result<Bytes> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RESULTS)?;
        Ok(table
            .get(id)?
            .map(|body| Bytes::copy_from_slice(body.value()))
            .unwrap_or_default())
    }

    /// The last tick run of every schedule that ran one.
    pub fn ticks(&self) -> anyhow::Result<std::collections::HashMap<String, u64>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TICKS)?;
        let mut out = std::collections::HashMap::new();
        for entry in table.iter()? {
            let (key, ms) = entry?;
            out.insert(key.value().to_owned(), ms.value());
        }
        Ok(out)
    }
}

/// The writer thread: one transaction per batch of waiting writes.
fn group_commit(db: &Database, batches: &std::sync::mpsc::Receiver<Batch>) {
    while let Ok(first) = batches.recv() {
        let mut waiting = vec![first];
        let mut count = waiting[0].writes.len();
        while count < MAX_BATCH {
            match batches.try_recv() {
                Ok(batch) => {
                    count += batch.writes.len();
                    waiting.push(batch);
                }
                Err(_) => break,
            }
        }
        let result = commit(db, waiting.iter().flat_map(|b| &b.writes)).map_err(|e| {
            tracing::error!("the event store could not commit: {e:#}");
            format!("{e:#}")
        });
        for batch in waiting {
            let _ = batch.done.send(result.clone());
        }
    }
}

fn commit<'a>(db: &Database, writes: impl Iterator<Item = &'a Write>) -> anyhow::Result<()> {
    let txn = db.begin_write()?;
    {
        let mut invocations = txn.open_table(INVOCATIONS)?;
        let mut requests = txn.open_table(REQUESTS)?;
        let mut results = txn.open_table(RESULTS)?;
        let mut ticks = txn.open_table(TICKS)?;
        for write in writes {
            match write {
                Write::Accept(record, body) => {
                    invocations.insert(record.info.id.as_str(), &*serde_json::to_vec(record)?)?;
                    requests.insert(record.info.id.as_str(), &**body)?;
                }
                Write::Update(record) => {
                    invocations.insert(record.info.id.as_str(), &*serde_json::to_vec(record)?)?;
                }
                Write::Finish(record, body) => {
                    invocations.insert(record.info.id.as_str(), &*serde_json::to_vec(record)?)?;
                    results.insert(record.info.id.as_str(), &**body)?;
                }
                Write::Remove(id) => {
                    invocations.remove(id.as_str())?;
                    requests.remove(id.as_str())?;
                    results.remove(id.as_str())?;
                }
                Write::Tick(key, ms) => {
                    ticks.insert(key.as_str(), *ms)?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}
