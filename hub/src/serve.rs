//! The hub's HTTP plumbing: the server loop (shared with the spoke's HTTP port, see
//! [`nave_spoke::serve`]) and the body reader with its size and time limits.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

pub use nave_spoke::serve::serve;

/// Limits for reading a request body.
#[derive(Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// Reads the whole request body within the time limit (408 when the client is too slow)
/// and the size limit (413), before any handler runs.
pub async fn read_body(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(limits.timeout, axum::body::to_bytes(body, limits.max_bytes)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let too_large = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            return if too_large {
                ApiError::new(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than the hub accepts ({} bytes)", limits.max_bytes),
                )
                .into_response()
            } else {
                ApiError::bad_request(format!("the request body could not be read: {e}")).into_response()
            };
        }
        Err(_) => {
            let secs = limits.timeout.as_secs_f64();
            return ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {secs} s"),
            )
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}
