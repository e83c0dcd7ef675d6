//! Agent side of a connection: handshake, batch flow control and acks, pings (sans-IO).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::error::ProtocolError;
use crate::frame::{
    Batch, Channel, ErrorCode, Frame, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Position,
    TopicPartition,
};

/// Settings of an agent connection.
#[derive(Clone, Debug)]
pub struct AgentConnConfig {
    /// Agent software version sent in Hello.
    pub agent_version: String,
    /// Site alias the agent claims (the hub trusts the certificate, not this).
    pub site_claim: String,
    /// Interval between pings once welcomed.
    pub ping_interval: Duration,
    /// How long to wait for Welcome after Hello.
    pub welcome_timeout: Duration,
    /// Unacked payload bytes allowed per partition (one larger batch may go alone).
    pub max_inflight_bytes_per_partition: u64,
    /// Unacked payload bytes allowed over all partitions.
    pub max_inflight_bytes_total: u64,
}

/// Something the driver should act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentEvent {
    /// The hub accepted the connection; resume each listed partition at its position.
    Welcomed {
        /// Site alias from the agent's certificate.
        site: String,
        /// Hub instance identifier.
        hub_id: String,
        /// Resume positions known to the hub.
        positions: Vec<Position>,
        /// Largest batch payload the hub accepts.
        max_batch_bytes: u32,
        /// Target cluster alias for the site's MM2 heartbeat records.
        heartbeat_target: String,
    },
    /// A batch is committed centrally.
    Acked {
        /// Its partition.
        tp: TopicPartition,
        /// Its seq.
        seq: u64,
        /// The committed position.
        next_offset: i64,
    },
    /// The hub stopped a partition at a record it can never write (instead of acking batch
    /// `seq`): the batch's records before `offset` are committed, later batches are dropped.
    /// Stop reading the partition and send none of its batches until the next connection,
    /// which resumes at `offset`.
    Stopped {
        /// The partition.
        tp: TopicPartition,
        /// The seq of the batch holding the record.
        seq: u64,
        /// The record's source offset: the committed position.
        offset: i64,
        /// The hub's reason.
        reason: String,
    },
    /// A ping round trip completed.
    RttSample(Duration),
    /// The hub is going away: send no new batches, reconnect later.
    GoAway {
        /// Hub's reason.
        reason: String,
    },
    /// The hub reported a fatal error; the connection is closed.
    HubError {
        /// Error category.
        code: ErrorCode,
        /// Hub's message.
        message: String,
    },
    /// The hub does not serve this site and named the hubs to try instead (best first); the
    /// connection is over: close it and connect to those.
    Redirected {
        /// `host:port` of the hubs to try, in order (at least one).
        addresses: Vec<String>,
        /// The hub's reason, for logs.
        reason: String,
    },
    /// Something did not arrive in time; the driver should drop the connection.
    /// The hub offers these central topics, by their edge names (protocol version 5); answer
    /// with [`AgentConn::start_downlinks`].
    DownlinkOffer(Vec<crate::frame::TopicMetadata>),
    /// Central records of a started downlink partition, in offset order.
    DownlinkBatch(Batch),
    /// A plugin version the hub wants the site to run (check its hash and signature).
    PluginOffer(crate::frame::PluginOffer),
    TimedOut {
        /// What was awaited ("welcome").
        what: &'static str,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitingWelcome {
        deadline: Instant,
    },
    Welcomed,
    /// GoAway received: acks still flow, no new batches.
    Draining,
    Closed {
        reason: &'static str,
    },
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitingWelcome { .. } => "awaiting welcome",
            State::Welcomed => "welcomed",
            State::Draining => "draining after go-away",
            State::Closed { .. } => "closed",
        }
    }
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    next_offset: i64,
    bytes: u64,
}

#[derive(Debug, Default)]
struct PartitionState {
    next_seq: u64,
    /// Position the next batch must not start before.
    next_offset: Option<i64>,
    inflight: VecDeque<InFlight>,
    inflight_bytes: u64,
    /// The hub stopped the partition ([`AgentEvent::Stopped`]): no more batches of it on
    /// this connection.
    stopped: bool,
}

/// The agent's end of one connection to a hub.
#[derive(Debug)]
pub struct AgentConn {
    config: AgentConnConfig,
    state: State,
    epoch: Instant,
    transmit: VecDeque<(Channel, Frame)>,
    events: VecDeque<AgentEvent>,
    partitions: HashMap<TopicPartition, PartitionState>,
    downlinks: crate::downlink::Downlinks,
    inflight_total: u64,
    max_batch_bytes: u32,
    version: Option<u16>,
    next_ping: Option<Instant>,
    /// Outstanding ping: nonce and local send time.
    ping_outstanding: Option<(u64, Instant)>,
    last_nonce: Option<u64>,
    rtt: Option<Duration>,
}

impl AgentConn {
    /// Starts a connection at `now`; Hello is queued on the control channel.
    pub fn new(config: AgentConnConfig, now: Instant) -> Self {
        let hello = Frame::Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            agent_version: config.agent_version.clone(),
            site_claim: config.site_claim.clone(),
        };
        // A timeout too large for the clock means "never"; far future is close enough.
        let deadline = now
            .checked_add(config.welcome_timeout)
            .unwrap_or(now + Duration::from_secs(100 * 365 * 24 * 3600));
        Self {
            config,
            state: State::AwaitingWelcome { deadline },
            epoch: now,
            transmit: VecDeque::from([(Channel::Control, hello)]),
            events: VecDeque::new(),
            partitions: HashMap::new(),
            downlinks: Default::default(),
            inflight_total: 0,
            max_batch_bytes: 0,
            version: None,
            next_ping: None,
            ping_outstanding: None,
            last_nonce: None,
            rtt: None,
        }
    }

    /// Handles a frame received on `channel`.
    ///
    /// On error the connection is closed and an Error frame telling the hub why is queued:
    /// flush `poll_transmit`, then drop the connection.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        channel: &Channel,
        frame: Frame,
    ) -> Result<(), ProtocolError> {
        if let State::Closed { reason } = self.state {
            return Err(ProtocolError::Closed { reason });
        }
        let result = self.on_frame(now, channel, frame);
        if let Err(e) = &result {
            self.transmit.push_back((
                Channel::Control,
                Frame::Error {
                    code: e.code(),
                    message: e.to_string(),
                },
            ));
            self.close("protocol error");
        }
        result
    }

    fn on_frame(
        &mut self,
        now: Instant,
        channel: &Channel,
        frame: Frame,
    ) -> Result<(), ProtocolError> {
        let kind = frame.kind();
        let expect_control = |channel: &Channel| {
            if *channel == Channel::Control {
                Ok(())
            } else {
                Err(ProtocolError::WrongChannel {
                    frame: kind,
                    expected: Channel::Control.to_string(),
                    got: channel.to_string(),
                })
            }
        };
        match frame {
            Frame::Welcome {
                version,
                site,
                hub_id,
                positions,
                max_batch_bytes,
                heartbeat_target,
            } => {
                expect_control(channel)?;
                if !matches!(self.state, State::AwaitingWelcome { .. }) {
                    return Err(self.unexpected(kind));
                }
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
                    return Err(ProtocolError::WelcomeVersion {
                        version,
                        min: MIN_PROTOCOL_VERSION,
                        max: PROTOCOL_VERSION,
                    });
                }
                let mut seen = HashSet::with_capacity(positions.len());
                for p in &positions {
                    if p.next_offset < 0 {
                        return Err(ProtocolError::InvalidPosition {
                            tp: p.tp.clone(),
                            reason: "next_offset is negative",
                        });
                    }
                    if !seen.insert(&p.tp) {
                        return Err(ProtocolError::InvalidPosition {
                            tp: p.tp.clone(),
                            reason: "listed twice in Welcome",
                        });
                    }
                }
                for p in &positions {
                    self.partitions.entry(p.tp.clone()).or_default().next_offset =
                        Some(p.next_offset);
                }
                self.version = Some(version);
                self.max_batch_bytes = max_batch_bytes;
                self.state = State::Welcomed;
                self.next_ping = now.checked_add(self.config.ping_interval);
                self.events.push_back(AgentEvent::Welcomed {
                    site,
                    hub_id,
                    positions,
                    max_batch_bytes,
                    heartbeat_target,
                });
                Ok(())
            }
            Frame::Ack {
                seq,
                tp,
                next_offset,
            } => {
                if !matches!(self.state, State::Welcomed | State::Draining) {
                    return Err(self.unexpected(kind));
                }
                if *channel != Channel::Partition(tp.clone()) {
                    return Err(ProtocolError::WrongChannel {
                        frame: kind,
                        expected: Channel::Partition(tp).to_string(),
                        got: channel.to_string(),
                    });
                }
                let part = self.partitions.get_mut(&tp);
                let oldest = part.as_ref().and_then(|p| p.inflight.front());
                match oldest {
                    Some(f) if f.seq == seq && f.next_offset == next_offset => {}
                    other => {
                        return Err(ProtocolError::AckMismatch {
                            expected: other.map(|f| (f.seq, f.next_offset)),
                            tp,
                            seq,
                            next_offset,
                        });
                    }
                }
                if let Some(p) = part
                    && let Some(f) = p.inflight.pop_front()
                {
                    p.inflight_bytes -= f.bytes;
                    self.inflight_total -= f.bytes;
                }
                self.events.push_back(AgentEvent::Acked {
                    tp,
                    seq,
                    next_offset,
                });
                Ok(())
            }
            Frame::Stopped {
                seq,
                tp,
                offset,
                reason,
            } => {
                if !matches!(self.state, State::Welcomed | State::Draining) {
                    return Err(self.unexpected(kind));
                }
                if *channel != Channel::Partition(tp.clone()) {
                    return Err(ProtocolError::WrongChannel {
                        frame: kind,
                        expected: Channel::Partition(tp).to_string(),
                        got: channel.to_string(),
                    });
                }
                let part = self.partitions.get_mut(&tp);
                let oldest = part.as_ref().and_then(|p| p.inflight.front());
                match oldest {
                    Some(f) if f.seq == seq && offset <= f.next_offset => {}
                    other => {
                        return Err(ProtocolError::AckMismatch {
                            expected: other.map(|f| (f.seq, f.next_offset)),
                            tp,
                            seq,
                            next_offset: offset,
                        });
                    }
                }
                if let Some(p) = part {
                    // Nothing sent after it is acked: the hub drops those batches.
                    self.inflight_total -= p.inflight_bytes;
                    p.inflight_bytes = 0;
                    p.inflight.clear();
                    p.stopped = true;
                }
                self.events.push_back(AgentEvent::Stopped {
                    tp,
                    seq,
                    offset,
                    reason,
                });
                Ok(())
            }
            Frame::Ping {
                nonce,
                sent_at_micros,
            } => {
                expect_control(channel)?;
                self.transmit.push_back((
                    Channel::Control,
                    Frame::Pong {
                        nonce,
                        sent_at_micros,
                    },
                ));
                Ok(())
            }
            Frame::Pong { nonce, .. } => {
                expect_control(channel)?;
                match self.ping_outstanding {
                    Some((n, sent)) if n == nonce => {
                        self.ping_outstanding = None;
                        let sample = now.saturating_duration_since(sent);
                        // Smoothed like TCP's SRTT (RFC 6298): 7/8 old + 1/8 new.
                        self.rtt = Some(match self.rtt {
                            None => sample,
                            Some(old) => (old * 7 + sample) / 8,
                        });
                        self.events.push_back(AgentEvent::RttSample(sample));
                        Ok(())
                    }
                    // A late answer to a ping superseded by a newer one: harmless.
                    _ if self.last_nonce.is_some_and(|last| nonce <= last) => Ok(()),
                    _ => Err(ProtocolError::UnexpectedPong {
                        nonce,
                        last_sent: self.last_nonce,
                    }),
                }
            }
            Frame::Error { code, message } => {
                self.events
                    .push_back(AgentEvent::HubError { code, message });
                self.close("hub reported an error");
                Ok(())
            }
            Frame::GoAway { reason } => {
                expect_control(channel)?;
                if matches!(self.state, State::AwaitingWelcome { .. }) {
                    self.close("hub went away before welcome");
                } else {
                    self.state = State::Draining;
                }
                self.events.push_back(AgentEvent::GoAway { reason });
                Ok(())
            }
            Frame::Redirect { addresses, reason } => {
                expect_control(channel)?;
                if !matches!(self.state, State::AwaitingWelcome { .. }) {
                    return Err(self.unexpected(kind));
                }
                crate::frame::check_redirect(&addresses, &reason)
                    .map_err(|(field, reason)| ProtocolError::InvalidRedirect { field, reason })?;
                self.close("redirected by the hub");
                self.events
                    .push_back(AgentEvent::Redirected { addresses, reason });
                Ok(())
            }
            Frame::DownlinkOffer { topics } => {
                expect_control(channel)?;
                match (self.state, self.version) {
                    (State::Welcomed | State::Draining, Some(v))
                        if v >= crate::DOWNLINK_VERSION => {}
                    _ => return Err(self.unexpected(kind)),
                }
                self.downlinks.offer(&topics)?;
                self.events.push_back(AgentEvent::DownlinkOffer(topics));
                Ok(())
            }
            Frame::DownlinkBatch(batch) => {
                if *channel != Channel::Downlink {
                    return Err(ProtocolError::WrongChannel {
                        frame: kind,
                        expected: Channel::Downlink.to_string(),
                        got: channel.to_string(),
                    });
                }
                if !matches!(self.state, State::Welcomed | State::Draining) {
                    return Err(self.unexpected(kind));
                }
                self.downlinks.batch(&batch.header)?;
                self.events.push_back(AgentEvent::DownlinkBatch(batch));
                Ok(())
            }
            Frame::PluginOffer(offer) => {
                if *channel != Channel::Downlink {
                    return Err(ProtocolError::WrongChannel {
                        frame: kind,
                        expected: Channel::Downlink.to_string(),
                        got: channel.to_string(),
                    });
                }
                match (self.state, self.version) {
                    (State::Welcomed | State::Draining, Some(v))
                        if v >= crate::DOWNLINK_VERSION => {}
                    _ => return Err(self.unexpected(kind)),
                }
                self.events.push_back(AgentEvent::PluginOffer(offer));
                Ok(())
            }
            Frame::Hello { .. }
            | Frame::PluginReport { .. }
            | Frame::DownlinkStart { .. }
            | Frame::DownlinkAck { .. }
            | Frame::Batch(_)
            | Frame::GroupOffsets { .. }
            | Frame::TopicMetadata { .. }
            | Frame::TopicAcls { .. }
            | Frame::SiteReport(_) => Err(self.unexpected(kind)),
        }
    }

    fn unexpected(&self, frame: &'static str) -> ProtocolError {
        ProtocolError::UnexpectedFrame {
            frame,
            state: self.state.name(),
        }
    }

    fn close(&mut self, reason: &'static str) {
        self.state = State::Closed { reason };
        self.next_ping = None;
    }

    /// Fires due timers: the welcome deadline and pings.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::AwaitingWelcome { deadline } if now >= deadline => {
                self.close("welcome timed out");
                self.events
                    .push_back(AgentEvent::TimedOut { what: "welcome" });
            }
            State::Welcomed | State::Draining => {
                if let Some(at) = self.next_ping
                    && now >= at
                {
                    let nonce = self.last_nonce.map_or(0, |n| n.wrapping_add(1));
                    self.last_nonce = Some(nonce);
                    self.ping_outstanding = Some((nonce, now));
                    let sent_at_micros =
                        u64::try_from(now.saturating_duration_since(self.epoch).as_micros())
                            .unwrap_or(u64::MAX);
                    self.transmit.push_back((
                        Channel::Control,
                        Frame::Ping {
                            nonce,
                            sent_at_micros,
                        },
                    ));
                    self.next_ping = now.checked_add(self.config.ping_interval);
                }
            }
            _ => {}
        }
    }

    /// When `handle_timeout` should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingWelcome { deadline } => Some(deadline),
            State::Welcomed | State::Draining => self.next_ping,
            State::Closed { .. } => None,
        }
    }

    /// Next frame to send, with the channel to send it on.
    pub fn poll_transmit(&mut self) -> Option<(Channel, Frame)> {
        self.transmit.pop_front()
    }

    /// Next event for the driver.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// True once Welcome arrived (and until GoAway, an error or a timeout). A redirect closes
    /// the connection before any welcome.
    pub fn is_welcomed(&self) -> bool {
        self.state == State::Welcomed
    }

    /// Negotiated protocol version, once welcomed.
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    /// Largest batch payload the hub accepts (0 before Welcome).
    pub fn max_batch_bytes(&self) -> u32 {
        self.max_batch_bytes
    }

    /// Whether the hub stopped `tp` on this connection ([`AgentEvent::Stopped`]).
    pub fn is_stopped(&self, tp: &TopicPartition) -> bool {
        self.partitions.get(tp).is_some_and(|p| p.stopped)
    }

    /// Whether a batch of `bytes` payload bytes for `tp` fits the in-flight budgets. A batch
    /// larger than a budget still fits when nothing is in flight there, so nothing deadlocks.
    pub fn can_send(&self, tp: &TopicPartition, bytes: u64) -> bool {
        self.state == State::Welcomed && self.fits(tp, bytes)
    }

    /// Whether a batch of `bytes` payload bytes fits the connection's in-flight budget,
    /// whatever its partition's. When [`can_send`](Self::can_send) says no but this says yes,
    /// only the batch's own partition is full: batches of other partitions may still go.
    pub fn link_has_room(&self, bytes: u64) -> bool {
        self.state == State::Welcomed
            && (self.inflight_total == 0
                || self.inflight_total.saturating_add(bytes)
                    <= self.config.max_inflight_bytes_total)
    }

    /// A partition's budget, except for the heartbeats topic: its batches go one at a time.
    /// A hub of many sites holds heartbeats for a few seconds before it commits them (it paces
    /// transactions of heartbeats alone); meanwhile the next ones wait at the edge and then go
    /// together, one batch and one packet, instead of one a second each.
    fn fits(&self, tp: &TopicPartition, bytes: u64) -> bool {
        let part = self.partitions.get(tp).map_or(0, |p| p.inflight_bytes);
        let part_ok = part == 0
            || (tp.topic != crate::HEARTBEATS_TOPIC
                && part.saturating_add(bytes) <= self.config.max_inflight_bytes_per_partition);
        let total_ok = self.inflight_total == 0
            || self.inflight_total.saturating_add(bytes) <= self.config.max_inflight_bytes_total;
        part_ok && total_ok
    }

    /// Queues a batch on its partition channel and counts it in flight until acked.
    ///
    /// The batch's seq must be `next_seq(tp)`, its first_offset at or after the partition's
    /// position (Welcome's, then the previous batch's next_offset), its payload within
    /// `max_batch_bytes` and the in-flight budget (`can_send`).
    pub fn send_batch(&mut self, batch: Batch) -> Result<(), ProtocolError> {
        match self.state {
            State::Welcomed => {}
            State::Closed { reason } => return Err(ProtocolError::Closed { reason }),
            other => {
                return Err(ProtocolError::InvalidCall {
                    call: "send_batch",
                    state: other.name(),
                });
            }
        }
        let h = &batch.header;
        let bytes = batch.payload.len() as u64;
        if h.next_offset < h.first_offset || h.first_offset < 0 {
            return Err(ProtocolError::InvalidBatch {
                tp: h.tp.clone(),
                reason: "offsets must satisfy 0 <= first_offset <= next_offset",
            });
        }
        if bytes > u64::from(self.max_batch_bytes) {
            return Err(ProtocolError::BatchTooLarge {
                tp: h.tp.clone(),
                what: "payload",
                len: bytes,
                max: self.max_batch_bytes.into(),
            });
        }
        if self.is_stopped(&h.tp) {
            return Err(ProtocolError::PartitionStopped { tp: h.tp.clone() });
        }
        let expected_seq = self.next_seq(&h.tp);
        if h.seq != expected_seq {
            return Err(ProtocolError::OutOfOrderBatch {
                tp: h.tp.clone(),
                seq: h.seq,
                expected: expected_seq,
            });
        }
        if let Some(expected) = self.partitions.get(&h.tp).and_then(|p| p.next_offset)
            && h.first_offset < expected
        {
            return Err(ProtocolError::OffsetRegression {
                tp: h.tp.clone(),
                first_offset: h.first_offset,
                expected,
            });
        }
        if !self.fits(&h.tp, bytes) {
            return Err(ProtocolError::BudgetExceeded {
                tp: h.tp.clone(),
                bytes,
                partition_inflight: self.partitions.get(&h.tp).map_or(0, |p| p.inflight_bytes),
                total_inflight: self.inflight_total,
            });
        }
        let part = self.partitions.entry(h.tp.clone()).or_default();
        part.next_seq = h.seq.saturating_add(1);
        part.next_offset = Some(h.next_offset);
        part.inflight.push_back(InFlight {
            seq: h.seq,
            next_offset: h.next_offset,
            bytes,
        });
        part.inflight_bytes += bytes;
        self.inflight_total += bytes;
        let channel = Channel::Partition(h.tp.clone());
        self.transmit.push_back((channel, Frame::Batch(batch)));
        Ok(())
    }

    /// Seq the next batch of `tp` must carry (0 for a partition's first batch on a connection).
    pub fn next_seq(&self, tp: &TopicPartition) -> u64 {
        self.partitions.get(tp).map_or(0, |p| p.next_seq)
    }

    /// Queues a report of edge consumer groups' committed offsets on the control channel
    /// (after Welcome; ignored while draining, since the hub is going away).
    pub fn send_group_offsets(
        &mut self,
        groups: Vec<crate::frame::GroupOffsets>,
    ) -> Result<(), ProtocolError> {
        match self.state {
            State::Welcomed => {}
            State::Draining => return Ok(()),
            _ => {
                return Err(ProtocolError::InvalidCall {
                    call: "send_group_offsets",
                    state: self.state.name(),
                });
            }
        }
        for g in &groups {
            if let Some(p) = g.offsets.iter().find(|p| p.next_offset < 0) {
                return Err(ProtocolError::InvalidPosition {
                    tp: p.tp.clone(),
                    reason: "a committed group offset is negative",
                });
            }
        }
        self.transmit
            .push_back((Channel::Control, Frame::GroupOffsets { groups }));
        Ok(())
    }

    /// Whether a report frame of protocol version `since` may be queued now: after Welcome,
    /// to a hub that reads it (`false` while draining or to an older hub; an error before
    /// Welcome, naming `call`).
    fn may_report(&self, call: &'static str, since: u16) -> Result<bool, ProtocolError> {
        match self.state {
            State::Welcomed => Ok(self.version.is_some_and(|v| v >= since)),
            State::Draining => Ok(false),
            _ => Err(ProtocolError::InvalidCall {
                call,
                state: self.state.name(),
            }),
        }
    }

    /// Answers a downlink offer: where each newly offered partition taken resumes (the
    /// partitions left out receive nothing on this connection).
    pub fn start_downlinks(&mut self, positions: Vec<Position>) -> Result<(), ProtocolError> {
        if !matches!(self.state, State::Welcomed | State::Draining) {
            return Err(ProtocolError::InvalidCall {
                call: "start_downlinks",
                state: self.state.name(),
            });
        }
        self.downlinks.start(&positions)?;
        self.transmit
            .push_back((Channel::Control, Frame::DownlinkStart { positions }));
        Ok(())
    }

    /// Queues the counters of the hub-distributed plugin versions the site runs (after Welcome;
    /// `false`, queuing nothing, to a hub older than [`crate::DOWNLINK_VERSION`] or while
    /// draining). At most [`crate::MAX_PLUGIN_RUNS`] go; the rest wait for the next report.
    pub fn report_plugins(
        &mut self,
        platform: crate::frame::PluginPlatform,
        mut runs: Vec<crate::frame::PluginRun>,
    ) -> Result<bool, ProtocolError> {
        if !self.may_report("report_plugins", crate::DOWNLINK_VERSION)? {
            return Ok(false);
        }
        runs.truncate(crate::MAX_PLUGIN_RUNS);
        self.transmit
            .push_back((Channel::Control, Frame::PluginReport { platform, runs }));
        Ok(true)
    }

    /// Tells the hub the edge committed a downlink partition up to `next_offset`.
    pub fn ack_downlink(
        &mut self,
        tp: TopicPartition,
        next_offset: i64,
    ) -> Result<(), ProtocolError> {
        if !self.downlinks.started() {
            return Err(ProtocolError::InvalidCall {
                call: "ack_downlink",
                state: "before the downlink start",
            });
        }
        if matches!(self.state, State::Closed { .. }) {
            return Err(ProtocolError::InvalidCall {
                call: "ack_downlink",
                state: self.state.name(),
            });
        }
        self.transmit
            .push_back((Channel::Control, Frame::DownlinkAck { tp, next_offset }));
        Ok(())
    }

    /// Queues edge topics' partition counts and configs on the control channel, in frames of
    /// at most `max_frame_bytes` encoded (after Welcome; ignored while draining). A topic too
    /// large for a frame alone goes with its first configs that fit. Returns `false`,
    /// queuing nothing, when the hub speaks a version older than
    /// [`crate::TOPIC_METADATA_VERSION`] and cannot read them.
    pub fn send_topic_metadata(
        &mut self,
        topics: Vec<crate::frame::TopicMetadata>,
        max_frame_bytes: usize,
    ) -> Result<bool, ProtocolError> {
        if !self.may_report("send_topic_metadata", crate::TOPIC_METADATA_VERSION)? {
            return Ok(false);
        }
        for t in &topics {
            crate::frame::check_topic_metadata(t).map_err(|(field, reason)| {
                ProtocolError::InvalidTopicMetadata {
                    topic: t.topic.clone(),
                    field,
                    reason,
                }
            })?;
        }
        // Frame overhead: length prefix, type byte, topic count.
        const FRAME: usize = 4 + 1 + 4;
        let budget = max_frame_bytes.saturating_sub(FRAME).max(1);
        let mut chunk: Vec<crate::frame::TopicMetadata> = Vec::new();
        let mut used = 0;
        for mut t in topics {
            while t.encoded_len() > budget && t.configs.pop().is_some() {}
            let n = t.encoded_len();
            if used + n > budget && !chunk.is_empty() {
                let topics = std::mem::take(&mut chunk);
                self.transmit
                    .push_back((Channel::Control, Frame::TopicMetadata { topics }));
                used = 0;
            }
            used += n;
            chunk.push(t);
        }
        if !chunk.is_empty() {
            self.transmit
                .push_back((Channel::Control, Frame::TopicMetadata { topics: chunk }));
        }
        Ok(true)
    }

    /// Queues the literal ACL bindings of replicated edge topics on the control channel, in
    /// frames of at most `max_frame_bytes` encoded, each holding every binding of the topics
    /// it names (after Welcome; ignored while draining). Returns `false`, queuing nothing,
    /// when the hub speaks a version older than [`crate::TOPIC_ACLS_VERSION`].
    pub fn send_topic_acls(
        &mut self,
        mut acls: Vec<crate::frame::TopicAcl>,
        max_frame_bytes: usize,
    ) -> Result<bool, ProtocolError> {
        if !self.may_report("send_topic_acls", crate::TOPIC_ACLS_VERSION)? {
            return Ok(false);
        }
        for a in &acls {
            crate::frame::check_topic_acl(a).map_err(|(field, reason)| {
                ProtocolError::InvalidTopicAcl {
                    topic: a.topic.clone(),
                    field,
                    reason,
                }
            })?;
        }
        acls.sort();
        // Frame overhead: length prefix, type byte, binding count.
        const FRAME: usize = 4 + 1 + 4;
        let budget = max_frame_bytes.saturating_sub(FRAME).max(1);
        let mut frame: Vec<crate::frame::TopicAcl> = Vec::new();
        let mut used = 0;
        let mut rest = acls.as_slice();
        while let Some(first) = rest.first() {
            // One topic's bindings stay together: a frame replaces what the hub knew of the
            // topics it names. A topic whose bindings exceed a frame alone sends what fits.
            let n = rest.iter().take_while(|a| a.topic == first.topic).count();
            let (topic, tail) = rest.split_at(n);
            rest = tail;
            let mut size = 0;
            let fitting = topic
                .iter()
                .take_while(|a| {
                    size += a.encoded_len();
                    size <= budget
                })
                .count();
            let size: usize = topic[..fitting].iter().map(|a| a.encoded_len()).sum();
            if used + size > budget && !frame.is_empty() {
                let acls = std::mem::take(&mut frame);
                self.transmit
                    .push_back((Channel::Control, Frame::TopicAcls { acls }));
                used = 0;
            }
            used += size;
            frame.extend_from_slice(&topic[..fitting]);
        }
        if !frame.is_empty() {
            self.transmit
                .push_back((Channel::Control, Frame::TopicAcls { acls: frame }));
        }
        Ok(true)
    }

    /// Queues the agent's own figures for the hub's status on the control channel (after
    /// Welcome; ignored while draining).
    pub fn send_site_report(
        &mut self,
        report: crate::frame::SiteReport,
    ) -> Result<(), ProtocolError> {
        match self.state {
            State::Welcomed => {}
            State::Draining => return Ok(()),
            _ => {
                return Err(ProtocolError::InvalidCall {
                    call: "send_site_report",
                    state: self.state.name(),
                });
            }
        }
        self.transmit
            .push_back((Channel::Control, Frame::SiteReport(report)));
        Ok(())
    }

    /// Position the next batch of `tp` must start at or after, if known (from Welcome or the
    /// previous batch).
    pub fn next_offset(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.get(tp).and_then(|p| p.next_offset)
    }

    /// Payload bytes sent and not yet acked, over all partitions.
    pub fn inflight_bytes(&self) -> u64 {
        self.inflight_total
    }

    /// Payload bytes sent and not yet acked for `tp`.
    pub fn inflight_bytes_for(&self, tp: &TopicPartition) -> u64 {
        self.partitions.get(tp).map_or(0, |p| p.inflight_bytes)
    }

    /// Smoothed round-trip time, once a Pong arrived.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }
}
