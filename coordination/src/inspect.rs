//! A read-only look at a coordination chroot (for operators and tests):
//! the members, the owner of each subscription and the epochs, as stored
//! in ZooKeeper. Opens its own short session and registers nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use zookeeper_client as zk;

use crate::coordinator::{EPOCHS, MEMBERS, OWNERS};
use crate::error::Error;
use crate::names;
use crate::url::CoordinationUrl;

/// Most children read from one directory (members, owners, epochs).
pub const MAX_INSPECT_CHILDREN: usize = 100_000;

/// What ZooKeeper holds under a chroot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    /// Member id -> advertised URL.
    pub members: BTreeMap<String, String>,
    /// Subscription -> (owner member id, epoch).
    pub owners: BTreeMap<String, (String, u64)>,
    /// Subscription -> last epoch.
    pub epochs: BTreeMap<String, u64>,
}

/// Reads the layout under `url`'s chroot (empty when it does not exist).
pub async fn inspect(url: &CoordinationUrl, timeout: Duration) -> Result<Inspection, Error> {
    let work = async {
        let root = zk::Client::connector()
            .with_session_timeout(timeout.max(Duration::from_secs(2)))
            .with_fail_eagerly()
            .connect(&url.connect_string())
            .await
            .map_err(|source| Error::Connect {
                url: url.to_string(),
                source,
            })?;
        let client = root
            .chroot(url.chroot().to_string())
            .map_err(|_| Error::Corrupt {
                path: url.chroot().to_string(),
                reason: "refused as a chroot by the client".into(),
            })?;
        let mut out = Inspection::default();
        for (id, data) in read_dir(&client, MEMBERS).await? {
            let url = serde_json::from_slice::<serde_json::Value>(&data)
                .ok()
                .and_then(|v| v.get("url")?.as_str().map(str::to_string))
                .unwrap_or_default();
            out.members.insert(id, url);
        }
        for (node, data) in read_dir(&client, OWNERS).await? {
            let Some(sub) = names::decode_subscription(&node) else {
                continue;
            };
            let v = serde_json::from_slice::<serde_json::Value>(&data).unwrap_or_default();
            let member = v
                .get("member")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_string();
            let epoch = v.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0);
            out.owners.insert(sub, (member, epoch));
        }
        for (node, data) in read_dir(&client, EPOCHS).await? {
            let Some(sub) = names::decode_subscription(&node) else {
                continue;
            };
            let epoch = std::str::from_utf8(&data)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            out.epochs.insert(sub, epoch);
        }
        Ok(out)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Error::Connect {
            url: url.to_string(),
            source: zk::Error::Timeout,
        })?
}

async fn read_dir(client: &zk::Client, dir: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let children = match client.list_children(dir).await {
        Ok(c) => c,
        Err(zk::Error::NoNode) => return Ok(Vec::new()),
        Err(e) => return Err(Error::zk("list", dir, e)),
    };
    let mut out = Vec::new();
    for child in children.into_iter().take(MAX_INSPECT_CHILDREN) {
        let path = format!("{dir}/{child}");
        match client.get_data(&path).await {
            Ok((data, _)) => out.push((child, data)),
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(Error::zk("get", &path, e)),
        }
    }
    Ok(out)
}
