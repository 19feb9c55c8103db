//! The node's configuration versions: what runs is the last configuration
//! the node accepted, stored in its database with a version number, who
//! changed it, when, and which entities were added, removed or changed. A
//! short history of versions is kept (`--config-history`, default 20) and
//! readable at `GET /api/config/history`.
//!
//! A version is written in one synced RocksDB write batch together with the
//! pointer to the current version (and the deletion of the version that
//! falls out of the history), before the running configuration changes: a
//! crash at any instant leaves either the old or the new version current,
//! never a half-written one. See [`crate::store`] for the keys.

use std::collections::BTreeMap;

use schemas::time::rfc3339_from_nanos;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Who made a configuration change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    /// `file` (the `--config` file) or `api`.
    pub source: String,
    /// What did it: `--config /etc/sesam/node-config.json`, `PUT /api/config`,
    /// `DELETE /api/pipes/orders`, ...
    pub operation: String,
    /// The API client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
}

impl Author {
    pub fn file(path: &std::path::Path) -> Author {
        Author {
            source: "file".into(),
            operation: format!("--config {}", path.display()),
            remote_addr: None,
        }
    }

    pub fn api(operation: String, remote_addr: Option<String>) -> Author {
        Author {
            source: "api".into(),
            operation,
            remote_addr,
        }
    }
}

/// The `_id`s a change added, removed and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    /// What changed from `old` to `new` (entities compared by `_id`).
    pub fn between(old: &[Value], new: &[Value]) -> Changes {
        let by_id = |list: &[Value]| -> BTreeMap<String, Value> {
            list.iter()
                .filter_map(|e| {
                    e.get("_id")
                        .and_then(Value::as_str)
                        .map(|id| (id.to_string(), e.clone()))
                })
                .collect()
        };
        let (old, new) = (by_id(old), by_id(new));
        let mut c = Changes::default();
        for (id, e) in &new {
            match old.get(id) {
                None => c.added.push(id.clone()),
                Some(o) if o != e => c.changed.push(id.clone()),
                Some(_) => {}
            }
        }
        c.removed = old
            .keys()
            .filter(|id| !new.contains_key(*id))
            .cloned()
            .collect();
        c
    }
}

/// One stored configuration version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigVersion {
    /// 1, 2, 3, ... per node.
    pub version: u64,
    /// When it was accepted, Unix microseconds.
    pub time_us: i64,
    /// The configuration's hash (as in `config` records).
    pub hash: String,
    pub who: Author,
    pub changes: Changes,
    /// The entities as JSON text, exactly as accepted.
    pub entities_json: String,
}

impl ConfigVersion {
    /// The entities of this version.
    pub fn entities(&self) -> Result<Vec<Value>, serde_json::Error> {
        serde_json::from_str(&self.entities_json)
    }

    /// The history entry of the API (without the entities).
    pub fn summary(&self, current: u64) -> Value {
        let count = self.entities().map(|e| e.len()).unwrap_or_default();
        json!({
            "_id": self.version.to_string(),
            "version": self.version,
            "time": rfc3339_from_nanos(self.time_us.saturating_mul(1000)),
            "hash": self.hash,
            "current": self.version == current,
            "who": self.who,
            "changes": self.changes,
            "entities": count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_compare_entities_by_id() {
        let old = vec![
            json!({"_id": "a", "v": 1}),
            json!({"_id": "b", "v": 1}),
            json!({"_id": "c", "v": 1}),
        ];
        let new = vec![
            json!({"_id": "a", "v": 1}),
            json!({"_id": "b", "v": 2}),
            json!({"_id": "d", "v": 1}),
        ];
        let c = Changes::between(&old, &new);
        assert_eq!(c.added, vec!["d"]);
        assert_eq!(c.removed, vec!["c"]);
        assert_eq!(c.changed, vec!["b"]);
        assert_eq!(Changes::between(&new, &new), Changes::default());
    }
}
