//! Group commit: many concurrent appenders share one transaction and one
//! fsync. Appenders send their entry to a single writer task; the writer
//! takes everything waiting (up to a batch limit), appends it as one
//! transaction, and only then answers each appender with its sequence
//! number. An append therefore returns only once its batch is durable; if
//! the batch fails, every appender in it gets the error and nothing of the
//! batch is stored.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::entry::NewEntry;
use crate::store::{Store, StoreError};

/// Largest batch the writer commits at once.
pub const DEFAULT_MAX_BATCH: usize = 8192;

type Reply = oneshot::Sender<Result<u64, Arc<StoreError>>>;

/// Why an append did not land.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The batch the entry was in failed; nothing of it was stored.
    #[error("audit append failed")]
    Store(#[source] Arc<StoreError>),
    /// The writer task has stopped.
    #[error("the audit writer has stopped")]
    Closed,
}

/// A handle for appending; cheap to clone, one per appender.
#[derive(Debug, Clone)]
pub struct Appender {
    tx: mpsc::Sender<(NewEntry, Reply)>,
}

impl Appender {
    /// Start the writer task over `store`. It runs until every `Appender`
    /// clone is dropped, then finishes the last batch and ends.
    pub fn spawn(store: Store, max_batch: usize) -> (Appender, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 2);
        let task = tokio::spawn(writer(store, rx, max_batch.max(1)));
        (Appender { tx }, task)
    }

    /// Append one entry; returns its sequence number once it is durable.
    pub async fn append(&self, entry: NewEntry) -> Result<u64, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((entry, reply))
            .await
            .map_err(|_| AppendError::Closed)?;
        match answer.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(AppendError::Store(e)),
            Err(_) => Err(AppendError::Closed),
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn writer(store: Store, mut rx: mpsc::Receiver<(NewEntry, Reply)>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let (entries, replies): (Vec<NewEntry>, Vec<Reply>) = batch.drain(..).unzip();
        let n = entries.len();
        match store.append(entries, now_ms()).await {
            Ok(seqs) => {
                for (reply, seq) in replies.into_iter().zip(seqs) {
                    let _ = reply.send(Ok(seq));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, entries = n, "audit batch failed");
                let e = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        tracing::debug!(entries = n, "audit batch committed");
    }
}
