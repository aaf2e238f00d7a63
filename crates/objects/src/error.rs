//! The one error type of the object store.
//!
//! Callers need to branch on what went wrong (a missing object is a 404, a corrupt one is an
//! integrity incident, a failing input stream is the client's fault) without depending on the
//! `object_store` crate's error enum, so every failure is classified into an [`ObjectErrorKind`].

use std::error::Error as StdError;
use std::fmt;

use crate::digest::ObjectDigest;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What class of failure an [`ObjectError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ObjectErrorKind {
    /// No object is stored under the digest.
    NotFound,
    /// The stored bytes do not hash to the digest they are stored under.
    Corrupt,
    /// A digest string is not 64 lowercase hex characters.
    InvalidDigest,
    /// The storage backend failed (I/O, network, permissions, S3 errors).
    Backend,
    /// The caller-supplied input stream failed.
    Input,
    /// The store could not be set up from its settings.
    Config,
}

impl fmt::Display for ObjectErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotFound => "not found",
            Self::Corrupt => "corrupt",
            Self::InvalidDigest => "invalid digest",
            Self::Backend => "backend",
            Self::Input => "input",
            Self::Config => "config",
        })
    }
}

/// A classified object store failure.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ObjectError {
    kind: ObjectErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

/// Result alias used throughout the crate.
pub type Result<T, E = ObjectError> = std::result::Result<T, E>;

impl ObjectError {
    pub(crate) fn new(kind: ObjectErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The class of failure, for callers that map errors to responses or retries.
    pub fn kind(&self) -> ObjectErrorKind {
        self.kind
    }

    /// Classifies a backend error raised while working on `digest`; `NotFound` is kept distinct
    /// because it is an expected outcome rather than an outage.
    pub(crate) fn backend(context: &str, digest: Option<&ObjectDigest>, err: object_store::Error) -> Self {
        let subject = digest.map(|d| format!(" {d}")).unwrap_or_default();
        match err {
            object_store::Error::NotFound { .. } => {
                Self::new(ObjectErrorKind::NotFound, format!("object{subject} not found")).with_source(err)
            }
            other => Self::new(
                ObjectErrorKind::Backend,
                format!("object store backend failed to {context}{subject}: {other}"),
            )
            .with_source(other),
        }
    }

    pub(crate) fn corrupt(expected: &ObjectDigest, actual: &ObjectDigest) -> Self {
        Self::new(ObjectErrorKind::Corrupt, format!("object {expected} is corrupt: its content hashes to {actual}"))
    }

    pub(crate) fn input(source: BoxError) -> Self {
        Self::new(ObjectErrorKind::Input, format!("input stream failed: {source}")).with_source(source)
    }
}

impl From<ObjectError> for std::io::Error {
    // Streams of object bytes are often fed to io adapters (tokio_util::io::StreamReader), which
    // need io::Error; the kind mapping keeps NotFound recognisable there
    fn from(err: ObjectError) -> Self {
        let kind = match err.kind {
            ObjectErrorKind::NotFound => std::io::ErrorKind::NotFound,
            ObjectErrorKind::Corrupt => std::io::ErrorKind::InvalidData,
            ObjectErrorKind::InvalidDigest => std::io::ErrorKind::InvalidInput,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, err)
    }
}
