-- Satchel audit log, SQLite. One row per Merkle leaf; seq is the leaf index.
CREATE TABLE audit_entries (
    seq       INTEGER PRIMARY KEY,
    ts_ms     INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    actor     TEXT    NOT NULL,
    subject   TEXT    NOT NULL,
    decision  TEXT    NOT NULL,
    details   TEXT    NOT NULL,
    leaf_hash BLOB    NOT NULL
);
CREATE INDEX audit_entries_kind ON audit_entries (kind, seq);

CREATE TABLE audit_checkpoints (
    tree_size  INTEGER PRIMARY KEY,
    root       BLOB    NOT NULL,
    note       TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);
