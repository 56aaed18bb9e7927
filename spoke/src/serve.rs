//! The HTTP server loop of hubs and spokes: hyper with explicit timeouts (axum's `serve`
//! sets none, so a client sending headers one byte a minute would hold its connection for
//! ever), a cap on open connections and on HTTP/2 streams, and a graceful stop that lets
//! in-flight requests finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;

/// Open connections one server keeps; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 4096;
/// Concurrent HTTP/2 streams per connection.
pub const MAX_STREAMS: u32 = 256;

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
    // HTTP/2 gets limits like HTTP/1's: streams per connection, header size, resets, and
    // pings that close a connection whose peer stopped answering.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(64 << 10)
        .max_pending_accept_reset_streams(Some(64))
        .keep_alive_interval(Some(header_timeout))
        .keep_alive_timeout(header_timeout);
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At most MAX_CONNECTIONS open: the next accept waits for one to close.
        let Ok(permit) = connections.clone().acquire_owned().await else { break };
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
            let _permit = permit;
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
