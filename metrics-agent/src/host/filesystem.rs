//! Mounted filesystems (`/proc/1/mounts`, else `/proc/self/mounts`) and
//! `statvfs`, as `node_filesystem_*{device,fstype,mountpoint}`.
//!
//! Skipped like Debian's node_exporter 1.5: mount points under `/dev`,
//! `/proc`, `/run`, `/sys`, `/mnt`, `/media`, `/var/lib/docker/*`,
//! `/var/lib/containers/storage/*`, and pseudo filesystem types (autofs,
//! binfmt_misc, bpf, cgroup, cgroup2, configfs, debugfs, devpts,
//! devtmpfs, fusectl, hugetlbfs, iso9660, mqueue, nsfs, overlay, proc,
//! procfs, pstore, rpc_pipefs, securityfs, selinuxfs, squashfs, sysfs,
//! tracefs). A mount point whose `statvfs` fails is skipped and counted
//! in the collector's error.

use std::path::Path;

use super::{parse_err, read, HostError};
use crate::sample::{Kind, Sample};

const FS_TYPES_EXCLUDED: [&str; 24] = [
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
];

/// A mount worth reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
    pub readonly: bool,
}

fn mountpoint_excluded(mp: &str) -> bool {
    for dir in ["/dev", "/proc", "/run", "/sys", "/mnt", "/media"] {
        if mp == dir || mp.starts_with(&format!("{dir}/")) {
            return true;
        }
    }
    for dir in ["/var/lib/docker/", "/var/lib/containers/storage/"] {
        if mp.len() > dir.len() && mp.starts_with(dir) {
            return true;
        }
    }
    false
}

/// Octal escapes of `/proc/mounts` (`\040` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of `text` (in `/proc/mounts` format) that are reported.
pub fn mounts(text: &str) -> Vec<Mount> {
    let mut out: Vec<Mount> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let m = Mount {
            device: unescape(f[0]),
            mountpoint: unescape(f[1]),
            fstype: f[2].to_string(),
            readonly: f[3].split(',').any(|o| o == "ro"),
        };
        if FS_TYPES_EXCLUDED.contains(&m.fstype.as_str()) || mountpoint_excluded(&m.mountpoint) {
            continue;
        }
        // The same mount listed twice (bind mounts, namespaces) would make
        // duplicate series.
        if out
            .iter()
            .any(|o| o.device == m.device && o.mountpoint == m.mountpoint && o.fstype == m.fstype)
        {
            continue;
        }
        out.push(m);
    }
    out
}

pub fn collect(proc_dir: &Path, now_ms: i64) -> Result<Vec<Sample>, HostError> {
    let text = match read(&proc_dir.join("1/mounts")) {
        Ok(t) => t,
        Err(_) => read(&proc_dir.join("self/mounts"))?,
    };
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for m in mounts(&text) {
        let st = match rustix::fs::statvfs(m.mountpoint.as_str()) {
            Ok(st) => st,
            Err(e) => {
                failed.push(format!("{}: {e}", m.mountpoint));
                continue;
            }
        };
        let bsize = st.f_frsize as f64;
        let values = [
            ("node_filesystem_size_bytes", st.f_blocks as f64 * bsize),
            ("node_filesystem_free_bytes", st.f_bfree as f64 * bsize),
            ("node_filesystem_avail_bytes", st.f_bavail as f64 * bsize),
            ("node_filesystem_files", st.f_files as f64),
            ("node_filesystem_files_free", st.f_ffree as f64),
            (
                "node_filesystem_readonly",
                if m.readonly { 1.0 } else { 0.0 },
            ),
        ];
        for (name, v) in values {
            out.push(
                Sample::new(name, Kind::Gauge, v, now_ms)
                    .label("device", m.device.clone())
                    .label("fstype", m.fstype.clone())
                    .label("mountpoint", m.mountpoint.clone()),
            );
        }
    }
    if out.is_empty() && !failed.is_empty() {
        return Err(parse_err(
            &proc_dir.join("1/mounts"),
            format!("statvfs failed: {}", failed.join("; ")),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_filesystems_and_system_mounts_are_skipped() {
        let text = "proc /proc proc rw 0 0\n/dev/vda / ext4 rw,relatime 0 0\ntmpfs /dev/shm tmpfs rw 0 0\ntmpfs /tmp tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n/dev/vdb /data\\040x xfs ro 0 0\n/dev/vda / ext4 rw 0 0\ntmpfs /mnt/x tmpfs ro 0 0\noverlay /var/lib/docker/overlay2/a/merged overlay rw 0 0\n";
        let got: Vec<(String, String, bool)> = mounts(text)
            .into_iter()
            .map(|m| (m.device, m.mountpoint, m.readonly))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/dev/vda".to_string(), "/".to_string(), false),
                ("tmpfs".to_string(), "/tmp".to_string(), false),
                ("/dev/vdb".to_string(), "/data x".to_string(), true),
            ]
        );
    }

    #[test]
    fn root_filesystem_has_a_size() {
        let s = collect(Path::new("/proc"), 0).unwrap();
        let root = s
            .iter()
            .find(|s| s.name == "node_filesystem_size_bytes" && s.get("mountpoint") == Some("/"))
            .expect("/ is reported");
        assert!(root.value > 0.0);
    }
}
