//! Kernel log source: `/dev/kmsg` records as `system` records.
//!
//! A kmsg record is `PRI,SEQ,TS_USEC,FLAGS[,...];MESSAGE` followed by
//! continuation lines that start with a space (`KEY=value`). PRI holds the
//! syslog priority (low 3 bits) and facility (the rest); TS_USEC is
//! microseconds since boot, turned into wall time with the boot time from
//! `/proc/uptime`.
//!
//! Reading `/dev/kmsg` returns one record per `read`; `EPIPE` means records
//! were overwritten in the ring buffer before we read them (they are gone,
//! and counted). The last shipped SEQ and the boot id are stored in the
//! outbox metadata in the same batch as the records, so a restart neither
//! re-ships nor skips kernel lines of the same boot. A regular file in the
//! same format can stand in for the device (tests, replay).

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemas::{Body, Record, SystemBody};
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbox, OutboxError};

const META_KEY: &[u8] = b"kmsg";
const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// One parsed kmsg record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsgLine {
    pub priority: u8,
    pub facility: u16,
    pub seq: u64,
    pub usec_since_boot: u64,
    pub message: String,
}

/// Parses one record (its first line; continuation lines are ignored).
pub fn parse(record: &str) -> Option<KmsgLine> {
    let first = record.lines().next()?;
    let (prefix, message) = first.split_once(';')?;
    let mut fields = prefix.split(',');
    let pri: u32 = fields.next()?.trim().parse().ok()?;
    let seq: u64 = fields.next()?.trim().parse().ok()?;
    let usec: u64 = fields.next()?.trim().parse().ok()?;
    Some(KmsgLine {
        priority: (pri & 7) as u8,
        facility: (pri >> 3) as u16,
        seq,
        usec_since_boot: usec,
        message: message.to_string(),
    })
}

pub fn facility_name(code: u16) -> String {
    FACILITIES
        .get(code as usize)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("facility{code}"))
}

/// Boot time as Unix nanoseconds, from `/proc/uptime`.
pub fn boot_time_nanos() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let up: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(schemas::time::now_nanos() - (up * 1e9) as i64)
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct KmsgConfig {
    pub path: PathBuf,
    pub source: String,
    pub subscription: String,
    pub poll: Duration,
}

fn to_record(line: &KmsgLine, boot_nanos: i64, config: &KmsgConfig) -> Record {
    Record {
        seq: 0,
        ts: boot_nanos + (line.usec_since_boot as i64) * 1_000,
        source: config.source.clone(),
        subscription: config.subscription.clone(),
        body: Body::System(SystemBody {
            facility: Some(facility_name(line.facility)),
            priority: Some(line.priority),
            message: line.message.clone(),
            file: None,
        }),
    }
}

/// Reads kernel records until `shutdown`, appending them to `outbox`.
/// Blocking: run on its own thread.
pub fn run(
    outbox: &Outbox,
    config: &KmsgConfig,
    shutdown: &CancellationToken,
) -> Result<(), OutboxError> {
    let boot = boot_id();
    let mut last_seq: Option<u64> = match outbox.get_meta(META_KEY)? {
        Some(v) => {
            let text = String::from_utf8_lossy(&v).into_owned();
            match text.split_once(' ') {
                Some((id, seq)) if id == boot => seq.parse().ok(),
                _ => None,
            }
        }
        None => None,
    };
    let boot_nanos = boot_time_nanos().unwrap_or(0);
    let is_device = std::fs::metadata(&config.path)
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false);
    let mut file = match open(&config.path, is_device) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(path = %config.path.display(), error = %e, "kmsg: cannot open; kernel log not shipped");
            return Ok(());
        }
    };
    let mut pending = String::new();
    let mut buf = vec![0u8; 16 << 10];
    while !shutdown.is_cancelled() {
        let mut lines: Vec<KmsgLine> = Vec::new();
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = String::from_utf8_lossy(&buf[..n]);
                    if is_device {
                        lines.extend(parse(&chunk));
                    } else {
                        pending.push_str(&chunk);
                        while let Some(pos) = pending.find('\n') {
                            let line: String = pending.drain(..=pos).collect();
                            if !line.starts_with(' ') {
                                lines.extend(parse(&line));
                            }
                        }
                    }
                    if lines.len() >= 1000 {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // EPIPE: the ring buffer overwrote records we had not read.
                Err(e) if e.raw_os_error() == Some(32) => {
                    tracing::warn!("kmsg: kernel ring buffer overwrote unread records");
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "kmsg: read failed");
                    break;
                }
            }
        }
        lines.retain(|l| last_seq.is_none_or(|s| l.seq > s));
        if let Some(max) = lines.iter().map(|l| l.seq).max() {
            let records: Vec<Record> = lines
                .iter()
                .map(|l| to_record(l, boot_nanos, config))
                .collect();
            let meta = format!("{boot} {max}").into_bytes();
            outbox
                .append_with_meta(&records, Some((META_KEY, meta)))
                .wait()?;
            last_seq = Some(max);
        } else {
            std::thread::sleep(config.poll);
        }
    }
    Ok(())
}

fn open(path: &Path, device: bool) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    if device {
        o.custom_flags(libc::O_NONBLOCK);
    }
    o.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_priority_facility_seq_and_time() {
        let l = parse("30,1234,5140900,-;systemd[1]: Started foo.\n SUBSYSTEM=x\n").unwrap();
        assert_eq!(
            (l.priority, l.facility, l.seq, l.usec_since_boot),
            (6, 3, 1234, 5_140_900)
        );
        assert_eq!(l.message, "systemd[1]: Started foo.");
        assert_eq!(facility_name(l.facility), "daemon");
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse("x,1,2,-;m"), None);
    }

    #[test]
    fn boot_time_is_in_the_past() {
        let b = boot_time_nanos().unwrap();
        assert!(b > 0 && b < schemas::time::now_nanos());
    }

    #[test]
    fn a_kmsg_file_is_shipped_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let kmsg = dir.path().join("kmsg");
        std::fs::write(&kmsg, "6,1,100,-;first\n SUBSYSTEM=a\n4,2,200,-;second\n").unwrap();
        let outbox = Outbox::open(dir.path().join("ob"), crate::OutboxConfig::default()).unwrap();
        let config = KmsgConfig {
            path: kmsg.clone(),
            source: "host:t".into(),
            subscription: "s".into(),
            poll: Duration::from_millis(5),
        };
        let run_once = |extra: &str| {
            if !extra.is_empty() {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&kmsg)
                    .unwrap();
                f.write_all(extra.as_bytes()).unwrap();
            }
            let stop = CancellationToken::new();
            let s2 = stop.clone();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                s2.cancel();
            });
            run(&outbox, &config, &stop).unwrap();
            t.join().unwrap();
        };
        run_once("");
        run_once("3,3,300,-;third\n");
        let all = outbox.read(0, 100, usize::MAX).unwrap().records;
        let msgs: Vec<(String, Option<u8>)> = all
            .iter()
            .map(|r| match &r.body {
                Body::System(s) => (s.message.clone(), s.priority),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            msgs,
            vec![
                ("first".into(), Some(6)),
                ("second".into(), Some(4)),
                ("third".into(), Some(3))
            ]
        );
        let boot = boot_time_nanos().unwrap();
        assert!(
            (all[0].ts - (boot + 100_000)).abs() < 1_000_000_000,
            "boot-relative time made wall time"
        );
    }
}
