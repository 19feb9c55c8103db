//! What every binary of the pipeline shares, so that each concern has one
//! home:
//!
//! - [`cli`]: `--log-format`, logging setup (colour only on a terminal),
//!   the SIGINT/SIGTERM shutdown signal, the host name;
//! - [`http`]: the retry policy of every sender (which answers are
//!   retried, `Retry-After`, backoff with jitter);
//! - [`token`]: reading a bearer token from a file;
//! - [`files`]: private directories (0700) and secret files (0600), the
//!   0077 umask of the binaries.

#![forbid(unsafe_code)]

pub mod cli;
pub mod files;
pub mod http;
pub mod token;
