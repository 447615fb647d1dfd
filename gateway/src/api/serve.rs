//! The accept loop, in place of `axum::serve`, which sets no header-read timeout and no limit on
//! connections.
//!
//! - Each connection holds a slot of the connection cap for as long as its socket lives, also
//!   after a websocket upgrade (the slot travels inside the socket). Beyond the cap a
//!   connection gets a canned `503` and is closed at once: no task, no buffers.
//! - A client gets `header_read_timeout` to send a request's headers; one that sends half a
//!   header line and stops, or nothing at all, is cut when it runs out.
//! - On shutdown the loop stops accepting and every connection is told to finish its current
//!   request and close; the loop returns when they have (websocket sessions are tracked apart).

use crate::metric;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Limits of the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at once.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
}

/// What a connection beyond the cap is told before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
x-content-type-options: nosniff\r\n\
connection: close\r\n\
content-length: 81\r\n\
\r\n\
{\"id\":null,\"code\":\"unavailable\",\"message\":\"too many open connections, try later\"}";

/// A socket that holds its slot of the connection cap until it is dropped.
struct Counted {
    tcp: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then waits for open requests.
pub async fn serve(
    listener: Arc<TcpListener>,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(metric::CONNECTIONS_REFUSED_TOTAL).increment(1);
            // A fresh socket's send buffer is empty, so this write does not block; if it
            // cannot be written whole, the close alone still tells the client.
            let _ = tcp.try_write(OVER_CAPACITY);
            drop(tcp);
            continue;
        };
        // Without TCP_NODELAY a websocket answer (a JSON frame, then the image) waits for the
        // client's delayed ACK: 40 ms per small image.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
        let builder = builder.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // hyper's header timeout starts once it knows the HTTP version, which takes a first
            // byte: a client that sends nothing at all gets the same time to start.
            let mut first = [0u8; 1];
            tokio::select! {
                _ = shutdown.cancelled() => return,
                peeked = tokio::time::timeout(limits.header_read_timeout, tcp.peek(&mut first)) => {
                    if !matches!(peeked, Ok(Ok(n)) if n > 0) {
                        return;
                    }
                }
            }
            let io = TokioIo::new(Counted { tcp, _slot: slot });
            let conn = builder
                .serve_connection_with_upgrades(io, TowerToHyperService::new(router))
                .into_owned();
            if let Err(err) = watcher.watch(conn).await {
                tracing::debug!(%err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
