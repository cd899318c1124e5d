-- AoDNS broadcasts: the next free sequence number of each zone, so numbers keep
-- increasing across calls and restarts (aodns.md §6). Broadcasts reserve numbers in
-- blocks; `next_sequence` is the first number no broadcast has been given yet.
CREATE TABLE dns_sequences (
    domain        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    next_sequence BIGINT NOT NULL CHECK (next_sequence >= 0)
);
