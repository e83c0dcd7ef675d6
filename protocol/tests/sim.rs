//! Simulated agent/hub pair over in-memory links with a virtual clock (quinn's `Pair` style).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use er_protocol::*;

const RECORDS_PER_BATCH: i64 = 3;

fn agent_config() -> AgentConnConfig {
    AgentConnConfig {
        agent_version: "test-agent".into(),
        site_claim: "edge1".into(),
        ping_interval: Duration::from_secs(5),
        welcome_timeout: Duration::from_secs(10),
        max_inflight_bytes_per_partition: 64 * 1024,
        max_inflight_bytes_total: 256 * 1024,
    }
}

fn hub_config() -> HubConnConfig {
    HubConnConfig {
        hub_id: "hub-1".into(),
        max_batch_bytes: 1 << 20,
        max_uncompressed_bytes: 4 << 20,
    }
}

/// Central side state that outlives connections: committed positions and every committed record.
#[derive(Default, Debug)]
struct Store {
    positions: BTreeMap<TopicPartition, i64>,
    committed: Vec<(TopicPartition, i64)>,
}

/// The edge Kafka log plus the agent app's read cursor (reset from Welcome on each connection).
#[derive(Debug)]
struct Source {
    /// Per partition: number of records (offsets 0..len).
    logs: BTreeMap<TopicPartition, i64>,
    cursor: BTreeMap<TopicPartition, i64>,
    pending: BTreeMap<TopicPartition, Batch>,
}

impl Source {
    fn new(partitions: &[(TopicPartition, i64)]) -> Self {
        Self {
            logs: partitions.iter().cloned().collect(),
            cursor: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }
}

struct Pair {
    now: Instant,
    latency: Duration,
    commit_delay: Duration,
    agent: AgentConn,
    hub: HubConn,
    to_hub: VecDeque<(Instant, Channel, BytesMut)>,
    to_agent: VecDeque<(Instant, Channel, BytesMut)>,
    commits: VecDeque<(Instant, Batch)>,
    store: Store,
    source: Option<Source>,
    auto_welcome: bool,
    agent_events: Vec<AgentEvent>,
    hub_events: Vec<HubEvent>,
    agent_errors: Vec<ProtocolError>,
    hub_errors: Vec<ProtocolError>,
}

impl Pair {
    fn new(now: Instant, latency: Duration, store: Store) -> Self {
        Self::with_config(now, latency, store, agent_config())
    }

    fn with_config(now: Instant, latency: Duration, store: Store, config: AgentConnConfig) -> Self {
        Self {
            now,
            latency,
            commit_delay: Duration::from_millis(5),
            agent: AgentConn::new(config, now),
            hub: HubConn::new(hub_config(), "edge1".into(), now),
            to_hub: VecDeque::new(),
            to_agent: VecDeque::new(),
            commits: VecDeque::new(),
            store,
            source: None,
            auto_welcome: true,
            agent_events: Vec::new(),
            hub_events: Vec::new(),
            agent_errors: Vec::new(),
            hub_errors: Vec::new(),
        }
    }

    /// Moves queued output onto the links and reacts to events; no time passes.
    fn drive(&mut self) {
        loop {
            let mut progress = false;
            while let Some((ch, f)) = self.agent.poll_transmit() {
                let mut b = BytesMut::new();
                encode_frame(&f, &mut b);
                self.to_hub.push_back((self.now + self.latency, ch, b));
                progress = true;
            }
            while let Some((ch, f)) = self.hub.poll_transmit() {
                let mut b = BytesMut::new();
                encode_frame(&f, &mut b);
                self.to_agent.push_back((self.now + self.latency, ch, b));
                progress = true;
            }
            while let Some(ev) = self.hub.poll_event() {
                progress = true;
                match &ev {
                    HubEvent::Hello { .. } if self.auto_welcome => {
                        let positions = self
                            .store
                            .positions
                            .iter()
                            .map(|(tp, &next_offset)| Position {
                                tp: tp.clone(),
                                next_offset,
                            })
                            .collect();
                        self.hub.welcome(positions, "central".into()).unwrap();
                    }
                    HubEvent::Batch(b) => {
                        b.decode_records(hub_config().max_uncompressed_bytes)
                            .expect("valid records");
                        self.commits
                            .push_back((self.now + self.commit_delay, b.clone()));
                    }
                    _ => {}
                }
                self.hub_events.push(ev);
            }
            while let Some(ev) = self.agent.poll_event() {
                progress = true;
                if let (AgentEvent::Welcomed { positions, .. }, Some(src)) = (&ev, &mut self.source)
                {
                    src.cursor.clear();
                    src.pending.clear();
                    for p in positions {
                        src.cursor.insert(p.tp.clone(), p.next_offset);
                    }
                }
                self.agent_events.push(ev);
            }
            progress |= self.pump_source();
            if !progress {
                return;
            }
        }
    }

    /// The agent app: read records from the source log and send batches while budget allows.
    fn pump_source(&mut self) -> bool {
        let Some(src) = &mut self.source else {
            return false;
        };
        if !self.agent.is_welcomed() {
            return false;
        }
        let mut sent = false;
        for (tp, &len) in &src.logs {
            loop {
                if !src.pending.contains_key(tp) {
                    let from = *src.cursor.get(tp).unwrap_or(&0);
                    if from >= len {
                        break;
                    }
                    let to = (from + RECORDS_PER_BATCH).min(len);
                    let mut b = BatchBuilder::new(tp.clone(), 8);
                    let value = vec![b'x'; 200];
                    for offset in from..to {
                        b.push(&RecordRef {
                            offset,
                            timestamp: 1_000 + offset,
                            timestamp_type: TimestampType::CreateTime,
                            key: None,
                            value: Some(&value),
                            headers: &[],
                            topic: None,
                            partition: None,
                        });
                    }
                    let batch = b.finish(self.agent.next_seq(tp), Codec::None, 0).unwrap();
                    src.cursor.insert(tp.clone(), to);
                    src.pending.insert(tp.clone(), batch);
                }
                let bytes = src.pending[tp].payload.len() as u64;
                if !self.agent.can_send(tp, bytes) {
                    break;
                }
                let batch = src.pending.remove(tp).unwrap();
                self.agent.send_batch(batch).unwrap();
                sent = true;
            }
        }
        sent
    }

    fn next_wakeup(&self) -> Option<Instant> {
        [
            self.to_hub.front().map(|m| m.0),
            self.to_agent.front().map(|m| m.0),
            self.commits.front().map(|c| c.0),
            self.agent.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Advances the clock to the next wakeup and handles everything due; false when idle.
    fn step(&mut self) -> bool {
        self.drive();
        let Some(t) = self.next_wakeup() else {
            return false;
        };
        self.now = self.now.max(t);
        let now = self.now;
        while self.to_hub.front().is_some_and(|m| m.0 <= now) {
            let (_, ch, bytes) = self.to_hub.pop_front().unwrap();
            let f = decode_one(&bytes);
            if let Err(e) = self.hub.handle_frame(now, &ch, f) {
                self.hub_errors.push(e);
            }
        }
        while self.to_agent.front().is_some_and(|m| m.0 <= now) {
            let (_, ch, bytes) = self.to_agent.pop_front().unwrap();
            let f = decode_one(&bytes);
            if let Err(e) = self.agent.handle_frame(now, &ch, f) {
                self.agent_errors.push(e);
            }
        }
        while self.commits.front().is_some_and(|c| c.0 <= now) {
            let (_, b) = self.commits.pop_front().unwrap();
            let records = b.decode_records(u32::MAX).unwrap();
            for r in records.iter() {
                self.store
                    .committed
                    .push((b.header.tp.clone(), r.unwrap().offset));
            }
            let h = &b.header;
            self.store.positions.insert(h.tp.clone(), h.next_offset);
            self.hub.ack(&h.tp, h.seq, h.next_offset).unwrap();
        }
        if self.agent.poll_timeout().is_some_and(|t| t <= now) {
            self.agent.handle_timeout(now);
        }
        self.drive();
        true
    }

    fn run_until(&mut self, mut done: impl FnMut(&Pair) -> bool, max_steps: usize) {
        for _ in 0..max_steps {
            if done(self) {
                return;
            }
            if !self.step() {
                break;
            }
        }
        assert!(
            done(self),
            "condition not reached (now idle or out of steps)"
        );
    }

    fn welcomed(&self) -> bool {
        self.agent.is_welcomed()
    }
}

fn decode_one(bytes: &[u8]) -> Frame {
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    d.push(bytes);
    let f = d.next_frame().unwrap().unwrap();
    assert_eq!(d.buffered_len(), 0);
    f
}

fn tp(t: &str, p: i32) -> TopicPartition {
    TopicPartition::new(t, p)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Asserts every offset 0..len of every partition was committed exactly once, in order.
fn assert_exactly_once(store: &Store, logs: &[(TopicPartition, i64)]) {
    for (tp, len) in logs {
        let offsets: Vec<i64> = store
            .committed
            .iter()
            .filter(|(t, _)| t == tp)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(offsets, (0..*len).collect::<Vec<_>>(), "{tp}");
        assert_eq!(store.positions.get(tp), Some(len), "{tp}");
    }
}

#[test]
fn handshake_delivers_resume_positions() {
    let mut store = Store::default();
    store.positions.insert(tp("orders", 0), 5);
    store.positions.insert(tp("orders", 1), 0);
    let mut pair = Pair::new(Instant::now(), ms(10), store);
    pair.run_until(Pair::welcomed, 100);
    assert_eq!(
        pair.hub_events[0],
        HubEvent::Hello {
            agent_version: "test-agent".into(),
            site_claim: "edge1".into(),
            version: PROTOCOL_VERSION,
        }
    );
    assert_eq!(
        pair.agent_events[0],
        AgentEvent::Welcomed {
            site: "edge1".into(),
            hub_id: "hub-1".into(),
            positions: vec![
                Position {
                    tp: tp("orders", 0),
                    next_offset: 5
                },
                Position {
                    tp: tp("orders", 1),
                    next_offset: 0
                },
            ],
            max_batch_bytes: hub_config().max_batch_bytes,
            heartbeat_target: "central".into(),
        }
    );
    // One round trip: Hello there, Welcome back.
    assert_eq!(pair.agent.version(), Some(PROTOCOL_VERSION));
    // The agent must not restart a known partition before its position.
    let mut b = BatchBuilder::new(tp("orders", 0), 2);
    b.set_next_offset(4);
    let err = pair.agent.send_batch(b.finish(0, Codec::None, 0).unwrap());
    assert!(matches!(
        err,
        Err(ProtocolError::OffsetRegression { expected: 5, .. })
    ));
}

#[test]
fn thousand_batches_over_four_partitions_are_acked_in_order() {
    let logs: Vec<_> = (0..4)
        .map(|p| (tp("events", p), 250 * RECORDS_PER_BATCH))
        .collect();
    let mut pair = Pair::new(Instant::now(), ms(10), Store::default());
    pair.source = Some(Source::new(&logs));
    pair.run_until(
        |p| p.store.committed.len() == 1000 * 3 && p.agent.inflight_bytes() == 0,
        100_000,
    );
    assert_exactly_once(&pair.store, &logs);
    let acks: Vec<_> = pair
        .agent_events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Acked {
                tp,
                seq,
                next_offset,
            } => Some((tp.clone(), *seq, *next_offset)),
            _ => None,
        })
        .collect();
    assert_eq!(acks.len(), 1000);
    for (t, _) in &logs {
        let mine: Vec<_> = acks.iter().filter(|a| &a.0 == t).collect();
        for (i, a) in mine.iter().enumerate() {
            assert_eq!(a.1, i as u64);
            assert_eq!(a.2, (i as i64 + 1) * RECORDS_PER_BATCH);
        }
    }
    assert!(pair.agent_errors.is_empty() && pair.hub_errors.is_empty());
}

#[test]
fn heartbeat_batches_go_one_at_a_time_per_partition() {
    let mut pair = Pair::with_config(Instant::now(), ms(20), Store::default(), agent_config());
    pair.run_until(Pair::welcomed, 100);
    let (hb, data) = (tp("heartbeats", 0), tp("t", 0));
    let batch = |pair: &Pair, tp: &TopicPartition, offset: i64| {
        let mut bb = BatchBuilder::new(tp.clone(), 1);
        bb.push(&RecordRef {
            offset,
            timestamp: 0,
            timestamp_type: TimestampType::CreateTime,
            key: None,
            value: Some(b"beat"),
            headers: &[],
            topic: None,
            partition: None,
        });
        bb.finish(pair.agent.next_seq(tp), Codec::None, 0).unwrap()
    };
    pair.agent.send_batch(batch(&pair, &hb, 0)).unwrap();
    pair.agent.send_batch(batch(&pair, &data, 0)).unwrap();
    // A tiny heartbeat batch waits for the one in flight; a data partition takes several.
    assert!(!pair.agent.can_send(&hb, 50));
    assert!(pair.agent.link_has_room(50), "only the heartbeats wait");
    assert!(pair.agent.can_send(&data, 50));
    pair.agent.send_batch(batch(&pair, &data, 1)).unwrap();
    pair.run_until(|p| p.agent.inflight_bytes() == 0, 1000);
    assert!(pair.agent.can_send(&hb, 50));
    pair.agent.send_batch(batch(&pair, &hb, 1)).unwrap();
    pair.run_until(|p| p.agent.inflight_bytes() == 0, 1000);
    assert_eq!(pair.store.committed.len(), 4);
}

#[test]
fn backpressure_blocks_sends_until_acks_free_the_budget() {
    let config = AgentConnConfig {
        max_inflight_bytes_per_partition: 1000,
        max_inflight_bytes_total: 1500,
        ..agent_config()
    };
    let mut pair = Pair::with_config(Instant::now(), ms(20), Store::default(), config);
    pair.run_until(Pair::welcomed, 100);
    let (a, b) = (tp("t", 0), tp("t", 1));
    let batch = |pair: &Pair, tp: &TopicPartition, offset: i64| {
        let mut bb = BatchBuilder::new(tp.clone(), 2);
        bb.push(&RecordRef {
            offset,
            timestamp: 0,
            timestamp_type: TimestampType::CreateTime,
            key: None,
            value: Some(&[7u8; 395]),
            headers: &[],
            topic: None,
            partition: None,
        });
        bb.finish(pair.agent.next_seq(tp), Codec::None, 0).unwrap()
    };
    let size = batch(&pair, &a, 0).payload.len() as u64;
    assert!((400..500).contains(&size), "{size}");
    // Partition budget: two fit, the third does not.
    for off in 0..2 {
        assert!(pair.agent.can_send(&a, size));
        pair.agent.send_batch(batch(&pair, &a, off)).unwrap();
    }
    assert!(!pair.agent.can_send(&a, size));
    assert!(
        pair.agent.link_has_room(size),
        "only the partition is full: others may send"
    );
    assert!(matches!(
        pair.agent.send_batch(batch(&pair, &a, 2)),
        Err(ProtocolError::BudgetExceeded { .. })
    ));
    // Total budget: one more on another partition, then full.
    assert!(pair.agent.can_send(&b, size));
    pair.agent.send_batch(batch(&pair, &b, 0)).unwrap();
    assert!(!pair.agent.can_send(&b, size));
    assert!(!pair.agent.link_has_room(size), "the link is full");
    assert_eq!(pair.agent.inflight_bytes(), 3 * size);
    // A batch larger than the partition budget may go alone... but not past a full total.
    assert!(!pair.agent.can_send(&tp("t", 2), 5000));
    // Acks free the budget.
    pair.run_until(|p| p.agent.inflight_bytes() == 0, 1000);
    assert!(pair.agent.can_send(&a, size));
    assert!(
        pair.agent.can_send(&tp("t", 2), 5000),
        "oversized batch alone: no deadlock"
    );
    pair.agent.send_batch(batch(&pair, &a, 2)).unwrap();
    pair.run_until(|p| p.agent.inflight_bytes() == 0, 1000);
    assert_eq!(pair.store.committed.len(), 4);
}

#[test]
fn reconnect_resumes_exactly_from_the_last_committed_offset() {
    let logs: Vec<_> = (0..3).map(|p| (tp("metrics", p), 600)).collect();
    let start = Instant::now();
    let mut pair = Pair::new(start, ms(15), Store::default());
    pair.commit_delay = ms(30);
    pair.source = Some(Source::new(&logs));
    pair.run_until(|p| p.store.committed.len() >= 500, 100_000);
    // Cut the link mid-stream: batches in flight, commits pending, acks on the wire are lost.
    assert!(pair.agent.inflight_bytes() > 0);
    assert!(!pair.commits.is_empty() || !pair.to_agent.is_empty());
    let committed_before = pair.store.committed.len();
    let Pair { store, now, .. } = pair;

    let mut pair = Pair::new(now + Duration::from_secs(1), ms(15), store);
    pair.source = Some(Source::new(&logs));
    pair.run_until(Pair::welcomed, 100);
    let AgentEvent::Welcomed { positions, .. } = &pair.agent_events[0] else {
        panic!("first event is Welcomed")
    };
    assert_eq!(positions.len(), 3);
    let resumed: i64 = positions.iter().map(|p| p.next_offset).sum();
    assert_eq!(resumed as usize, committed_before);
    pair.run_until(
        |p| p.store.committed.len() == 1800 && p.agent.inflight_bytes() == 0,
        100_000,
    );
    assert_exactly_once(&pair.store, &logs);
}

#[test]
fn version_mismatch_is_reported_to_the_agent() {
    let now = Instant::now();
    let mut hub = HubConn::new(hub_config(), "edge1".into(), now);
    let err = hub
        .handle_frame(
            now,
            &Channel::Control,
            Frame::Hello {
                min_version: PROTOCOL_VERSION + 1,
                max_version: PROTOCOL_VERSION + 5,
                agent_version: "future".into(),
                site_claim: "edge1".into(),
            },
        )
        .unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::VersionMismatch {
            peer_min,
            peer_max,
            ..
        } if peer_min == PROTOCOL_VERSION + 1 && peer_max == PROTOCOL_VERSION + 5
    ));
    let (ch, frame) = hub.poll_transmit().unwrap();
    assert_eq!(ch, Channel::Control);
    let Frame::Error { code, message } = frame.clone() else {
        panic!("expected Error, got {frame:?}")
    };
    assert_eq!(code, ErrorCode::VersionMismatch);
    let peer = format!("{}..={}", PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 5);
    assert!(message.contains(&peer), "{message}");
    assert!(hub.is_closed());
    assert!(hub.poll_event().is_none());

    // The agent learns why.
    let mut agent = AgentConn::new(agent_config(), now);
    agent.handle_frame(now, &Channel::Control, frame).unwrap();
    assert!(matches!(
        agent.poll_event(),
        Some(AgentEvent::HubError {
            code: ErrorCode::VersionMismatch,
            ..
        })
    ));
    assert_eq!(agent.poll_timeout(), None);

    // And an agent refuses a Welcome with a version it did not offer.
    let mut agent = AgentConn::new(agent_config(), now);
    let err = agent
        .handle_frame(
            now,
            &Channel::Control,
            Frame::Welcome {
                version: 9,
                site: "edge1".into(),
                hub_id: "h".into(),
                positions: vec![],
                max_batch_bytes: 10,
                heartbeat_target: "central".into(),
            },
        )
        .unwrap_err();
    assert_eq!(
        err,
        ProtocolError::WelcomeVersion {
            version: 9,
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION
        }
    );
}

fn small_batch(tp: &TopicPartition, seq: u64, first: i64, next: i64) -> Batch {
    let mut b = BatchBuilder::new(tp.clone(), 4);
    b.set_next_offset(next);
    let mut batch = b.finish(seq, Codec::None, 0).unwrap();
    batch.header.first_offset = first;
    batch
}

#[test]
fn batch_before_welcome_is_a_protocol_error_on_both_sides() {
    let now = Instant::now();
    let t = tp("t", 0);
    // Agent refuses to send.
    let mut agent = AgentConn::new(agent_config(), now);
    assert!(matches!(
        agent.send_batch(small_batch(&t, 0, 0, 0)),
        Err(ProtocolError::InvalidCall {
            call: "send_batch",
            ..
        })
    ));
    // Hub refuses to receive, before Hello and between Hello and welcome().
    for say_hello in [false, true] {
        let mut hub = HubConn::new(hub_config(), "edge1".into(), now);
        if say_hello {
            hub.handle_frame(
                now,
                &Channel::Control,
                Frame::Hello {
                    min_version: PROTOCOL_VERSION,
                    max_version: PROTOCOL_VERSION,
                    agent_version: "a".into(),
                    site_claim: "edge1".into(),
                },
            )
            .unwrap();
        }
        let err = hub
            .handle_frame(
                now,
                &Channel::Partition(t.clone()),
                Frame::Batch(small_batch(&t, 0, 0, 0)),
            )
            .unwrap_err();
        let state = if say_hello {
            "awaiting welcome from the hub driver"
        } else {
            "awaiting hello"
        };
        assert_eq!(
            err,
            ProtocolError::UnexpectedFrame {
                frame: "Batch",
                state
            }
        );
        assert!(matches!(
            hub.poll_transmit(),
            Some((
                Channel::Control,
                Frame::Error {
                    code: ErrorCode::Protocol,
                    ..
                }
            ))
        ));
    }
}

fn welcomed_hub(now: Instant, positions: Vec<Position>) -> HubConn {
    let mut hub = HubConn::new(hub_config(), "edge1".into(), now);
    hub.handle_frame(
        now,
        &Channel::Control,
        Frame::Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            agent_version: "a".into(),
            site_claim: "edge1".into(),
        },
    )
    .unwrap();
    hub.welcome(positions, "central".into()).unwrap();
    while hub.poll_transmit().is_some() {}
    hub
}

#[test]
fn hub_enforces_batch_order_channel_and_size() {
    let now = Instant::now();
    let t = tp("t", 0);
    let pc = Channel::Partition(t.clone());
    let start = vec![Position {
        tp: t.clone(),
        next_offset: 10,
    }];
    let mut too_big = small_batch(&t, 0, 10, 10);
    too_big.payload = vec![0u8; hub_config().max_batch_bytes as usize + 1].into();
    type Case = (&'static str, Vec<(Channel, Batch)>, ProtocolError);
    let cases: Vec<Case> = vec![
        (
            "before resume position",
            vec![(pc.clone(), small_batch(&t, 0, 9, 12))],
            ProtocolError::OffsetRegression {
                tp: t.clone(),
                first_offset: 9,
                expected: 10,
            },
        ),
        (
            "seq not increasing",
            vec![
                (pc.clone(), small_batch(&t, 3, 10, 12)),
                (pc.clone(), small_batch(&t, 3, 12, 13)),
            ],
            ProtocolError::OutOfOrderBatch {
                tp: t.clone(),
                seq: 3,
                expected: 4,
            },
        ),
        (
            "overlaps previous batch",
            vec![
                (pc.clone(), small_batch(&t, 0, 10, 12)),
                (pc.clone(), small_batch(&t, 1, 11, 13)),
            ],
            ProtocolError::OffsetRegression {
                tp: t.clone(),
                first_offset: 11,
                expected: 12,
            },
        ),
        (
            "wrong channel",
            vec![(Channel::Partition(tp("t", 1)), small_batch(&t, 0, 10, 10))],
            ProtocolError::WrongChannel {
                frame: "Batch",
                expected: "partition t/0".into(),
                got: "partition t/1".into(),
            },
        ),
        (
            "payload too large",
            vec![(pc.clone(), too_big)],
            ProtocolError::BatchTooLarge {
                tp: t.clone(),
                what: "payload",
                len: u64::from(hub_config().max_batch_bytes) + 1,
                max: hub_config().max_batch_bytes.into(),
            },
        ),
    ];
    for (name, batches, want) in cases {
        let mut hub = welcomed_hub(now, start.clone());
        let n = batches.len();
        for (i, (ch, b)) in batches.into_iter().enumerate() {
            let r = hub.handle_frame(now, &ch, Frame::Batch(b));
            if i + 1 < n {
                r.unwrap();
            } else {
                assert_eq!(r, Err(want.clone()), "{name}");
            }
        }
        assert!(hub.is_closed(), "{name}");
    }
    // Gaps are fine (filtered records), and acks must follow batches in order.
    let mut hub = welcomed_hub(now, start);
    hub.handle_frame(now, &pc, Frame::Batch(small_batch(&t, 0, 15, 20)))
        .unwrap();
    assert_eq!(
        hub.ack(&t, 1, 20),
        Err(ProtocolError::AckMismatch {
            tp: t.clone(),
            seq: 1,
            next_offset: 20,
            expected: Some((0, 20))
        })
    );
    hub.ack(&t, 0, 20).unwrap();
}

#[test]
fn agent_refuses_an_ack_that_matches_no_inflight_batch() {
    let mut pair = Pair::new(Instant::now(), ms(5), Store::default());
    pair.run_until(Pair::welcomed, 100);
    let t = tp("t", 0);
    pair.agent.send_batch(small_batch(&t, 0, 0, 3)).unwrap();
    let now = pair.now;
    let err = pair
        .agent
        .handle_frame(
            now,
            &Channel::Partition(t.clone()),
            Frame::Ack {
                seq: 0,
                tp: t.clone(),
                next_offset: 2,
            },
        )
        .unwrap_err();
    assert_eq!(
        err,
        ProtocolError::AckMismatch {
            tp: t.clone(),
            seq: 0,
            next_offset: 2,
            expected: Some((0, 3))
        }
    );
    // The hub is told why, and the connection is closed.
    let (ch, f) = std::iter::from_fn(|| pair.agent.poll_transmit())
        .find(|(_, f)| f.kind() == "Error")
        .unwrap();
    assert_eq!(ch, Channel::Control);
    assert!(matches!(
        f,
        Frame::Error {
            code: ErrorCode::Protocol,
            ..
        }
    ));
    assert!(!pair.agent.is_welcomed());
}

#[test]
fn welcome_timeout_fires_at_the_deadline() {
    let start = Instant::now();
    let mut pair = Pair::new(start, ms(10), Store::default());
    pair.auto_welcome = false;
    pair.run_until(|p| !p.agent_events.is_empty(), 100);
    assert_eq!(
        pair.agent_events,
        vec![AgentEvent::TimedOut { what: "welcome" }]
    );
    assert_eq!(pair.now - start, agent_config().welcome_timeout);
    assert_eq!(pair.agent.poll_timeout(), None);
}

#[test]
fn ping_measures_round_trip_time() {
    let start = Instant::now();
    let mut pair = Pair::new(start, ms(25), Store::default());
    pair.run_until(
        |p| {
            p.agent_events
                .iter()
                .any(|e| matches!(e, AgentEvent::RttSample(_)))
        },
        1000,
    );
    let sample = pair
        .agent_events
        .iter()
        .find_map(|e| match e {
            AgentEvent::RttSample(d) => Some(*d),
            _ => None,
        })
        .unwrap();
    assert!(sample >= ms(50) && sample <= ms(51), "{sample:?}");
    assert_eq!(pair.agent.rtt(), Some(sample));
    // Welcome arrived at 50 ms, first ping at 50 ms + interval, pong 50 ms later.
    assert_eq!(
        pair.now - start,
        ms(50) + agent_config().ping_interval + ms(50)
    );
}

#[test]
fn go_away_stops_new_batches_but_acks_still_arrive() {
    let mut pair = Pair::new(Instant::now(), ms(10), Store::default());
    pair.run_until(Pair::welcomed, 100);
    let t = tp("t", 0);
    let mut b = BatchBuilder::new(t.clone(), 1);
    b.push(&RecordRef {
        offset: 0,
        timestamp: 0,
        timestamp_type: TimestampType::CreateTime,
        key: None,
        value: None,
        headers: &[],
        topic: None,
        partition: None,
    });
    pair.agent
        .send_batch(b.finish(0, Codec::None, 0).unwrap())
        .unwrap();
    pair.hub.go_away("restarting".into());
    pair.run_until(|p| p.agent.inflight_bytes() == 0, 100);
    assert!(pair.agent_events.contains(&AgentEvent::GoAway {
        reason: "restarting".into()
    }));
    assert!(
        pair.agent_events
            .iter()
            .any(|e| matches!(e, AgentEvent::Acked { seq: 0, .. }))
    );
    assert!(!pair.agent.can_send(&t, 1));
    assert!(pair.agent.send_batch(small_batch(&t, 1, 1, 1)).is_err());
}

#[test]
fn redirect_instead_of_welcome_sends_the_agent_elsewhere() {
    let start = Instant::now();
    let mut pair = Pair::new(start, ms(10), Store::default());
    pair.auto_welcome = false;
    pair.run_until(|p| !p.hub_events.is_empty(), 100);
    assert!(matches!(pair.hub_events[0], HubEvent::Hello { .. }));
    let to = vec!["hub-2:4433".to_owned(), "10.0.0.2:4433".to_owned()];
    pair.hub
        .redirect(to.clone(), "shard 3 is owned by hub-2".into())
        .unwrap();
    assert!(pair.hub.is_closed(), "the hub is done with this agent");
    assert_eq!(
        pair.hub.welcome(vec![], "central".into()),
        Err(ProtocolError::InvalidCall {
            call: "welcome",
            state: "closed"
        }),
        "no welcome after a redirect"
    );
    pair.run_until(|p| !p.agent_events.is_empty(), 100);
    assert_eq!(
        pair.agent_events,
        vec![AgentEvent::Redirected {
            addresses: to,
            reason: "shard 3 is owned by hub-2".into()
        }]
    );
    // One round trip, and the connection is over: no welcome timer, no pings, nothing to send.
    assert_eq!(pair.now - start, ms(20));
    assert!(!pair.agent.is_welcomed());
    assert_eq!(pair.agent.poll_timeout(), None);
    assert!(pair.agent.poll_transmit().is_none());
    assert!(pair.agent_errors.is_empty() && pair.hub_errors.is_empty());
    let now = pair.now;
    assert_eq!(
        pair.agent.handle_frame(
            now,
            &Channel::Control,
            Frame::Ping {
                nonce: 0,
                sent_at_micros: 0
            }
        ),
        Err(ProtocolError::Closed {
            reason: "redirected by the hub"
        })
    );
    // The hub may also redirect as soon as it knows the site, before the Hello arrived.
    let mut hub = HubConn::new(hub_config(), "edge1".into(), now);
    hub.redirect(vec!["hub-2:4433".into()], String::new())
        .unwrap();
    assert!(matches!(
        hub.poll_transmit(),
        Some((Channel::Control, Frame::Redirect { .. }))
    ));
}

#[test]
fn redirects_follow_the_rules_on_both_sides() {
    let now = Instant::now();
    let hello = || Frame::Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        agent_version: "a".into(),
        site_claim: "edge1".into(),
    };
    // The hub refuses redirects the agent would refuse, naming the field, and stays open.
    let cases: Vec<(Vec<String>, String, &str)> = vec![
        (vec![], String::new(), "addresses"),
        (
            vec!["h:1".into(); MAX_REDIRECT_ADDRESSES + 1],
            String::new(),
            "addresses",
        ),
        (
            vec!["h:1".into(), String::new()],
            String::new(),
            "addresses[1]",
        ),
        (
            vec![
                "h:1".into(),
                "h:2".into(),
                "x".repeat(MAX_REDIRECT_ADDRESS_BYTES + 1),
            ],
            String::new(),
            "addresses[2]",
        ),
        (
            vec!["h:1".into()],
            "r".repeat(MAX_REDIRECT_REASON_BYTES + 1),
            "reason",
        ),
    ];
    for (addresses, reason, field) in cases {
        let mut hub = HubConn::new(hub_config(), "edge1".into(), now);
        hub.handle_frame(now, &Channel::Control, hello()).unwrap();
        let e = hub.redirect(addresses.clone(), reason.clone()).unwrap_err();
        assert!(
            matches!(&e, ProtocolError::InvalidRedirect { field: f, .. } if f == field),
            "{field}: {e}"
        );
        assert!(
            e.to_string().starts_with(&format!("redirect: {field}: ")),
            "{e}"
        );
        assert!(!hub.is_closed(), "{field}");
        assert!(hub.poll_transmit().is_none(), "{field}");
        // An agent given such a frame anyway tells the hub why and closes.
        let mut agent = AgentConn::new(agent_config(), now);
        while agent.poll_transmit().is_some() {}
        let got = agent.handle_frame(
            now,
            &Channel::Control,
            Frame::Redirect { addresses, reason },
        );
        assert_eq!(got, Err(e), "{field}");
        assert!(matches!(
            agent.poll_transmit(),
            Some((
                Channel::Control,
                Frame::Error {
                    code: ErrorCode::Protocol,
                    ..
                }
            ))
        ));
        assert!(
            agent.poll_event().is_none(),
            "{field}: no redirect to follow"
        );
    }
    // Not after a welcome: the hub cannot, and the agent refuses one.
    let mut hub = welcomed_hub(now, vec![]);
    assert_eq!(
        hub.redirect(vec!["h:1".into()], String::new()),
        Err(ProtocolError::InvalidCall {
            call: "redirect",
            state: "welcomed"
        })
    );
    let mut pair = Pair::new(now, ms(5), Store::default());
    pair.run_until(Pair::welcomed, 100);
    let redirect = Frame::Redirect {
        addresses: vec!["h:1".into()],
        reason: String::new(),
    };
    assert_eq!(
        pair.agent
            .handle_frame(pair.now, &Channel::Control, redirect.clone()),
        Err(ProtocolError::UnexpectedFrame {
            frame: "Redirect",
            state: "welcomed"
        })
    );
    // Only on the control channel; and an agent never sends one.
    let mut agent = AgentConn::new(agent_config(), now);
    assert!(matches!(
        agent.handle_frame(now, &Channel::Partition(tp("t", 0)), redirect.clone()),
        Err(ProtocolError::WrongChannel {
            frame: "Redirect",
            ..
        })
    ));
    let mut hub = HubConn::new(hub_config(), "edge1".into(), now);
    hub.handle_frame(now, &Channel::Control, hello()).unwrap();
    assert_eq!(
        hub.handle_frame(now, &Channel::Control, redirect),
        Err(ProtocolError::UnexpectedFrame {
            frame: "Redirect",
            state: "awaiting welcome from the hub driver"
        })
    );
}

/// Moves every frame one side queued to the other, through the codec.
fn shuttle(from: &mut dyn FnMut() -> Option<(Channel, Frame)>) -> Vec<(Channel, Frame)> {
    let mut out = Vec::new();
    while let Some((ch, frame)) = from() {
        let mut buf = BytesMut::new();
        encode_frame(&frame, &mut buf);
        out.push((ch, decode_frame(&buf[4..]).expect("a queued frame decodes")));
    }
    out
}

/// The hub stops a partition at a record it cannot write: the batch's earlier records are
/// committed (an Ack for the batch before it, a Stopped naming the offset), the agent frees the
/// partition's in-flight budget and sends it no more on this connection, and the hub drops the
/// partition's later batches (pending or still arriving) without handing them on. Other
/// partitions carry on.
#[test]
fn a_stopped_partition_frees_the_agents_budget_and_its_later_batches_are_dropped() {
    let now = Instant::now();
    let mut agent = AgentConn::new(agent_config(), now);
    let mut hub = HubConn::new(hub_config(), "edge1".into(), now);
    for (ch, f) in shuttle(&mut || agent.poll_transmit()) {
        hub.handle_frame(now, &ch, f).unwrap();
    }
    while hub.poll_event().is_some() {}
    hub.welcome(Vec::new(), "central".into()).unwrap();
    for (ch, f) in shuttle(&mut || hub.poll_transmit()) {
        agent.handle_frame(now, &ch, f).unwrap();
    }
    while agent.poll_event().is_some() {}
    let (a, b) = (tp("t", 0), tp("t", 1));
    let batch = |agent: &AgentConn, tp: &TopicPartition, offset: i64| {
        let mut bb = BatchBuilder::new(tp.clone(), 2);
        for o in offset..offset + 2 {
            bb.push(&RecordRef {
                offset: o,
                timestamp: 0,
                timestamp_type: TimestampType::CreateTime,
                key: None,
                value: Some(b"v"),
                headers: &[],
                topic: None,
                partition: None,
            });
        }
        bb.finish(agent.next_seq(tp), Codec::None, 0).unwrap()
    };
    // a: offsets 0..2, 2..4 (holds the poison record 3), 4..6; b: 0..2.
    for (tp, offset) in [(&a, 0), (&a, 2), (&a, 4), (&b, 0)] {
        let bt = batch(&agent, tp, offset);
        agent.send_batch(bt).unwrap();
    }
    for (ch, f) in shuttle(&mut || agent.poll_transmit()) {
        hub.handle_frame(now, &ch, f).unwrap();
    }
    let mut handed = Vec::new();
    while let Some(ev) = hub.poll_event() {
        if let HubEvent::Batch(b) = ev {
            handed.push((b.header.tp.clone(), b.header.seq));
        }
    }
    assert_eq!(handed.len(), 4);
    // The writer drops a's third batch first (it saw the stop while preparing), then
    // completes the first, stops the second at offset 3, and commits b's.
    hub.skip(&a, 2);
    hub.ack(&a, 0, 2).unwrap();
    // An offset no record of the batch can have is refused and stops nothing (a negative one
    // once went out in a Stopped frame the agent's decoder refuses: found by fuzzing).
    for bad in [-1, i64::MIN, 5] {
        assert!(
            matches!(
                hub.stop(&a, 1, bad, "x".into()),
                Err(ProtocolError::AckMismatch { .. })
            ),
            "offset {bad}"
        );
    }
    assert!(!hub.is_stopped(&a));
    hub.stop(
        &a,
        1,
        3,
        "record of 2 MB is larger than the 1 MB the destination accepts".into(),
    )
    .unwrap();
    assert!(hub.is_stopped(&a));
    assert!(hub.ack(&a, 2, 6).is_err(), "a dropped batch is never acked");
    hub.ack(&b, 0, 2).unwrap();
    for (ch, f) in shuttle(&mut || hub.poll_transmit()) {
        agent.handle_frame(now, &ch, f).unwrap();
    }
    let events: Vec<AgentEvent> = std::iter::from_fn(|| agent.poll_event()).collect();
    assert!(matches!(
        &events[0],
        AgentEvent::Acked {
            seq: 0,
            next_offset: 2,
            ..
        }
    ));
    assert!(
        matches!(&events[1], AgentEvent::Stopped { seq: 1, offset: 3, reason, .. } if reason.contains("1 MB")),
        "{events:?}"
    );
    assert!(matches!(&events[2], AgentEvent::Acked { seq: 0, next_offset: 2, tp } if *tp == b));
    assert_eq!(
        agent.inflight_bytes(),
        0,
        "the stopped partition's budget is free"
    );
    assert!(agent.is_stopped(&a) && !agent.is_stopped(&b));
    assert!(matches!(
        agent.send_batch(batch(&agent, &a, 6)),
        Err(ProtocolError::PartitionStopped { .. })
    ));
    agent.send_batch(batch(&agent, &b, 2)).unwrap();
    // A batch of the stopped partition that crossed the Stopped on the wire is dropped.
    let late = Frame::Batch(batch(&agent, &a, 6));
    hub.handle_frame(now, &Channel::Partition(a.clone()), late)
        .unwrap();
    for (ch, f) in shuttle(&mut || agent.poll_transmit()) {
        hub.handle_frame(now, &ch, f).unwrap();
    }
    let later: Vec<HubEvent> = std::iter::from_fn(|| hub.poll_event()).collect();
    assert_eq!(later.len(), 1, "only b's batch is handed on: {later:?}");
    assert!(matches!(&later[0], HubEvent::Batch(bt) if bt.header.tp == b));
}

/// A hub that welcomed an agent speaking only protocol version 2.
fn version_2_hub(now: Instant) -> HubConn {
    hub_at_version(now, 2)
}

/// A hub welcomed by an agent that speaks only protocol `version`.
fn hub_at_version(now: Instant, version: u16) -> HubConn {
    let mut hub = HubConn::new(hub_config(), "edge1".into(), now);
    hub.handle_frame(
        now,
        &Channel::Control,
        Frame::Hello {
            min_version: version,
            max_version: version,
            agent_version: "old".into(),
            site_claim: "edge1".into(),
        },
    )
    .unwrap();
    hub.welcome(Vec::new(), "central".into()).unwrap();
    hub
}

/// An agent of protocol version 2 does not know the Stopped frame: the hub refuses to stop
/// its partitions (the driver dead-letters instead).
#[test]
fn a_version_2_agent_is_never_sent_a_stop() {
    let now = Instant::now();
    let mut hub = version_2_hub(now);
    assert_eq!(hub.version(), Some(2));
    let a = tp("t", 0);
    let mut bb = BatchBuilder::new(a.clone(), 1);
    bb.push(&RecordRef {
        offset: 0,
        timestamp: 0,
        timestamp_type: TimestampType::CreateTime,
        key: None,
        value: Some(b"v"),
        headers: &[],
        topic: None,
        partition: None,
    });
    let bt = bb.finish(0, Codec::None, 0).unwrap();
    hub.handle_frame(now, &Channel::Partition(a.clone()), Frame::Batch(bt))
        .unwrap();
    assert!(matches!(
        hub.stop(&a, 0, 0, "x".into()),
        Err(ProtocolError::InvalidCall { call: "stop", .. })
    ));
}

#[test]
fn topic_metadata_reaches_a_version_3_hub_in_frames_and_never_a_version_2_one() {
    let now = Instant::now();
    let topic = |name: &str| TopicMetadata {
        topic: name.into(),
        partitions: 3,
        configs: vec![("cleanup.policy".into(), "compact".into())],
    };
    let welcome = |version| Frame::Welcome {
        version,
        site: "edge1".into(),
        hub_id: "h".into(),
        positions: vec![],
        max_batch_bytes: 1 << 20,
        heartbeat_target: "central".into(),
    };
    let welcomed_agent = |version| {
        let mut agent = AgentConn::new(agent_config(), now);
        while agent.poll_transmit().is_some() {}
        agent
            .handle_frame(now, &Channel::Control, welcome(version))
            .unwrap();
        agent
    };

    // Version 3: five topics, two per frame (by size), in order; the hub hands each frame on.
    let mut agent = welcomed_agent(3);
    assert!(matches!(agent.send_topic_metadata(vec![], 100), Ok(true)));
    assert!(agent.poll_transmit().is_none());
    let names = ["a", "b", "c", "d", "e"];
    let two = 9 + 2 * topic("a").encoded_len();
    assert!(
        agent
            .send_topic_metadata(names.iter().map(|n| topic(n)).collect(), two)
            .unwrap()
    );
    let mut hub = welcomed_hub(now, vec![]);
    let mut seen = Vec::new();
    while let Some((ch, frame)) = agent.poll_transmit() {
        assert_eq!(ch, Channel::Control);
        let Frame::TopicMetadata { topics } = &frame else {
            continue;
        };
        assert!(topics.len() <= 2, "{topics:?}");
        let mut b = BytesMut::new();
        encode_frame(&frame, &mut b);
        assert!(b.len() <= two, "{} > {two}", b.len());
        hub.handle_frame(now, &ch, frame.clone()).unwrap();
        while let Some(ev) = hub.poll_event() {
            if let HubEvent::TopicMetadata(ts) = ev {
                seen.extend(ts.into_iter().map(|t| t.topic));
            }
        }
    }
    assert_eq!(seen, names);

    // A topic too large for a frame alone keeps the configs that fit.
    let mut big = topic("big");
    big.configs = (0..10)
        .map(|i| (format!("k{i}"), "v".repeat(100)))
        .collect();
    agent.send_topic_metadata(vec![big], 9 + 300).unwrap();
    let Some((_, Frame::TopicMetadata { topics })) = agent.poll_transmit() else {
        panic!("a frame")
    };
    assert_eq!(topics[0].configs.len(), 2, "{:?}", topics[0].configs);
    assert!(topics[0].encoded_len() <= 300);

    // Caps are the caller's error, before anything is queued.
    let mut bad = topic("f");
    bad.partitions = 0;
    assert!(matches!(
        agent.send_topic_metadata(vec![bad], two),
        Err(ProtocolError::InvalidTopicMetadata {
            field: "partitions",
            ..
        })
    ));
    assert!(agent.poll_transmit().is_none());

    // Version 2: the agent queues nothing, and a hub refuses the frame on such a session.
    let mut agent = welcomed_agent(2);
    assert!(!agent.send_topic_metadata(vec![topic("a")], two).unwrap());
    assert!(agent.poll_transmit().is_none());
    let mut hub = version_2_hub(now);
    let e = hub
        .handle_frame(
            now,
            &Channel::Control,
            Frame::TopicMetadata {
                topics: vec![topic("a")],
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::UnexpectedFrame {
                frame: "TopicMetadata",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn topic_acls_reach_a_version_4_hub_whole_topics_per_frame_and_never_an_older_one() {
    let now = Instant::now();
    let acl = |topic: &str, principal: &str| TopicAcl {
        topic: topic.into(),
        principal: format!("User:{principal}"),
        host: "*".into(),
        operation: 3,
        permission: 3,
    };
    let welcomed_agent = |version| {
        let mut agent = AgentConn::new(agent_config(), now);
        while agent.poll_transmit().is_some() {}
        agent
            .handle_frame(
                now,
                &Channel::Control,
                Frame::Welcome {
                    version,
                    site: "edge1".into(),
                    hub_id: "h".into(),
                    positions: vec![],
                    max_batch_bytes: 1 << 20,
                    heartbeat_target: "central".into(),
                },
            )
            .unwrap();
        agent
    };

    // Version 4: three bindings of `a`, one of `b`; a frame fits three bindings, so `a`'s go
    // together and `b`'s in the next frame.
    let mut agent = welcomed_agent(4);
    let all = vec![acl("b", "x"), acl("a", "x"), acl("a", "y"), acl("a", "z")];
    let three = 9 + 3 * acl("a", "x").encoded_len();
    assert!(agent.send_topic_acls(all.clone(), three).unwrap());
    let mut hub = welcomed_hub(now, vec![]);
    let mut frames = Vec::new();
    while let Some((ch, frame)) = agent.poll_transmit() {
        let Frame::TopicAcls { acls } = &frame else {
            continue;
        };
        let mut b = BytesMut::new();
        encode_frame(&frame, &mut b);
        assert!(b.len() <= three, "{} > {three}", b.len());
        hub.handle_frame(now, &ch, frame.clone()).unwrap();
        while let Some(ev) = hub.poll_event() {
            if let HubEvent::TopicAcls(got) = ev {
                assert_eq!(&got, acls);
                frames.push(got);
            }
        }
    }
    let topics: Vec<Vec<&str>> = frames
        .iter()
        .map(|f| f.iter().map(|a| a.topic.as_str()).collect())
        .collect();
    assert_eq!(topics, [vec!["a", "a", "a"], vec!["b"]]);

    // Caps are the caller's error, before anything is queued.
    let mut bad = acl("c", "x");
    bad.permission = 1;
    assert!(matches!(
        agent.send_topic_acls(vec![bad], three),
        Err(ProtocolError::InvalidTopicAcl {
            field: "acls.permission",
            ..
        })
    ));
    assert!(agent.poll_transmit().is_none());

    // Version 3: the agent queues nothing, and a hub refuses the frame on such a session.
    let mut agent = welcomed_agent(3);
    assert!(!agent.send_topic_acls(all.clone(), three).unwrap());
    assert!(agent.poll_transmit().is_none());
    let mut hub = hub_at_version(now, 3);
    let e = hub
        .handle_frame(now, &Channel::Control, Frame::TopicAcls { acls: all })
        .unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::UnexpectedFrame {
                frame: "TopicAcls",
                ..
            }
        ),
        "{e:?}"
    );
}

/// The central -> edge direction between a version 5 pair: the hub offers, the agent starts
/// from its committed positions, batches arrive in order on the downlink channel, acks flow
/// back; a version 4 agent is never offered anything, and a batch that skips back or names a
/// partition not started ends the connection.
#[test]
fn downlinks_flow_from_offer_to_ack_and_only_to_a_version_5_agent() {
    let now = Instant::now();
    assert!(matches!(
        hub_at_version(now, 4).offer_downlinks(vec![]),
        Ok(false)
    ));

    let mut hub = hub_at_version(now, DOWNLINK_VERSION);
    let mut agent = AgentConn::new(agent_config(), now);
    while agent.poll_transmit().is_some() {}
    for (ch, f) in shuttle(&mut || hub.poll_transmit()) {
        agent.handle_frame(now, &ch, f).unwrap();
    }
    assert!(agent.is_welcomed());
    let cmd = TopicMetadata {
        topic: "central.cmd".into(),
        partitions: 2,
        configs: vec![],
    };
    assert!(hub.offer_downlinks(vec![cmd.clone()]).unwrap());
    for (ch, f) in shuttle(&mut || hub.poll_transmit()) {
        agent.handle_frame(now, &ch, f).unwrap();
    }
    let offered: Vec<_> = std::iter::from_fn(|| agent.poll_event())
        .filter_map(|e| match e {
            AgentEvent::DownlinkOffer(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(offered, vec![vec![cmd]]);

    let p1 = tp("central.cmd", 1);
    agent
        .start_downlinks(vec![Position {
            tp: p1.clone(),
            next_offset: 10,
        }])
        .unwrap();
    agent.ack_downlink(p1.clone(), 10).unwrap();
    for (ch, f) in shuttle(&mut || agent.poll_transmit()) {
        hub.handle_frame(now, &ch, f).unwrap();
    }
    let events: Vec<_> = std::iter::from_fn(|| hub.poll_event())
        .filter(|e| !matches!(e, HubEvent::Hello { .. }))
        .collect();
    assert_eq!(
        events,
        vec![
            HubEvent::DownlinkStart(vec![Position {
                tp: p1.clone(),
                next_offset: 10
            }]),
            HubEvent::DownlinkAck {
                tp: p1.clone(),
                next_offset: 10
            },
        ]
    );

    // Batches: on the downlink channel only, from the start on, never backwards.
    let batch = |first, next| {
        let mut b = small_batch(&p1, 0, first, next);
        b.header.partition_count = 2;
        Frame::DownlinkBatch(b)
    };
    let on_control = agent.handle_frame(now, &Channel::Control, batch(10, 12));
    assert!(
        matches!(on_control, Err(ProtocolError::WrongChannel { .. })),
        "{on_control:?}"
    );
    let mut agent = AgentConn::new(agent_config(), now);
    while agent.poll_transmit().is_some() {}
    let mut hub = hub_at_version(now, DOWNLINK_VERSION);
    hub.offer_downlinks(vec![TopicMetadata {
        topic: "central.cmd".into(),
        partitions: 2,
        configs: vec![],
    }])
    .unwrap();
    for (ch, f) in shuttle(&mut || hub.poll_transmit()) {
        agent.handle_frame(now, &ch, f).unwrap();
    }
    agent
        .start_downlinks(vec![Position {
            tp: p1.clone(),
            next_offset: 10,
        }])
        .unwrap();
    agent
        .handle_frame(now, &Channel::Downlink, batch(10, 12))
        .unwrap();
    agent
        .handle_frame(now, &Channel::Downlink, batch(15, 16))
        .unwrap();
    let back = agent.handle_frame(now, &Channel::Downlink, batch(15, 17));
    let e = back.unwrap_err().to_string();
    assert!(e.contains("expected to start at or after 16"), "{e}");
}
