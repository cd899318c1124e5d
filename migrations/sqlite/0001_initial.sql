-- telepatch control-plane store, SQLite dialect (see api/src/store/sqlite.rs).
--
-- Times are INTEGER microseconds since the Unix epoch, UTC: SQLite has no timestamp
-- type, and integers compare and index correctly (RFC 3339 text with a variable
-- number of fractional digits would not sort). JSON is TEXT written by serde_json.

CREATE TABLE routes (
    name        TEXT    NOT NULL PRIMARY KEY,
    priority    INTEGER NOT NULL,
    match_json  TEXT    NOT NULL,
    actions     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE nodes (
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    config     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);

-- Ports are stored in their text form (`kind:name.port`).
CREATE TABLE patches (
    id         INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    source     TEXT    NOT NULL,
    sink       TEXT    NOT NULL,
    gain_db    REAL    NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (source, sink)
);

-- Only the SHA-256 (lowercase hex) of each token is stored.
CREATE TABLE api_tokens (
    id           INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL UNIQUE,
    scope        TEXT    NOT NULL CHECK (scope IN ('read', 'admin')),
    token_sha256 TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
);

CREATE TABLE cdrs (
    id                 INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    uuid               TEXT    NOT NULL,
    started_at         INTEGER NOT NULL,
    ended_at           INTEGER NOT NULL,
    duration_ms        INTEGER NOT NULL,
    caller_rate_hz     INTEGER NOT NULL,
    ended_by           TEXT    NOT NULL CHECK (ended_by IN ('caller', 'gateway', 'error')),
    end_reason         TEXT    NOT NULL,
    frames_in          INTEGER NOT NULL,
    frames_out         INTEGER NOT NULL,
    uplink_gaps        INTEGER NOT NULL,
    downlink_underruns INTEGER NOT NULL,
    max_jitter_ms      REAL    NOT NULL,
    route              TEXT,
    patches            TEXT    NOT NULL,
    peer               TEXT
);

-- Keyset pagination walks (ended_at, id) newest first, optionally for one UUID.
CREATE INDEX cdrs_by_end ON cdrs (ended_at DESC, id DESC);
CREATE INDEX cdrs_by_uuid ON cdrs (uuid, ended_at DESC, id DESC);

CREATE TABLE counters (
    name  TEXT    NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
);
