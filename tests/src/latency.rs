//! A TCP proxy that adds latency to a link, since these machines have no netem: every chunk of
//! bytes read on one side is written to the other side `one_way` later, in order, in both
//! directions, so a round trip across it takes twice `one_way` longer. Bandwidth is not limited
//! (the bytes in flight are queued in memory), so the link behaves as a long, fat pipe: what it
//! shows is whether a protocol keeps enough in flight to fill the bandwidth-delay product.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A running proxy; dropped, it closes its listener and every connection.
pub struct LatencyProxy {
    /// Where it listens, on 127.0.0.1.
    pub addr: SocketAddr,
    stop: CancellationToken,
    /// Cancelled to close the connections of the current generation.
    links: Arc<Mutex<CancellationToken>>,
    /// While set, connections are accepted and closed at once: the link is down.
    down: Arc<AtomicBool>,
}

impl LatencyProxy {
    /// Listens on a random port of 127.0.0.1 and forwards each connection to `target`, holding
    /// every chunk for `one_way` in each direction.
    pub async fn start(target: SocketAddr, one_way: Duration) -> std::io::Result<LatencyProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let links = Arc::new(Mutex::new(stop.child_token()));
        let down = Arc::new(AtomicBool::new(false));
        let (accepting, current, refusing) = (stop.clone(), links.clone(), down.clone());
        tokio::spawn(async move {
            loop {
                let inbound = tokio::select! {
                    _ = accepting.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((inbound, _)) => inbound,
                        Err(_) => continue,
                    },
                };
                if refusing.load(Ordering::Acquire) {
                    drop(inbound);
                    continue;
                }
                let link = current
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::select! {
                        _ = link.cancelled() => {}
                        _ = delayed(in_read, out_write, one_way) => {}
                        _ = delayed(out_read, in_write, one_way) => {}
                    }
                });
            }
        });
        Ok(LatencyProxy {
            addr,
            stop,
            links,
            down,
        })
    }

    /// Cuts the link: closes every connection, and every new one at once, until
    /// [`restore`](Self::restore).
    pub fn cut(&self) {
        self.down.store(true, Ordering::Release);
        let mut links = self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        links.cancel();
        *links = self.stop.child_token();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.down.store(false, Ordering::Release);
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read; ends when either side ends.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    // The writer drains what was read before the reader ended, then closes its side.
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind the proxy: a round trip takes the added delay twice, and the bytes
    /// come back whole and in order.
    #[tokio::test]
    async fn a_round_trip_takes_twice_the_one_way_delay() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let proxy = LatencyProxy::start(target, Duration::from_millis(40))
            .await
            .unwrap();
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let message: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let start = std::time::Instant::now();
        client.write_all(&message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        client.read_exact(&mut back).await.unwrap();
        let took = start.elapsed();
        assert_eq!(back, message);
        assert!(
            took >= Duration::from_millis(80),
            "round trip took {took:?}"
        );
        assert!(took < Duration::from_secs(2), "round trip took {took:?}");
    }
}
