//! Private directories and files: every directory the node keeps data in is
//! mode 0700 and every file holding a secret is mode 0600, whatever the
//! process umask (the binaries also set umask 0077, so that the files
//! RocksDB creates inside are 0600 too).
//!
//! Existing directories and files with broader modes (written by an older
//! version, or by hand) are tightened, not refused: the data in them is the
//! operator's and must keep working.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every data directory.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file holding a secret (tokens, configuration, rules).
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` (and missing parents, all 0700) or tightens an existing
/// directory to 0700.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => tighten(path, m.permissions().mode(), DIR_MODE),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path),
        Err(e) => Err(e),
    }
}

/// Tightens an existing directory to 0700 (or file to 0600), logging a
/// warning instead of failing when it cannot (a directory owned by someone
/// else that the process may still use).
pub fn tighten_or_warn(path: &Path) {
    let want = if path.is_dir() { DIR_MODE } else { FILE_MODE };
    if let Ok(m) = std::fs::metadata(path) {
        if let Err(e) = tighten(path, m.permissions().mode(), want) {
            tracing::warn!(path = %path.display(), error = %e, "readable by others and cannot be made private");
        }
    }
}

/// Tightens an existing file to 0600 (no-op when it is missing).
pub fn private_file(path: &Path) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) => tighten(path, m.permissions().mode(), FILE_MODE),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn tighten(path: &Path, mode: u32, want: u32) -> std::io::Result<()> {
    // Only group/other bits are removed; an owner without access stays so.
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & want & 0o7777))?;
        tracing::info!(path = %path.display(), from = format!("{:o}", mode & 0o7777), to = format!("{:o}", mode & want & 0o7777), "tightened the permissions of a data path");
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (a 0600 temporary file renamed over
/// it, then synced), so a crash leaves either the old or the new content.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        // A stale temporary file keeps its old mode through `create`.
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` (0600) unless it exists; tightens it if it does.
pub fn write_private_once(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if path.exists() {
        private_file(path)
    } else {
        write_private(path, bytes)
    }
}

/// The mode bits (`0o777` part) of `path`.
pub fn mode(path: &Path) -> std::io::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

/// Sets the process umask to 0077, so that every file and directory the
/// process creates (RocksDB's included) is private to its user. For the
/// binaries' `main`; a library embedding the node decides for itself.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_files_are_created_private_and_existing_ones_tightened() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        private_dir(&d).unwrap();
        assert_eq!(mode(&d).unwrap(), 0o700);
        assert_eq!(mode(&t.path().join("a")).unwrap(), 0o700);
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&open).unwrap();
        assert_eq!(mode(&open).unwrap(), 0o700);

        let f = d.join("secret");
        std::fs::write(&f, "old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private_once(&f, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "old");
        assert_eq!(mode(&f).unwrap(), 0o600);
        write_private(&f, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "new");
        assert_eq!(mode(&f).unwrap(), 0o600);
        assert!(private_dir(&f).is_err(), "a file is not a directory");
    }
}

/// Whether `dir` holds only what a RocksDB database creation that was
/// interrupted (the process killed before it wrote `CURRENT`) leaves behind:
/// no `CURRENT`, no table file, every write-ahead log empty, and nothing
/// but RocksDB's own file names (`LOCK`, `IDENTITY`, `LOG`, `LOG.old.*`,
/// `MANIFEST-*`, `OPTIONS-*`, `*.dbtmp`, `NNNNNN.log`). Nothing can have
/// been written to such a database (writes need it open, and opening
/// needs `CURRENT`), so its files may be removed and the database
/// created again. Anything else (a damaged database, other files) is not
/// this and must be refused by the caller.
pub fn interrupted_rocksdb_creation(dir: &Path) -> std::io::Result<bool> {
    if dir.join("CURRENT").exists() {
        return Ok(false);
    }
    let mut any = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Ok(false);
        };
        let meta = entry.metadata()?;
        if !meta.is_file() {
            return Ok(false);
        }
        let wal = name
            .strip_suffix(".log")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let ours = matches!(name, "LOCK" | "IDENTITY" | "LOG")
            || name.starts_with("LOG.old.")
            || name.starts_with("MANIFEST-")
            || name.starts_with("OPTIONS-")
            || name.ends_with(".dbtmp")
            || wal;
        if !ours || (wal && meta.len() > 0) {
            return Ok(false);
        }
        any = true;
    }
    Ok(any)
}

/// Removes the files of an interrupted RocksDB creation in `dir` when
/// [`interrupted_rocksdb_creation`] says that is all it holds; whether it
/// did.
pub fn clear_interrupted_rocksdb_creation(dir: &Path) -> std::io::Result<bool> {
    if !interrupted_rocksdb_creation(dir)? {
        return Ok(false);
    }
    for entry in std::fs::read_dir(dir)? {
        std::fs::remove_file(entry?.path())?;
    }
    tracing::warn!(
        path = %dir.display(),
        "removed the files of a database creation that was interrupted (no CURRENT, nothing written); creating it again"
    );
    Ok(true)
}

#[cfg(test)]
mod interrupted_tests {
    use super::*;

    #[test]
    fn only_an_unfinished_creation_is_cleared() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        assert!(
            !interrupted_rocksdb_creation(p).unwrap(),
            "empty: nothing to clear"
        );
        for f in [
            "LOCK",
            "IDENTITY",
            "LOG",
            "MANIFEST-000001",
            "000001.dbtmp",
            "000003.log",
        ] {
            std::fs::write(p.join(f), if f.ends_with(".log") { "" } else { "x" }).unwrap();
        }
        assert!(interrupted_rocksdb_creation(p).unwrap());
        // A write-ahead log with something in it: not an empty creation.
        std::fs::write(p.join("000003.log"), "record").unwrap();
        assert!(!interrupted_rocksdb_creation(p).unwrap());
        std::fs::write(p.join("000003.log"), "").unwrap();
        // A table file, a foreign file, CURRENT: not it either.
        for f in ["000004.sst", "notes.txt", "CURRENT"] {
            std::fs::write(p.join(f), "x").unwrap();
            assert!(!interrupted_rocksdb_creation(p).unwrap(), "{f}");
            std::fs::remove_file(p.join(f)).unwrap();
        }
        assert!(clear_interrupted_rocksdb_creation(p).unwrap());
        assert_eq!(std::fs::read_dir(p).unwrap().count(), 0);
    }
}
