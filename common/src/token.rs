//! Bearer tokens kept in files (`--token-file`, `--api-token-file`).

use std::path::{Path, PathBuf};

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("read token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} is empty")]
    Empty { path: PathBuf },
    #[error("token file {path} holds more than one line; it must hold the token only")]
    Lines { path: PathBuf },
}

/// The token in `path`: its content without surrounding white space; an
/// empty file or one with several lines is an error naming the file.
pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    if token.contains('\n') {
        return Err(TokenFileError::Lines {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// Whether group or others may read or write `path` (a token file that
/// should be `chmod 600`); `false` when it cannot be inspected.
pub fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_trimmed_and_bad_files_are_named() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("t");
        std::fs::write(&f, "  abc\n").unwrap();
        assert_eq!(read_token_file(&f).unwrap(), "abc");
        std::fs::write(&f, "\n \n").unwrap();
        let e = read_token_file(&f).unwrap_err().to_string();
        assert!(
            e.contains("is empty") && e.contains(&*f.to_string_lossy()),
            "{e}"
        );
        std::fs::write(&f, "a\nb\n").unwrap();
        assert!(read_token_file(&f)
            .unwrap_err()
            .to_string()
            .contains("more than one line"));
        let missing = t.path().join("missing");
        assert!(read_token_file(&missing)
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }
}
