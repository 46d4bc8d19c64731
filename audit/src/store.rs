//! Storage of entries and checkpoints through sqlx: a SQLite file by default
//! (WAL, `synchronous=FULL`: a committed batch survives power loss) or
//! PostgreSQL, chosen by the database URL, with the same queries. Migrations
//! are embedded and run on open.
//!
//! Every write is one transaction. When this process knows the next
//! sequence number (it wrote the last entry), a batch is a single INSERT,
//! atomic on its own; if another process appended meanwhile, the insert hits
//! the primary key, fails whole, and is retried in a transaction that first
//! takes the log's write lock (`BEGIN IMMEDIATE` on SQLite, `LOCK TABLE` on
//! PostgreSQL) and reads the next number. So several processes may append
//! to one database and sequence numbers stay dense.
//! The store never updates or deletes an entry.

use std::sync::{Arc, Mutex};

use sqlx::any::AnyRow;
use sqlx::pool::PoolConnection;
use sqlx::{AnyPool, Connection as _, Executor, Row};

use crate::entry::{canonical_json, encode_leaf, Entry, NewEntry};

mod page;
use crate::merkle::{leaf_hash, Hash};

/// The entry columns, in the order every query reads and writes them.
macro_rules! entry_columns {
    () => {
        "seq, ts_ms, kind, actor, subject, decision, details, leaf_hash"
    };
}

/// Rows per INSERT statement (8 parameters each; far below both backends' limits).
const ROWS_PER_INSERT: usize = 500;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened.
    #[error(transparent)]
    Db(#[from] persist::DbError),
    /// Migrations failed.
    #[error("migrating audit database {url}")]
    Migrate {
        /// The URL, without password.
        url: String,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("audit database: {what}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A row holds a value that cannot be an audit entry (e.g. a negative
    /// sequence number or a leaf hash that is not 32 bytes).
    #[error("audit database: row {seq}: {problem}")]
    BadRow {
        /// The row's sequence number, as stored.
        seq: i64,
        /// What is wrong.
        problem: &'static str,
    },
}

/// An entry as stored, with the leaf hash stored beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The entry (details that are not JSON appear as a JSON string).
    pub entry: Entry,
    /// The details exactly as stored: the text the leaf was computed over.
    pub details_text: String,
    /// The leaf hash written when the entry was appended.
    pub leaf_hash: Hash,
}

/// A stored signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Tree size it commits to.
    pub size: u64,
    /// Root hash at that size.
    pub root: Hash,
    /// The signed note.
    pub note: String,
    /// When it was made, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// The advisory lock key of the checkpoint signer's lease on PostgreSQL
/// (`pg_locks` shows who holds it).
pub const SIGNER_LOCK: i64 = 0x5A7C_A0D1_5167_0001;

/// The right to sign checkpoints ([`Store::try_signer_lease`]); dropping
/// it closes its connection, which releases it.
#[derive(Debug)]
pub struct SignerLease {
    conn: Option<sqlx::AnyConnection>,
}

impl SignerLease {
    /// Whether the lease still holds: its connection answers within 5 s (a
    /// server that dropped it has released the lock, and another may hold
    /// it; a connection that stopped answering is given up).
    pub async fn alive(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(c) => matches!(
                tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sqlx::query("SELECT 1").execute(c)
                )
                .await,
                Ok(Ok(_))
            ),
        }
    }
}

/// An open audit database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The next sequence number, as this process last wrote it. A guess
    /// that saves a query per batch: if another process appended since,
    /// the insert hits the primary key and the batch is retried after
    /// reading the real value.
    next_seq: Arc<Mutex<Option<u64>>>,
    /// The connection appends go through, kept between SQLite batches: its
    /// page cache and prepared statements are per connection, and a batch
    /// on a connection that did not write the last one first reads back
    /// the pages that one changed. Given back to the pool after an error.
    writer: Arc<tokio::sync::Mutex<Option<PoolConnection<sqlx::Any>>>>,
}

fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

pub use persist::db::{connect, Backend};

impl Store {
    /// Open (creating a SQLite file if needed) and migrate the database at `url`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let (pool, backend) = connect(url).await?;
        let shown = persist::db::redact(url);
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate { url: shown, source })?;
        Ok(Store {
            pool,
            backend,
            next_seq: Arc::default(),
            writer: Arc::default(),
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The right to sign checkpoints, if no other process holds it. On
    /// PostgreSQL, where several gateways share one log, it is a session
    /// advisory lock held on a connection of its own: the server releases
    /// it when that connection ends, so a signer that dies (process killed,
    /// machine gone) hands over to the next that asks. On SQLite (one
    /// machine) it is always granted.
    pub async fn try_signer_lease(&self) -> Result<Option<SignerLease>, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(SignerLease { conn: None }));
        }
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(query("acquiring a connection for the signer's lease"))?
            .detach();
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(SIGNER_LOCK)
            .fetch_one(&mut conn)
            .await
            .map_err(query("taking the signer's lease"))?;
        Ok(held.then_some(SignerLease { conn: Some(conn) }))
    }

    /// Append entries as one transaction, stamped `ts_ms`; returns their
    /// sequence numbers. Durable when this returns.
    pub async fn append(&self, entries: Vec<NewEntry>, ts_ms: i64) -> Result<Vec<u64>, StoreError> {
        let rows = Rows::new(entries, ts_ms);
        let guess = self.next_seq.lock().map(|g| *g).unwrap_or(None);
        let result = match self.append_at(&rows, guess).await {
            Err(StoreError::Query { ref source, .. }) if guess.is_some() && is_conflict(source) => {
                // Another process appended since our guess: read the real next number.
                self.append_at(&rows, None).await
            }
            other => other,
        };
        let next = result.as_ref().ok().and_then(|s| s.last().map(|l| l + 1));
        if let Ok(mut g) = self.next_seq.lock() {
            *g = next;
        }
        result
    }

    /// One attempt: a transaction writing `rows` from `first` (read inside
    /// the transaction when `None`).
    async fn append_at(&self, rows: &Rows, first: Option<u64>) -> Result<Vec<u64>, StoreError> {
        let mut slot = self.writer.lock().await;
        let conn = match &mut *slot {
            Some(c) => c,
            empty => empty.insert(
                self.pool
                    .acquire()
                    .await
                    .map_err(query("acquiring a connection"))?,
            ),
        };
        let result = self.append_on(conn, rows, first).await;
        // After an error, whatever state it left the connection in, the
        // pool sorts out. A PostgreSQL connection goes back after every
        // batch: a server's socket can die between batches, and the pool
        // checks it before handing it out again.
        if result.is_err() || self.backend == Backend::Postgres {
            *slot = None;
        }
        result
    }

    async fn append_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        rows: &Rows,
        first: Option<u64>,
    ) -> Result<Vec<u64>, StoreError> {
        if first.is_some() && rows.entries.len() <= ROWS_PER_INSERT {
            // One statement is its own transaction: one round trip, one fsync.
            return insert(conn, self.backend, rows, first).await;
        }
        // A transaction object: if this future is dropped half-way, the
        // transaction is rolled back, never left open on a pooled connection.
        let mut tx = match self.backend {
            Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => conn.begin().await,
        }
        .map_err(query("beginning a write"))?;
        if self.backend == Backend::Postgres {
            tx.execute("LOCK TABLE audit_entries IN EXCLUSIVE MODE")
                .await
                .map_err(query("locking the log"))?;
        }
        let seqs = insert(&mut tx, self.backend, rows, first).await?;
        tx.commit().await.map_err(query("committing"))?;
        Ok(seqs)
    }

    /// Number of entries (the tree size).
    pub async fn size(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_entries")
            .fetch_one(&self.pool)
            .await
            .map_err(query("counting entries"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Entries with `seq >= since`, in order, optionally of one kind, at most `limit`.
    pub async fn entries(
        &self,
        since: u64,
        kind: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let limit = i64::try_from(limit.unwrap_or(u64::MAX >> 1)).unwrap_or(i64::MAX);
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let rows = match kind {
            Some(k) => sqlx::query(concat!(
                "SELECT ",
                entry_columns!(),
                " FROM audit_entries \
                 WHERE seq >= $1 AND kind = $2 ORDER BY seq LIMIT $3"
            ))
            .bind(since)
            .bind(k.to_owned())
            .bind(limit),
            None => sqlx::query(concat!(
                "SELECT ",
                entry_columns!(),
                " FROM audit_entries \
                 WHERE seq >= $1 ORDER BY seq LIMIT $2"
            ))
            .bind(since)
            .bind(limit),
        }
        .fetch_all(&self.pool)
        .await
        .map_err(query("reading entries"))?;
        rows.iter().map(stored_entry).collect()
    }

    /// The newest entries first, below `before` (all when `None`), at most
    /// `limit`: of one `kind` if given, and with `text` (if given) in the
    /// actor, subject or decision. For a console's listing.
    pub async fn recent(
        &self,
        kind: Option<&str>,
        text: Option<&str>,
        before: Option<u64>,
        limit: u64,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // LIKE with the user's text escaped, the same in SQLite and PostgreSQL.
        let like = text.map(|t| {
            let esc: String = t
                .chars()
                .flat_map(|c| match c {
                    '\\' | '%' | '_' => vec!['\\', c],
                    c => vec![c],
                })
                .collect();
            format!("%{esc}%")
        });
        // One statement per shape, so that a kind filter is `kind = $2`
        // and can use the kind index.
        let text_filter = "($3 = '' OR actor LIKE $3 ESCAPE '\\' OR subject LIKE $3 ESCAPE '\\' OR decision LIKE $3 ESCAPE '\\')";
        let sql = match kind {
            Some(_) => format!(
                "SELECT {} FROM audit_entries WHERE seq < $1 AND kind = $2 AND {text_filter} ORDER BY seq DESC LIMIT $4",
                entry_columns!()
            ),
            None => format!(
                "SELECT {} FROM audit_entries WHERE seq < $1 AND $2 = '' AND {text_filter} ORDER BY seq DESC LIMIT $4",
                entry_columns!()
            ),
        };
        let rows = sqlx::query(&sql)
            .bind(before)
            .bind(kind.unwrap_or("").to_owned())
            .bind(like.unwrap_or_default())
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(query("listing entries"))?;
        rows.iter().map(stored_entry).collect()
    }

    /// The newest entry of `kind` per actor (e.g. each device's last
    /// attestation), of one `decision` if given (its last trusted one).
    pub async fn latest_per_actor(
        &self,
        kind: &str,
        decision: Option<&str>,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM audit_entries WHERE seq IN \
             (SELECT MAX(seq) FROM audit_entries WHERE kind = $1 AND ($2 = '' OR decision = $2) GROUP BY actor) ORDER BY seq"
        ))
        .bind(kind.to_owned())
        .bind(decision.unwrap_or("").to_owned())
        .fetch_all(&self.pool)
        .await
        .map_err(query("reading the newest entries"))?;
        rows.iter().map(stored_entry).collect()
    }

    /// The lowest and highest stored sequence numbers as stored (an edited
    /// row may hold a negative one), or `None` for an empty log.
    pub async fn seq_bounds(&self) -> Result<Option<(i64, i64)>, StoreError> {
        let row = sqlx::query("SELECT MIN(seq), MAX(seq) FROM audit_entries")
            .fetch_one(&self.pool)
            .await
            .map_err(query("reading the sequence range"))?;
        let min: Option<i64> = row
            .try_get(0)
            .map_err(query("reading the sequence range"))?;
        let max: Option<i64> = row
            .try_get(1)
            .map_err(query("reading the sequence range"))?;
        Ok(min.zip(max))
    }

    /// For verification: `(seq, leaf hash recomputed from the columns,
    /// stored leaf hash)` of the entries with `from <= seq < to`, in order,
    /// without decoding the details.
    pub async fn leaf_checks(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<(u64, Hash, Hash)>, StoreError> {
        if self.backend == Backend::Sqlite {
            if let Some(checks) = self.leaf_checks_as_one_row(from, to).await {
                return Ok(checks);
            }
        }
        self.leaf_checks_by_row(from, to).await
    }

    /// [`Store::leaf_checks`] with the whole range fetched as one row: SQLite
    /// renders the rows as one JSON array of arrays, so the driver hands over
    /// one value instead of eight per entry (its per-value cost is most of
    /// the time a verification takes). The columns reach the leaf encoding
    /// exactly as stored. `None` when any row is not what an entry can be (a
    /// column of another type after an edit, say): the caller then reads the
    /// range row by row, which names the problem.
    async fn leaf_checks_as_one_row(&self, from: i64, to: i64) -> Option<Vec<(u64, Hash, Hash)>> {
        let text: Option<String> = sqlx::query_scalar(concat!(
            "SELECT json_group_array(json_array(",
            "seq, ts_ms, kind, actor, subject, decision, details, hex(leaf_hash))) \
             FROM (SELECT * FROM audit_entries WHERE seq >= $1 AND seq < $2 ORDER BY seq)"
        ))
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await
        .ok()?;
        page::leaf_checks(text.as_deref()?)
    }

    async fn leaf_checks_by_row(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<(u64, Hash, Hash)>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM audit_entries \
             WHERE seq >= $1 AND seq < $2 ORDER BY seq"
        ))
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
        .map_err(query("reading entries"))?;
        rows.iter().map(leaf_check).collect()
    }

    /// The stored leaf hashes of entries `0..size`, in order.
    pub async fn leaf_hashes(&self, size: u64) -> Result<Vec<Hash>, StoreError> {
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        let rows =
            sqlx::query("SELECT seq, leaf_hash FROM audit_entries WHERE seq < $1 ORDER BY seq")
                .bind(size)
                .fetch_all(&self.pool)
                .await
                .map_err(query("reading leaf hashes"))?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get(0).map_err(query("decoding a leaf hash"))?;
                hash_column(r, 1, seq)
            })
            .collect()
    }

    /// Record a signed checkpoint (idempotent for the same size and note).
    pub async fn add_checkpoint(&self, cp: &StoredCheckpoint) -> Result<(), StoreError> {
        let size = i64::try_from(cp.size).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO audit_checkpoints (tree_size, root, note, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tree_size) DO NOTHING",
        )
        .bind(size)
        .bind(cp.root.to_vec())
        .bind(cp.note.clone())
        .bind(cp.created_ms)
        .execute(&self.pool)
        .await
        .map_err(query("storing a checkpoint"))?;
        Ok(())
    }

    /// Every stored checkpoint, by tree size.
    pub async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        self.checkpoints_newest(None).await
    }

    /// The newest `limit` checkpoints (all when `None`), oldest first.
    pub async fn checkpoints_newest(
        &self,
        limit: Option<u64>,
    ) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let limit = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let mut rows = sqlx::query(
            "SELECT tree_size, root, note, created_ms FROM audit_checkpoints ORDER BY tree_size DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(query("reading checkpoints"))?;
        rows.reverse();
        rows.iter()
            .map(|r| {
                let size: i64 = r.try_get(0).map_err(query("decoding a checkpoint"))?;
                Ok(StoredCheckpoint {
                    size: u64::try_from(size).map_err(|_| StoreError::BadRow {
                        seq: size,
                        problem: "negative tree size",
                    })?,
                    root: hash_column(r, 1, size)?,
                    note: r.try_get(2).map_err(query("decoding a checkpoint"))?,
                    created_ms: r.try_get(3).map_err(query("decoding a checkpoint"))?,
                })
            })
            .collect()
    }

    /// Close the pool, waiting for connections to finish.
    pub async fn close(&self) {
        // The pool waits for every connection to come back, the writer's too.
        self.writer.lock().await.take();
        self.pool.close().await;
    }
}

/// Entries ready to insert: details canonicalised once.
struct Rows {
    ts_ms: i64,
    entries: Vec<(NewEntry, String)>,
}

impl Rows {
    fn new(entries: Vec<NewEntry>, ts_ms: i64) -> Rows {
        let entries = entries
            .into_iter()
            .map(|e| {
                let details = canonical_json(&e.details);
                (e, details)
            })
            .collect();
        Rows { ts_ms, entries }
    }
}

/// A unique-constraint violation (another writer took the sequence number).
fn is_conflict(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

async fn insert(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    rows: &Rows,
    first: Option<u64>,
) -> Result<Vec<u64>, StoreError> {
    let first = match first {
        Some(f) => f,
        None => {
            let next: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_entries")
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(query("finding the next sequence number"))?;
            u64::try_from(next).unwrap_or(0)
        }
    };
    let seqs: Vec<u64> = (first..).take(rows.entries.len()).collect();
    for (chunk, seq_chunk) in rows
        .entries
        .chunks(ROWS_PER_INSERT)
        .zip(seqs.chunks(ROWS_PER_INSERT))
    {
        let sql = insert_sql(chunk.len(), backend);
        let mut q = sqlx::query(&sql);
        for ((new, details), &seq) in chunk.iter().zip(seq_chunk) {
            let fields = [&*new.kind, &new.actor, &new.subject, &new.decision, details];
            let leaf = leaf_hash(&encode_leaf(seq, rows.ts_ms, fields));
            q = q
                .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                .bind(rows.ts_ms)
                .bind(new.kind.clone())
                .bind(new.actor.clone())
                .bind(new.subject.clone())
                .bind(new.decision.clone())
                .bind(details.clone())
                .bind(leaf.to_vec());
        }
        q.execute(&mut *conn)
            .await
            .map_err(query("inserting entries"))?;
    }
    Ok(seqs)
}

/// A multi-row INSERT. SQLite gets positional `?` placeholders (binding by
/// name costs a lookup per parameter); PostgreSQL gets `$1, $2, ...`.
fn insert_sql(rows: usize, backend: Backend) -> String {
    let mut sql = String::from(concat!(
        "INSERT INTO audit_entries (",
        entry_columns!(),
        ") VALUES "
    ));
    for r in 0..rows {
        sql.push_str(if r > 0 { ",(" } else { "(" });
        for c in 0..8 {
            if c > 0 {
                sql.push(',');
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => sql.push_str(&format!("${}", r * 8 + c + 1)),
            }
        }
        sql.push(')');
    }
    sql
}

fn hash_column(r: &AnyRow, i: usize, seq: i64) -> Result<Hash, StoreError> {
    let bytes: Vec<u8> = r.try_get(i).map_err(query("decoding a hash"))?;
    Hash::try_from(bytes.as_slice()).map_err(|_| StoreError::BadRow {
        seq,
        problem: "hash is not 32 bytes",
    })
}

fn leaf_check(r: &AnyRow) -> Result<(u64, Hash, Hash), StoreError> {
    let dec = || query("decoding an entry");
    let seq: i64 = r.try_get(0).map_err(dec())?;
    let ts_ms: i64 = r.try_get(1).map_err(dec())?;
    let text = |i: usize| r.try_get::<&str, _>(i).map_err(dec());
    let seq_u = u64::try_from(seq).unwrap_or(u64::MAX);
    let fields = [text(2)?, text(3)?, text(4)?, text(5)?, text(6)?];
    let leaf = leaf_hash(&encode_leaf(seq_u, ts_ms, fields));
    Ok((seq_u, leaf, hash_column(r, 7, seq)?))
}

fn stored_entry(r: &AnyRow) -> Result<StoredEntry, StoreError> {
    let dec = || query("decoding an entry");
    let seq: i64 = r.try_get(0).map_err(dec())?;
    let details_text: String = r.try_get(6).map_err(dec())?;
    let details = serde_json::from_str(&details_text)
        .unwrap_or_else(|_| serde_json::Value::String(details_text.clone()));
    let entry = Entry {
        // A negative number can only come from an edited row; keep it
        // visible to verification as an impossible sequence number.
        seq: u64::try_from(seq).unwrap_or(u64::MAX),
        ts_ms: r.try_get(1).map_err(dec())?,
        kind: r.try_get(2).map_err(dec())?,
        actor: r.try_get(3).map_err(dec())?,
        subject: r.try_get(4).map_err(dec())?,
        decision: r.try_get(5).map_err(dec())?,
        details,
    };
    Ok(StoredEntry {
        leaf_hash: hash_column(r, 7, seq)?,
        details_text,
        entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_numbers_every_parameter() {
        let sql = insert_sql(2, Backend::Postgres);
        assert!(sql.ends_with("($1,$2,$3,$4,$5,$6,$7,$8),($9,$10,$11,$12,$13,$14,$15,$16)"));
        let sql = insert_sql(2, Backend::Sqlite);
        assert!(sql.ends_with("(?,?,?,?,?,?,?,?),(?,?,?,?,?,?,?,?)"));
    }
}
