-- A call's record is written when the call is admitted ("open"), refreshed while it
-- lasts and completed when it ends. Records left open by a gateway that stopped
-- unexpectedly are closed as 'interrupted' by the same instance at its next start, or
-- by any instance once they have not been refreshed for a long time. Each record
-- names the gateway instance that wrote it ('' for records from before this).
--
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt, ids kept.
CREATE TABLE cdrs_new (
    id                 INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    uuid               TEXT    NOT NULL,
    started_at         INTEGER NOT NULL,
    ended_at           INTEGER NOT NULL,
    duration_ms        INTEGER NOT NULL,
    caller_rate_hz     INTEGER NOT NULL,
    ended_by           TEXT    NOT NULL
                       CHECK (ended_by IN ('caller', 'gateway', 'error', 'interrupted')),
    end_reason         TEXT    NOT NULL,
    frames_in          INTEGER NOT NULL,
    frames_out         INTEGER NOT NULL,
    uplink_gaps        INTEGER NOT NULL,
    downlink_underruns INTEGER NOT NULL,
    max_jitter_ms      REAL    NOT NULL,
    route              TEXT,
    patches            TEXT    NOT NULL,
    peer               TEXT,
    instance           TEXT    NOT NULL DEFAULT '',
    is_open            INTEGER NOT NULL DEFAULT 0 CHECK (is_open IN (0, 1))
);

INSERT INTO cdrs_new (id, uuid, started_at, ended_at, duration_ms, caller_rate_hz, ended_by,
    end_reason, frames_in, frames_out, uplink_gaps, downlink_underruns, max_jitter_ms, route,
    patches, peer)
SELECT id, uuid, started_at, ended_at, duration_ms, caller_rate_hz, ended_by, end_reason,
    frames_in, frames_out, uplink_gaps, downlink_underruns, max_jitter_ms, route, patches, peer
FROM cdrs;

DROP TABLE cdrs;
ALTER TABLE cdrs_new RENAME TO cdrs;

-- Keyset pagination walks (ended_at, id) newest first, optionally for one UUID.
CREATE INDEX cdrs_by_end ON cdrs (ended_at DESC, id DESC);
CREATE INDEX cdrs_by_uuid ON cdrs (uuid, ended_at DESC, id DESC);
-- A call's record is found by (instance, uuid, started_at).
CREATE INDEX cdrs_by_call ON cdrs (instance, uuid, started_at);
-- Open records, for closing them (few at any time).
CREATE INDEX cdrs_open ON cdrs (instance, ended_at) WHERE is_open = 1;
