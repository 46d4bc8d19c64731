//! Attestation nonces as the gateway hands them out, kept in the database
//! so that every gateway on it shares them: a nonce issued by one is good
//! once at any, and spent at all once it is used at one. Asking for a
//! nonce needs no certificate (a device attests to get one), so the book
//! bounds what a stranger can do with that:
//!
//! - each enrolled device holds at most [`PER_DEVICE`] outstanding nonces;
//!   a request beyond that is refused (429), and nothing already issued is
//!   ever forgotten early, so no request made in a device's name can spoil
//!   the nonce that device is quoting over;
//! - each peer address gets at most [`PEER_BURST`] nonces at once and
//!   [`PEER_PER_MINUTE`] a minute after that (429), counted by each gateway
//!   for its own peers (in memory: a rate, not state);
//! - the whole book holds at most `capacity` outstanding nonces; when full,
//!   new requests are refused (503) rather than old nonces evicted.
//!
//! Outstanding nonces expire after `ttl` (wall-clock milliseconds, so the
//! gateways' clocks must agree to within a fraction of it) and then count
//! for nothing. A nonce is good once, for the device it was issued to:
//! taking it deletes its row in one statement, so two gateways racing on
//! one nonce cannot both accept it. Issuing counts and writes under the
//! table's write lock, so racing requests never overshoot the bounds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand_core::RngCore as _;
use sqlx::{AnyPool, Connection as _, Executor as _, Row as _};

/// Most outstanding nonces per device.
pub const PER_DEVICE: usize = 4;
/// Nonces a peer address may ask for at once.
pub const PEER_BURST: f64 = 20.0;
/// Nonces a peer address may ask for each minute after its burst.
pub const PEER_PER_MINUTE: f64 = 60.0;

/// Why no nonce was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The device holds [`PER_DEVICE`] outstanding nonces.
    #[error("this device holds {PER_DEVICE} outstanding nonces; quote over one of them, or retry when they expire")]
    DeviceBusy,
    /// The peer address asked too fast.
    #[error("too many nonces asked for from this address; retry in a minute")]
    PeerBusy,
    /// The book is full.
    #[error("the gateway holds as many outstanding nonces as it keeps; retry later")]
    Full,
    /// The database did not answer.
    #[error("the gateway's database is unavailable; retry later")]
    Unavailable,
}

/// Why a nonce was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Spent {
    /// Unknown, expired or already used (a replayed quote), or the
    /// database did not answer (refused, never accepted).
    Stale,
    /// Issued to another device.
    AnotherDevice,
}

/// The gateways' nonces.
#[derive(Debug)]
pub struct NonceBook {
    pool: AnyPool,
    backend: persist::Backend,
    ttl: Duration,
    capacity: usize,
    peers: Mutex<HashMap<IpAddr, Bucket>>,
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

fn now_ms() -> i64 {
    crate::state::now_ms()
}

fn count(row: Result<sqlx::any::AnyRow, sqlx::Error>) -> Result<usize, Refusal> {
    row.and_then(|r| r.try_get::<i64, _>(0))
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        .map_err(|e| {
            tracing::warn!(error = %e, "nonce book: the database did not answer");
            Refusal::Unavailable
        })
}

impl NonceBook {
    /// Nonces good for `ttl`, at most `capacity` outstanding, in the
    /// database behind `pool` (the table is made if missing).
    pub async fn new(
        pool: AnyPool,
        backend: persist::Backend,
        ttl: Duration,
        capacity: usize,
    ) -> Result<NonceBook, crate::state::DbError> {
        for ddl in [
            "CREATE TABLE IF NOT EXISTS gateway_nonces (nonce TEXT PRIMARY KEY, \
             device_id TEXT NOT NULL, expires_ms BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS gateway_nonces_device ON gateway_nonces (device_id)",
            "CREATE INDEX IF NOT EXISTS gateway_nonces_expiry ON gateway_nonces (expires_ms)",
        ] {
            sqlx::query(ddl)
                .execute(&pool)
                .await
                .map_err(crate::state::db("making the nonce table"))?;
        }
        Ok(NonceBook {
            pool,
            backend,
            ttl,
            capacity,
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh nonce for `device`, asked for from `peer`.
    ///
    /// The peer's rate is checked first: a refused peer costs the shared
    /// database nothing. The bounds are counted and the nonce written in one
    /// transaction holding the table's write lock, so concurrent requests
    /// (on this gateway or another) never overshoot them.
    pub async fn issue(&self, device: &str, peer: IpAddr) -> Result<[u8; 32], Refusal> {
        self.take_peer_token(peer)?;
        let unavailable = |e: sqlx::Error| {
            tracing::warn!(error = %e, "nonce book: the database did not answer");
            Refusal::Unavailable
        };
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let mut tx = match self.backend {
            persist::Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await,
            persist::Backend::Postgres => conn.begin().await,
        }
        .map_err(unavailable)?;
        if self.backend == persist::Backend::Postgres {
            tx.execute("LOCK TABLE gateway_nonces IN SHARE ROW EXCLUSIVE MODE")
                .await
                .map_err(unavailable)?;
        }
        let now = now_ms();
        // Expired rows count for nothing; removing them keeps the counts
        // cheap.
        sqlx::query("DELETE FROM gateway_nonces WHERE expires_ms <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let held = count(
            sqlx::query("SELECT COUNT(*) FROM gateway_nonces WHERE device_id = $1")
                .bind(device.to_owned())
                .fetch_one(&mut *tx)
                .await,
        )?;
        if held >= PER_DEVICE {
            return Err(Refusal::DeviceBusy);
        }
        let all = count(
            sqlx::query("SELECT COUNT(*) FROM gateway_nonces")
                .fetch_one(&mut *tx)
                .await,
        )?;
        if all >= self.capacity {
            return Err(Refusal::Full);
        }
        let mut n = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut n);
        let ttl = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO gateway_nonces (nonce, device_id, expires_ms) VALUES ($1, $2, $3)",
        )
        .bind(hex::encode(n))
        .bind(device.to_owned())
        .bind(now.saturating_add(ttl))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(n)
    }

    /// Accept `nonce` once, for `device`: whatever the answer, a nonce
    /// presented is spent.
    pub async fn take(&self, nonce: &[u8], device: &str) -> Result<(), Spent> {
        if nonce.len() != 32 {
            return Err(Spent::Stale);
        }
        let row = sqlx::query(
            "DELETE FROM gateway_nonces WHERE nonce = $1 AND expires_ms > $2 RETURNING device_id",
        )
        .bind(hex::encode(nonce))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "nonce book: the database did not answer");
            Spent::Stale
        })?;
        let owner: Option<String> = row.and_then(|r| r.try_get(0).ok());
        match owner {
            None => Err(Spent::Stale),
            Some(o) if o == device => Ok(()),
            Some(_) => Err(Spent::AnotherDevice),
        }
    }

    /// Outstanding nonces of `device`.
    pub async fn outstanding(&self, device: &str) -> usize {
        count(
            sqlx::query(
                "SELECT COUNT(*) FROM gateway_nonces WHERE device_id = $1 AND expires_ms > $2",
            )
            .bind(device.to_owned())
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await,
        )
        .unwrap_or(0)
    }

    /// Spend one of `peer`'s tokens, refilled at [`PEER_PER_MINUTE`].
    fn take_peer_token(&self, peer: IpAddr) -> Result<(), Refusal> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if peers.len() > 10_000 {
            let full = Duration::from_secs_f64(PEER_BURST * 60.0 / PEER_PER_MINUTE);
            peers.retain(|_, b| now.duration_since(b.at) < full);
        }
        let b = peers.entry(peer).or_insert(Bucket {
            tokens: PEER_BURST,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * PEER_PER_MINUTE / 60.0;
        b.tokens = (b.tokens + refill).min(PEER_BURST);
        b.at = now;
        if b.tokens < 1.0 {
            return Err(Refusal::PeerBusy);
        }
        b.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    /// A book on a fresh SQLite file (two books on one file: two gateways).
    async fn books(ttl: Duration, capacity: usize) -> (tempfile::TempDir, NonceBook, NonceBook) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("g.db").display());
        let (one, backend) = persist::db::connect(&url).await.unwrap();
        let (two, _) = persist::db::connect(&url).await.unwrap();
        let a = NonceBook::new(one, backend, ttl, capacity).await.unwrap();
        let b = NonceBook::new(two, backend, ttl, capacity).await.unwrap();
        (dir, a, b)
    }

    /// Regression (issue 22, item 11): requests made in a device's name
    /// cannot spoil the nonce it holds, and a full book refuses instead of
    /// forgetting everyone's nonces.
    #[tokio::test]
    async fn requests_in_a_victims_name_never_spoil_its_nonce() {
        let (_d, book, _) = books(Duration::from_secs(120), 1000).await;
        let held = book.issue("victim", A).await.unwrap();
        let mut refused = 0;
        for _ in 0..50 {
            match book.issue("victim", B).await {
                Ok(_) => {}
                // Busy device, or (the peer's rate is checked first) a
                // peer past its burst.
                Err(Refusal::DeviceBusy | Refusal::PeerBusy) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused, 50 - (PER_DEVICE - 1));
        assert_eq!(book.take(&held, "victim").await, Ok(()));
        assert_eq!(
            book.take(&held, "victim").await,
            Err(Spent::Stale),
            "good once"
        );
    }

    #[tokio::test]
    async fn a_full_book_refuses_and_forgets_nothing() {
        let (_d, book, _) = books(Duration::from_secs(120), 3).await;
        let ips = |i: u8| IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, i));
        let first = book.issue("d0", ips(0)).await.unwrap();
        book.issue("d1", ips(1)).await.unwrap();
        book.issue("d2", ips(2)).await.unwrap();
        assert_eq!(book.issue("d3", ips(3)).await, Err(Refusal::Full));
        assert_eq!(book.take(&first, "d0").await, Ok(()));
        assert!(
            book.issue("d3", ips(3)).await.is_ok(),
            "a taken nonce frees its place"
        );
    }

    #[tokio::test]
    async fn a_peer_is_rate_limited_across_devices() {
        let (_d, book, _) = books(Duration::from_secs(120), 100_000).await;
        let mut issued = 0;
        for i in 0..100 {
            match book.issue(&format!("d{i}"), A).await {
                Ok(_) => issued += 1,
                Err(e) => assert_eq!(e, Refusal::PeerBusy),
            }
        }
        assert_eq!(issued, PEER_BURST as usize);
        assert!(
            book.issue("d0-other-peer", B).await.is_ok(),
            "another address is not held up"
        );
    }

    #[tokio::test]
    async fn a_nonce_is_for_its_device_and_expires() {
        let (_d, book, _) = books(Duration::from_millis(50), 100).await;
        let n = book.issue("d1", A).await.unwrap();
        assert_eq!(book.take(&n, "d2").await, Err(Spent::AnotherDevice));
        assert_eq!(
            book.take(&n, "d1").await,
            Err(Spent::Stale),
            "spent by the wrong device's try"
        );
        let old = book.issue("d1", A).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(book.take(&old, "d1").await, Err(Spent::Stale));
        assert_eq!(book.outstanding("d1").await, 0);
        assert_eq!(book.take(&[1; 5], "d1").await, Err(Spent::Stale));
    }

    /// Two gateways on one database: a nonce one issued is good once at
    /// the other, and then spent at both; the per-device bound is shared.
    #[tokio::test]
    async fn a_nonce_from_one_gateway_is_good_once_at_another() {
        let (_d, a, b) = books(Duration::from_secs(120), 1000).await;
        let n = a.issue("d1", A).await.unwrap();
        assert_eq!(b.take(&n, "d1").await, Ok(()));
        assert_eq!(a.take(&n, "d1").await, Err(Spent::Stale));
        assert_eq!(b.take(&n, "d1").await, Err(Spent::Stale));
        for _ in 0..PER_DEVICE {
            a.issue("d2", A).await.unwrap();
        }
        assert_eq!(b.issue("d2", B).await, Err(Refusal::DeviceBusy));
    }

    /// The attacker's review: a peer refused for its rate still cost the
    /// shared database three queries (reproduced first: a closed database
    /// answered Unavailable, so it had been asked).
    #[tokio::test]
    async fn a_peer_over_its_rate_costs_the_database_nothing() {
        let (_d, book, _) = books(Duration::from_secs(120), 100_000).await;
        for i in 0..PEER_BURST as usize {
            book.issue(&format!("d{i}"), A).await.unwrap();
        }
        book.pool.close().await;
        assert_eq!(book.issue("d-more", A).await, Err(Refusal::PeerBusy));
    }

    /// The attacker's review: requests racing on one device all counted
    /// before any wrote, and overshot its bound (reproduced first).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_requests_never_overshoot_a_devices_bound() {
        let (_d, a, b) = books(Duration::from_secs(120), 100_000).await;
        let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let book = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let peer = IpAddr::V4(std::net::Ipv4Addr::new(10, 2, 0, i));
                book.issue("raced", peer).await
            }));
        }
        let mut issued = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                issued += 1;
            }
        }
        assert_eq!(issued, PER_DEVICE);
        assert_eq!(a.outstanding("raced").await, PER_DEVICE);
    }
}
