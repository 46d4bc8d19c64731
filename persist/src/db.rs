//! The database pool every part of Satchel that stores something shares:
//! a SQLite file by default (WAL, `synchronous = FULL`: a committed
//! transaction survives power loss) or PostgreSQL, chosen by the URL.
//! Opening never migrates; each owner of tables runs its own migrations.
//! Messages never show a URL's password.

use std::str::FromStr as _;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor as _};

/// Which database is behind the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// The database could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The URL is neither `sqlite:` nor `postgres://`.
    #[error("database URL {url:?} is not supported: use sqlite:PATH or postgres://...")]
    Url {
        /// The URL, without password.
        url: String,
    },
    /// Connecting failed.
    #[error("opening database {url}")]
    Open {
        /// The URL, without password.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

/// Connect to the database at `url` (`sqlite:PATH`, created if missing; or
/// `postgres://...`). Does not migrate.
pub async fn connect(url: &str) -> Result<(AnyPool, Backend), DbError> {
    sqlx::any::install_default_drivers();
    let (backend, url) = normalise(url)?;
    let shown = redact(&url);
    let opts = AnyConnectOptions::from_str(&url).map_err(|source| DbError::Open {
        url: shown.clone(),
        source,
    })?;
    let pool = AnyPoolOptions::new()
        .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
        // A pooled SQLite connection is a file handle in this process: it
        // cannot go stale the way a server's socket can, so it is not
        // pinged before each use (a round trip to its worker thread).
        .test_before_acquire(backend == Backend::Postgres)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                }
                Ok(())
            })
        })
        .connect_with(opts)
        .await
        .map_err(|source| DbError::Open { url: shown, source })?;
    Ok((pool, backend))
}

/// The backend of `url` and the URL sqlx is given (`sqlite:` made `rwc`).
pub fn normalise(url: &str) -> Result<(Backend, String), DbError> {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let rest = rest.trim_start_matches("//");
        let sep = if rest.contains('?') { '&' } else { '?' };
        let with_mode = if rest.contains("mode=") {
            format!("sqlite://{rest}")
        } else {
            format!("sqlite://{rest}{sep}mode=rwc")
        };
        return Ok((Backend::Sqlite, with_mode));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_owned()));
    }
    Err(DbError::Url { url: redact(url) })
}

/// The URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        let e = normalise("mysql://u:secret@h/db").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn sqlite_files_are_created() {
        assert_eq!(
            normalise("sqlite:a.db").unwrap().1,
            "sqlite://a.db?mode=rwc"
        );
        assert_eq!(
            normalise("sqlite:a.db?x=1").unwrap().1,
            "sqlite://a.db?x=1&mode=rwc"
        );
    }

    #[tokio::test]
    async fn opens_a_fresh_sqlite_file_in_wal_mode() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", d.path().join("x.db").display());
        let (pool, backend) = connect(&url).await.unwrap();
        assert_eq!(backend, Backend::Sqlite);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
