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
//! - `streams`: (subscription, stream, day) -> labels, records, line bytes
//!   (`SummingMergeTree`): the label index.
//! - `batches`: one row per ingest (source, epoch, seqs, counts, time):
//!   `/api/v1/sources` and each source's epochs.
//! - `feed`: with `--coordination`, every collector's commit feed
//!   (subscription, writer, commit, index) -> record, read by the
//!   subscription's owner to evaluate its rules (`feed.rs`). Sharded by
//!   subscription, so that one insert of a writer is visible at once.
//!
//! Debian's server is 18.16: no `LowCardinality` without an experimental
//! setting, no data skipping indexes, no TTL. The schema here is the same
//! on every version (see README, "ClickHouse").

use super::client::{quote, ChError, Client};

/// Oldest server the schema works on.
pub const MIN_VERSION: (u32, u32) = (18, 16);

/// How the tables are laid out over the servers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// `Replicated*MergeTree` engines (ZooKeeper paths
    /// `/clickhouse/tables/{shard}/<db>/<table>`, replica `{replica}`:
    /// every server defines the `shard` and `replica` macros).
    pub replicated: bool,
    /// A cluster of `remote_servers`: the tables live as `<table>_local`
    /// on every server, and `<table>` is a `Distributed` table over them,
    /// sharded so that all rows of one (subscription, source) are on one
    /// shard (dedupe is per shard).
    pub cluster: Option<String>,
}

impl Layout {
    /// The table that holds the rows on each server (what deletions
    /// mutate).
    pub fn local(&self, table: &str) -> String {
        match self.cluster {
            Some(_) => format!("{table}_local"),
            None => table.to_string(),
        }
    }
}

/// (name, columns, engine family, engine arguments after the replication
/// path, partition, order, sharding key).
type TableDef = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const TABLES: [TableDef; 5] = [
    (
        "records",
        "subscription String, stream UInt64, ts Int64, source String, epoch String, seq UInt64, line String",
        "ReplacingMergeTree",
        "",
        "toYYYYMMDD(toDateTime(intDiv(ts, 1000000000)))",
        "(subscription, stream, ts, source, epoch, seq)",
        "cityHash64(subscription, source)",
    ),
    (
        "seqs",
        "subscription String, source String, epoch String, seq UInt64, digest UInt32, ts Int64",
        "ReplacingMergeTree",
        "",
        "toYYYYMMDD(toDateTime(intDiv(ts, 1000000000)))",
        "(subscription, source, epoch, seq)",
        "cityHash64(subscription, source)",
    ),
    (
        "streams",
        "subscription String, stream UInt64, day Date, labels String, records UInt64, bytes UInt64",
        "SummingMergeTree",
        "(records, bytes)",
        "toYYYYMM(day)",
        "(subscription, stream, day)",
        "cityHash64(subscription, stream)",
    ),
    (
        "batches",
        "subscription String, source String, epoch String, at Int64, first_seq UInt64, last_seq UInt64, accepted UInt64, duplicates UInt64, dropped UInt64, conflicts UInt64, newest_ts Int64",
        "MergeTree",
        "",
        "toYYYYMM(toDateTime(intDiv(at, 1000000000)))",
        "(subscription, source, at)",
        "cityHash64(subscription, source)",
    ),
    (
        "feed",
        "subscription String, writer String, wseq UInt64, widx UInt32, at Int64, record String",
        "ReplacingMergeTree",
        "",
        "toYYYYMMDD(toDateTime(intDiv(at, 1000000000)))",
        "(subscription, writer, wseq, widx)",
        "cityHash64(subscription)",
    ),
];

/// The statements creating every table in `db`, on one server.
pub fn statements(db: &str, layout: &Layout) -> Vec<String> {
    let q = ident(db);
    let mut out = vec![format!("CREATE DATABASE IF NOT EXISTS {q}")];
    for (name, cols, family, args, partition, order, shard_key) in TABLES {
        let local = layout.local(name);
        let engine = if layout.replicated {
            let path = format!("'/clickhouse/tables/{{shard}}/{db}/{local}', '{{replica}}'");
            let args = if args.is_empty() {
                path
            } else {
                format!("{path}, {args}")
            };
            format!("Replicated{family}({args})")
        } else if args.is_empty() {
            family.to_string()
        } else {
            format!("{family}({args})")
        };
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {q}.{local} ({cols}) ENGINE = {engine} \
             PARTITION BY {partition} ORDER BY {order}"
        ));
        if let Some(cluster) = &layout.cluster {
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS {q}.{name} AS {q}.{local} \
                 ENGINE = Distributed({}, {db}, {local}, {shard_key})",
                ident(cluster)
            ));
        }
    }
    out
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

/// Creates what is missing on every server (a server that cannot be
/// reached is skipped with a warning as long as one could be), and checks
/// that what exists has the columns this version reads.
pub fn migrate(client: &Client, db: &str, layout: &Layout) -> Result<(), String> {
    let mut done = 0;
    let mut unreachable = Vec::new();
    for (i, url) in client.urls().iter().enumerate() {
        let mut failed = None;
        for s in statements(db, layout) {
            match client.request_on(i, s.clone()) {
                Ok(_) => {}
                Err(e @ ChError::Unreachable { .. }) => {
                    failed = Some(e);
                    break;
                }
                Err(e) => return Err(format!("{e} (while running on {url}: {s})")),
            }
        }
        match failed {
            None => done += 1,
            Some(e) => {
                tracing::warn!(url = %url, error = %e, "ClickHouse server unreachable at start: its tables were not checked");
                unreachable.push(e.to_string());
            }
        }
    }
    if done == 0 {
        return Err(unreachable.join("; "));
    }
    for (table, ..) in TABLES {
        let have = client
            .query(format!(
                "SELECT name FROM system.columns WHERE database = {} AND table = {}",
                quote(db),
                quote(table)
            ))
            .map_err(|e| e.to_string())?;
        let have = String::from_utf8_lossy(&have);
        let have: Vec<&str> = have.lines().collect();
        let def = TABLES.iter().find(|t| t.0 == table).map_or("", |t| t.1);
        for c in def.split(", ").filter_map(|c| c.split(' ').next()) {
            if !have.contains(&c) {
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
