//! Why the JWKS could not be had: the one error type of the crate's key
//! fetching, with messages an operator can act on.

/// Fetching or reading the cluster's JWKS failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// No connection, a timeout, or a transport error.
    #[error("cannot fetch the JWKS from {url}: {reason}")]
    Unreachable {
        /// Where it was fetched from.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The cluster answered, but not 200.
    #[error("the JWKS at {url} answered HTTP {status}")]
    Status {
        /// Where it was fetched from.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The document is not a JWKS.
    #[error("the JWKS is not valid JSON Web Key Set JSON: {0}")]
    Invalid(String),
}
