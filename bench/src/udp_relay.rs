//! A counting UDP relay between the agent and the hub (our side of the link), with optional delay
//! and rate. Reads and writes coalesced datagrams (GRO/GSO through `quinn-udp`, as quinn itself
//! does), so counting a fast loopback link costs little CPU.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::shaper::{LinkCounters, LinkShape, Pacer, Verdict};

/// Datagram slots per receive call.
const BATCH: usize = 8;
/// Bytes per slot: one coalesced (GRO) receive is at most 64 KiB.
const SLOT: usize = 64 * 1024;

/// One socket with its quinn-udp state.
#[derive(Debug)]
struct Sock {
    io: UdpSocket,
    state: UdpSocketState,
}

impl Sock {
    fn bind(addr: SocketAddr) -> Result<Arc<Self>> {
        let std = std::net::UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
        std.set_nonblocking(true)?;
        let io = UdpSocket::from_std(std)?;
        let state = UdpSocketState::new((&io).into())?;
        // Room for bursts while the other side of the relay is busy.
        let _ = state.set_recv_buffer_size((&io).into(), 8 << 20);
        let _ = state.set_send_buffer_size((&io).into(), 8 << 20);
        Ok(Arc::new(Self { io, state }))
    }

    /// Sends `data` (segments of `stride` bytes, the last may be shorter) to `to`.
    async fn send(&self, to: SocketAddr, data: &[u8], stride: usize) {
        let max = stride * self.state.max_gso_segments().max(1);
        for chunk in data.chunks(max) {
            let t = Transmit {
                destination: to,
                ecn: None,
                contents: chunk,
                segment_size: (chunk.len() > stride).then_some(stride),
                src_ip: None,
            };
            loop {
                if self.io.writable().await.is_err() {
                    return;
                }
                match self.io.try_io(Interest::WRITABLE, || {
                    self.state.send((&self.io).into(), &t)
                }) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    // UDP: a failed send is a lost datagram, QUIC retransmits.
                    Err(_) => break,
                }
            }
        }
    }
}

/// A running relay; stops on drop.
#[derive(Debug)]
pub struct UdpRelay {
    addr: SocketAddr,
    counters: Arc<LinkCounters>,
    tasks: Vec<JoinHandle<()>>,
}

impl UdpRelay {
    /// Listens on a free port of 127.0.0.1 and relays to `upstream` (one client at a time: the
    /// most recent sender address gets the replies, which follows an agent that reconnects).
    pub fn start(upstream: SocketAddr, shape: Option<LinkShape>) -> Result<Self> {
        let front = Sock::bind("127.0.0.1:0".parse().expect("literal"))?;
        let back = Sock::bind("127.0.0.1:0".parse().expect("literal"))?;
        let addr = front.io.local_addr()?;
        let counters = Arc::new(LinkCounters::default());
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let pacers = shape.map(|s| (Arc::new(Pacer::new(s)), Arc::new(Pacer::new(s))));
        let (up_pacer, down_pacer) = match pacers {
            Some((u, d)) => (Some(u), Some(d)),
            None => (None, None),
        };
        let up = {
            let (front, back, counters, client) = (
                front.clone(),
                back.clone(),
                counters.clone(),
                client.clone(),
            );
            tokio::spawn(async move {
                relay(front, back, up_pacer, counters, true, move |from| {
                    *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                    Some(upstream)
                })
                .await
            })
        };
        let down = {
            let counters = counters.clone();
            tokio::spawn(async move {
                relay(back, front, down_pacer, counters, false, move |_| {
                    *client.lock().unwrap_or_else(|e| e.into_inner())
                })
                .await
            })
        };
        Ok(Self {
            addr,
            counters,
            tasks: vec![up, down],
        })
    }

    /// The address the agent sends to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The byte counters (UDP payload bytes).
    pub fn counters(&self) -> &Arc<LinkCounters> {
        &self.counters
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Receives on `from_sock` and sends to the address `dest(sender)` picks, through `pacer`.
async fn relay(
    from_sock: Arc<Sock>,
    to_sock: Arc<Sock>,
    pacer: Option<Arc<Pacer>>,
    counters: Arc<LinkCounters>,
    upward: bool,
    dest: impl Fn(SocketAddr) -> Option<SocketAddr> + Send + 'static,
) {
    let counter = if upward { &counters.up } else { &counters.down };
    // With shaping, datagrams wait in a queue served by a sender task.
    let delayed = pacer.map(|p| {
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(Instant, SocketAddr, Vec<u8>, usize)>();
        let to_sock = to_sock.clone();
        tokio::spawn(async move {
            while let Some((at, to, data, stride)) = rx.recv().await {
                tokio::time::sleep_until(at.into()).await;
                to_sock.send(to, &data, stride).await;
            }
        });
        (p, tx)
    });
    let mut storage = vec![vec![0u8; SLOT]; BATCH];
    let mut metas = [RecvMeta::default(); BATCH];
    loop {
        if from_sock.io.readable().await.is_err() {
            return;
        }
        let n = {
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match from_sock.io.try_io(Interest::READABLE, || {
                from_sock
                    .state
                    .recv((&from_sock.io).into(), &mut bufs, &mut metas)
            }) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => continue,
            }
        };
        for (meta, buf) in metas.iter().zip(&storage).take(n) {
            let data = &buf[..meta.len];
            counter.fetch_add(meta.len as u64, Ordering::Relaxed);
            let Some(to) = dest(meta.addr) else { continue };
            let stride = meta.stride.max(1);
            match &delayed {
                None => to_sock.send(to, data, stride).await,
                Some((pacer, tx)) => {
                    let now = Instant::now();
                    for seg in data.chunks(stride) {
                        match pacer.schedule(now, seg.len()) {
                            Verdict::At(at) => {
                                let _ = tx.send((at, to, seg.to_vec(), seg.len()));
                            }
                            Verdict::Full(_) => {
                                counters.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn relays_and_counts_both_ways() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay = UdpRelay::start(server.local_addr().unwrap(), None).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(&[1u8; 1000], relay.addr()).await.unwrap();
        let mut buf = [0u8; 2000];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), server.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1000);
        server.send_to(&[2u8; 300], from).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((n, buf[0]), (300, 2));
        assert_eq!(relay.counters().up.load(Ordering::Relaxed), 1000);
        assert_eq!(relay.counters().down.load(Ordering::Relaxed), 300);
    }

    #[tokio::test]
    async fn shaped_relay_delays() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let shape = LinkShape {
            delay: Duration::from_millis(30),
            rate_bytes_per_sec: None,
            max_queue: Duration::from_millis(30),
        };
        let relay = UdpRelay::start(server.local_addr().unwrap(), Some(shape)).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t = Instant::now();
        client.send_to(b"x", relay.addr()).await.unwrap();
        let mut buf = [0u8; 16];
        server.recv_from(&mut buf).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(30));
    }
}
