//! Checkpoints: consistent copies of the store in `--checkpoint-dir`.
//!
//! Each checkpoint is a RocksDB checkpoint (hard links to the immutable SST
//! files plus copies of the small mutable files) named
//! `checkpoint-<UTC time>`; it is created as `<name>.partial` and renamed
//! when complete, so a directory without the suffix is always whole. The
//! newest `keep` are kept. To restore, stop the collector and start it with
//! `--data-dir` pointing at (a copy of) a checkpoint directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::logs::{LogStore, StoreError};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint into {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
}

const PREFIX: &str = "checkpoint-";

/// Takes a checkpoint into `dir` and prunes all but the newest `keep`.
pub fn take(
    store: &dyn LogStore,
    dir: &Path,
    keep: usize,
    metrics: &Metrics,
) -> Result<PathBuf, CheckpointError> {
    let r = take_inner(store, dir, keep);
    match &r {
        Ok(p) => {
            metrics.checkpoints.inc();
            tracing::info!(path = %p.display(), "checkpoint taken");
        }
        Err(e) => {
            metrics.checkpoint_failures.inc();
            tracing::error!(error = %e, "checkpoint failed");
        }
    }
    r
}

fn take_inner(store: &dyn LogStore, dir: &Path, keep: usize) -> Result<PathBuf, CheckpointError> {
    let dir_err = |source| CheckpointError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    // Checkpoints hold every tenant's records: the directory is 0700.
    sesam_common::files::private_dir(dir).map_err(dir_err)?;
    let stamp = schemas::time::rfc3339_from_nanos(schemas::time::now_nanos()).replace(':', "-");
    let mut name = format!("{PREFIX}{stamp}");
    let mut n = 1;
    while dir.join(&name).exists() {
        n += 1;
        name = format!("{PREFIX}{stamp}-{n}");
    }
    let final_path = dir.join(&name);
    let partial = dir.join(format!("{name}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(dir_err)?;
    }
    store
        .checkpoint(&partial)
        .map_err(|source| CheckpointError::Store {
            path: partial.clone(),
            source,
        })?;
    std::fs::rename(&partial, &final_path).map_err(dir_err)?;
    prune(dir, keep).map_err(dir_err)?;
    Ok(final_path)
}

/// Checkpoint directories in `dir`, oldest first.
pub fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && !n.ends_with(".partial"))
                && p.is_dir()
        })
        .collect();
    out.sort();
    Ok(out)
}

fn prune(dir: &Path, keep: usize) -> std::io::Result<()> {
    let all = list(dir)?;
    let excess = all.len().saturating_sub(keep.max(1));
    for p in &all[..excess] {
        std::fs::remove_dir_all(p)?;
    }
    // Leftovers of checkpoints interrupted by a crash.
    for e in std::fs::read_dir(dir)?.filter_map(Result::ok) {
        let p = e.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(".partial"))
        {
            std::fs::remove_dir_all(&p)?;
        }
    }
    Ok(())
}

/// Takes a checkpoint every `interval` until `shutdown`.
pub async fn run(
    store: Arc<dyn LogStore>,
    dir: PathBuf,
    keep: usize,
    interval: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let (store, dir, metrics) = (store.clone(), dir.clone(), metrics.clone());
        // Errors are logged and counted inside `take`; the next interval retries.
        let _ =
            tokio::task::spawn_blocking(move || take(store.as_ref(), &dir, keep, &metrics)).await;
    }
}
