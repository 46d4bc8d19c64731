//! Test support for the audit tests: fresh databases on both backends (a
//! SQLite file, or a private PostgreSQL from `tpm_sim_tests::Postgres`).

#![allow(dead_code)]

pub(crate) use tpm_sim_tests::Postgres;

/// A database for one test: a SQLite file in a temp dir, or a private PostgreSQL.
pub(crate) enum TestDb {
    /// SQLite.
    Sqlite(tempfile::TempDir),
    /// PostgreSQL.
    Postgres(Postgres),
}

impl TestDb {
    /// Both backends, one fresh database each.
    pub(crate) fn both() -> Vec<TestDb> {
        vec![TestDb::sqlite(), TestDb::postgres()]
    }

    /// A fresh SQLite database.
    pub(crate) fn sqlite() -> TestDb {
        TestDb::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh PostgreSQL server.
    pub(crate) fn postgres() -> TestDb {
        TestDb::Postgres(Postgres::start().unwrap())
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        match self {
            TestDb::Sqlite(d) => format!("sqlite:{}", d.path().join("audit.db").display()),
            TestDb::Postgres(p) => p.url(),
        }
    }

    /// An SQL literal for these bytes in this backend.
    pub(crate) fn blob(&self, bytes: &[u8]) -> String {
        match self {
            TestDb::Sqlite(_) => format!("X'{}'", hex::encode(bytes)),
            TestDb::Postgres(_) => format!("decode('{}', 'hex')", hex::encode(bytes)),
        }
    }
}
