//! The tables the ClickHouse backend keeps, created (or checked) at start.
//!
//! - `records`: one row per stored record. `ReplacingMergeTree` ordered by
//!   (subscription, stream, ts, source, epoch, seq): a retry of a record
//!   (same source, epoch and seq, hence the same content, stream and time:
//!   batches are deterministic) has the same sorting key, so background
//!   merges keep one copy; reads that must be exact take one row per key
//!   (`LIMIT 1 BY`) until then. Ordered by stream and time first, so a
//!   search reads only its streams' time ranges. Partitioned by day.
//! - `seqs`: (subscription, source, epoch, seq) -> digest, the dedupe and
//!   conflict index, written after the records of a group (it is the
//!   commit mark: a crash between the two makes the retry store the
//!   records again, which the merge folds, never lose them).
//! - `streams`: (subscription, stream, day) -> labels, records
//!   (`SummingMergeTree`): the label index.
//! - `batches`: one row per ingest (source, epoch, seqs, counts, time):
//!   `/api/v1/sources` and each source's epochs.
//!
//! Debian's server is 18.16: no `LowCardinality` without an experimental
//! setting, no data skipping indexes, no TTL. The schema here is the same
//! on every version (see README, "ClickHouse").

use super::client::{quote, ChError, Client};

/// Oldest server the schema works on.
pub const MIN_VERSION: (u32, u32) = (18, 16);

/// The statements creating every table in `db`.
pub fn statements(db: &str) -> Vec<String> {
    let db = ident(db);
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.records (\
             subscription String, stream UInt64, ts Int64, source String, epoch String, \
             seq UInt64, line String) \
             ENGINE = ReplacingMergeTree \
             PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts, 1000000000))) \
             ORDER BY (subscription, stream, ts, source, epoch, seq)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.seqs (\
             subscription String, source String, epoch String, seq UInt64, \
             digest UInt32, ts Int64) \
             ENGINE = ReplacingMergeTree \
             PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts, 1000000000))) \
             ORDER BY (subscription, source, epoch, seq)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.streams (\
             subscription String, stream UInt64, day Date, labels String, records UInt64) \
             ENGINE = SummingMergeTree((records)) \
             PARTITION BY toYYYYMM(day) \
             ORDER BY (subscription, stream, day)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.batches (\
             subscription String, source String, epoch String, at Int64, \
             first_seq UInt64, last_seq UInt64, accepted UInt64, duplicates UInt64, \
             dropped UInt64, conflicts UInt64, newest_ts Int64) \
             ENGINE = MergeTree \
             PARTITION BY toYYYYMM(toDateTime(intDiv(at, 1000000000))) \
             ORDER BY (subscription, source, at)"
        ),
    ]
}

/// A database name as an identifier: the flag is checked to be
/// `[A-Za-z_][A-Za-z0-9_]*` before it gets here; quoted anyway.
pub fn ident(db: &str) -> String {
    format!("`{}`", db.replace('`', ""))
}

/// Whether `name` may be a database name.
pub fn valid_database(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

/// `SELECT version()`, parsed to (major, minor).
pub fn version(client: &Client) -> Result<(String, (u32, u32)), ChError> {
    let not_clickhouse = |what: String| {
        ChError::Answer(format!(
            "{what} to SELECT version(): is this ClickHouse's HTTP port (8123 by default)?"
        ))
    };
    let v = match client.query("SELECT version()".into()) {
        Ok(v) => v,
        // Not a ClickHouse error message: something else answers there.
        Err(ChError::Server { code: 0, message }) => {
            return Err(not_clickhouse(format!(
                "answered {:?}",
                message.chars().take(80).collect::<String>()
            )))
        }
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&v).trim().to_string();
    let parts: Vec<Option<u32>> = text.split('.').map(|p| p.parse::<u32>().ok()).collect();
    match parts.as_slice() {
        [Some(major), Some(minor), ..] => Ok((text, (*major, *minor))),
        _ => Err(not_clickhouse(format!(
            "answered {:?}",
            text.chars().take(80).collect::<String>()
        ))),
    }
}

/// Creates what is missing and checks what exists has the columns this
/// version reads.
pub fn migrate(client: &Client, db: &str) -> Result<(), String> {
    for s in statements(db) {
        client
            .query(s.clone())
            .map_err(|e| format!("{e} (while running: {s})"))?;
    }
    let want: &[(&str, &[&str])] = &[
        (
            "records",
            &[
                "subscription",
                "stream",
                "ts",
                "source",
                "epoch",
                "seq",
                "line",
            ],
        ),
        (
            "seqs",
            &["subscription", "source", "epoch", "seq", "digest", "ts"],
        ),
        (
            "streams",
            &["subscription", "stream", "day", "labels", "records"],
        ),
        (
            "batches",
            &[
                "subscription",
                "source",
                "epoch",
                "at",
                "first_seq",
                "last_seq",
                "accepted",
                "duplicates",
                "dropped",
                "conflicts",
                "newest_ts",
            ],
        ),
    ];
    for (table, cols) in want {
        let have = client
            .query(format!(
                "SELECT name FROM system.columns WHERE database = {} AND table = {}",
                quote(db),
                quote(table)
            ))
            .map_err(|e| e.to_string())?;
        let have = String::from_utf8_lossy(&have);
        let have: Vec<&str> = have.lines().collect();
        for c in *cols {
            if !have.contains(c) {
                return Err(format!(
                    "table {db}.{table} exists without column {c}: it was made by something else or an older version; move it away or use another --clickhouse-database"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names() {
        assert!(valid_database("sesam"));
        assert!(valid_database("_x9"));
        assert!(!valid_database("9x"));
        assert!(!valid_database("a-b"));
        assert!(!valid_database("a`b"));
        assert!(!valid_database(""));
    }
}
