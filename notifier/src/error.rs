//! The notifier's error: what failed, and the field at fault where one is.

/// What kind of failure an API call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Invalid,
    NotFound,
    Forbidden,
    Conflict,
    Storage,
}

/// An error of the notifier, naming the field at fault where one is.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct NotifierError {
    pub kind: ErrorKind,
    pub message: String,
    pub field: Option<String>,
    /// The limit that refused the request, for `/metrics`
    /// (`notifier_refusals_total{reason}`); `None` for other errors.
    pub reason: Option<&'static str>,
}

impl NotifierError {
    fn new(kind: ErrorKind, field: Option<String>, message: String) -> Self {
        NotifierError {
            kind,
            message,
            field,
            reason: None,
        }
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, Some(field.into()), message.into())
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, None, message.into())
    }
    pub fn forbidden(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, Some(field.into()), message.into())
    }
    pub fn conflict(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, Some(field.into()), message.into())
    }
    pub fn storage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Storage, None, message.into())
    }
    /// Marks the error as a refusal by the limit `reason`.
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }
    /// Prefixes the field and message with `prefix` (an entry of a file).
    pub fn at(mut self, prefix: &str) -> Self {
        self.field = Some(match self.field {
            Some(f) => format!("{prefix}.{f}"),
            None => prefix.to_string(),
        });
        self.message = format!("{prefix}: {}", self.message);
        self
    }
}
