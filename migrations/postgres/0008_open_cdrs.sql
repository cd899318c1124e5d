-- A call's record is written when the call is admitted ("open"), refreshed while it
-- lasts and completed when it ends. Records left open by a gateway that stopped
-- unexpectedly are closed as 'interrupted' by the same instance at its next start, or
-- by any instance once they have not been refreshed for a long time. Each record
-- names the gateway instance that wrote it ('' for records from before this).
ALTER TABLE cdrs ADD COLUMN instance TEXT COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE cdrs ADD COLUMN is_open BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE cdrs DROP CONSTRAINT cdrs_ended_by_check;
ALTER TABLE cdrs ADD CONSTRAINT cdrs_ended_by_check
    CHECK (ended_by IN ('caller', 'gateway', 'error', 'interrupted'));

-- A call's record is found by (instance, uuid, started_at).
CREATE INDEX cdrs_by_call ON cdrs (instance, uuid, started_at);
-- Open records, for closing them (few at any time).
CREATE INDEX cdrs_open ON cdrs (instance, ended_at) WHERE is_open;
