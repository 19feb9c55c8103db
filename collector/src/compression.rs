//! Bounded decompression of request bodies, shared by log ingest and
//! metrics push: zstd, gzip and identity (`Content-Encoding`) and snappy
//! block format (remote-write). Output stops at a limit, so a
//! decompression bomb costs at most that many bytes.

use std::borrow::Cow;
use std::io::Read;

/// Why a body could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    #[error("unsupported Content-Encoding {0:?} (use zstd, gzip or none)")]
    Unsupported(String),
    #[error("body is not valid {encoding}: {message}")]
    Bad {
        encoding: &'static str,
        message: String,
    },
    #[error("decompressed body is over the limit of {limit} bytes")]
    TooLarge { limit: usize },
}

/// Undoes `Content-Encoding` (`zstd`, `gzip`, none), reading at most
/// `limit` bytes of output.
pub fn decompress<'a>(
    encoding: Option<&str>,
    body: &'a [u8],
    limit: usize,
) -> Result<Cow<'a, [u8]>, DecompressError> {
    let enc = encoding.map(|e| e.trim().to_ascii_lowercase());
    match enc.as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > limit {
                return Err(DecompressError::TooLarge { limit });
            }
            Ok(Cow::Borrowed(body))
        }
        Some("zstd") => {
            let dec = zstd::stream::read::Decoder::new(body).map_err(|e| DecompressError::Bad {
                encoding: "zstd",
                message: e.to_string(),
            })?;
            read_bounded(dec, limit, "zstd").map(Cow::Owned)
        }
        Some("gzip") | Some("x-gzip") => {
            read_bounded(flate2::read::GzDecoder::new(body), limit, "gzip").map(Cow::Owned)
        }
        Some(other) => Err(DecompressError::Unsupported(other.to_string())),
    }
}

fn read_bounded(
    r: impl Read,
    limit: usize,
    encoding: &'static str,
) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    let mut taken = r.take(limit as u64 + 1);
    taken
        .read_to_end(&mut out)
        .map_err(|e| DecompressError::Bad {
            encoding,
            message: e.to_string(),
        })?;
    if out.len() > limit {
        return Err(DecompressError::TooLarge { limit });
    }
    Ok(out)
}

/// Undoes snappy's block format (remote-write bodies) within `limit`
/// bytes: the declared length is checked before anything is allocated.
pub fn unsnappy(body: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    let bad = |e: snap::Error| DecompressError::Bad {
        encoding: "snappy (block format)",
        message: e.to_string(),
    };
    let len = snap::raw::decompress_len(body).map_err(bad)?;
    if len > limit {
        return Err(DecompressError::TooLarge { limit });
    }
    snap::raw::Decoder::new().decompress_vec(body).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bombs_stop_at_the_limit() {
        let zeros = vec![0u8; 8 << 20];
        let z = zstd::encode_all(zeros.as_slice(), 3).expect("zstd");
        assert_eq!(
            decompress(Some("zstd"), &z, 1 << 20).map(|b| b.len()),
            Err(DecompressError::TooLarge { limit: 1 << 20 })
        );
        let s = snap::raw::Encoder::new()
            .compress_vec(&zeros)
            .expect("snappy");
        assert_eq!(
            unsnappy(&s, 1 << 20),
            Err(DecompressError::TooLarge { limit: 1 << 20 })
        );
        assert_eq!(unsnappy(&s, 8 << 20).map(|b| b.len()), Ok(8 << 20));
        assert!(matches!(
            unsnappy(b"\xff\xff\xff", 100),
            Err(DecompressError::Bad { .. })
        ));
        assert!(matches!(
            decompress(Some("br"), b"x", 10),
            Err(DecompressError::Unsupported(_))
        ));
    }
}
