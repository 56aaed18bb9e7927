//! The HTTP server loop: hyper with explicit timeouts (axum's `serve` sets none, so a
//! client sending headers one byte a minute would hold its connection for ever), and a
//! graceful stop that lets in-flight requests finish.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;

use crate::error::ApiError;

/// Serves `app` on `listener` until `shutdown` completes, then waits (at most `drain`)
/// for the open connections to finish their requests. A client must send a request's
/// headers within `header_timeout`; an idle keep-alive connection closes after it too.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    drain: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(header_timeout))
        .keep_alive_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {drain:?}; closing them");
    }
}

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
