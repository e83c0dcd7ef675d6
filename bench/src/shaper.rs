//! A one-way link model shared by the TCP proxy and the UDP relay: fixed propagation delay plus
//! a serialization rate with a bounded queue, like a WAN path through one bottleneck router.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What one direction of an emulated link does to the bytes crossing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkShape {
    /// One-way propagation delay (half the RTT).
    pub delay: Duration,
    /// Bottleneck rate in bytes per second; `None` = unlimited.
    pub rate_bytes_per_sec: Option<u64>,
    /// Longest queue at the bottleneck, as time to drain it. Datagrams beyond it are dropped;
    /// TCP readers wait instead (the window closes).
    pub max_queue: Duration,
}

impl LinkShape {
    /// `rtt` split evenly between the directions, `mbit_per_sec` each way, a queue of one RTT
    /// (at least 20 ms).
    pub fn wan(rtt: Duration, mbit_per_sec: f64) -> Self {
        Self {
            delay: rtt / 2,
            rate_bytes_per_sec: Some((mbit_per_sec * 1e6 / 8.0) as u64),
            max_queue: rtt.max(Duration::from_millis(20)),
        }
    }
}

/// Byte counters of one link, both directions.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Bytes from the client side to the server side (agent -> hub, MM2 -> edge broker).
    pub up: AtomicU64,
    /// Bytes from the server side to the client side.
    pub down: AtomicU64,
    /// Datagrams dropped by a full queue (UDP only).
    pub dropped: AtomicU64,
}

impl LinkCounters {
    /// Bytes in both directions so far.
    pub fn total(&self) -> u64 {
        self.up.load(Ordering::Relaxed) + self.down.load(Ordering::Relaxed)
    }
}

/// The departure schedule of one direction.
#[derive(Debug)]
pub struct Pacer {
    shape: LinkShape,
    /// When the bottleneck finishes sending what is queued.
    busy_until: Mutex<Option<Instant>>,
}

/// What the pacer decided for some bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver at this instant.
    At(Instant),
    /// The queue is full: a datagram is dropped, a stream reader waits this long and retries.
    Full(Duration),
}

impl Pacer {
    /// A pacer for one direction.
    pub fn new(shape: LinkShape) -> Self {
        Self {
            shape,
            busy_until: Mutex::new(None),
        }
    }

    /// Schedules `len` bytes arriving at `now`.
    pub fn schedule(&self, now: Instant, len: usize) -> Verdict {
        let Some(rate) = self.shape.rate_bytes_per_sec else {
            return Verdict::At(now + self.shape.delay);
        };
        let mut busy = self.busy_until.lock().unwrap_or_else(|e| e.into_inner());
        let start = busy.map_or(now, |b| b.max(now));
        let backlog = start - now;
        if backlog > self.shape.max_queue {
            return Verdict::Full(backlog - self.shape.max_queue);
        }
        let done = start + Duration::from_secs_f64(len as f64 / rate as f64);
        *busy = Some(done);
        Verdict::At(done + self.shape.delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_delay_add_up() {
        let p = Pacer::new(LinkShape {
            delay: Duration::from_millis(50),
            rate_bytes_per_sec: Some(1_000_000),
            max_queue: Duration::from_millis(100),
        });
        let t = Instant::now();
        // 10 KB at 1 MB/s = 10 ms each.
        assert_eq!(
            p.schedule(t, 10_000),
            Verdict::At(t + Duration::from_millis(60))
        );
        assert_eq!(
            p.schedule(t, 10_000),
            Verdict::At(t + Duration::from_millis(70))
        );
        // Fill the queue beyond 100 ms of backlog.
        for _ in 0..9 {
            assert!(matches!(p.schedule(t, 10_000), Verdict::At(_)));
        }
        assert!(matches!(p.schedule(t, 10_000), Verdict::Full(_)));
        // Later, the queue has drained.
        let later = t + Duration::from_millis(200);
        assert_eq!(
            p.schedule(later, 1_000),
            Verdict::At(later + Duration::from_millis(51))
        );
    }

    #[test]
    fn unlimited_rate_only_delays() {
        let p = Pacer::new(LinkShape {
            delay: Duration::from_millis(5),
            rate_bytes_per_sec: None,
            max_queue: Duration::ZERO,
        });
        let t = Instant::now();
        for _ in 0..100 {
            assert_eq!(
                p.schedule(t, 1 << 20),
                Verdict::At(t + Duration::from_millis(5))
            );
        }
    }
}
