//! The consensus crate's error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration field has a value that cannot work.
    #[error("config: {field} = {value:?}: {reason}")]
    InvalidValue { field: String, value: String, reason: String },
    #[error("config file {path}: {reason}")]
    ConfigFile { path: String, reason: String },
    /// A frame from the network was malformed or too large: drop the stream.
    #[error("bad frame: {0}")]
    Frame(String),
    /// Certificates or TLS setup failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The peer could not be reached (retry elsewhere or later).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No leader could be reached in time: retry later (HTTP 503).
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
