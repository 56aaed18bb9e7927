//! The HTTP server loop of hubs and spokes: hyper with explicit timeouts (axum's `serve`
//! sets none, so a client sending headers one byte a minute would hold its connection for
//! ever), a cap on open connections and on HTTP/2 streams, optional TLS (rustls, with the
//! TLS handshake inside the header timeout), and a graceful stop that lets in-flight
//! requests finish.

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

/// What a plain HTTP request to an HTTPS port gets back (as Go's net/http answers it):
/// a 400 that says what to change, instead of a TLS alert a client shows as garbage.
const PLAIN_HTTP_ON_TLS: &str = r#"{"error":{"message":"this port speaks HTTPS: use https://","type":"invalid_request_error","param":null,"code":null}}"#;

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves `app` on `listener` until `shutdown` completes, then waits (at most `drain`)
/// for the open connections to finish their requests. A client must send a request's
/// headers within `header_timeout` (with `tls`, its TLS handshake too); an idle
/// keep-alive connection closes after it too. With `tls` every connection is HTTPS; a
/// plain HTTP request on it is answered with a 400 that says so.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    drain: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
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
        let Some(tls) = tls.clone() else {
            let conn =
                graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended");
                }
            });
            continue;
        };
        // The handshake runs in the connection's task (a slow client holds only its own
        // permit), within the header timeout.
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _permit = permit;
            let handshake = async {
                let mut first = [0u8; 1];
                let mut stream = stream;
                if stream.peek(&mut first).await? == 0 {
                    return Ok(None);
                }
                if first[0] != TLS_HANDSHAKE {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    // Read the request's head first: closing a socket with unread bytes
                    // resets it, and the client would see the reset, not the answer.
                    let mut head = Vec::with_capacity(1024);
                    let mut buf = [0u8; 1024];
                    while head.len() < 16 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await? {
                            0 => break,
                            n => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{PLAIN_HTTP_ON_TLS}",
                        PLAIN_HTTP_ON_TLS.len()
                    );
                    stream.write_all(answer.as_bytes()).await?;
                    stream.shutdown().await?;
                    // A body the client still sends is drained briefly, for the same reason.
                    let drain = async { while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {} };
                    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
                    return Ok(None);
                }
                tokio_rustls::TlsAcceptor::from(tls).accept(stream).await.map(Some)
            };
            let stream = match tokio::time::timeout(header_timeout, handshake).await {
                Ok(Ok(Some(s))) => s,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!("no TLS handshake within the header timeout"),
            };
            let conn =
                watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
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
