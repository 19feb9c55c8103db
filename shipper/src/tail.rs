//! File tailing: complete lines of files matching globs, as `system`
//! records, surviving rotation and restarts.
//!
//! Per path the tailer keeps `(inode, offset)` and stores it in the outbox
//! metadata (`tail:<path>`) in the same write batch as the lines it read, so
//! after a crash it resumes exactly after the last shipped line: no line is
//! shipped twice or skipped.
//!
//! Rotation:
//! - *rename* (`app.log` -> `app.log.1`, new `app.log`): the inode at the
//!   path changes. The tailer first drains the old file through the handle
//!   it holds (or, after a restart, the sibling file that has the old inode),
//!   then starts the new file at offset 0.
//! - *copytruncate*: the file shrinks below the offset; reading restarts at
//!   0. Lines written between the copy and the truncate are lost by that
//!   rotation scheme itself (as with every tailer).
//!
//! Only complete lines (ending in `\n`) are shipped; a line longer than
//! `max_line_bytes` is shipped in pieces of that size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemas::{Body, Record, SystemBody};
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbox, OutboxError};

#[derive(Debug, Clone)]
pub struct TailConfig {
    /// Paths or globs (`*`, `?`, `[...]`), re-expanded every poll.
    pub patterns: Vec<String>,
    pub source: String,
    pub subscription: String,
    pub poll: Duration,
    pub max_line_bytes: usize,
    /// Bytes read from one file per round, so one busy file cannot starve others.
    pub max_read_bytes: usize,
}

impl Default for TailConfig {
    fn default() -> Self {
        TailConfig {
            patterns: Vec::new(),
            source: String::new(),
            subscription: String::new(),
            poll: Duration::from_millis(250),
            max_line_bytes: 64 << 10,
            max_read_bytes: 4 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("invalid file pattern {pattern:?}: {message}")]
    Pattern { pattern: String, message: String },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

struct Tailed {
    inode: u64,
    offset: u64,
    file: Option<File>,
}

fn meta_key(path: &Path) -> Vec<u8> {
    format!("tail:{}", path.display()).into_bytes()
}

fn meta_value(inode: u64, offset: u64) -> Vec<u8> {
    format!("{inode} {offset}").into_bytes()
}

fn parse_meta(v: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (a, b) = s.split_once(' ')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Validates the patterns (so a typo fails at start-up, naming it).
pub fn check_patterns(patterns: &[String]) -> Result<(), TailError> {
    for p in patterns {
        glob::Pattern::new(p).map_err(|e| TailError::Pattern {
            pattern: p.clone(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

fn expand(patterns: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in patterns {
        match glob::glob(p) {
            Ok(paths) => out.extend(paths.filter_map(Result::ok).filter(|p| p.is_file())),
            Err(e) => tracing::warn!(pattern = %p, error = %e, "tail: bad pattern"),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Finds a file next to `path` with inode `inode` (where a rename rotation
/// moved the file we were reading).
fn find_rotated(path: &Path, inode: u64) -> Option<PathBuf> {
    let dir = path.parent()?;
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            let m = e.metadata().ok()?;
            (m.is_file() && m.ino() == inode).then(|| e.path())
        })
}

/// Reads whole lines from `file` starting at `offset`; returns each line
/// with the offset just after it (where reading resumes), and the offset
/// just after the last complete line.
fn read_lines(
    file: &mut File,
    offset: u64,
    config: &TailConfig,
) -> std::io::Result<(Vec<(String, u64)>, u64)> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.take(config.max_read_bytes as u64)
        .read_to_end(&mut buf)?;
    let max = config.max_line_bytes.max(1);
    let at = |i: usize| offset + i as u64;
    let mut lines = Vec::new();
    let mut consumed = 0usize;
    let mut start = 0usize;
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' {
            let mut line = &buf[start..i];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            // Pieces of an overlong line resume at their boundary; the last
            // one after the newline.
            let pieces = line.len().div_ceil(max);
            for (k, piece) in line.chunks(max).enumerate() {
                let end = if k + 1 == pieces {
                    at(i + 1)
                } else {
                    at(start + (k + 1) * max)
                };
                lines.push((String::from_utf8_lossy(piece).into_owned(), end));
            }
            if line.is_empty() {
                lines.push((String::new(), at(i + 1)));
            }
            start = i + 1;
            consumed = start;
        }
    }
    // A partial line longer than the cap is shipped in pieces anyway.
    if consumed == 0 && buf.len() >= config.max_line_bytes && config.max_line_bytes > 0 {
        let n = buf.len() / max * max;
        for (k, piece) in buf[..n].chunks(max).enumerate() {
            lines.push((
                String::from_utf8_lossy(piece).into_owned(),
                at((k + 1) * max),
            ));
        }
        consumed = n;
    }
    Ok((lines, at(consumed)))
}

fn records(lines: Vec<String>, path: &Path, config: &TailConfig) -> Vec<Record> {
    let now = schemas::time::now_nanos();
    let file = path.display().to_string();
    lines
        .into_iter()
        .map(|message| Record {
            seq: 0,
            ts: now,
            source: config.source.clone(),
            subscription: config.subscription.clone(),
            body: Body::System(SystemBody {
                facility: None,
                priority: None,
                message,
                file: Some(file.clone()),
            }),
        })
        .collect()
}

/// Ships everything readable from `file` from `state.offset` (the file at
/// key `path`), checkpointing `(inode, offset)` with each batch.
fn drain(
    outbox: &Outbox,
    path: &Path,
    file: &mut File,
    inode: u64,
    offset: &mut u64,
    config: &TailConfig,
) -> Result<bool, OutboxError> {
    let mut any = false;
    loop {
        let (lines, next) = match read_lines(file, *offset, config) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "tail: read failed");
                return Ok(any);
            }
        };
        if next == *offset {
            return Ok(any);
        }
        // One read can hold far more than a small outbox (`max_bytes`)
        // takes in one append; such an append would be refused forever.
        // Append in pieces of at most a quarter of it, each committed with
        // the offset just after its last line.
        let budget = (outbox.config().max_bytes.get() / 4).clamp(1, 4 << 20);
        let key = meta_key(path);
        let mut rest = lines.as_slice();
        while !rest.is_empty() {
            let (mut n, mut bytes) = (0, 0u64);
            while n < rest.len() && n < APPEND_MAX_RECORDS {
                // An estimate of the encoded record: the line plus its envelope.
                let size = rest[n].0.len() as u64 + 256;
                if n > 0 && bytes + size > budget {
                    break;
                }
                bytes += size;
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            let end = chunk[n - 1].1;
            let recs = records(chunk.iter().map(|(l, _)| l.clone()).collect(), path, config);
            outbox
                .append_with_meta(&recs, Some((&key, meta_value(inode, end))))
                .wait()?;
            *offset = end;
            any = true;
            rest = tail;
        }
    }
}

/// Records per append of the tailer.
const APPEND_MAX_RECORDS: usize = 10_000;

/// How long the tailer waits before trying again after the outbox refused
/// its lines.
const RETRY: Duration = Duration::from_secs(1);

/// Tails until `shutdown`. Blocking: run on its own thread.
///
/// When the outbox refuses lines (full past its block timeout, disk full)
/// the tailer logs it and tries again every [`RETRY`] from the positions
/// last committed with the lines, as after a restart: the files keep the
/// lines meanwhile, so none is lost or shipped twice.
pub fn run(
    outbox: &Outbox,
    config: &TailConfig,
    shutdown: &CancellationToken,
) -> Result<(), TailError> {
    check_patterns(&config.patterns)?;
    loop {
        match tail(outbox, config, shutdown) {
            Err(TailError::Outbox(OutboxError::Closed)) | Ok(()) => return Ok(()),
            Err(TailError::Outbox(e)) => {
                tracing::error!(error = %e, "tail: the outbox refused lines; retrying");
                let deadline = std::time::Instant::now() + RETRY;
                while std::time::Instant::now() < deadline {
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                    std::thread::sleep(config.poll.min(RETRY));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn tail(
    outbox: &Outbox,
    config: &TailConfig,
    shutdown: &CancellationToken,
) -> Result<(), TailError> {
    let mut files: BTreeMap<PathBuf, Tailed> = BTreeMap::new();
    while !shutdown.is_cancelled() {
        let mut busy = false;
        for path in expand(&config.patterns) {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !files.contains_key(&path) {
                let (inode, offset) = outbox
                    .get_meta(&meta_key(&path))?
                    .as_deref()
                    .and_then(parse_meta)
                    .unwrap_or((meta.ino(), 0));
                if inode != meta.ino() {
                    // Rotated while we were down: finish the old file first.
                    if let Some(old) = find_rotated(&path, inode) {
                        if let Ok(mut f) = File::open(&old) {
                            let mut off = offset;
                            drain(outbox, &path, &mut f, inode, &mut off, config)?;
                        }
                    } else {
                        tracing::warn!(path = %path.display(), "tail: file rotated while stopped and the old one is gone; lines may be missing");
                    }
                    files.insert(
                        path.clone(),
                        Tailed {
                            inode: meta.ino(),
                            offset: 0,
                            file: None,
                        },
                    );
                } else {
                    files.insert(
                        path.clone(),
                        Tailed {
                            inode,
                            offset,
                            file: None,
                        },
                    );
                }
            }
            let t = files.get_mut(&path).expect("inserted above");
            if t.inode != meta.ino() {
                // Renamed away: drain the old file through our handle.
                if let Some(mut f) = t.file.take() {
                    let mut off = t.offset;
                    busy |= drain(outbox, &path, &mut f, t.inode, &mut off, config)?;
                }
                t.inode = meta.ino();
                t.offset = 0;
            } else if meta.len() < t.offset {
                tracing::info!(path = %path.display(), "tail: file truncated; reading from the start");
                t.offset = 0;
            }
            if t.file.is_none() {
                match File::open(&path) {
                    Ok(f) => t.file = Some(f),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "tail: cannot open");
                        continue;
                    }
                }
            }
            if meta.len() > t.offset {
                let (inode, mut offset) = (t.inode, t.offset);
                if let Some(f) = t.file.as_mut() {
                    busy |= drain(outbox, &path, f, inode, &mut offset, config)?;
                }
                t.offset = offset;
            }
        }
        if !busy {
            std::thread::sleep(config.poll);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines_in(outbox: &Outbox) -> Vec<String> {
        outbox
            .read(0, 100_000, usize::MAX)
            .unwrap()
            .records
            .into_iter()
            .map(|r| match r.body {
                Body::System(s) => s.message,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// Runs the tailer until it has nothing left to read, then stops it.
    fn tail_for(outbox: &Outbox, config: &TailConfig, ms: u64) {
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            s2.cancel();
        });
        run(outbox, config, &stop).unwrap();
        t.join().unwrap();
    }

    fn config(pattern: &Path) -> TailConfig {
        TailConfig {
            patterns: vec![pattern.display().to_string()],
            source: "host:t".into(),
            subscription: "s".into(),
            poll: Duration::from_millis(5),
            ..TailConfig::default()
        }
    }

    #[test]
    fn rename_rotation_and_restarts_ship_every_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let outbox = Outbox::open(dir.path().join("ob"), crate::OutboxConfig::default()).unwrap();
        let cfg = config(&dir.path().join("*.log"));
        append(&log, "one\ntwo\nthr");
        tail_for(&outbox, &cfg, 60);
        assert_eq!(lines_in(&outbox), vec!["one", "two"], "partial line waits");
        append(&log, "ee\nfour\n");
        // Rotate while stopped: rename, then a new file.
        std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
        append(&log, "five\n");
        tail_for(&outbox, &cfg, 60);
        assert_eq!(
            lines_in(&outbox),
            vec!["one", "two", "three", "four", "five"]
        );
        // Rotate while running.
        let stop = CancellationToken::new();
        let (ob, c, s) = (outbox.clone(), cfg.clone(), stop.clone());
        let t = std::thread::spawn(move || run(&ob, &c, &s).unwrap());
        std::thread::sleep(Duration::from_millis(30));
        append(&log, "six\n");
        std::fs::rename(&log, dir.path().join("app.log.2")).unwrap();
        append(&dir.path().join("app.log.2"), "seven\n");
        append(&log, "eight\n");
        std::thread::sleep(Duration::from_millis(80));
        stop.cancel();
        t.join().unwrap();
        assert_eq!(
            lines_in(&outbox),
            vec!["one", "two", "three", "four", "five", "six", "seven", "eight"]
        );
        // A restart with nothing new ships nothing.
        tail_for(&outbox, &cfg, 40);
        assert_eq!(lines_in(&outbox).len(), 8);
    }

    #[test]
    fn copytruncate_restarts_from_the_beginning() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let outbox = Outbox::open(dir.path().join("ob"), crate::OutboxConfig::default()).unwrap();
        let cfg = config(&log);
        append(&log, "a long first line\nsecond\n");
        tail_for(&outbox, &cfg, 40);
        std::fs::copy(&log, dir.path().join("app.log.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        append(&log, "after\n");
        tail_for(&outbox, &cfg, 40);
        assert_eq!(
            lines_in(&outbox),
            vec!["a long first line", "second", "after"]
        );
    }

    #[test]
    fn overlong_lines_are_split_and_bad_patterns_named() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        let outbox = Outbox::open(dir.path().join("ob"), crate::OutboxConfig::default()).unwrap();
        let cfg = TailConfig {
            max_line_bytes: 4,
            ..config(&log)
        };
        append(&log, "abcdefghij\n");
        tail_for(&outbox, &cfg, 40);
        assert_eq!(lines_in(&outbox), vec!["abcd", "efgh", "ij"]);
        let e = check_patterns(&["/var/log/[".to_string()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/var/log/["), "{e}");
    }

    /// Regression: one read of a backlog (up to 4 MiB of lines, about 10 MB
    /// of records) was one append, which an outbox with a smaller byte
    /// limit refused forever (`AppendTooLarge`), so the tailer stopped.
    #[test]
    fn a_backlog_larger_than_a_small_outbox_is_appended_in_pieces() {
        const LINES: usize = 30_000;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("big.log");
        let text: String = (0..LINES)
            .map(|i| format!("backlog line {i:06} with some padding text\n"))
            .collect();
        append(&log, &text);
        let outbox = Outbox::open(
            dir.path().join("ob"),
            crate::OutboxConfig {
                max_bytes: std::num::NonZeroU64::new(1 << 20).unwrap(),
                ..crate::OutboxConfig::default()
            },
        )
        .unwrap();
        outbox.register_sink("s").wait().unwrap();
        let stop = CancellationToken::new();
        let (ob, cfg, s) = (outbox.clone(), config(&log), stop.clone());
        let tailer = std::thread::spawn(move || run(&ob, &cfg, &s).unwrap());
        // A sink draining the outbox as a shipper would.
        let (mut seen, mut after) = (Vec::new(), 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while seen.len() < LINES && std::time::Instant::now() < deadline {
            let b = outbox.read(after, 5_000, usize::MAX).unwrap();
            for r in &b.records {
                match &r.body {
                    Body::System(l) => seen.push(l.message.clone()),
                    other => panic!("{other:?}"),
                }
            }
            if b.last_seq > after {
                after = b.last_seq;
                outbox.ack("s", after, 0).wait().unwrap();
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        stop.cancel();
        tailer.join().unwrap();
        let want: Vec<String> = (0..LINES)
            .map(|i| format!("backlog line {i:06} with some padding text"))
            .collect();
        assert!(
            seen == want,
            "{} of {LINES} lines shipped in order",
            seen.len()
        );
    }

    #[test]
    fn an_overlong_line_resumes_at_a_piece_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        append(&log, "abcdefghij\nk\n");
        let cfg = TailConfig {
            max_line_bytes: 4,
            ..config(&log)
        };
        let mut f = File::open(&log).unwrap();
        let (lines, next) = read_lines(&mut f, 0, &cfg).unwrap();
        let ends: Vec<(&str, u64)> = lines.iter().map(|(l, e)| (l.as_str(), *e)).collect();
        assert_eq!(ends, vec![("abcd", 4), ("efgh", 8), ("ij", 11), ("k", 13)]);
        assert_eq!(next, 13);
        // Resuming after the first piece gives the same later pieces.
        let (again, _) = read_lines(&mut f, 4, &cfg).unwrap();
        assert_eq!(again, lines[1..].to_vec());
    }
}
