//! Typed store errors and the mapping of sqlx errors onto them.
//!
//! What matters to callers is the class: `Unavailable` (the database cannot be reached
//! or used right now: retry later, answer 503), `Conflict` (a unique key is taken: 409),
//! `NotFound` (404), `Invalid` (400). The mapping is careful about the first one
//! because the CDR queue retries exactly those errors and nothing else.

use std::fmt::Display;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No such row.
    #[error("{what} {key:?} not found")]
    NotFound {
        /// The kind of thing ("route", "node", "patch", "token").
        what: &'static str,
        /// Its key as text.
        key: String,
    },
    /// A unique key is already taken.
    #[error("{what} {key:?} already exists")]
    Conflict {
        /// The kind of thing.
        what: &'static str,
        /// The key that is taken.
        key: String,
    },
    /// The caller passed something the store does not accept.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The database cannot be reached or cannot serve us now (connection refused or
    /// lost, pool timeout, server shutting down, database locked, disk full). The
    /// operation may succeed later; the API answers 503.
    #[error("database unavailable: {source}")]
    Unavailable {
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A stored row does not decode (written by another version of telepatch, or
    /// edited by hand).
    #[error("stored {what} {key:?} cannot be read: {reason}")]
    Corrupt {
        /// The kind of thing.
        what: &'static str,
        /// Its key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Any other database error (a bug in a query, a violated check constraint).
    #[error("database error: {source}")]
    Database {
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The migrations could not be applied (for example the database was migrated by a
    /// newer telepatch).
    #[error("database migration failed: {source}")]
    Migrate {
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The operating system's random number generator failed (token creation).
    #[error("the OS random number generator failed: {reason}")]
    Random {
        /// The error reported.
        reason: String,
    },
}

impl StoreError {
    /// Whether the database was unavailable (retry later; HTTP 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// Which SQLSTATE / result codes of a backend mean "unavailable".
pub(crate) type UnavailableCode = fn(&str) -> bool;

/// Whether `error` means the database cannot serve us now.
fn is_unavailable(error: &sqlx::Error, unavailable_code: UnavailableCode) -> bool {
    use sqlx::Error as E;
    match error {
        // The connection broke or could not be had. `Protocol` means the driver read
        // garbage from the connection, which it then closes: also a connection failure.
        E::Io(_)
        | E::Tls(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Protocol(_) => true,
        E::Database(db) => db.code().is_some_and(|code| unavailable_code(&code)),
        _ => false,
    }
}

/// Maps an error from running a statement. `what`/`key` name the row for `Conflict`.
pub(crate) fn classify(
    error: sqlx::Error,
    what: &'static str,
    key: &dyn Display,
    unavailable_code: UnavailableCode,
) -> StoreError {
    if is_unavailable(&error, unavailable_code) {
        return StoreError::Unavailable { source: error };
    }
    match error.as_database_error() {
        Some(db) if db.is_unique_violation() => StoreError::Conflict {
            what,
            key: key.to_string(),
        },
        _ => StoreError::Database { source: error },
    }
}

/// Maps an error from acquiring a connection. Whatever stops the pool from handing us
/// a connection (refused, timed out, authentication failed, database missing or not
/// accepting connections) makes the database unavailable to us.
pub(crate) fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::Unavailable { source: error }
}

/// Maps an error from connecting: a malformed URL is the caller's mistake, anything
/// else means the database cannot be used.
pub(crate) fn connect_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Configuration(reason) => StoreError::Invalid {
            what: "database URL",
            reason: reason.to_string(),
        },
        other => StoreError::Unavailable { source: other },
    }
}

/// Maps a migration error: a failure to execute because the database went away is
/// `Unavailable`, anything else (a failing statement, a missing or modified migration)
/// is `Migrate`.
pub(crate) fn migrate_error(
    error: sqlx::migrate::MigrateError,
    unavailable_code: UnavailableCode,
) -> StoreError {
    use sqlx::migrate::MigrateError as M;
    match error {
        M::Execute(source) | M::ExecuteMigration(source, _)
            if is_unavailable(&source, unavailable_code) =>
        {
            StoreError::Unavailable { source }
        }
        other => StoreError::Migrate { source: other },
    }
}

/// PostgreSQL SQLSTATEs meaning the server cannot serve us now (Appendix A of the
/// PostgreSQL manual): class 08 connection exceptions, class 53 insufficient resources
/// (disk full, out of memory, too many connections), 57P01-57P05 (administrator,
/// crash or idle shutdown, cannot connect now, database dropped), and 25006
/// (read-only transaction: we are talking to a standby after a failover).
pub(crate) fn pg_unavailable_code(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "57P04" | "57P05" | "25006"
        )
}

/// SQLite result codes (sqlx reports the extended code; the primary code is its low
/// byte) meaning the database cannot serve us now: BUSY (5) and LOCKED (6) once the
/// busy timeout has run out, READONLY (8), IOERR (10), FULL (13), CANTOPEN (14).
pub(crate) fn sqlite_unavailable_code(code: &str) -> bool {
    code.parse::<i32>()
        .is_ok_and(|extended| matches!(extended & 0xff, 5 | 6 | 8 | 10 | 13 | 14))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_that_mean_unavailable() {
        for code in [
            "08006", "08001", "57P01", "57P03", "53300", "53100", "25006",
        ] {
            assert!(pg_unavailable_code(code), "{code}");
        }
        for code in ["23505", "42P01", "22003", "40001"] {
            assert!(!pg_unavailable_code(code), "{code}");
        }
        // SQLITE_BUSY, SQLITE_BUSY_SNAPSHOT (517), SQLITE_IOERR_WRITE (778), SQLITE_FULL.
        for code in ["5", "517", "778", "13", "14"] {
            assert!(sqlite_unavailable_code(code), "{code}");
        }
        // SQLITE_CONSTRAINT_UNIQUE (2067), SQLITE_ERROR, SQLITE_MISMATCH.
        for code in ["2067", "1", "20", "x"] {
            assert!(!sqlite_unavailable_code(code), "{code}");
        }
    }

    #[test]
    fn connection_failures_are_unavailable() {
        let key: &dyn Display = &"k";
        for error in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::ErrorKind::BrokenPipe.into()),
        ] {
            assert!(classify(error, "route", key, pg_unavailable_code).is_unavailable());
        }
        assert!(matches!(
            classify(sqlx::Error::RowNotFound, "route", key, pg_unavailable_code),
            StoreError::Database { .. }
        ));
    }
}
