-- Satchel audit log, PostgreSQL. One row per Merkle leaf; seq is the leaf index.
CREATE TABLE audit_entries (
    seq       BIGINT PRIMARY KEY,
    ts_ms     BIGINT NOT NULL,
    kind      TEXT   NOT NULL,
    actor     TEXT   NOT NULL,
    subject   TEXT   NOT NULL,
    decision  TEXT   NOT NULL,
    details   TEXT   NOT NULL,
    leaf_hash BYTEA  NOT NULL
);
CREATE INDEX audit_entries_kind ON audit_entries (kind, seq);

CREATE TABLE audit_checkpoints (
    tree_size  BIGINT PRIMARY KEY,
    root       BYTEA  NOT NULL,
    note       TEXT   NOT NULL,
    created_ms BIGINT NOT NULL
);
