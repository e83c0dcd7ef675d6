//! A userspace UDP proxy that emulates bad links between a QUIC client and server on loopback.
//!
//! The kernel on the test machines has no netem, so link faults are made here: the agent (QUIC
//! client) talks to [`LinkProxy::local_addr`] instead of the hub, and the proxy forwards every
//! datagram to the hub (the "upstream") and back, applying the [`Impairments`] currently set for
//! that [`Direction`]: blackhole, random loss, delay with jitter, reordering, a bandwidth cap with a
//! bounded queue. Tests change them at any time through a [`ProxyControl`] handle, directly or
//! with a timed [`Schedule`] (for example a seeded [`Flap`] of random outages), and read
//! [`ProxyStats`] and the [`Event`] log afterwards.
//!
//! Each client address gets its own upstream socket, so the server sees one path per client
//! address: a client that moves to another port (QUIC connection migration) shows up as a new
//! path, and [`ProxyControl::rebind_nat`] moves existing clients to fresh upstream sockets, as a
//! NAT that lost its mappings would.
//!
//! The proxy runs on its own thread with its own single-threaded tokio runtime, so it works the
//! same from sync tests and from async tests on any runtime; dropping the [`LinkProxy`] stops it.
//!
//! Randomness (loss, jitter, reordering, flap schedules) comes from seeded [`StdRng`]s: given
//! the same seed, configuration and sequence of packets, the proxy makes the same decisions.
//! Timing on a busy machine is of course not reproducible.
//!
//! ```no_run
//! use std::time::Duration;
//! use er_tests::proxy::{Direction, Flap, LinkProxy, Schedule};
//!
//! # fn main() -> std::io::Result<()> {
//! # let hub_addr: std::net::SocketAddr = "127.0.0.1:4433".parse().unwrap();
//! let proxy = LinkProxy::start(hub_addr)?;
//! // ... point the agent at proxy.local_addr() ...
//! let link = proxy.control();
//! link.delay(Direction::Both, Duration::from_millis(40), Duration::from_millis(5));
//! link.loss(Direction::ToServer, 0.01);
//! let flaps = link.run_schedule(Schedule::new().flap(Flap {
//!     direction: Direction::Both,
//!     count: 5,
//!     up: Duration::from_secs(1)..=Duration::from_secs(4),
//!     down: Duration::from_millis(500)..=Duration::from_secs(3),
//!     seed: 42,
//! }));
//! for event in flaps.join() {
//!     println!("{event}");
//! }
//! println!("{:?}", link.stats());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Seed of [`LinkProxy::start`]; use [`LinkProxy::start_with_seed`] for another.
pub const DEFAULT_SEED: u64 = 0x00ed_9e5e_ed00;

/// Longest delay (base, jitter or reorder extra) a setter accepts; keeps deadlines far from
/// overflowing `Instant`.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// With a bandwidth cap and no explicit queue limit, the queue holds what the link carries in
/// this long or in twice the base delay, whichever is longer (about one bandwidth-delay product).
pub const DEFAULT_QUEUE_TIME: Duration = Duration::from_millis(100);

/// The default queue (see [`DEFAULT_QUEUE_TIME`]) holds at least this many bytes (16 full-size
/// 1500-byte packets), so slow links do not drop every burst.
pub const MIN_DEFAULT_QUEUE_BYTES: usize = 24_000;

/// Socket buffers requested for every proxy socket (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`), so that the proxy, not the kernel, decides what is dropped.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// Index of the client-to-server direction in per-direction arrays.
const TO_SERVER: usize = 0;
/// Index of the server-to-client direction in per-direction arrays.
const TO_CLIENT: usize = 1;

/// Which way through the proxy an impairment applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server (agent to hub): datagrams arriving at [`LinkProxy::local_addr`].
    ToServer,
    /// Server to client (hub to agent): datagrams arriving from the upstream.
    ToClient,
    /// Both directions, each with its own queue and random stream.
    Both,
}

impl Direction {
    fn indices(self) -> &'static [usize] {
        match self {
            Direction::ToServer => &[TO_SERVER],
            Direction::ToClient => &[TO_CLIENT],
            Direction::Both => &[TO_SERVER, TO_CLIENT],
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::ToServer => "to-server",
            Direction::ToClient => "to-client",
            Direction::Both => "both",
        })
    }
}

/// A value per direction (stats, impairments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PerDirection<T> {
    /// Client to server.
    pub to_server: T,
    /// Server to client.
    pub to_client: T,
}

/// What one direction of the link does to datagrams. `Default` is a perfect link.
///
/// A datagram arriving at the proxy goes through these steps, in order:
/// 1. `blackhole`: dropped;
/// 2. `loss`: dropped with this probability;
/// 3. `bandwidth_bps`: queued behind the datagrams before it and serialized at this rate; if the
///    bytes queued ahead of it plus its own exceed [`Impairments::queue_limit`], dropped (tail
///    drop);
/// 4. `delay` plus a uniform random `0..=jitter`;
/// 5. order: never scheduled before the previous datagram of the same direction, unless picked
///    for reordering (probability `reorder`), which sends it `reorder_delay` after that previous
///    datagram instead, so that datagrams arriving meanwhile overtake it.
///
/// A datagram that becomes due while its direction is blackholed is dropped too (it was on the
/// wire when the link went down). Sizes are UDP payload bytes; IP and UDP headers are not counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Impairments {
    /// Drop every datagram.
    pub blackhole: bool,
    /// Probability in `0..=1` that a datagram is dropped.
    pub loss: f64,
    /// Delay added to every datagram.
    pub delay: Duration,
    /// Upper bound of a uniform random delay added on top of `delay`.
    pub jitter: Duration,
    /// Probability in `0..=1` that a datagram is held back so that later ones overtake it.
    pub reorder: f64,
    /// How long after the previous datagram a reordered datagram is sent.
    pub reorder_delay: Duration,
    /// Link rate in bits per second; `None` is unlimited.
    pub bandwidth_bps: Option<u64>,
    /// Queue limit in bytes when `bandwidth_bps` is set; `None` is the default described at
    /// [`Impairments::queue_limit`].
    pub queue_limit_bytes: Option<usize>,
}

impl Default for Impairments {
    fn default() -> Self {
        Self {
            blackhole: false,
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            bandwidth_bps: None,
            queue_limit_bytes: None,
        }
    }
}

impl Impairments {
    /// The queue limit in bytes in effect: `None` without a bandwidth cap; otherwise
    /// `queue_limit_bytes`, or by default the bytes the link carries in the longer of
    /// [`DEFAULT_QUEUE_TIME`] and twice `delay`, but at least [`MIN_DEFAULT_QUEUE_BYTES`].
    pub fn queue_limit(&self) -> Option<usize> {
        let bps = self.bandwidth_bps?;
        Some(self.queue_limit_bytes.unwrap_or_else(|| {
            let window = DEFAULT_QUEUE_TIME.max(self.delay.saturating_mul(2));
            bytes_in(window, bps).max(MIN_DEFAULT_QUEUE_BYTES)
        }))
    }

    /// Why these settings cannot be applied, if they cannot.
    fn problem(&self) -> Option<String> {
        rate_problem("loss", self.loss)
            .or_else(|| rate_problem("reorder", self.reorder))
            .or_else(|| delay_problem("delay", self.delay))
            .or_else(|| delay_problem("jitter", self.jitter))
            .or_else(|| delay_problem("reorder delay", self.reorder_delay))
            .or_else(|| bandwidth_problem(self.bandwidth_bps))
            .or_else(|| queue_problem(self.queue_limit_bytes))
    }
}

fn rate_problem(what: &str, rate: f64) -> Option<String> {
    (!(0.0..=1.0).contains(&rate)).then(|| format!("{what} rate {rate} is not within 0..=1"))
}

fn delay_problem(what: &str, delay: Duration) -> Option<String> {
    (delay > MAX_DELAY).then(|| format!("{what} {delay:?} exceeds the maximum {MAX_DELAY:?}"))
}

fn bandwidth_problem(bps: Option<u64>) -> Option<String> {
    (bps == Some(0)).then(|| "bandwidth 0 bit/s; use a blackhole to drop everything".to_owned())
}

fn queue_problem(bytes: Option<usize>) -> Option<String> {
    (bytes == Some(0)).then(|| "queue limit 0 bytes; use a blackhole to drop everything".to_owned())
}

/// Bytes a link of `bps` bits per second carries in `time`.
fn bytes_in(time: Duration, bps: u64) -> usize {
    let bytes = time.as_nanos() * u128::from(bps) / 8_000_000_000;
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// Time a link of `bps` bits per second takes to carry `len` bytes.
fn serialization_time(len: usize, bps: u64) -> Duration {
    let nanos = len as u128 * 8_000_000_000 / u128::from(bps);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Counters of one direction, a snapshot taken by [`ProxyControl::stats`].
///
/// `received = forwarded + dropped + queued` at any moment (see
/// [`DirectionStats::queued_packets`]); once the link is idle nothing is queued. A datagram is
/// counted as forwarded once its send returns, which may be just after its receiver got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirectionStats {
    /// Datagrams that arrived at the proxy.
    pub received_packets: u64,
    /// Payload bytes of `received_packets`.
    pub received_bytes: u64,
    /// Datagrams sent on toward their destination.
    pub forwarded_packets: u64,
    /// Payload bytes of `forwarded_packets`.
    pub forwarded_bytes: u64,
    /// Datagrams dropped for any reason (the sum of the four causes below).
    pub dropped_packets: u64,
    /// Payload bytes of `dropped_packets`.
    pub dropped_bytes: u64,
    /// Datagrams dropped by a blackhole, on arrival or when due.
    pub dropped_blackhole: u64,
    /// Datagrams dropped by random loss.
    pub dropped_loss: u64,
    /// Datagrams dropped because the bandwidth queue was full (tail drop).
    pub dropped_queue: u64,
    /// Datagrams the proxy failed to send (socket error, or the client's upstream socket is gone).
    pub send_errors: u64,
}

impl DirectionStats {
    /// Datagrams received but neither forwarded nor dropped yet (delayed or queued).
    pub fn queued_packets(&self) -> u64 {
        self.received_packets
            .saturating_sub(self.forwarded_packets)
            .saturating_sub(self.dropped_packets)
    }
}

/// Counters of both directions, see [`DirectionStats`].
pub type ProxyStats = PerDirection<DirectionStats>;

/// One change to the link, applied with [`ProxyControl::apply`] or at a time in a [`Schedule`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Turn the blackhole of the direction(s) on (`true`) or off.
    Blackhole(Direction, bool),
    /// Set the loss probability (`0..=1`).
    Loss(Direction, f64),
    /// Set the base delay and the jitter bound.
    Delay(Direction, Duration, Duration),
    /// Set the reorder probability (`0..=1`) and how long reordered datagrams are held back.
    Reorder(Direction, f64, Duration),
    /// Set the link rate in bits per second, or `None` for unlimited.
    Bandwidth(Direction, Option<u64>),
    /// Set the bandwidth queue limit in bytes, or `None` for the default.
    QueueLimit(Direction, Option<usize>),
    /// Replace all impairments of the direction(s).
    Set(Direction, Impairments),
    /// Back to a perfect link in both directions.
    Clear,
    /// Move every known client to a fresh upstream socket (see [`ProxyControl::rebind_nat`]).
    RebindNat,
}

impl Action {
    /// Why this action cannot be applied, if it cannot.
    fn problem(&self) -> Option<String> {
        match self {
            Action::Loss(_, rate) => rate_problem("loss", *rate),
            Action::Delay(_, base, jitter) => {
                delay_problem("delay", *base).or_else(|| delay_problem("jitter", *jitter))
            }
            Action::Reorder(_, rate, extra) => {
                rate_problem("reorder", *rate).or_else(|| delay_problem("reorder delay", *extra))
            }
            Action::Bandwidth(_, bps) => bandwidth_problem(*bps),
            Action::QueueLimit(_, bytes) => queue_problem(*bytes),
            Action::Set(_, impairments) => impairments.problem(),
            Action::Blackhole(..) | Action::Clear | Action::RebindNat => None,
        }
    }

    /// Panics with a message naming the action if it cannot be applied.
    fn check(&self) {
        if let Some(problem) = self.problem() {
            panic!("link proxy: cannot apply \"{self}\": {problem}");
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Blackhole(dir, on) => {
                write!(f, "blackhole {dir} {}", if *on { "on" } else { "off" })
            }
            Action::Loss(dir, rate) => write!(f, "loss {dir} {:.2}%", rate * 100.0),
            Action::Delay(dir, base, jitter) => {
                write!(f, "delay {dir} {base:?} + jitter up to {jitter:?}")
            }
            Action::Reorder(dir, rate, extra) => {
                write!(f, "reorder {dir} {:.2}% held back {extra:?}", rate * 100.0)
            }
            Action::Bandwidth(dir, Some(bps)) => write!(f, "bandwidth {dir} {bps} bit/s"),
            Action::Bandwidth(dir, None) => write!(f, "bandwidth {dir} unlimited"),
            Action::QueueLimit(dir, Some(bytes)) => write!(f, "queue limit {dir} {bytes} bytes"),
            Action::QueueLimit(dir, None) => write!(f, "queue limit {dir} default"),
            Action::Set(dir, impairments) => write!(f, "set {dir} {impairments:?}"),
            Action::Clear => f.write_str("clear"),
            Action::RebindNat => f.write_str("NAT rebinding"),
        }
    }
}

/// An applied [`Action`], as kept in the log ([`ProxyControl::log`], [`ScheduleHandle::join`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When it was applied, since the proxy started.
    pub at: Duration,
    /// What was applied.
    pub action: Action,
    /// Why it failed, if it did (only [`Action::RebindNat`] can fail).
    pub error: Option<String>,
}

impl fmt::Display for Event {
    /// `  12.345s blackhole both on`, with ` (failed: ...)` appended on failure.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>9.3}s {}", self.at.as_secs_f64(), self.action)?;
        match &self.error {
            Some(error) => write!(f, " (failed: {error})"),
            None => Ok(()),
        }
    }
}

/// A client address the proxy has seen and the upstream socket it forwards that client's
/// datagrams from (the address the server sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientPath {
    /// The client's address, as seen by the proxy.
    pub client: SocketAddr,
    /// Local address of the upstream socket, as seen by the server.
    pub upstream_local: SocketAddr,
}

/// What a [`Shaper`] decided for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Send at `at`; `seq` breaks ties in arrival order.
    Deliver {
        at: Instant,
        seq: u64,
    },
    Drop(DropCause),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropCause {
    Blackhole,
    Loss,
    QueueFull,
}

/// The impairment model of one direction, without I/O: time is passed in and a verdict comes
/// out, so it is tested on a virtual clock.
#[derive(Debug)]
struct Shaper {
    cfg: Impairments,
    rng: StdRng,
    /// Delivery time of the last datagram not picked for reordering; later ones never go
    /// before it.
    last_at: Option<Instant>,
    /// When the emulated link has finished serializing everything queued so far.
    link_free_at: Option<Instant>,
    next_seq: u64,
}

impl Shaper {
    fn new(seed: u64) -> Self {
        Self {
            cfg: Impairments::default(),
            rng: StdRng::seed_from_u64(seed),
            last_at: None,
            link_free_at: None,
            next_seq: 0,
        }
    }

    /// Decides the fate of a datagram of `len` bytes arriving at `now` (the steps are listed at
    /// [`Impairments`]).
    fn admit(&mut self, now: Instant, len: usize) -> Verdict {
        let cfg = &self.cfg;
        if cfg.blackhole {
            return Verdict::Drop(DropCause::Blackhole);
        }
        if cfg.loss > 0.0 && self.rng.random_bool(cfg.loss) {
            return Verdict::Drop(DropCause::Loss);
        }
        let mut at = now;
        if let Some(bps) = cfg.bandwidth_bps {
            let free = self.link_free_at.filter(|&t| t > now).unwrap_or(now);
            let ahead = bytes_in(free - now, bps);
            let limit = cfg.queue_limit().unwrap_or(usize::MAX);
            if ahead.saturating_add(len) > limit {
                return Verdict::Drop(DropCause::QueueFull);
            }
            at = free + serialization_time(len, bps);
            self.link_free_at = Some(at);
        }
        at += cfg.delay;
        if !cfg.jitter.is_zero() {
            at += self.rng.random_range(Duration::ZERO..=cfg.jitter);
        }
        if let Some(last) = self.last_at {
            at = at.max(last);
        }
        if cfg.reorder > 0.0 && self.rng.random_bool(cfg.reorder) {
            // Not recorded in last_at: datagrams after this one may go before it.
            at += cfg.reorder_delay;
        } else {
            self.last_at = Some(at);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Verdict::Deliver { at, seq }
    }
}

/// A datagram waiting for its delivery time.
#[derive(Debug)]
struct Pending {
    at: Instant,
    seq: u64,
    /// The client it comes from (to server) or goes to (to client).
    client: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug, Default)]
struct Counters {
    received_packets: AtomicU64,
    received_bytes: AtomicU64,
    forwarded_packets: AtomicU64,
    forwarded_bytes: AtomicU64,
    dropped_packets: AtomicU64,
    dropped_bytes: AtomicU64,
    dropped_blackhole: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    send_errors: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn received(&self, len: usize) {
        Self::add(&self.received_packets, 1);
        Self::add(&self.received_bytes, len);
    }

    fn forwarded(&self, len: usize) {
        Self::add(&self.forwarded_packets, 1);
        Self::add(&self.forwarded_bytes, len);
    }

    /// `None` is a send error.
    fn dropped(&self, cause: Option<DropCause>, len: usize) {
        Self::add(
            match cause {
                Some(DropCause::Blackhole) => &self.dropped_blackhole,
                Some(DropCause::Loss) => &self.dropped_loss,
                Some(DropCause::QueueFull) => &self.dropped_queue,
                None => &self.send_errors,
            },
            1,
        );
        Self::add(&self.dropped_bytes, len);
        // Last, so that a reader seeing the packet count also sees the cause.
        Self::add(&self.dropped_packets, 1);
    }

    fn snapshot(&self) -> DirectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionStats {
            received_packets: get(&self.received_packets),
            received_bytes: get(&self.received_bytes),
            forwarded_packets: get(&self.forwarded_packets),
            forwarded_bytes: get(&self.forwarded_bytes),
            dropped_packets: get(&self.dropped_packets),
            dropped_bytes: get(&self.dropped_bytes),
            dropped_blackhole: get(&self.dropped_blackhole),
            dropped_loss: get(&self.dropped_loss),
            dropped_queue: get(&self.dropped_queue),
            send_errors: get(&self.send_errors),
        }
    }
}

/// A client's upstream socket and the task reading the server's replies from it.
#[derive(Debug)]
struct Client {
    upstream: Arc<UdpSocket>,
    upstream_local: SocketAddr,
    reader: tokio::task::AbortHandle,
}

impl Drop for Client {
    fn drop(&mut self) {
        // The reader holds the socket too; stopping it closes the socket, as a NAT forgetting
        // the mapping would.
        self.reader.abort();
    }
}

/// State shared by the proxy's tasks and every [`ProxyControl`].
#[derive(Debug)]
struct Shared {
    started: Instant,
    seed: u64,
    upstream: SocketAddr,
    /// Where upstream sockets bind: the loopback address of the upstream's family when the
    /// upstream is on loopback, the unspecified address otherwise.
    upstream_bind_ip: IpAddr,
    listen: Arc<UdpSocket>,
    local_addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    stopped: AtomicBool,
    shapers: [Mutex<Shaper>; 2],
    counters: [Counters; 2],
    queues: [mpsc::UnboundedSender<Pending>; 2],
    clients: Mutex<HashMap<SocketAddr, Client>>,
    log: Mutex<Vec<Event>>,
}

/// Locks, ignoring poisoning: every critical section leaves the data consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A non-blocking UDP socket on `addr` with raised buffers.
fn bind_std(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let context = |e: io::Error| io::Error::new(e.kind(), format!("link proxy: bind {addr}: {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(context)?;
    // Best effort: the kernel caps the size silently, and a smaller buffer still works.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into()).map_err(context)?;
    socket.set_nonblocking(true).map_err(context)?;
    Ok(socket.into())
}

impl Shared {
    /// Counts a datagram in and queues it for delivery or drops it.
    fn admit(&self, dir: usize, client: SocketAddr, data: &[u8]) {
        let counters = &self.counters[dir];
        counters.received(data.len());
        let verdict = lock(&self.shapers[dir]).admit(Instant::now(), data.len());
        match verdict {
            Verdict::Deliver { at, seq } => {
                let pending = Pending {
                    at,
                    seq,
                    client,
                    data: data.to_vec(),
                };
                // Fails only while the proxy shuts down.
                let _ = self.queues[dir].send(pending);
            }
            Verdict::Drop(cause) => counters.dropped(Some(cause), data.len()),
        }
    }

    /// Sends a datagram that is due, unless its direction went dark meanwhile.
    async fn egress(&self, dir: usize, pending: Pending) {
        let counters = &self.counters[dir];
        let len = pending.data.len();
        if lock(&self.shapers[dir]).cfg.blackhole {
            counters.dropped(Some(DropCause::Blackhole), len);
            return;
        }
        let sent = if dir == TO_SERVER {
            // Looked up now rather than on arrival, so a NAT rebinding also moves datagrams
            // that were queued before it.
            let socket = lock(&self.clients)
                .get(&pending.client)
                .map(|c| c.upstream.clone());
            match socket {
                Some(socket) => socket.send_to(&pending.data, self.upstream).await,
                None => Err(io::ErrorKind::NotFound.into()),
            }
        } else {
            self.listen.send_to(&pending.data, pending.client).await
        };
        match sent {
            Ok(_) => counters.forwarded(len),
            Err(_) => counters.dropped(None, len),
        }
    }

    /// A fresh upstream socket for `client` and a task reading the server's datagrams from it.
    fn new_client(self: &Arc<Self>, client: SocketAddr) -> io::Result<Client> {
        let socket = bind_std(SocketAddr::new(self.upstream_bind_ip, 0))?;
        let socket = {
            let _runtime = self.runtime.enter();
            Arc::new(UdpSocket::from_std(socket)?)
        };
        let upstream_local = socket.local_addr()?;
        let reader = self
            .runtime
            .spawn(read_upstream(self.clone(), client, socket.clone()))
            .abort_handle();
        Ok(Client {
            upstream: socket,
            upstream_local,
            reader,
        })
    }

    fn rebind_clients(self: &Arc<Self>) -> io::Result<usize> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "link proxy: stopped, cannot rebind",
            ));
        }
        let mut clients = lock(&self.clients);
        for (addr, client) in clients.iter_mut() {
            // Replacing drops the old Client, which closes its socket.
            *client = self.new_client(*addr)?;
        }
        Ok(clients.len())
    }

    fn record(&self, action: Action, error: Option<&io::Error>) -> Event {
        let event = Event {
            at: self.started.elapsed(),
            action,
            error: error.map(ToString::to_string),
        };
        lock(&self.log).push(event.clone());
        event
    }
}

/// Receives from clients and forwards toward the server.
async fn read_clients(shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, client) = match shared.listen.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(_) => {
                // Nothing useful to do with a receive error on an unconnected UDP socket but
                // not spin on it.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let known = match lock(&shared.clients).entry(client) {
            Entry::Occupied(_) => true,
            Entry::Vacant(entry) => shared.new_client(client).map(|c| entry.insert(c)).is_ok(),
        };
        if known {
            shared.admit(TO_SERVER, client, &buf[..len]);
        } else {
            let counters = &shared.counters[TO_SERVER];
            counters.received(len);
            counters.dropped(None, len);
        }
    }
}

/// Receives the server's datagrams for one client and forwards them to it.
async fn read_upstream(shared: Arc<Shared>, client: SocketAddr, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, from)) if from == shared.upstream => {
                shared.admit(TO_CLIENT, client, &buf[..len]);
            }
            // Not from the server: a NAT would not let it through either.
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Sends the datagrams of one direction when they are due, in (due time, arrival) order.
async fn deliver(shared: Arc<Shared>, dir: usize, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let mut due: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
    loop {
        let next = due.peek().map(|Reverse(p)| p.at);
        let deadline = tokio::time::Instant::from_std(next.unwrap_or_else(Instant::now));
        tokio::select! {
            biased;
            pending = queue.recv() => match pending {
                Some(pending) => due.push(Reverse(pending)),
                None => return,
            },
            () = tokio::time::sleep_until(deadline), if next.is_some() => {}
        }
        let now = Instant::now();
        while due.peek().is_some_and(|Reverse(p)| p.at <= now) {
            let Some(Reverse(pending)) = due.pop() else {
                break;
            };
            shared.egress(dir, pending).await;
        }
    }
}

/// Binds the listening socket, starts the tasks; runs inside the proxy's runtime.
fn setup(upstream: SocketAddr, seed: u64) -> io::Result<Arc<Shared>> {
    let (loopback, unspecified): (IpAddr, IpAddr) = if upstream.is_ipv6() {
        (Ipv6Addr::LOCALHOST.into(), Ipv6Addr::UNSPECIFIED.into())
    } else {
        (Ipv4Addr::LOCALHOST.into(), Ipv4Addr::UNSPECIFIED.into())
    };
    let listen = UdpSocket::from_std(bind_std(SocketAddr::new(loopback, 0))?)?;
    let local_addr = listen.local_addr()?;
    let (to_server_tx, to_server_rx) = mpsc::unbounded_channel();
    let (to_client_tx, to_client_rx) = mpsc::unbounded_channel();
    // Each direction draws from its own stream, so one direction's traffic does not change the
    // other's decisions.
    let shapers = [
        Mutex::new(Shaper::new(seed)),
        Mutex::new(Shaper::new(seed ^ 0x9e37_79b9_7f4a_7c15)),
    ];
    let shared = Arc::new(Shared {
        started: Instant::now(),
        seed,
        upstream,
        upstream_bind_ip: if upstream.ip().is_loopback() {
            loopback
        } else {
            unspecified
        },
        listen: Arc::new(listen),
        local_addr,
        runtime: tokio::runtime::Handle::current(),
        stopped: AtomicBool::new(false),
        shapers,
        counters: Default::default(),
        queues: [to_server_tx, to_client_tx],
        clients: Mutex::new(HashMap::new()),
        log: Mutex::new(Vec::new()),
    });
    tokio::spawn(read_clients(shared.clone()));
    tokio::spawn(deliver(shared.clone(), TO_SERVER, to_server_rx));
    tokio::spawn(deliver(shared.clone(), TO_CLIENT, to_client_rx));
    Ok(shared)
}

/// A running link-fault proxy; see the [module docs](self). Stops when dropped.
#[derive(Debug)]
pub struct LinkProxy {
    control: ProxyControl,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl LinkProxy {
    /// Starts a proxy forwarding to `upstream`, listening on `127.0.0.1:0` (`[::1]:0` when
    /// `upstream` is IPv6), with a perfect link and [`DEFAULT_SEED`].
    ///
    /// Errors if a socket cannot be bound or the proxy thread cannot start; the message names
    /// the address.
    pub fn start(upstream: SocketAddr) -> io::Result<Self> {
        Self::start_with_seed(upstream, DEFAULT_SEED)
    }

    /// Like [`LinkProxy::start`], with the random streams seeded from `seed`.
    pub fn start_with_seed(upstream: SocketAddr, seed: u64) -> io::Result<Self> {
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name(format!("link-proxy {upstream}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let shared = match runtime.block_on(async { setup(upstream, seed) }) {
                    Ok(shared) => shared,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if ready_tx.send(Ok(shared.clone())).is_ok() {
                    // Also returns when the LinkProxy is gone without sending.
                    let _ = runtime.block_on(shutdown_rx);
                }
                // Close the upstream sockets now, not when the last ProxyControl goes.
                lock(&shared.clients).clear();
                // Dropping the runtime here (on the proxy's own thread, never inside the
                // caller's runtime) cancels the tasks.
            })?;
        let shared = match ready_rx.recv() {
            Ok(result) => result?,
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("link proxy: thread died while starting"));
            }
        };
        Ok(Self {
            control: ProxyControl { shared },
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// The address clients send to (point the agent here instead of at the hub).
    pub fn local_addr(&self) -> SocketAddr {
        self.control.shared.local_addr
    }

    /// The address datagrams are forwarded to (the hub).
    pub fn upstream_addr(&self) -> SocketAddr {
        self.control.shared.upstream
    }

    /// The seed of the random streams.
    pub fn seed(&self) -> u64 {
        self.control.shared.seed
    }

    /// A handle to change the link, read stats and the log; it may outlive the proxy (changes
    /// then have no effect and [`ProxyControl::rebind_nat`] fails).
    pub fn control(&self) -> ProxyControl {
        self.control.clone()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.control.shared.stopped.store(true, Ordering::Relaxed);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Changes a [`LinkProxy`]'s link and reads its stats and log, from any thread.
///
/// Changes apply to datagrams arriving from then on; datagrams already delayed or queued keep
/// their delivery time (but are dropped if their direction is blackholed when they become due).
/// Every change is recorded in the [log](ProxyControl::log).
#[derive(Clone)]
pub struct ProxyControl {
    shared: Arc<Shared>,
}

impl fmt::Debug for ProxyControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyControl")
            .field("local_addr", &self.shared.local_addr)
            .field("upstream", &self.shared.upstream)
            .field("seed", &self.shared.seed)
            .finish_non_exhaustive()
    }
}

impl ProxyControl {
    /// Drops every datagram in `dir` (`true`) or stops doing so.
    pub fn blackhole(&self, dir: Direction, on: bool) {
        self.configure(Action::Blackhole(dir, on));
    }

    /// Drops each datagram in `dir` with probability `rate`.
    ///
    /// # Panics
    /// If `rate` is not within `0..=1`.
    pub fn loss(&self, dir: Direction, rate: f64) {
        self.configure(Action::Loss(dir, rate));
    }

    /// Delays each datagram in `dir` by `base` plus a uniform random `0..=jitter`, keeping the
    /// order of the datagrams (a datagram is never sent before the previous one).
    ///
    /// # Panics
    /// If `base` or `jitter` exceeds [`MAX_DELAY`].
    pub fn delay(&self, dir: Direction, base: Duration, jitter: Duration) {
        self.configure(Action::Delay(dir, base, jitter));
    }

    /// Holds back each datagram in `dir` with probability `rate`: it is sent `extra` after the
    /// previous datagram, so that datagrams arriving within `extra` overtake it.
    ///
    /// # Panics
    /// If `rate` is not within `0..=1` or `extra` exceeds [`MAX_DELAY`].
    pub fn reorder(&self, dir: Direction, rate: f64, extra: Duration) {
        self.configure(Action::Reorder(dir, rate, extra));
    }

    /// Caps `dir` at `bits_per_second` (UDP payload), queueing up to
    /// [`Impairments::queue_limit`] bytes and dropping datagrams that do not fit; `None` lifts
    /// the cap.
    ///
    /// # Panics
    /// If `bits_per_second` is `Some(0)`.
    pub fn bandwidth(&self, dir: Direction, bits_per_second: Option<u64>) {
        self.configure(Action::Bandwidth(dir, bits_per_second));
    }

    /// Sets the bandwidth queue limit of `dir` in bytes; `None` restores the default (see
    /// [`Impairments::queue_limit`]).
    ///
    /// # Panics
    /// If `bytes` is `Some(0)`.
    pub fn queue_limit(&self, dir: Direction, bytes: Option<usize>) {
        self.configure(Action::QueueLimit(dir, bytes));
    }

    /// Replaces all impairments of `dir`.
    ///
    /// # Panics
    /// If a rate is not within `0..=1`, a delay exceeds [`MAX_DELAY`], or the bandwidth or
    /// queue limit is zero.
    pub fn set(&self, dir: Direction, impairments: Impairments) {
        self.configure(Action::Set(dir, impairments));
    }

    /// Back to a perfect link in both directions.
    pub fn clear(&self) {
        self.configure(Action::Clear);
    }

    /// Emulates a NAT rebinding: every client seen so far gets a fresh upstream socket (new
    /// source port as seen by the server) and the old socket is closed, so the server's
    /// datagrams to the old address are lost. Returns how many clients moved.
    ///
    /// Errors if the proxy has stopped or a socket cannot be bound.
    pub fn rebind_nat(&self) -> io::Result<usize> {
        let result = self.shared.rebind_clients();
        self.shared.record(Action::RebindNat, result.as_ref().err());
        result
    }

    /// Applies `action` and records it in the log.
    ///
    /// Errors only for a failing [`Action::RebindNat`].
    ///
    /// # Panics
    /// If the action's values are out of range (see the setters).
    pub fn apply(&self, action: Action) -> io::Result<()> {
        self.apply_logged(action).1
    }

    fn apply_logged(&self, action: Action) -> (Event, io::Result<()>) {
        if action == Action::RebindNat {
            let result = self.shared.rebind_clients();
            let event = self.shared.record(action, result.as_ref().err());
            return (event, result.map(drop));
        }
        action.check();
        let dir = match &action {
            Action::Blackhole(dir, _)
            | Action::Loss(dir, _)
            | Action::Delay(dir, _, _)
            | Action::Reorder(dir, _, _)
            | Action::Bandwidth(dir, _)
            | Action::QueueLimit(dir, _)
            | Action::Set(dir, _) => *dir,
            Action::Clear | Action::RebindNat => Direction::Both,
        };
        for &i in dir.indices() {
            let cfg = &mut lock(&self.shared.shapers[i]).cfg;
            match &action {
                Action::Blackhole(_, on) => cfg.blackhole = *on,
                Action::Loss(_, rate) => cfg.loss = *rate,
                Action::Delay(_, base, jitter) => (cfg.delay, cfg.jitter) = (*base, *jitter),
                Action::Reorder(_, rate, extra) => {
                    (cfg.reorder, cfg.reorder_delay) = (*rate, *extra)
                }
                Action::Bandwidth(_, bps) => cfg.bandwidth_bps = *bps,
                Action::QueueLimit(_, bytes) => cfg.queue_limit_bytes = *bytes,
                Action::Set(_, impairments) => *cfg = impairments.clone(),
                Action::Clear | Action::RebindNat => *cfg = Impairments::default(),
            }
        }
        (self.shared.record(action, None), Ok(()))
    }

    /// For actions that cannot fail.
    fn configure(&self, action: Action) {
        debug_assert_ne!(action, Action::RebindNat);
        let _ = self.apply_logged(action);
    }

    /// Runs `schedule` on its own thread: each step is applied when its offset from now has
    /// passed (steps with equal offsets in the order given). Returns at once.
    ///
    /// # Panics
    /// If a step's values are out of range (checked before anything runs).
    pub fn run_schedule(&self, schedule: impl Into<Schedule>) -> ScheduleHandle {
        let mut steps = schedule.into().steps;
        for (_, action) in &steps {
            action.check();
        }
        // Stable: equal offsets keep their order.
        steps.sort_by_key(|(offset, _)| *offset);
        let (cancel, cancelled) = std_mpsc::channel::<()>();
        let control = self.clone();
        let thread = thread::Builder::new()
            .name("link-proxy schedule".into())
            .spawn(move || {
                let start = Instant::now();
                let mut events = Vec::with_capacity(steps.len());
                for (offset, action) in steps {
                    let wait = (start + offset).saturating_duration_since(Instant::now());
                    match cancelled.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                    events.push(control.apply_logged(action).0);
                }
                events
            })
            .expect("link proxy: cannot start the schedule thread");
        ScheduleHandle {
            cancel: Some(cancel),
            thread: Some(thread),
        }
    }

    /// Counters of both directions.
    pub fn stats(&self) -> ProxyStats {
        PerDirection {
            to_server: self.shared.counters[TO_SERVER].snapshot(),
            to_client: self.shared.counters[TO_CLIENT].snapshot(),
        }
    }

    /// The impairments in effect in both directions.
    pub fn impairments(&self) -> PerDirection<Impairments> {
        PerDirection {
            to_server: lock(&self.shared.shapers[TO_SERVER]).cfg.clone(),
            to_client: lock(&self.shared.shapers[TO_CLIENT]).cfg.clone(),
        }
    }

    /// Every change applied so far, oldest first, with the time since the proxy started.
    pub fn log(&self) -> Vec<Event> {
        lock(&self.shared.log).clone()
    }

    /// The clients seen so far and their current upstream sockets, sorted by client address.
    pub fn clients(&self) -> Vec<ClientPath> {
        let mut paths: Vec<ClientPath> = lock(&self.shared.clients)
            .iter()
            .map(|(client, c)| ClientPath {
                client: *client,
                upstream_local: c.upstream_local,
            })
            .collect();
        paths.sort();
        paths
    }
}

/// Random outages for [`Schedule::flap`]: `count` times, the link stays up for a random time in
/// `up`, then is blackholed for a random time in `down`. The times are drawn from `seed`, so the
/// same `Flap` always gives the same schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flap {
    /// Which direction(s) go dark.
    pub direction: Direction,
    /// Number of outages.
    pub count: usize,
    /// Range of the time the link stays up before each outage.
    pub up: RangeInclusive<Duration>,
    /// Range of the length of each outage.
    pub down: RangeInclusive<Duration>,
    /// Seed of the random times.
    pub seed: u64,
}

/// Timed [`Action`]s, each at an offset from the moment the schedule starts running
/// ([`ProxyControl::run_schedule`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    steps: Vec<(Duration, Action)>,
}

impl From<Vec<(Duration, Action)>> for Schedule {
    /// `(offset from start, action)` pairs, in any order.
    fn from(steps: Vec<(Duration, Action)>) -> Self {
        Self { steps }
    }
}

impl Schedule {
    /// An empty schedule.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `action` at `offset` from the start.
    pub fn at(mut self, offset: Duration, action: Action) -> Self {
        self.steps.push((offset, action));
        self
    }

    /// Adds `action` `gap` after the last step so far (after the start if there is none).
    pub fn after(self, gap: Duration, action: Action) -> Self {
        let offset = self.end() + gap;
        self.at(offset, action)
    }

    /// Appends the outages of `flap` after the last step so far; the last one ends with the
    /// blackhole off.
    ///
    /// # Panics
    /// If a range of `flap` is empty (start after end).
    pub fn flap(mut self, flap: Flap) -> Self {
        for (name, range) in [("up", &flap.up), ("down", &flap.down)] {
            assert!(
                range.start() <= range.end(),
                "link proxy: flap {name} range {range:?} is empty"
            );
        }
        let mut rng = StdRng::seed_from_u64(flap.seed);
        let mut t = self.end();
        for _ in 0..flap.count {
            t += rng.random_range(flap.up.clone());
            self.steps
                .push((t, Action::Blackhole(flap.direction, true)));
            t += rng.random_range(flap.down.clone());
            self.steps
                .push((t, Action::Blackhole(flap.direction, false)));
        }
        self
    }

    /// The steps, as `(offset from start, action)`, in the order added.
    pub fn steps(&self) -> &[(Duration, Action)] {
        &self.steps
    }

    /// Offset of the last step (zero for an empty schedule): how long the schedule runs.
    pub fn end(&self) -> Duration {
        self.steps
            .iter()
            .map(|(offset, _)| *offset)
            .max()
            .unwrap_or_default()
    }
}

/// A schedule running on its own thread ([`ProxyControl::run_schedule`]). Dropping the handle
/// cancels the steps not yet applied.
#[derive(Debug)]
#[must_use = "dropping the handle cancels the schedule"]
pub struct ScheduleHandle {
    cancel: Option<std_mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<Vec<Event>>>,
}

impl ScheduleHandle {
    /// Waits until every step has been applied and returns them, as logged. Blocks the calling
    /// thread; in async code call it from `spawn_blocking`, or sleep for the schedule's
    /// [`end`](Schedule::end) first.
    pub fn join(mut self) -> Vec<Event> {
        self.wait()
    }

    /// Stops applying steps and returns those applied so far.
    pub fn cancel(mut self) -> Vec<Event> {
        if let Some(cancel) = self.cancel.take() {
            let _ = cancel.send(());
        }
        self.wait()
    }

    /// Whether every step has been applied (or the schedule was cancelled).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    fn wait(&mut self) -> Vec<Event> {
        match self.thread.take().map(thread::JoinHandle::join) {
            Some(Ok(events)) => events,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Vec::new(),
        }
    }
}

impl Drop for ScheduleHandle {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread, which then stops.
        self.cancel.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The impairment model on a virtual clock.

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn shaper(cfg: Impairments) -> Shaper {
        let mut s = Shaper::new(7);
        s.cfg = cfg;
        s
    }

    fn at(v: Verdict) -> Instant {
        match v {
            Verdict::Deliver { at, .. } => at,
            Verdict::Drop(cause) => panic!("dropped: {cause:?}"),
        }
    }

    #[test]
    fn same_seed_same_decisions() {
        let cfg = Impairments {
            loss: 0.3,
            jitter: 10 * MS,
            reorder: 0.2,
            reorder_delay: 5 * MS,
            ..Impairments::default()
        };
        let t0 = Instant::now();
        let run = |seed| {
            let mut s = Shaper::new(seed);
            s.cfg = cfg.clone();
            (0..1000u32)
                .map(|i| s.admit(t0 + i * MS, 100))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn bandwidth_serializes_and_tail_drops() {
        // 8 kbit/s: 1000 bytes take one second; the queue holds 2500 bytes.
        let mut s = shaper(Impairments {
            bandwidth_bps: Some(8_000),
            queue_limit_bytes: Some(2_500),
            ..Impairments::default()
        });
        let t0 = Instant::now();
        assert_eq!(at(s.admit(t0, 1000)), t0 + 1000 * MS);
        assert_eq!(at(s.admit(t0, 1000)), t0 + 2000 * MS);
        // 2000 bytes ahead + 1000 > 2500.
        assert_eq!(s.admit(t0, 1000), Verdict::Drop(DropCause::QueueFull));
        // A small one still fits, then the queue drains with time.
        assert_eq!(at(s.admit(t0, 500)), t0 + 2500 * MS);
        assert_eq!(at(s.admit(t0 + 2500 * MS, 1000)), t0 + 3500 * MS);
        // An idle link starts from the arrival time again.
        assert_eq!(at(s.admit(t0 + 10_000 * MS, 1000)), t0 + 11_000 * MS);
    }

    #[test]
    fn default_queue_is_about_one_bdp() {
        let mut cfg = Impairments {
            bandwidth_bps: Some(100_000_000),
            ..Impairments::default()
        };
        // 100 Mbit/s for 100 ms.
        assert_eq!(cfg.queue_limit(), Some(1_250_000));
        cfg.delay = 200 * MS;
        assert_eq!(cfg.queue_limit(), Some(5_000_000));
        cfg.bandwidth_bps = Some(1_000);
        assert_eq!(cfg.queue_limit(), Some(MIN_DEFAULT_QUEUE_BYTES));
        cfg.bandwidth_bps = None;
        assert_eq!(cfg.queue_limit(), None);
    }

    #[test]
    fn jitter_never_reorders_but_reorder_does() {
        let t0 = Instant::now();
        let mut jittery = shaper(Impairments {
            delay: 5 * MS,
            jitter: 50 * MS,
            ..Impairments::default()
        });
        let times: Vec<Instant> = (0..500u32)
            .map(|i| at(jittery.admit(t0 + i * MS / 10, 100)))
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(times.iter().all(|&t| t >= t0 + 5 * MS));

        let mut reordering = shaper(Impairments {
            reorder: 0.25,
            reorder_delay: 10 * MS,
            ..Impairments::default()
        });
        let times: Vec<Instant> = (0..500u32)
            .map(|i| at(reordering.admit(t0 + i * MS / 10, 100)))
            .collect();
        let overtaken = times.windows(2).filter(|w| w[0] > w[1]).count();
        assert!(overtaken > 50, "only {overtaken} of 500 overtaken");
    }

    #[test]
    fn out_of_range_actions_are_refused_with_the_value() {
        let cases = [
            (Action::Loss(Direction::Both, 1.5), "loss rate 1.5"),
            (Action::Loss(Direction::Both, f64::NAN), "loss rate NaN"),
            (
                Action::Reorder(Direction::ToServer, -0.1, MS),
                "reorder rate -0.1",
            ),
            (
                Action::Bandwidth(Direction::ToClient, Some(0)),
                "bandwidth 0",
            ),
            (
                Action::QueueLimit(Direction::ToClient, Some(0)),
                "queue limit 0",
            ),
            (
                Action::Delay(Direction::Both, MAX_DELAY * 2, MS),
                "delay 7200s exceeds",
            ),
        ];
        for (action, want) in cases {
            let problem = action.problem().expect("refused");
            assert!(problem.contains(want), "{problem:?} lacks {want:?}");
        }
        assert_eq!(Action::Loss(Direction::Both, 1.0).problem(), None);
    }
}
