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
//! `max_line_bytes` is redacted first and then shipped in pieces of that
//! size (all in one append, committed with the offset after the line), so a
//! secret is never cut in two halves that redaction would not recognise.
//! An unterminated line that already fills `max_line_bytes` is shipped in
//! pieces too, up to a cut that splits no secret.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use schemas::{Body, Record, SystemBody};
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbox, OutboxError, Receipt, Ticket};
use crate::redact::Redactor;

#[derive(Clone)]
pub struct TailConfig {
    /// Paths or globs (`*`, `?`, `[...]`), re-expanded every poll.
    pub patterns: Vec<String>,
    pub source: String,
    pub subscription: String,
    pub poll: Duration,
    pub max_line_bytes: usize,
    /// Bytes read from one file per round, so one busy file cannot starve
    /// others; also the read buffer's size.
    pub max_read_bytes: usize,
    /// Redacts overlong lines before they are cut into pieces (the shipper's
    /// redaction, which runs again on every record before it leaves).
    pub redactor: Option<Arc<Redactor>>,
}

impl std::fmt::Debug for TailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailConfig")
            .field("patterns", &self.patterns)
            .field("source", &self.source)
            .field("subscription", &self.subscription)
            .field("poll", &self.poll)
            .field("max_line_bytes", &self.max_line_bytes)
            .field("max_read_bytes", &self.max_read_bytes)
            .field("redactor", &self.redactor.is_some())
            .finish()
    }
}

impl Default for TailConfig {
    fn default() -> Self {
        TailConfig {
            patterns: Vec::new(),
            source: String::new(),
            subscription: String::new(),
            poll: Duration::from_millis(250),
            max_line_bytes: 64 << 10,
            max_read_bytes: 64 << 10,
            redactor: None,
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
    /// The checkpoint last submitted for this path (what the next append
    /// expects to find; see [`Outbox::append_after`]).
    stored: Option<Vec<u8>>,
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

/// What one line of a file becomes: one record, or several pieces of an
/// overlong line, shipped in one append with the offset after the line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unit {
    pieces: Vec<String>,
    /// Where reading resumes after this unit.
    end: u64,
}

/// Bytes of an unterminated overlong line kept back from a cut (and read
/// again with what follows), so that a secret that straddles the place the
/// line would be cut is seen whole by the redaction and the cut moved before
/// it.
const CUT_LOOKAHEAD: usize = 4096;

/// Text of `bytes` with invalid UTF-8 replaced (U+FFFD), and a way back
/// from a position in the text to one in `bytes`.
struct Lossy {
    text: String,
    /// (text position, byte position, valid) at the start of each chunk.
    segments: Vec<(usize, usize, bool)>,
}

impl Lossy {
    fn new(bytes: &[u8]) -> Lossy {
        let mut text = String::with_capacity(bytes.len());
        let mut segments = Vec::new();
        let mut at = 0;
        for chunk in bytes.utf8_chunks() {
            segments.push((text.len(), at, true));
            text.push_str(chunk.valid());
            at += chunk.valid().len();
            if !chunk.invalid().is_empty() {
                segments.push((text.len(), at, false));
                text.push(char::REPLACEMENT_CHARACTER);
                at += chunk.invalid().len();
            }
        }
        Lossy { text, segments }
    }

    /// The byte position of text position `pos` (a char boundary).
    fn byte_at(&self, pos: usize) -> usize {
        let i = self.segments.partition_point(|(t, _, _)| *t <= pos);
        match i.checked_sub(1).map(|i| self.segments[i]) {
            Some((t, b, true)) => b + (pos - t),
            // Inside or at a replacement character: before the invalid bytes.
            Some((_, b, false)) => b,
            None => 0,
        }
    }
}

/// Cuts `text` into pieces of at most `max` bytes, on char boundaries (a
/// piece holds at least one char).
fn pieces(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(text.len() / max.max(1) + 1);
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = max.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            cut = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    out
}

/// An overlong text redacted first and then cut into pieces, so that no
/// secret is split between two pieces (where neither half is recognised).
fn redacted_pieces(text: String, config: &TailConfig) -> Vec<String> {
    let mut text = text;
    if let Some(r) = &config.redactor {
        r.scrub(&mut text);
    }
    pieces(&text, config.max_line_bytes.max(1))
}

/// Reads whole lines from `file` starting at `offset` into `buf` (reused
/// between calls); returns one [`Unit`] per line and the offset just after
/// the last complete line. A line longer than `max_line_bytes` is redacted
/// and cut into pieces of one unit; an unterminated line that already fills
/// `max_line_bytes` is shipped in pieces up to a cut that splits no secret.
fn read_lines(
    file: &mut File,
    offset: u64,
    config: &TailConfig,
    buf: &mut Vec<u8>,
) -> std::io::Result<(Vec<Unit>, u64)> {
    file.seek(SeekFrom::Start(offset))?;
    buf.clear();
    // Exactly one window: growing by doubling would make it twice that.
    buf.reserve_exact(config.max_read_bytes);
    file.take(config.max_read_bytes as u64).read_to_end(buf)?;
    let max = config.max_line_bytes.max(1);
    let at = |i: usize| offset + i as u64;
    let mut units = Vec::new();
    let mut consumed = 0usize;
    let mut start = 0usize;
    while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
        let i = start + nl;
        let mut line = &buf[start..i];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let text = String::from_utf8_lossy(line).into_owned();
        let pieces = if text.len() <= max {
            vec![text]
        } else {
            redacted_pieces(text, config)
        };
        units.push(Unit {
            pieces,
            end: at(i + 1),
        });
        start = i + 1;
        consumed = start;
    }
    // An unterminated line that is already overlong is shipped in pieces
    // anyway, up to a cut that leaves a lookahead (or the whole window).
    if consumed == 0 && buf.len() >= max {
        let lossy = Lossy::new(buf);
        let keep = CUT_LOOKAHEAD.min(lossy.text.len() / 2);
        let mut want = lossy.text.len() - keep;
        while !lossy.text.is_char_boundary(want) {
            want -= 1;
        }
        let cut = match &config.redactor {
            Some(r) => r.safe_cut(&lossy.text, want),
            None => want,
        };
        let (cut, bytes) = match lossy.byte_at(cut) {
            0 => (lossy.text.len(), buf.len()),
            b => (cut, b),
        };
        units.push(Unit {
            pieces: redacted_pieces(lossy.text[..cut].to_string(), config),
            end: at(bytes),
        });
        consumed = bytes;
    }
    Ok((units, at(consumed)))
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

/// Ships everything readable from `file` from `offset` (the file at key
/// `path`), checkpointing `(inode, offset)` with each append. Up to
/// [`APPENDS_IN_FLIGHT`] appends are submitted before the oldest is waited
/// for, so reading and encoding overlap the outbox's syncs and several
/// appends share one; each expects the checkpoint the previous one stores,
/// so if one is not stored none after it is (no line skipped), and an error
/// sends the tailer back to the last stored checkpoint.
#[allow(clippy::too_many_arguments)]
fn drain(
    outbox: &Outbox,
    path: &Path,
    file: &mut File,
    inode: u64,
    offset: &mut u64,
    stored: &mut Option<Vec<u8>>,
    config: &TailConfig,
    buf: &mut Vec<u8>,
) -> Result<bool, OutboxError> {
    let mut any = false;
    let mut in_flight: VecDeque<Ticket<Receipt>> = VecDeque::new();
    loop {
        let (units, next) = match read_lines(file, *offset, config, buf) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "tail: read failed");
                break;
            }
        };
        if next == *offset {
            break;
        }
        // One read can hold more than a small outbox (`max_bytes`) takes in
        // one append; such an append would be refused forever. Append in
        // pieces of at most a quarter of it, each committed with the offset
        // just after its last line. The pieces of one overlong line always
        // travel in one append, so a crash can neither ship nor lose half
        // a line.
        let budget = (outbox.config().max_bytes.get() / 4).clamp(1, 4 << 20);
        let key = meta_key(path);
        let mut rest = units.into_iter().peekable();
        while rest.peek().is_some() {
            let (mut bytes, mut end) = (0u64, *offset);
            let mut lines = Vec::new();
            while let Some(u) = rest.peek() {
                // An estimate of the encoded records: the text plus envelopes.
                let size: u64 = u.pieces.iter().map(|p| p.len() as u64 + 256).sum();
                if !lines.is_empty()
                    && (bytes + size > budget || lines.len() + u.pieces.len() > APPEND_MAX_RECORDS)
                {
                    break;
                }
                bytes += size;
                let u = rest.next().expect("peeked");
                end = u.end;
                lines.extend(u.pieces);
            }
            let recs = records(lines, path, config);
            let value = meta_value(inode, end);
            in_flight.push_back(outbox.append_after(&recs, &key, stored.take(), value.clone()));
            *stored = Some(value);
            if in_flight.len() >= APPENDS_IN_FLIGHT {
                if let Some(t) = in_flight.pop_front() {
                    t.wait()?;
                }
            }
            *offset = end;
            any = true;
        }
    }
    for t in in_flight {
        t.wait()?;
    }
    Ok(any)
}

/// Appends of one file submitted and not yet known durable.
const APPENDS_IN_FLIGHT: usize = 2;

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
    // One read buffer for every file, reused: it grows to `max_read_bytes`.
    let mut buf = Vec::new();
    while !shutdown.is_cancelled() {
        let mut busy = false;
        for path in expand(&config.patterns) {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !files.contains_key(&path) {
                let mut stored = outbox.get_meta(&meta_key(&path))?;
                let (inode, offset) = stored
                    .as_deref()
                    .and_then(parse_meta)
                    .unwrap_or((meta.ino(), 0));
                let mut t = Tailed {
                    inode,
                    offset,
                    file: None,
                    stored: None,
                };
                if inode != meta.ino() {
                    // Rotated while we were down: finish the old file first.
                    if let Some(old) = find_rotated(&path, inode) {
                        if let Ok(mut f) = File::open(&old) {
                            let mut off = offset;
                            drain(
                                outbox,
                                &path,
                                &mut f,
                                inode,
                                &mut off,
                                &mut stored,
                                config,
                                &mut buf,
                            )?;
                        }
                    } else {
                        tracing::warn!(path = %path.display(), "tail: file rotated while stopped and the old one is gone; lines may be missing");
                    }
                    t.inode = meta.ino();
                    t.offset = 0;
                }
                t.stored = stored;
                files.insert(path.clone(), t);
            }
            let t = files.get_mut(&path).expect("inserted above");
            if t.inode != meta.ino() {
                // Renamed away: drain the old file through our handle.
                if let Some(mut f) = t.file.take() {
                    let mut off = t.offset;
                    busy |= drain(
                        outbox,
                        &path,
                        &mut f,
                        t.inode,
                        &mut off,
                        &mut t.stored,
                        config,
                        &mut buf,
                    )?;
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
                    busy |= drain(
                        outbox,
                        &path,
                        f,
                        inode,
                        &mut offset,
                        &mut t.stored,
                        config,
                        &mut buf,
                    )?;
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
    fn an_overlong_line_is_one_unit_of_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        append(&log, "abcdefghij\nk\n");
        let cfg = TailConfig {
            max_line_bytes: 4,
            ..config(&log)
        };
        let mut f = File::open(&log).unwrap();
        let mut buf = Vec::new();
        let (units, next) = read_lines(&mut f, 0, &cfg, &mut buf).unwrap();
        let got: Vec<(Vec<&str>, u64)> = units
            .iter()
            .map(|u| (u.pieces.iter().map(String::as_str).collect(), u.end))
            .collect();
        assert_eq!(
            got,
            vec![(vec!["abcd", "efgh", "ij"], 11), (vec!["k"], 13)],
            "the pieces of a line resume after the line, together"
        );
        assert_eq!(next, 13);
    }

    fn redacting(pattern: &Path) -> TailConfig {
        TailConfig {
            redactor: Some(Arc::new(
                Redactor::new(&crate::redact::RedactConfig::default()).unwrap(),
            )),
            ..config(pattern)
        }
    }

    /// Regression: a secret on an overlong line was cut in two pieces, and
    /// neither half was recognised by the redaction of single records.
    #[test]
    fn an_overlong_line_is_redacted_before_it_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        let token = "ghp_Zq3xT7vN2mK8pL4rW9sY6uB1cD5eF0gH2jQ4";
        // The 64-byte piece boundary falls inside each secret.
        let line = format!(
            "{} {token} {} password=hunter2-but-longer {}\n",
            "x".repeat(50),
            "y".repeat(40),
            "z".repeat(70)
        );
        append(&log, &line);
        let cfg = TailConfig {
            max_line_bytes: 64,
            ..redacting(&log)
        };
        let mut f = File::open(&log).unwrap();
        let (units, _) = read_lines(&mut f, 0, &cfg, &mut Vec::new()).unwrap();
        assert_eq!(units.len(), 1);
        assert!(units[0].pieces.len() > 1);
        assert!(units[0].pieces.iter().all(|p| p.len() <= 64));
        let joined = units[0].pieces.concat();
        assert!(
            !joined.contains("ghp_") && !joined.contains("Zq3xT7"),
            "{joined}"
        );
        assert!(!joined.contains("hunter"), "{joined}");
        assert!(joined.contains("password=[REDACTED]"), "{joined}");
    }

    #[test]
    fn an_unterminated_overlong_line_is_cut_before_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        let token = "ghp_Zq3xT7vN2mK8pL4rW9sY6uB1cD5eF0gH2jQ4";
        // Read windows of 8192 bytes: the first cut would fall at 4096,
        // inside the token at 4080..4120.
        let text = format!("{} {token} {}", "a".repeat(4079), "b".repeat(4880));
        assert_eq!(text.find("ghp_"), Some(4080));
        append(&log, &text);
        let cfg = TailConfig {
            max_line_bytes: 64,
            max_read_bytes: 8192,
            ..redacting(&log)
        };
        let mut f = File::open(&log).unwrap();
        let mut buf = Vec::new();
        let (mut offset, mut shipped) = (0, Vec::new());
        loop {
            let (units, next) = read_lines(&mut f, offset, &cfg, &mut buf).unwrap();
            if next == offset {
                break;
            }
            for u in units {
                shipped.extend(u.pieces);
            }
            offset = next;
        }
        assert!(offset > 4120, "the token was shipped: {offset}");
        for piece in &shipped {
            for k in 0..token.len() - 6 {
                let fragment = &token[k..k + 6];
                assert!(!piece.contains(fragment), "{fragment} in {piece}");
            }
        }
        assert!(shipped.iter().any(|p| p.contains("[REDACTED]")));
    }

    #[test]
    fn invalid_utf8_in_an_unterminated_line_maps_back_to_file_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        let mut bytes = vec![b'a'; 100];
        bytes[10] = 0xff;
        bytes[50] = 0xfe;
        std::fs::write(&log, &bytes).unwrap();
        let cfg = TailConfig {
            max_line_bytes: 16,
            ..config(&log)
        };
        let mut f = File::open(&log).unwrap();
        let (units, next) = read_lines(&mut f, 0, &cfg, &mut Vec::new()).unwrap();
        // 100 bytes, half kept back: the cut is at byte 50 (the text has
        // two more bytes per replacement character before it).
        assert_eq!(next, units[0].end);
        assert!(next > 0 && next <= 100, "{next}");
        let shipped: String = units[0].pieces.concat();
        assert_eq!(
            shipped.replace(char::REPLACEMENT_CHARACTER, "?").len() as u64,
            next,
            "{shipped}"
        );
    }
}
