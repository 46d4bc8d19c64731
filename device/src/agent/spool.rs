//! The local audit spool: entries the agent made (exec decisions,
//! attestation results, sync events, bundle refusals) wait here, in a SQLite
//! file, until the gateway has them.
//!
//! Each entry gets a spool sequence number (`AUTOINCREMENT`: never reused,
//! also after deletion). Delivery sends the oldest entries in order; the
//! gateway appends the ones past the highest number it already holds for
//! this device and answers that number; the agent then deletes up to it.
//! A lost answer means the same entries are sent again and the gateway skips
//! them: each lands in the audit trail exactly once. Format: docs/agent.md.

use std::path::Path;

use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sqlx::Row as _;

/// One spooled entry, as sent to the gateway (`POST /v1/agent/spool`).
pub(crate) use protocol::agent::Spooled as SpoolEntry;

/// The spool file.
#[derive(Debug, Clone)]
pub(crate) struct Spool {
    pool: SqlitePool,
    epoch: String,
}

/// The spool failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The spool file could not be opened or set up.
    #[error("opening the spool {}", .path.display())]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A query failed.
    #[error("the spool")]
    Query(#[from] sqlx::Error),
}

impl Spool {
    /// Open (and create) the spool at `path`. Writes are durable when
    /// `add` returns (WAL, `synchronous=FULL`).
    pub(crate) async fn open(path: &Path) -> Result<Spool, SpoolError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = sqlx::pool::PoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(|source| SpoolError::Open {
                path: path.to_owned(),
                source,
            })?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
             at_ms INTEGER NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, \
             decision TEXT NOT NULL, details TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .map_err(|source| SpoolError::Open {
            path: path.to_owned(),
            source,
        })?;
        // The epoch names this spool file: numbers restart with a new file,
        // and the gateway keeps a mark per epoch.
        let mut fresh = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut fresh);
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS spool_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        sqlx::query("INSERT OR IGNORE INTO spool_meta (name, value) VALUES ('epoch', ?)")
            .bind(hex::encode(fresh))
            .execute(&pool)
            .await?;
        let epoch: String = sqlx::query_scalar("SELECT value FROM spool_meta WHERE name = 'epoch'")
            .fetch_one(&pool)
            .await?;
        Ok(Spool { pool, epoch })
    }

    /// This spool file's epoch.
    pub(crate) fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Append entries in one transaction.
    pub(crate) async fn add(&self, entries: &[SpoolEntry]) -> Result<(), SpoolError> {
        let mut tx = self.pool.begin().await?;
        for e in entries {
            sqlx::query(
                "INSERT INTO spool (at_ms, kind, subject, decision, details) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(e.at_ms)
            .bind(&e.kind)
            .bind(&e.subject)
            .bind(&e.decision)
            .bind(e.details.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The oldest `limit` entries, in order.
    pub(crate) async fn oldest(&self, limit: i64) -> Result<Vec<SpoolEntry>, SpoolError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, kind, subject, decision, details FROM spool ORDER BY seq LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let details: String = r.try_get("details")?;
                Ok(SpoolEntry {
                    seq: r.try_get("seq")?,
                    at_ms: r.try_get("at_ms")?,
                    kind: r.try_get("kind")?,
                    subject: r.try_get("subject")?,
                    decision: r.try_get("decision")?,
                    details: serde_json::from_str(&details).unwrap_or(Value::String(details)),
                })
            })
            .collect()
    }

    /// Drop every entry up to and including `seq` (the gateway has them).
    pub(crate) async fn delivered_through(&self, seq: i64) -> Result<(), SpoolError> {
        sqlx::query("DELETE FROM spool WHERE seq <= ?")
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Entries waiting.
    pub(crate) async fn waiting(&self) -> Result<i64, SpoolError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM spool")
            .fetch_one(&self.pool)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: i64) -> SpoolEntry {
        SpoolEntry {
            seq: 0,
            at_ms: n,
            kind: "exec".into(),
            subject: format!("/bin/p{n}"),
            decision: "deny".into(),
            details: serde_json::json!({"n": n}),
        }
    }

    #[tokio::test]
    async fn numbers_are_never_reused_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let s = Spool::open(&path).await.unwrap();
        s.add(&[entry(1), entry(2), entry(3)]).await.unwrap();
        let got = s.oldest(10).await.unwrap();
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(got[1].details["n"], 2);
        s.delivered_through(3).await.unwrap();
        assert_eq!(s.waiting().await.unwrap(), 0);
        drop(s);
        let s = Spool::open(&path).await.unwrap();
        s.add(&[entry(4)]).await.unwrap();
        let epoch = s.epoch().to_owned();
        drop(s);
        let s = Spool::open(&path).await.unwrap();
        assert_eq!(
            s.oldest(10).await.unwrap()[0].seq,
            4,
            "a delivered number came back"
        );
        assert_eq!(s.epoch(), epoch, "the epoch changed on reopen");
        let other = Spool::open(&dir.path().join("other.db")).await.unwrap();
        assert_ne!(other.epoch(), epoch, "two spool files share an epoch");
    }
}
