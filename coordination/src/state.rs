//! Small shared state kept in ZooKeeper under `/state/<key>` (alert state
//! snapshots, watermarks), read with its version and written with a
//! compare-and-set on that version, optionally fenced by a subscription's
//! epoch in the same transaction.
//!
//! Values are bounded by `max_state_bytes` (ZooKeeper refuses nodes over
//! 1 MiB: `jute.maxbuffer`); larger ones are refused before anything is
//! sent. ZooKeeper keeps its whole tree in memory on every server: this is
//! for small, hot state, not for data.

use zookeeper_client as zk;

use crate::coordinator::{epochs_path, Coordinator, STATE};
use crate::error::{FenceError, StateError};
use crate::names;

/// A value and the version to pass to [`Coordinator::set_if_version`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub data: Vec<u8>,
    pub version: i32,
}

fn state_path(key: &str) -> Result<String, StateError> {
    names::check_state_key(key).map_err(|reason| StateError::Key {
        key: key.to_string(),
        reason,
    })?;
    Ok(format!("{STATE}/{key}"))
}

impl Coordinator {
    /// The value of `key` and its version, or `None` when it does not exist.
    pub async fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        let path = state_path(key)?;
        let (client, _) = self.shared.client().ok_or(StateError::NoSession)?;
        match client.get_data(&path).await {
            Ok((data, stat)) => Ok(Some(Versioned {
                data,
                version: stat.version,
            })),
            Err(zk::Error::NoNode) => Ok(None),
            Err(source) => Err(StateError::Zk {
                op: "get",
                key: key.to_string(),
                source,
            }),
        }
    }

    /// Writes `data` to `key` if its version is still `expected`
    /// (`None`: only if it does not exist yet) and answers the new version.
    /// [`StateError::Conflict`] when someone else wrote since.
    pub async fn set_if_version(
        &self,
        key: &str,
        data: &[u8],
        expected: Option<i32>,
    ) -> Result<i32, StateError> {
        let r = self.write(key, data, expected, None).await;
        if let Err(e) = &r {
            self.shared.metrics.state_refused(e.reason());
        }
        r
    }

    /// Like [`Coordinator::set_if_version`], in one transaction with the
    /// check that this coordinator still owns `subscription` at `epoch`
    /// (see [`Coordinator::fence`]): a deposed owner's late write is
    /// refused with [`StateError::Fence`].
    pub async fn set_if_version_fenced(
        &self,
        key: &str,
        data: &[u8],
        expected: Option<i32>,
        subscription: &str,
        epoch: u64,
    ) -> Result<i32, StateError> {
        let r = self
            .write(key, data, expected, Some((subscription, epoch)))
            .await;
        if let Err(e) = &r {
            self.shared.metrics.state_refused(e.reason());
        }
        r
    }

    async fn write(
        &self,
        key: &str,
        data: &[u8],
        expected: Option<i32>,
        fence: Option<(&str, u64)>,
    ) -> Result<i32, StateError> {
        let path = state_path(key)?;
        let limit = self.shared.cfg.max_state_bytes;
        if data.len() > limit {
            return Err(StateError::TooLarge {
                key: key.to_string(),
                size: data.len(),
                limit,
            });
        }
        let zk_err = |op, source| StateError::Zk {
            op,
            key: key.to_string(),
            source,
        };
        let (client, fence_check) = match fence {
            Some((sub, epoch)) => {
                let (client, claim) = self.local_claim(sub, epoch)?;
                (client, Some((epochs_path(sub), claim.epoch_version)))
            }
            None => (self.shared.client().ok_or(StateError::NoSession)?.0, None),
        };
        let mut created_parent = false;
        loop {
            let mut w = client.new_multi_writer();
            let ops = |w: &mut zk::MultiWriter<'_>| -> Result<(), zk::Error> {
                if let Some((p, v)) = &fence_check {
                    w.add_check_version(p, *v)?;
                }
                match expected {
                    Some(v) => w.add_set_data(&path, data, Some(v)),
                    None => w.add_create(
                        &path,
                        data,
                        &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
                    ),
                }
            };
            ops(&mut w).map_err(|e| zk_err("prepare", e))?;
            match w.commit().await {
                Ok(mut results) => {
                    let last = results.pop();
                    return Ok(match last {
                        Some(zk::MultiWriteResult::SetData { stat }) => stat.version,
                        Some(zk::MultiWriteResult::Create { stat, .. }) => stat.version.max(0),
                        _ => expected.map_or(0, |v| v + 1),
                    });
                }
                Err(zk::MultiWriteError::OperationFailed { index, source }) => match source {
                    _ if index == 0 && fence_check.is_some() => {
                        // The epoch check failed: another member took over.
                        let (sub, epoch) = fence.unwrap_or_default();
                        self.deposed(sub, epoch);
                        return Err(StateError::Fence(FenceError::Deposed {
                            subscription: sub.to_string(),
                            epoch,
                        }));
                    }
                    zk::Error::NoNode if expected.is_none() && !created_parent => {
                        // The parent of a new key does not exist yet.
                        let parent = &path[..path.rfind('/').unwrap_or(path.len())];
                        match client
                            .mkdir(
                                parent,
                                &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
                            )
                            .await
                        {
                            Ok(()) => {}
                            Err(e) => return Err(zk_err("create parent", e)),
                        }
                        created_parent = true;
                        continue;
                    }
                    zk::Error::BadVersion | zk::Error::NodeExists | zk::Error::NoNode => {
                        return Err(StateError::Conflict {
                            key: key.to_string(),
                            expected,
                        })
                    }
                    other => return Err(zk_err("write", other)),
                },
                Err(e) => {
                    let source: zk::Error = e.into();
                    return Err(match fence {
                        Some((sub, epoch)) => StateError::Fence(FenceError::Unavailable {
                            subscription: sub.to_string(),
                            epoch,
                            source,
                        }),
                        None => zk_err("write", source),
                    });
                }
            }
        }
    }
}

/// Most items one queue ([`Coordinator::enqueue`]) holds; beyond it an
/// enqueue is refused ([`StateError::QueueFull`]).
pub const MAX_QUEUE_ITEMS: i32 = 1_000;

impl Coordinator {
    /// Appends `item` to the queue at `key` (a persistent sequential node
    /// under `/state/<key>`), for whoever [`Coordinator::take`]s from it.
    /// Refused when the queue holds [`MAX_QUEUE_ITEMS`] or the item is over
    /// `max_state_bytes`.
    pub async fn enqueue(&self, key: &str, item: &[u8]) -> Result<(), StateError> {
        let path = state_path(key)?;
        let limit = self.shared.cfg.max_state_bytes;
        if item.len() > limit {
            return Err(StateError::TooLarge {
                key: key.to_string(),
                size: item.len(),
                limit,
            });
        }
        let zk_err = |op, source| StateError::Zk {
            op,
            key: key.to_string(),
            source,
        };
        let (client, _) = self.shared.client().ok_or(StateError::NoSession)?;
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        match client.get_data(&path).await {
            Ok((_, stat)) if stat.num_children >= MAX_QUEUE_ITEMS => {
                return Err(StateError::QueueFull {
                    key: key.to_string(),
                    limit: MAX_QUEUE_ITEMS,
                })
            }
            Ok(_) => {}
            Err(zk::Error::NoNode) => match client.mkdir(&path, &options).await {
                Ok(()) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(zk_err("create queue", e)),
            },
            Err(e) => return Err(zk_err("stat queue", e)),
        }
        let sequential = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
        client
            .create(&format!("{path}/i-"), item, &sequential)
            .await
            .map(|_| ())
            .map_err(|e| zk_err("enqueue", e))
    }

    /// Takes up to `max` items of the queue at `key`, oldest first. Each
    /// item goes to exactly one taker (the one whose delete succeeded); one
    /// that dies after its delete loses the item.
    pub async fn take(&self, key: &str, max: usize) -> Result<Vec<Vec<u8>>, StateError> {
        let path = state_path(key)?;
        let zk_err = |op, source| StateError::Zk {
            op,
            key: key.to_string(),
            source,
        };
        let (client, _) = self.shared.client().ok_or(StateError::NoSession)?;
        let mut children = match client.list_children(&path).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(zk_err("list queue", e)),
        };
        children.sort();
        let mut out = Vec::new();
        for child in children.into_iter().take(max) {
            let item = format!("{path}/{child}");
            let (data, stat) = match client.get_data(&item).await {
                Ok(d) => d,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(zk_err("read queue item", e)),
            };
            match client.delete(&item, Some(stat.version)).await {
                Ok(()) => out.push(data),
                Err(zk::Error::NoNode | zk::Error::BadVersion) => continue,
                Err(e) => return Err(zk_err("take queue item", e)),
            }
        }
        Ok(out)
    }
}
