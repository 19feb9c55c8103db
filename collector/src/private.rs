//! Files and directories that hold secrets or tenant data: created
//! private, and tightened when found open.

use std::path::Path;

/// Creates `path` (and missing parents) with mode 0700: the store holds
/// every tenant's records.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path)
}

/// Takes group and other permissions off an existing directory that has
/// them (a data or checkpoint directory made by hand); logs when it cannot.
pub fn restrict_dir(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(m) = std::fs::metadata(path) else {
            return;
        };
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700)) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), from = format!("{mode:o}"), "directory made private (mode 0700)")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), error = %e, "directory is readable by others and cannot be made private")
                }
            }
        }
    }
}
