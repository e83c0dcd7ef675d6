//! Self-tests of the link-fault proxy (`er_tests::proxy`): plain UDP through it to an echo
//! server on loopback, then QUIC connections (er-net endpoints, mutual TLS) that survive a
//! blackhole and address changes. Time assertions are lower bounds only (the machine may be
//! slow, never fast).

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use er_net::devcerts::{self, DevPki};
use er_net::{TransportTuning, client_endpoint, server_endpoint};
use er_tests::proxy::{
    Action, Direction, Event, Flap, LinkProxy, ProxyControl, ProxyStats, Schedule,
};

/// Upper bound for anything that should happen "soon"; only reached when a test fails.
const T: Duration = Duration::from_secs(20);

/// A UDP server on loopback that records what arrives and, if asked, echoes it back.
struct Echo {
    addr: SocketAddr,
    /// (source, sequence number, arrival) of every datagram, in arrival order.
    seen: Arc<Mutex<Vec<(SocketAddr, u64, Instant)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(reply: bool) -> Echo {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let (seen, stop) = (seen.clone(), stop.clone());
            move || {
                let mut buf = vec![0u8; 65_535];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    seen.lock()
                        .unwrap()
                        .push((from, seq_of(&buf[..len]), Instant::now()));
                    if reply {
                        let _ = socket.send_to(&buf[..len], from);
                    }
                }
            }
        });
        Echo {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn seqs(&self) -> Vec<u64> {
        self.seen.lock().unwrap().iter().map(|s| s.1).collect()
    }

    fn sources(&self) -> Vec<SocketAddr> {
        self.seen.lock().unwrap().iter().map(|s| s.0).collect()
    }

    fn last_arrival(&self) -> Option<Instant> {
        self.seen.lock().unwrap().last().map(|s| s.2)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A datagram of `size` bytes (at least 8) starting with `seq`.
fn packet(seq: u64, size: usize) -> Vec<u8> {
    let mut p = vec![0xa5; size.max(8)];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p
}

fn seq_of(p: &[u8]) -> u64 {
    p.get(..8)
        .map_or(u64::MAX, |b| u64::from_be_bytes(b.try_into().unwrap()))
}

fn client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    socket
}

/// Sends `seq` to `to` and waits up to `timeout` for it to come back; the round-trip time.
fn ping(socket: &UdpSocket, to: SocketAddr, seq: u64, timeout: Duration) -> Option<Duration> {
    let sent = Instant::now();
    socket.send_to(&packet(seq, 64), to).unwrap();
    let mut buf = [0u8; 2048];
    while sent.elapsed() < timeout {
        if let Ok((len, _)) = socket.recv_from(&mut buf)
            && seq_of(&buf[..len]) == seq
        {
            return Some(sent.elapsed());
        }
    }
    None
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < T,
            "timed out after {T:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `n` datagrams of `size` bytes numbered from 0, keeping at most 64 of them in flight
/// (neither seen by `echo` nor dropped by the proxy), so that no kernel buffer overflows and
/// every datagram meets the proxy's impairments; then waits until all are accounted for.
fn send_windowed(socket: &UdpSocket, proxy: &LinkProxy, echo: &Echo, n: u64, size: usize) {
    let control = proxy.control();
    let settled = || echo.count() as u64 + control.stats().to_server.dropped_packets;
    for seq in 0..n {
        while seq - settled() >= 64 {
            thread::sleep(Duration::from_micros(200));
        }
        socket
            .send_to(&packet(seq, size), proxy.local_addr())
            .unwrap();
    }
    wait_until("every datagram delivered or dropped", || settled() == n);
}

fn print_log(log: &[Event]) {
    for event in log {
        println!("{event}");
    }
}

#[test]
fn control_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<ProxyControl>();
}

#[test]
fn forwards_both_ways_from_one_upstream_socket_per_client() {
    let echo = Echo::start(true);
    let proxy = LinkProxy::start(echo.addr).unwrap();
    let control = proxy.control();
    let (a, b) = (client(), client());
    for seq in 0..50 {
        assert!(ping(&a, proxy.local_addr(), seq, T).is_some(), "a {seq}");
        assert!(ping(&b, proxy.local_addr(), seq, T).is_some(), "b {seq}");
    }
    // The last reply may arrive before the proxy has counted it.
    wait_until("the stats to settle", || {
        control.stats().to_client.forwarded_packets == 100
    });
    let stats = control.stats();
    for (name, dir) in [
        ("to server", stats.to_server),
        ("to client", stats.to_client),
    ] {
        assert_eq!(dir.received_packets, 100, "{name}");
        assert_eq!(dir.forwarded_packets, 100, "{name}");
        assert_eq!(dir.forwarded_bytes, 100 * 64, "{name}");
        assert_eq!(dir.dropped_packets, 0, "{name}");
    }
    // The server sees exactly one address per client, the proxy's, not the client's own.
    let paths = control.clients();
    let clients: BTreeSet<_> = paths.iter().map(|p| p.client).collect();
    let expected: BTreeSet<_> = [a.local_addr().unwrap(), b.local_addr().unwrap()].into();
    assert_eq!(clients, expected);
    let upstreams: BTreeSet<_> = paths.iter().map(|p| p.upstream_local).collect();
    let seen: BTreeSet<_> = echo.sources().into_iter().collect();
    assert_eq!(seen, upstreams);
    assert_eq!(seen.len(), 2);
}

#[test]
fn blackhole_drops_everything_and_recovers() {
    let echo = Echo::start(true);
    let proxy = LinkProxy::start(echo.addr).unwrap();
    let control = proxy.control();
    let socket = client();
    assert!(ping(&socket, proxy.local_addr(), 0, T).is_some());

    control.blackhole(Direction::Both, true);
    for seq in 1..=10 {
        let rtt = ping(&socket, proxy.local_addr(), seq, Duration::from_millis(100));
        assert_eq!(rtt, None, "datagram {seq} crossed a blackhole");
    }
    assert_eq!(echo.count(), 1);
    assert_eq!(control.stats().to_server.dropped_blackhole, 10);

    control.blackhole(Direction::Both, false);
    assert!(ping(&socket, proxy.local_addr(), 11, T).is_some());

    // One way only: the server still gets the datagram, its reply is lost.
    control.blackhole(Direction::ToClient, true);
    let rtt = ping(&socket, proxy.local_addr(), 12, Duration::from_millis(200));
    assert_eq!(rtt, None);
    wait_until("the reply to be dropped", || {
        control.stats().to_client.dropped_blackhole == 1
    });
    assert_eq!(echo.seqs(), [0, 11, 12]);

    control.clear();
    assert!(ping(&socket, proxy.local_addr(), 13, T).is_some());
    let log = control.log();
    print_log(&log);
    let actions: Vec<_> = log.into_iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            Action::Blackhole(Direction::Both, true),
            Action::Blackhole(Direction::Both, false),
            Action::Blackhole(Direction::ToClient, true),
            Action::Clear,
        ]
    );
}

/// Sends 10k datagrams through a proxy losing `rate` to the server; the sequence numbers that
/// arrived and the proxy's stats.
fn lossy_run(seed: u64, rate: f64) -> (BTreeSet<u64>, ProxyStats) {
    const N: u64 = 10_000;
    let echo = Echo::start(false);
    let proxy = LinkProxy::start_with_seed(echo.addr, seed).unwrap();
    proxy.control().loss(Direction::ToServer, rate);
    send_windowed(&client(), &proxy, &echo, N, 32);
    let stats = proxy.control().stats();
    assert_eq!(stats.to_server.received_packets, N, "the proxy missed some");
    (echo.seqs().into_iter().collect(), stats)
}

#[test]
fn loss_rate_is_roughly_right_and_reproducible_from_the_seed() {
    let (arrived, stats) = lossy_run(1, 0.2);
    let lost = 1.0 - arrived.len() as f64 / 10_000.0;
    println!("lost {:.2}% (seed 1, rate 20%)", lost * 100.0);
    assert!((0.15..=0.25).contains(&lost), "lost {lost}");
    assert_eq!(stats.to_server.dropped_loss, 10_000 - arrived.len() as u64);
    assert_eq!(
        stats.to_server.dropped_packets,
        stats.to_server.dropped_loss
    );

    let (again, _) = lossy_run(1, 0.2);
    assert_eq!(arrived, again, "the same seed dropped other datagrams");
    let (other, _) = lossy_run(2, 0.2);
    assert_ne!(arrived, other, "another seed dropped the same datagrams");
}

#[test]
fn delay_adds_at_least_the_base_delay_each_way() {
    let echo = Echo::start(true);
    let proxy = LinkProxy::start(echo.addr).unwrap();
    let control = proxy.control();
    let socket = client();
    control.delay(
        Direction::Both,
        Duration::from_millis(100),
        Duration::from_millis(20),
    );
    for seq in 0..5 {
        let rtt = ping(&socket, proxy.local_addr(), seq, T).expect("no reply");
        assert!(rtt >= Duration::from_millis(200), "round trip {rtt:?}");
    }
    // Back to no delay: fast again (a bound a slow machine cannot break the wrong way: the
    // delayed path takes at least 200 ms).
    control.delay(Direction::Both, Duration::ZERO, Duration::ZERO);
    assert!(ping(&socket, proxy.local_addr(), 5, T).is_some());
}

/// Sends `n` datagrams in bursts of 20, 5 ms apart (small bursts never overflow a socket
/// buffer), and waits until `echo` has them all.
fn send_bursts(socket: &UdpSocket, to: SocketAddr, echo: &Echo, n: u64) {
    for seq in 0..n {
        socket.send_to(&packet(seq, 64), to).unwrap();
        if seq % 20 == 19 {
            thread::sleep(Duration::from_millis(5));
        }
    }
    wait_until("every datagram to arrive", || echo.count() as u64 == n);
}

fn inversions(seqs: &[u64]) -> usize {
    let mut max = None;
    seqs.iter()
        .filter(|&&s| {
            let overtaken = max.is_some_and(|m| s < m);
            max = max.max(Some(s));
            overtaken
        })
        .count()
}

#[test]
fn jitter_keeps_order_reorder_breaks_it() {
    let echo = Echo::start(false);
    let proxy = LinkProxy::start(echo.addr).unwrap();
    let control = proxy.control();
    let socket = client();
    // Jitter far above the spacing of the datagrams: without the order rule, many would swap.
    control.delay(
        Direction::ToServer,
        Duration::from_millis(5),
        Duration::from_millis(30),
    );
    send_bursts(&socket, proxy.local_addr(), &echo, 200);
    assert_eq!(
        echo.seqs(),
        (0..200).collect::<Vec<_>>(),
        "jitter reordered"
    );

    let echo = Echo::start(false);
    let proxy = LinkProxy::start(echo.addr).unwrap();
    proxy
        .control()
        .reorder(Direction::ToServer, 0.3, Duration::from_millis(50));
    send_bursts(&socket, proxy.local_addr(), &echo, 200);
    let seqs = echo.seqs();
    let overtaken = inversions(&seqs);
    println!("{overtaken} of 200 arrived after a later one");
    assert!(overtaken > 0, "reorder 30% reordered nothing: {seqs:?}");
    let all: BTreeSet<_> = seqs.into_iter().collect();
    assert_eq!(
        all,
        (0..200).collect(),
        "reordering lost or duplicated some"
    );
}

#[test]
fn bandwidth_cap_paces_and_a_full_queue_drops() {
    let echo = Echo::start(false);
    let proxy = LinkProxy::start(echo.addr).unwrap();
    let control = proxy.control();
    let socket = client();
    // 200 x 1000 bytes = 1.6 Mbit at 1 Mbit/s: at least 1.6 s, all of it queued at once.
    control.bandwidth(Direction::ToServer, Some(1_000_000));
    control.queue_limit(Direction::ToServer, Some(1 << 20));
    let started = Instant::now();
    for seq in 0..200 {
        socket
            .send_to(&packet(seq, 1000), proxy.local_addr())
            .unwrap();
    }
    wait_until("every datagram to arrive", || echo.count() == 200);
    let elapsed = echo.last_arrival().unwrap() - started;
    println!("1.6 Mbit through 1 Mbit/s in {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(1500),
        "took only {elapsed:?}"
    );
    assert_eq!(control.stats().to_server.dropped_packets, 0);
    assert_eq!(echo.seqs(), (0..200).collect::<Vec<_>>());

    // The default queue (about 100 ms of the link, at least 24 kB) overflows with 200 kB sent
    // at once: the tail is dropped.
    let echo = Echo::start(false);
    let proxy = LinkProxy::start(echo.addr).unwrap();
    let control = proxy.control();
    control.bandwidth(Direction::ToServer, Some(1_000_000));
    for seq in 0..200 {
        socket
            .send_to(&packet(seq, 1000), proxy.local_addr())
            .unwrap();
    }
    wait_until("the queue to drain", || {
        let s = control.stats().to_server;
        s.received_packets == 200 && s.queued_packets() == 0
    });
    let s = control.stats().to_server;
    println!("{s:?}");
    assert!(s.dropped_queue > 0, "nothing dropped");
    assert_eq!(s.dropped_packets, s.dropped_queue);
    assert!(s.forwarded_packets >= 24, "the queue held only {s:?}");
    wait_until("the echo to see them", || {
        echo.count() as u64 == s.forwarded_packets
    });
    // What was queued went through in order; drops only left gaps.
    let seqs = echo.seqs();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[test]
fn nat_rebinding_shows_the_server_a_new_source_port() {
    let echo = Echo::start(true);
    let proxy = LinkProxy::start(echo.addr).unwrap();
    let control = proxy.control();
    let socket = client();
    assert!(ping(&socket, proxy.local_addr(), 0, T).is_some());
    let before = control.clients()[0].upstream_local;
    assert_eq!(control.rebind_nat().unwrap(), 1);
    let after = control.clients()[0].upstream_local;
    assert_ne!(before, after);
    // The reply comes back through the new mapping.
    assert!(ping(&socket, proxy.local_addr(), 1, T).is_some());
    assert_eq!(echo.sources(), [before, after]);
    assert_eq!(control.log()[0].action, Action::RebindNat);
}

#[test]
fn flap_schedules_are_reproducible_and_within_bounds() {
    let flap = |seed| Flap {
        direction: Direction::Both,
        count: 20,
        up: Duration::from_millis(100)..=Duration::from_secs(2),
        down: Duration::from_millis(500)..=Duration::from_secs(3),
        seed,
    };
    let a = Schedule::new().flap(flap(7));
    assert_eq!(a, Schedule::new().flap(flap(7)));
    assert_ne!(a, Schedule::new().flap(flap(8)));
    let steps = a.steps();
    assert_eq!(steps.len(), 40);
    let mut previous = Duration::ZERO;
    for (i, (offset, action)) in steps.iter().enumerate() {
        let gap = *offset - previous;
        previous = *offset;
        let on = i % 2 == 0;
        assert_eq!(*action, Action::Blackhole(Direction::Both, on));
        let bounds = if on { &flap(7).up } else { &flap(7).down };
        assert!(bounds.contains(&gap), "step {i}: gap {gap:?}");
    }
    assert_eq!(a.end(), steps[39].0);
}

#[test]
fn schedule_applies_steps_on_time_and_can_be_cancelled() {
    let echo = Echo::start(true);
    let proxy = LinkProxy::start(echo.addr).unwrap();
    let control = proxy.control();
    let schedule = Schedule::new()
        .at(Duration::ZERO, Action::Loss(Direction::ToClient, 0.5))
        .flap(Flap {
            direction: Direction::ToServer,
            count: 2,
            up: Duration::from_millis(100)..=Duration::from_millis(100),
            down: Duration::from_millis(200)..=Duration::from_millis(200),
            seed: 1,
        })
        .after(Duration::from_millis(50), Action::Clear);
    let events = control.run_schedule(schedule).join();
    print_log(&events);
    assert_eq!(events.len(), 6);
    assert_eq!(events, control.log());
    // Each step no earlier than planned after the first.
    let planned = [0, 100, 300, 400, 600, 650];
    for (event, ms) in events.iter().zip(planned) {
        let since_first = event.at - events[0].at;
        assert!(since_first >= Duration::from_millis(ms), "{event}");
    }
    assert_eq!(control.impairments().to_server.loss, 0.0);

    let handle = control.run_schedule(vec![
        (Duration::ZERO, Action::Blackhole(Direction::Both, true)),
        (Duration::from_secs(600), Action::Clear),
    ]);
    wait_until("the first step", || control.log().len() == 7);
    let events = handle.cancel();
    assert_eq!(events.len(), 1);
    assert!(
        control.impairments().to_client.blackhole,
        "cancelled step ran"
    );
}

// QUIC through the proxy.

/// A dev PKI in a temporary directory with one site, "shop-1".
fn pki() -> Result<(tempfile::TempDir, DevPki)> {
    let dir = tempfile::tempdir()?;
    devcerts::generate_in_memory(&[], &["shop-1".into()])?.write_to(dir.path(), false)?;
    let pki = DevPki::new(dir.path());
    Ok((dir, pki))
}

/// A QUIC server answering each bidirectional stream with the client address it sees, a
/// newline, and the stream's data. Returns its address and a count of connections accepted.
fn start_hub(pki: &DevPki) -> Result<(quinn::Endpoint, Arc<AtomicUsize>)> {
    let endpoint = server_endpoint(
        "127.0.0.1:0".parse()?,
        &pki.hub_tls(),
        &TransportTuning::default(),
    )?;
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let (endpoint, accepted) = (endpoint.clone(), accepted.clone());
        async move {
            while let Some(incoming) = endpoint.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let conn = conn.clone();
                        tokio::spawn(async move {
                            let Ok(data) = recv.read_to_end(1 << 20).await else {
                                return;
                            };
                            let mut reply = format!("{}\n", conn.remote_address()).into_bytes();
                            reply.extend(data);
                            let _ = send.write_all(&reply).await;
                            let _ = send.finish();
                        });
                    }
                });
            }
        }
    });
    Ok((endpoint, accepted))
}

/// Sends `payload` on a new stream; the client address the server saw and the echoed payload.
async fn exchange(conn: quinn::Connection, payload: &'static [u8]) -> Result<SocketAddr> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(payload).await?;
    send.finish()?;
    let reply = recv.read_to_end(1 << 20).await?;
    let newline = reply
        .iter()
        .position(|&b| b == b'\n')
        .context("no newline in reply")?;
    ensure!(reply[newline + 1..] == *payload, "echo differs");
    Ok(std::str::from_utf8(&reply[..newline])?.parse()?)
}

async fn exchange_within(conn: &quinn::Connection, payload: &'static [u8]) -> Result<SocketAddr> {
    match tokio::time::timeout(T, exchange(conn.clone(), payload)).await {
        Ok(result) => result,
        Err(_) => bail!(
            "no reply to {:?} within {T:?}",
            String::from_utf8_lossy(payload)
        ),
    }
}

/// A client endpoint for "shop-1" connected to the hub through `proxy`.
async fn connect(pki: &DevPki, proxy: &LinkProxy) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let (endpoint, _) = client_endpoint(
        "127.0.0.1:0".parse()?,
        &pki.site_tls("shop-1"),
        &TransportTuning::default(),
    )?;
    let connecting = endpoint.connect(proxy.local_addr(), "localhost")?;
    let conn = tokio::time::timeout(T, connecting).await??;
    Ok((endpoint, conn))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connection_survives_a_three_second_blackhole() -> Result<()> {
    let (_dir, pki) = pki()?;
    let (hub, accepted) = start_hub(&pki)?;
    let proxy = LinkProxy::start(hub.local_addr()?)?;
    let control = proxy.control();
    let (_client, conn) = connect(&pki, &proxy).await?;
    exchange_within(&conn, b"before").await?;

    // Shorter than the 10 s idle timeout, longer than a keep-alive interval (2 s).
    control.blackhole(Direction::Both, true);
    let during = tokio::spawn(exchange(conn.clone(), b"during"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        !during.is_finished(),
        "a stream completed through a blackhole"
    );
    let stats = control.stats();
    ensure!(stats.to_server.dropped_blackhole > 0, "{stats:?}");
    control.blackhole(Direction::Both, false);

    // What was sent into the blackhole is retransmitted, and the connection carries on.
    tokio::time::timeout(T, during)
        .await
        .context("stream sent during the blackhole never completed")???;
    exchange_within(&conn, b"after").await?;
    ensure!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "the client reconnected"
    );
    print_log(&control.log());
    println!("{:?}", control.stats());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connection_survives_nat_rebinding() -> Result<()> {
    let (_dir, pki) = pki()?;
    let (hub, accepted) = start_hub(&pki)?;
    let proxy = LinkProxy::start(hub.local_addr()?)?;
    let control = proxy.control();
    let (_client, conn) = connect(&pki, &proxy).await?;
    let before = exchange_within(&conn, b"before").await?;
    assert_eq!(before, control.clients()[0].upstream_local);

    assert_eq!(control.rebind_nat()?, 1);
    let after = exchange_within(&conn, b"after").await?;
    assert_ne!(after, before, "the server did not see the address change");
    assert_eq!(after, control.clients()[0].upstream_local);
    ensure!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "the client reconnected"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_client_migration_is_a_new_path_through_the_proxy() -> Result<()> {
    let (_dir, pki) = pki()?;
    let (hub, accepted) = start_hub(&pki)?;
    let proxy = LinkProxy::start(hub.local_addr()?)?;
    let control = proxy.control();
    let (client, conn) = connect(&pki, &proxy).await?;
    let before = exchange_within(&conn, b"before").await?;

    client.rebind(UdpSocket::bind("127.0.0.1:0")?)?;
    let after = exchange_within(&conn, b"after").await?;
    let new_path = control
        .clients()
        .into_iter()
        .find(|p| p.client == client.local_addr().unwrap())
        .context("the proxy never saw the client's new address")?;
    assert_eq!(control.clients().len(), 2);
    assert_eq!(after, new_path.upstream_local);
    assert_ne!(after, before);
    ensure!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "the client reconnected"
    );
    Ok(())
}
