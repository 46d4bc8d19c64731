//! The console's sign-in links and sessions, in the gateway's database (so
//! `satchel gateway console-link`, another process, can make a link, and a
//! restart keeps admins signed in). Only hashes of links and session ids
//! are stored.

use std::time::Duration;

use rand_core::RngCore as _;
use sqlx::Row as _;

use crate::state::{db, now_ms, token_hash, Db, DbError};

/// How long a session lasts without signing in again.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// A signed-in admin.
#[derive(Debug, Clone)]
pub struct Session {
    /// The admin's name (`alice` for `admin:alice`).
    pub admin: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// When it began (ms since the epoch).
    pub created_ms: i64,
}

fn random_hex(n: usize) -> String {
    let mut raw = vec![0u8; n];
    rand_core::OsRng.fill_bytes(&mut raw);
    hex::encode(raw)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

impl Db {
    /// A one-time sign-in link token for `admin`, valid for `ttl`.
    pub async fn make_console_link(&self, admin: &str, ttl: Duration) -> Result<String, DbError> {
        let token = random_hex(24);
        let now = now_ms();
        sqlx::query("INSERT INTO gateway_console_links (token_hash, admin, created_ms, expires_ms, used_ms) VALUES ($1, $2, $3, $4, NULL)")
            .bind(token_hash(&token))
            .bind(admin.to_owned())
            .bind(now)
            .bind(now.saturating_add(ms(ttl)))
            .execute(&self.pool)
            .await
            .map_err(db("storing a console link"))?;
        Ok(token)
    }

    /// Use a sign-in link: the admin it was made for and when it was made,
    /// if it exists, is unexpired and was not used (it is used now, once).
    pub async fn use_console_link(&self, token: &str) -> Result<Option<(String, i64)>, DbError> {
        let hash = token_hash(token);
        let now = now_ms();
        let done = sqlx::query("UPDATE gateway_console_links SET used_ms = $1 WHERE token_hash = $2 AND used_ms IS NULL AND expires_ms > $1")
            .bind(now)
            .bind(hash.clone())
            .execute(&self.pool)
            .await
            .map_err(db("using a console link"))?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT admin, created_ms FROM gateway_console_links WHERE token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a console link"))?;
        Ok(row.map(|r| {
            (
                r.try_get(0).unwrap_or_default(),
                r.try_get(1).unwrap_or_default(),
            )
        }))
    }

    /// Begin a session for `admin`: its id (for the cookie) and the session.
    pub async fn new_session(&self, admin: &str) -> Result<(String, Session), DbError> {
        let id = random_hex(32);
        let s = Session {
            admin: admin.to_owned(),
            csrf: random_hex(24),
            created_ms: now_ms(),
        };
        // Expired sessions go when new ones are made.
        sqlx::query("DELETE FROM gateway_console_sessions WHERE expires_ms <= $1")
            .bind(s.created_ms)
            .execute(&self.pool)
            .await
            .map_err(db("removing expired sessions"))?;
        sqlx::query("INSERT INTO gateway_console_sessions (id_hash, admin, csrf, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5)")
            .bind(token_hash(&id))
            .bind(s.admin.clone())
            .bind(s.csrf.clone())
            .bind(s.created_ms)
            .bind(s.created_ms.saturating_add(ms(SESSION_LIFETIME)))
            .execute(&self.pool)
            .await
            .map_err(db("storing a session"))?;
        Ok((id, s))
    }

    /// The unexpired session with cookie value `id`.
    pub async fn session(&self, id: &str) -> Result<Option<Session>, DbError> {
        let row = sqlx::query("SELECT admin, csrf, created_ms FROM gateway_console_sessions WHERE id_hash = $1 AND expires_ms > $2")
            .bind(token_hash(id))
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a session"))?;
        Ok(row.map(|r| Session {
            admin: r.try_get(0).unwrap_or_default(),
            csrf: r.try_get(1).unwrap_or_default(),
            created_ms: r.try_get(2).unwrap_or_default(),
        }))
    }

    /// End the session with cookie value `id`.
    pub async fn end_session(&self, id: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM gateway_console_sessions WHERE id_hash = $1")
            .bind(token_hash(id))
            .execute(&self.pool)
            .await
            .map_err(db("ending a session"))?;
        Ok(())
    }
}
