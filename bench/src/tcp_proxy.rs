//! A counting TCP proxy with optional delay and rate (MirrorMaker 2's side of the link: MM2 runs
//! next to the central cluster and fetches from the edge broker through it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::shaper::{LinkCounters, LinkShape, Pacer, Verdict};

/// Largest chunk read at once; small enough that pacing stays smooth at WAN rates.
const CHUNK: usize = 64 * 1024;
const SHAPED_CHUNK: usize = 16 * 1024;

/// A running proxy; stops accepting (existing connections close with their peers) on drop.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    counters: Arc<LinkCounters>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1:port` (0 = any free port) and forwards every connection to
    /// `upstream`, counting bytes and applying `shape` to both directions.
    pub async fn start(port: u16, upstream: SocketAddr, shape: Option<LinkShape>) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding TCP proxy on 127.0.0.1:{port}"))?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(LinkCounters::default());
        let pacers = shape.map(|s| (Arc::new(Pacer::new(s)), Arc::new(Pacer::new(s))));
        let c = counters.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (c, pacers) = (c.clone(), pacers.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let (up, down) = match pacers {
                        Some((u, d)) => (Some(u), Some(d)),
                        None => (None, None),
                    };
                    let c2 = c.clone();
                    let a = tokio::spawn(pump(cr, sw, up, move |n| {
                        c2.up.fetch_add(n, Ordering::Relaxed);
                    }));
                    let b = tokio::spawn(pump(sr, cw, down, move |n| {
                        c.down.fetch_add(n, Ordering::Relaxed);
                    }));
                    let _ = tokio::join!(a, b);
                });
            }
        });
        Ok(Self {
            addr,
            counters,
            accept,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The byte counters.
    pub fn counters(&self) -> &Arc<LinkCounters> {
        &self.counters
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `r` to `w`, counting; with a pacer each chunk is held until its delivery time.
async fn pump<R, W>(mut r: R, mut w: W, pacer: Option<Arc<Pacer>>, count: impl Fn(u64))
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Some(pacer) = pacer else {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    count(n as u64);
                    if w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = w.shutdown().await;
        return;
    };
    // Reader and writer run apart so that a chunk in flight (the delay) does not stop reading.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at.into()).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut buf = vec![0u8; SHAPED_CHUNK];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        count(n as u64);
        let at = loop {
            match pacer.schedule(Instant::now(), n) {
                Verdict::At(at) => break at,
                // The bottleneck queue is full: stop reading, TCP's window does the rest.
                Verdict::Full(wait) => tokio::time::sleep(wait).await,
            }
        };
        if tx.send((at, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn counts_both_directions() {
        let echo = echo_server().await;
        let proxy = TcpProxy::start(0, echo, None).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let data = vec![7u8; 100_000];
        s.write_all(&data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, data);
        assert_eq!(proxy.counters().up.load(Ordering::Relaxed), 100_000);
        assert_eq!(proxy.counters().down.load(Ordering::Relaxed), 100_000);
    }

    #[tokio::test]
    async fn delay_and_rate_slow_a_round_trip() {
        let echo = echo_server().await;
        let shape = LinkShape {
            delay: Duration::from_millis(40),
            // 1 MB/s each way: 200 KB takes >= 200 ms to cross.
            rate_bytes_per_sec: Some(1_000_000),
            max_queue: Duration::from_millis(50),
        };
        let proxy = TcpProxy::start(0, echo, Some(shape)).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let t = Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(80), "rtt {rtt:?}");
        let data = vec![1u8; 200_000];
        let t = Instant::now();
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move { w.write_all(&data).await });
        let mut back = vec![0u8; 200_000];
        r.read_exact(&mut back).await.unwrap();
        writer.await.unwrap().unwrap();
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(200), "took {took:?}");
    }
}
