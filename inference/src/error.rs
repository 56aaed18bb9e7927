//! The engine's one error type. Variants say what the caller should do: a client error
//! (bad request, maps to HTTP 4xx), a capacity error (retry later, 503), or a server error.

/// Everything the inference crate can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (bad parameter, prompt too long): a 400, never retried.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The engine's bounded queue is full: retry later (503 with Retry-After).
    #[error("the engine queue is full ({0} requests waiting)")]
    QueueFull(usize),
    /// A forward pass failed inside the engine (the server's fault, not the request's).
    #[error("engine failure: {0}")]
    Engine(String),
    /// The engine thread has stopped; nothing more will be served by this engine.
    #[error("the engine has stopped")]
    EngineStopped,
    /// The model file is missing, truncated, corrupt or of an unsupported kind.
    #[error("model {path}: {reason}")]
    Model { path: String, reason: String },
    /// A memory reservation does not fit its partition.
    #[error("{partition} partition: {requested} bytes requested, {free} of {total} bytes free")]
    OutOfMemory { partition: &'static str, requested: u64, free: u64, total: u64 },
    /// The configured device cannot be used (no driver, no such device, a build without
    /// its support): the spoke stops at start with this sentence.
    #[error("{0}")]
    Device(String),
    /// The model store could not fetch or verify a package.
    #[error("model store: {0}")]
    Store(String),
    /// A tensor operation failed (a bug or a resource problem, not the client's fault).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether the client caused it (HTTP 4xx) rather than the server (5xx).
    pub fn is_client_error(&self) -> bool {
        matches!(self, Error::InvalidRequest(_))
    }

    pub(crate) fn model(path: impl AsRef<std::path::Path>, reason: impl std::fmt::Display) -> Self {
        Error::Model { path: path.as_ref().display().to_string(), reason: reason.to_string() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
