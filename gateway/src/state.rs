//! What the gateway remembers: enrollment tokens, pending enrollment
//! challenges and enrolled devices in the database (SQLite or PostgreSQL;
//! portable SQL, tables made on open), so every gateway on one database
//! shares them (nonces: [`crate::nonces`]).

use std::time::Duration;

use rand_core::RngCore as _;
use sha2::Digest as _;
use sqlx::{AnyPool, Row};

/// A database problem.
#[derive(Debug, thiserror::Error)]
#[error("gateway database: {what}: {source}")]
pub struct DbError {
    what: &'static str,
    #[source]
    source: sqlx::Error,
}

impl DbError {
    /// `what` failed with `source`.
    pub(crate) fn new(what: &'static str, source: sqlx::Error) -> DbError {
        DbError { what, source }
    }
}

pub(crate) fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError { what, source }
}

/// An enrolled device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its id.
    pub device_id: String,
    /// Its policy groups.
    pub groups: Vec<String>,
    /// Its attestation key (PEM).
    pub ak_pem: String,
    /// When it enrolled (ms since the epoch).
    pub enrolled_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<i64>,
}

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The device id it is for.
    pub device_id: String,
    /// The groups the device gets.
    pub groups: Vec<String>,
}

/// The tables.
#[derive(Debug, Clone)]
pub struct Db {
    pub(crate) pool: AnyPool,
}

/// Chunk ids per upload query (two bound parameters a row at most; far
/// below both backends' limits).
const UPLOAD_BATCH: usize = 500;

pub(crate) fn now_ms() -> i64 {
    audit::batch::now_ms()
}

pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

impl Db {
    /// Use `pool`, making the tables if missing.
    pub async fn new(pool: AnyPool) -> Result<Db, DbError> {
        for ddl in [
            "CREATE TABLE IF NOT EXISTS gateway_tokens (token_hash TEXT PRIMARY KEY, device_id TEXT NOT NULL, \
             groups_csv TEXT NOT NULL, expires_ms BIGINT NOT NULL, used_ms BIGINT)",
            "CREATE TABLE IF NOT EXISTS gateway_devices (device_id TEXT PRIMARY KEY, groups_csv TEXT NOT NULL, \
             ak_pem TEXT NOT NULL, enrolled_ms BIGINT NOT NULL, revoked_ms BIGINT)",
            "CREATE TABLE IF NOT EXISTS gateway_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS gateway_admin_revocations (name TEXT PRIMARY KEY, revoked_ms BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS gateway_uploads (device_id TEXT NOT NULL, chunk_id TEXT NOT NULL, \
             PRIMARY KEY (device_id, chunk_id))",
            "CREATE TABLE IF NOT EXISTS gateway_console_links (token_hash TEXT PRIMARY KEY, admin TEXT NOT NULL, \
             created_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL, used_ms BIGINT)",
            "CREATE TABLE IF NOT EXISTS gateway_console_sessions (id_hash TEXT PRIMARY KEY, admin TEXT NOT NULL, \
             csrf TEXT NOT NULL, created_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS gateway_spool_marks (device_id TEXT NOT NULL, epoch TEXT NOT NULL, \
             last_seq BIGINT NOT NULL, pending_through BIGINT, audit_from BIGINT, \
             PRIMARY KEY (device_id, epoch))",
        ] {
            sqlx::query(ddl).execute(&pool).await.map_err(db("creating tables"))?;
        }
        Ok(Db { pool })
    }

    /// Make a one-time token for `device_id`, valid for `ttl`; returns it
    /// (only its hash is stored).
    pub async fn make_token(
        &self,
        device_id: &str,
        groups: &[String],
        ttl: Duration,
    ) -> Result<String, DbError> {
        let mut raw = [0u8; 24];
        rand_core::OsRng.fill_bytes(&mut raw);
        let token = hex::encode(raw);
        let expires = now_ms() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        sqlx::query("INSERT INTO gateway_tokens (token_hash, device_id, groups_csv, expires_ms, used_ms) VALUES ($1, $2, $3, $4, NULL)")
            .bind(token_hash(&token))
            .bind(device_id.to_owned())
            .bind(groups.join(","))
            .bind(expires)
            .execute(&self.pool)
            .await
            .map_err(db("storing a token"))?;
        Ok(token)
    }

    /// The token's grant, if it exists, is unused and unexpired.
    pub async fn check_token(&self, token: &str) -> Result<Option<Token>, DbError> {
        let row = sqlx::query("SELECT device_id, groups_csv FROM gateway_tokens WHERE token_hash = $1 AND used_ms IS NULL AND expires_ms > $2")
            .bind(token_hash(token))
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a token"))?;
        Ok(row.map(|r| Token {
            device_id: r.try_get(0).unwrap_or_default(),
            groups: split_groups(&r.try_get::<String, _>(1).unwrap_or_default()),
        }))
    }

    /// Use the token and register the device, in one transaction: false if
    /// the token was used meanwhile.
    pub async fn enroll(&self, token: &str, device: &Device) -> Result<bool, DbError> {
        self.enroll_hashed(&token_hash(token), device).await
    }

    /// [`enroll`](Self::enroll) with the token's SHA-256 (hex), as an
    /// enrollment challenge keeps it.
    pub async fn enroll_hashed(&self, token_hash: &str, device: &Device) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await.map_err(db("beginning"))?;
        let used = sqlx::query("UPDATE gateway_tokens SET used_ms = $1 WHERE token_hash = $2 AND used_ms IS NULL AND expires_ms > $1")
            .bind(now_ms())
            .bind(token_hash.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(db("using a token"))?;
        if used.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM gateway_devices WHERE device_id = $1")
            .bind(device.device_id.clone())
            .execute(&mut *tx)
            .await
            .map_err(db("replacing a device"))?;
        // Dated now, when the enrollment finishes (not when it began):
        // certificates issued to the id before now are all stale.
        sqlx::query("INSERT INTO gateway_devices (device_id, groups_csv, ak_pem, enrolled_ms, revoked_ms) VALUES ($1, $2, $3, $4, NULL)")
            .bind(device.device_id.clone())
            .bind(device.groups.join(","))
            .bind(device.ak_pem.clone())
            .bind(now_ms().max(device.enrolled_ms))
            .execute(&mut *tx)
            .await
            .map_err(db("registering a device"))?;
        tx.commit().await.map_err(db("committing"))?;
        Ok(true)
    }

    /// Revoke a device: its certificates stop working on the next request,
    /// and every enrollment token made for its id until now that is not
    /// used yet is void (a spare token would enroll the device again and
    /// wipe the revocation). False if there was neither a device nor an
    /// unused token by that id.
    pub async fn revoke(&self, device_id: &str) -> Result<bool, DbError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await.map_err(db("beginning"))?;
        let done = sqlx::query("UPDATE gateway_devices SET revoked_ms = $1 WHERE device_id = $2 AND revoked_ms IS NULL")
            .bind(now)
            .bind(device_id.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(db("revoking a device"))?;
        let voided = sqlx::query(
            "UPDATE gateway_tokens SET used_ms = $1 WHERE device_id = $2 AND used_ms IS NULL AND expires_ms > $1",
        )
        .bind(now)
        .bind(device_id.to_owned())
        .execute(&mut *tx)
        .await
        .map_err(db("voiding a device's tokens"))?;
        tx.commit().await.map_err(db("committing"))?;
        Ok(done.rows_affected() == 1 || voided.rows_affected() > 0)
    }

    /// Revoke every admin certificate issued to `name` until now (a
    /// certificate issued later is honoured). Returns when it was recorded.
    pub async fn revoke_admin(&self, name: &str) -> Result<i64, DbError> {
        let at = now_ms();
        sqlx::query("DELETE FROM gateway_admin_revocations WHERE name = $1")
            .bind(name.to_owned())
            .execute(&self.pool)
            .await
            .map_err(db("revoking an admin"))?;
        sqlx::query("INSERT INTO gateway_admin_revocations (name, revoked_ms) VALUES ($1, $2)")
            .bind(name.to_owned())
            .bind(at)
            .execute(&self.pool)
            .await
            .map_err(db("revoking an admin"))?;
        Ok(at)
    }

    /// When `name`'s admin certificates were last revoked, if ever.
    pub async fn admin_revoked_ms(&self, name: &str) -> Result<Option<i64>, DbError> {
        sqlx::query_scalar("SELECT revoked_ms FROM gateway_admin_revocations WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading admin revocations"))
    }

    /// Record that `device_id` uploaded `ids` (it may reference them in its
    /// check-ins from now on).
    pub async fn record_uploads(
        &self,
        device_id: &str,
        ids: &[sync::ChunkId],
    ) -> Result<(), DbError> {
        for batch in ids.chunks(UPLOAD_BATCH) {
            let values: Vec<String> = (0..batch.len())
                .map(|i| format!("($1, ${})", i + 2))
                .collect();
            let sql = format!(
                "INSERT INTO gateway_uploads (device_id, chunk_id) VALUES {} ON CONFLICT DO NOTHING",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(device_id.to_owned());
            for id in batch {
                q = q.bind(id.to_string());
            }
            q.execute(&self.pool)
                .await
                .map_err(db("recording uploads"))?;
        }
        Ok(())
    }

    /// Which of `ids` `device_id` uploaded.
    pub async fn uploaded(
        &self,
        device_id: &str,
        ids: &[sync::ChunkId],
    ) -> Result<std::collections::HashSet<sync::ChunkId>, DbError> {
        let mut out = std::collections::HashSet::new();
        for batch in ids.chunks(UPLOAD_BATCH) {
            let marks: Vec<String> = (0..batch.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT chunk_id FROM gateway_uploads WHERE device_id = $1 AND chunk_id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query_scalar::<_, String>(&sql).bind(device_id.to_owned());
            for id in batch {
                q = q.bind(id.to_string());
            }
            let rows = q
                .fetch_all(&self.pool)
                .await
                .map_err(db("reading uploads"))?;
            out.extend(rows.iter().filter_map(|r| r.parse::<sync::ChunkId>().ok()));
        }
        Ok(out)
    }

    /// An enrolled device.
    pub async fn device(&self, device_id: &str) -> Result<Option<Device>, DbError> {
        let row = sqlx::query("SELECT device_id, groups_csv, ak_pem, enrolled_ms, revoked_ms FROM gateway_devices WHERE device_id = $1")
            .bind(device_id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a device"))?;
        Ok(row.map(|r| Device {
            device_id: r.try_get(0).unwrap_or_default(),
            groups: split_groups(&r.try_get::<String, _>(1).unwrap_or_default()),
            ak_pem: r.try_get(2).unwrap_or_default(),
            enrolled_ms: r.try_get(3).unwrap_or_default(),
            revoked_ms: r.try_get(4).ok().flatten(),
        }))
    }
}

impl Db {
    /// Every enrolled device, by id.
    pub async fn devices(&self) -> Result<Vec<Device>, DbError> {
        let rows = sqlx::query("SELECT device_id, groups_csv, ak_pem, enrolled_ms, revoked_ms FROM gateway_devices ORDER BY device_id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing devices"))?;
        Ok(rows
            .iter()
            .map(|r| Device {
                device_id: r.try_get(0).unwrap_or_default(),
                groups: split_groups(&r.try_get::<String, _>(1).unwrap_or_default()),
                ak_pem: r.try_get(2).unwrap_or_default(),
                enrolled_ms: r.try_get(3).unwrap_or_default(),
                revoked_ms: r.try_get(4).ok().flatten(),
            })
            .collect())
    }

    /// A stored setting (the reference manifest lives here).
    pub async fn setting(&self, name: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT value FROM gateway_settings WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a setting"))?;
        Ok(row.and_then(|r| r.try_get(0).ok()))
    }

    /// Store a setting, replacing any old value, in one transaction.
    pub async fn set_setting(&self, name: &str, value: &str) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await.map_err(db("beginning"))?;
        sqlx::query("DELETE FROM gateway_settings WHERE name = $1")
            .bind(name.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(db("replacing a setting"))?;
        sqlx::query("INSERT INTO gateway_settings (name, value) VALUES ($1, $2)")
            .bind(name.to_owned())
            .bind(value.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(db("storing a setting"))?;
        tx.commit().await.map_err(db("committing"))
    }
}

/// How far a device's spool (one spool file, named by its epoch) has been
/// delivered; see [`crate::routes::agent`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolMark {
    /// Every entry up to this spool number is in the audit trail.
    pub last_seq: i64,
    /// An append of entries up to this number was begun and may not have
    /// finished: entries from `audit_from` on tell.
    pub pending_through: Option<i64>,
    /// The audit sequence number the pending append starts at or after.
    pub audit_from: Option<i64>,
}

impl Db {
    /// The delivery mark of `device_id`'s spool `epoch` (zero if none).
    pub async fn spool_mark(&self, device_id: &str, epoch: &str) -> Result<SpoolMark, DbError> {
        let row = sqlx::query(
            "SELECT last_seq, pending_through, audit_from FROM gateway_spool_marks \
             WHERE device_id = $1 AND epoch = $2",
        )
        .bind(device_id.to_owned())
        .bind(epoch.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a spool mark"))?;
        let dec = db("decoding a spool mark");
        Ok(match row {
            None => SpoolMark::default(),
            Some(r) => SpoolMark {
                last_seq: r.try_get(0).map_err(db("decoding a spool mark"))?,
                pending_through: r.try_get(1).map_err(db("decoding a spool mark"))?,
                audit_from: r.try_get(2).map_err(dec)?,
            },
        })
    }

    /// Store the mark, replacing the old one, in one transaction.
    pub async fn set_spool_mark(
        &self,
        device_id: &str,
        epoch: &str,
        mark: SpoolMark,
    ) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await.map_err(db("beginning"))?;
        sqlx::query("DELETE FROM gateway_spool_marks WHERE device_id = $1 AND epoch = $2")
            .bind(device_id.to_owned())
            .bind(epoch.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(db("replacing a spool mark"))?;
        sqlx::query(
            "INSERT INTO gateway_spool_marks (device_id, epoch, last_seq, pending_through, audit_from) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(device_id.to_owned())
        .bind(epoch.to_owned())
        .bind(mark.last_seq)
        .bind(mark.pending_through)
        .bind(mark.audit_from)
        .execute(&mut *tx)
        .await
        .map_err(db("storing a spool mark"))?;
        tx.commit().await.map_err(db("committing"))
    }
}

fn split_groups(csv: &str) -> Vec<String> {
    csv.split(',')
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A pending enrollment: the secret the device must recover.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// The SHA-256 (hex) of the token presented: a reader of the database
    /// finds no token to enroll a TPM of its own with.
    pub token_hash: String,
    /// The device to register once the secret comes back.
    pub device: Device,
    /// SHA-256 of the secret (32 bytes): the database never holds the
    /// secret itself, so reading it does not let anyone answer for a TPM.
    pub secret_hash: [u8; 32],
    /// When it stops being accepted (ms since the epoch).
    pub expires_ms: i64,
}

/// Pending challenges, by id, in the database: an enrollment begun at one
/// gateway finishes at any on the same database. Each is taken once.
#[derive(Debug, Clone)]
pub struct Challenges {
    pool: AnyPool,
}

impl Challenges {
    /// Use `pool`, making the table if missing.
    pub async fn new(pool: AnyPool) -> Result<Challenges, DbError> {
        // The first table held the token itself; its challenges (five
        // minutes' worth at most) are dropped with it: those enrollments
        // begin again.
        sqlx::query("DROP TABLE IF EXISTS gateway_challenges")
            .execute(&pool)
            .await
            .map_err(db("dropping the first challenge table"))?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS gateway_enroll_challenges (id TEXT PRIMARY KEY, \
             token_hash TEXT NOT NULL, device_id TEXT NOT NULL, groups_csv TEXT NOT NULL, \
             ak_pem TEXT NOT NULL, enrolled_ms BIGINT NOT NULL, secret_hash TEXT NOT NULL, \
             expires_ms BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await
        .map_err(db("making the challenge table"))?;
        for ddl in [
            "CREATE INDEX IF NOT EXISTS gateway_enroll_challenges_token \
             ON gateway_enroll_challenges (token_hash)",
            "CREATE INDEX IF NOT EXISTS gateway_enroll_challenges_expiry \
             ON gateway_enroll_challenges (expires_ms)",
        ] {
            sqlx::query(ddl)
                .execute(&pool)
                .await
                .map_err(db("indexing the challenge table"))?;
        }
        Ok(Challenges { pool })
    }

    /// Store a challenge; returns its id.
    pub async fn put(&self, c: &Challenge) -> Result<String, DbError> {
        let mut raw = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut raw);
        let id = hex::encode(raw);
        // One open challenge per token: beginning again replaces the last
        // (a token cannot fill the shared table), and expired ones go.
        let mut tx = self.pool.begin().await.map_err(db("beginning"))?;
        sqlx::query(
            "DELETE FROM gateway_enroll_challenges WHERE token_hash = $1 OR expires_ms <= $2",
        )
        .bind(c.token_hash.clone())
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(db("forgetting earlier challenges"))?;
        sqlx::query(
            "INSERT INTO gateway_enroll_challenges (id, token_hash, device_id, groups_csv, ak_pem, \
             enrolled_ms, secret_hash, expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id.clone())
        .bind(c.token_hash.clone())
        .bind(c.device.device_id.clone())
        .bind(c.device.groups.join(","))
        .bind(c.device.ak_pem.clone())
        .bind(c.device.enrolled_ms)
        .bind(hex::encode(c.secret_hash))
        .bind(c.expires_ms)
        .execute(&mut *tx)
        .await
        .map_err(db("storing a challenge"))?;
        tx.commit().await.map_err(db("committing"))?;
        Ok(id)
    }

    /// Take a challenge (once: its row is deleted in the same statement),
    /// if it has not expired.
    pub async fn take(&self, id: &str) -> Result<Option<Challenge>, DbError> {
        let row = sqlx::query(
            "DELETE FROM gateway_enroll_challenges WHERE id = $1 AND expires_ms > $2 \
             RETURNING token_hash, device_id, groups_csv, ak_pem, enrolled_ms, secret_hash, expires_ms",
        )
        .bind(id.to_owned())
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("taking a challenge"))?;
        let Some(row) = row else { return Ok(None) };
        let get = |e| db("reading a challenge")(e);
        let hash: String = row.try_get(5).map_err(get)?;
        let Some(secret_hash) = hex::decode(&hash)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            return Ok(None);
        };
        Ok(Some(Challenge {
            token_hash: row.try_get(0).map_err(get)?,
            device: Device {
                device_id: row.try_get(1).map_err(get)?,
                groups: split_groups(&row.try_get::<String, _>(2).map_err(get)?),
                ak_pem: row.try_get(3).map_err(get)?,
                enrolled_ms: row.try_get(4).map_err(get)?,
                revoked_ms: None,
            },
            secret_hash,
            expires_ms: row.try_get(6).map_err(get)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The third attacker pass: one unused token began any number of
    /// challenges, each a row in the shared table until it expired. A
    /// token holds one open challenge: beginning again replaces it.
    #[tokio::test]
    async fn a_token_holds_one_open_challenge_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("g.db").display());
        let (pool, _) = persist::db::connect(&url).await.unwrap();
        let book = Challenges::new(pool.clone()).await.unwrap();
        let c = |token: &str| Challenge {
            token_hash: token_hash(token),
            device: Device {
                device_id: "d1".into(),
                groups: vec![],
                ak_pem: "PEM".into(),
                enrolled_ms: 5,
                revoked_ms: None,
            },
            secret_hash: [1; 32],
            expires_ms: now_ms() + 60_000,
        };
        let mut ids = Vec::new();
        for _ in 0..50 {
            ids.push(book.put(&c("one-token")).await.unwrap());
        }
        let other = book.put(&c("another-token")).await.unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM gateway_enroll_challenges")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 2);
        assert!(book.take(&ids[0]).await.unwrap().is_none(), "replaced");
        assert!(book.take(&ids[49]).await.unwrap().is_some());
        assert!(book.take(&other).await.unwrap().is_some());
    }

    /// The third attacker pass: a device re-enrolled without a revocation
    /// kept the certificates it got while the enrollment was pending,
    /// because the enrollment time was the challenge's beginning. It is
    /// the finish.
    #[tokio::test]
    async fn an_enrollment_is_dated_when_it_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("g.db").display());
        let (pool, _) = persist::db::connect(&url).await.unwrap();
        let db = Db::new(pool).await.unwrap();
        let t = db
            .make_token("d1", &[], std::time::Duration::from_secs(60))
            .await
            .unwrap();
        let begun = now_ms() - 300_000;
        let d = Device {
            device_id: "d1".into(),
            groups: vec![],
            ak_pem: "PEM".into(),
            enrolled_ms: begun,
            revoked_ms: None,
        };
        let before = now_ms();
        assert!(db.enroll_hashed(&token_hash(&t), &d).await.unwrap());
        let stored = db.device("d1").await.unwrap().unwrap();
        assert!(
            stored.enrolled_ms >= before,
            "{} < {before}",
            stored.enrolled_ms
        );
    }

    /// A challenge begun on one pool is taken once on another (two
    /// gateways on one database), holds only the secret's hash, and
    /// expires.
    #[tokio::test]
    async fn a_challenge_is_taken_once_at_any_gateway_and_holds_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("g.db").display());
        let (one, _) = persist::db::connect(&url).await.unwrap();
        let (two, _) = persist::db::connect(&url).await.unwrap();
        let (a, b) = (
            Challenges::new(one.clone()).await.unwrap(),
            Challenges::new(two).await.unwrap(),
        );
        let secret = [7u8; 32];
        let token = "enroll-token-7f3a";
        let c = Challenge {
            token_hash: token_hash(token),
            device: Device {
                device_id: "d1".into(),
                groups: vec!["group:a".into(), "group:b".into()],
                ak_pem: "PEM".into(),
                enrolled_ms: 5,
                revoked_ms: None,
            },
            secret_hash: sha2::Sha256::digest(secret).into(),
            expires_ms: now_ms() + 60_000,
        };
        let id = a.put(&c).await.unwrap();
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT secret_hash FROM gateway_enroll_challenges")
                .fetch_all(&one)
                .await
                .unwrap();
        assert_eq!(stored, vec![hex::encode(c.secret_hash)]);
        assert_ne!(stored[0], hex::encode(secret));
        // Nor the enrollment token: a reader of the database (a backup, a
        // replica) finds nothing to enroll a TPM of its own with.
        let rows = sqlx::query("SELECT * FROM gateway_enroll_challenges")
            .fetch_all(&one)
            .await
            .unwrap();
        for row in &rows {
            for i in 0..sqlx::Row::len(row) {
                if let Ok(text) = row.try_get::<String, _>(i) {
                    assert!(!text.contains(token), "column {i} holds the token");
                }
            }
        }
        let taken = b.take(&id).await.unwrap().unwrap();
        assert_eq!(taken.device, c.device);
        assert_eq!(taken.secret_hash, c.secret_hash);
        assert!(a.take(&id).await.unwrap().is_none(), "taken once");
        let old = a
            .put(&Challenge {
                expires_ms: now_ms() - 1,
                ..c.clone()
            })
            .await
            .unwrap();
        assert!(b.take(&old).await.unwrap().is_none(), "expired");
        assert!(b.take("nothing").await.unwrap().is_none());
    }
}
