-- telepatch control-plane store, PostgreSQL dialect (see api/src/store/postgres.rs).
--
-- Names use COLLATE "C" so that listings sort byte-wise, exactly as on SQLite, whatever
-- the server's locale. JSON is JSONB; times are TIMESTAMPTZ (microsecond precision).

CREATE TABLE routes (
    name        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    priority    INTEGER     NOT NULL,
    match_json  JSONB       NOT NULL,
    actions     JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE nodes (
    kind       TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    config     JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, name)
);

-- Ports are stored in their text form (`kind:name.port`).
CREATE TABLE patches (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source     TEXT        NOT NULL,
    sink       TEXT        NOT NULL,
    gain_db    REAL        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (source, sink)
);

-- Only the SHA-256 (lowercase hex) of each token is stored.
CREATE TABLE api_tokens (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT COLLATE "C" NOT NULL UNIQUE,
    scope        TEXT        NOT NULL CHECK (scope IN ('read', 'admin')),
    token_sha256 TEXT        NOT NULL UNIQUE,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ
);

CREATE TABLE cdrs (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid               UUID             NOT NULL,
    started_at         TIMESTAMPTZ      NOT NULL,
    ended_at           TIMESTAMPTZ      NOT NULL,
    duration_ms        BIGINT           NOT NULL,
    caller_rate_hz     INTEGER          NOT NULL,
    ended_by           TEXT             NOT NULL CHECK (ended_by IN ('caller', 'gateway', 'error')),
    end_reason         TEXT             NOT NULL,
    frames_in          BIGINT           NOT NULL,
    frames_out         BIGINT           NOT NULL,
    uplink_gaps        BIGINT           NOT NULL,
    downlink_underruns BIGINT           NOT NULL,
    max_jitter_ms      DOUBLE PRECISION NOT NULL,
    route              TEXT,
    patches            JSONB            NOT NULL,
    peer               TEXT
);

-- Keyset pagination walks (ended_at, id) newest first, optionally for one UUID.
CREATE INDEX cdrs_by_end ON cdrs (ended_at DESC, id DESC);
CREATE INDEX cdrs_by_uuid ON cdrs (uuid, ended_at DESC, id DESC);

CREATE TABLE counters (
    name  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    value BIGINT NOT NULL
);
