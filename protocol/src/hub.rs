//! Hub side of a connection: version negotiation, welcome with resume positions, batch
//! ordering checks and acks (sans-IO).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use crate::error::ProtocolError;
use crate::frame::{
    Batch, Channel, ErrorCode, Frame, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Position,
    TopicPartition,
};

/// Settings of a hub connection.
#[derive(Clone, Debug)]
pub struct HubConnConfig {
    /// Identifier of this hub instance, sent in Welcome.
    pub hub_id: String,
    /// Largest batch payload accepted, sent in Welcome.
    pub max_batch_bytes: u32,
    /// Largest declared uncompressed batch size accepted.
    pub max_uncompressed_bytes: u32,
}

/// Something the driver should act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubEvent {
    /// The agent said Hello; answer with `welcome(positions)` or `reject`.
    Hello {
        /// Agent software version.
        agent_version: String,
        /// Site alias the agent claims (compare with the certificate's).
        site_claim: String,
        /// Negotiated protocol version.
        version: u16,
    },
    /// A batch passed the ordering checks; decode its records, commit, then `ack`.
    Batch(Batch),
    /// The agent reported a fatal error; the connection is closed.
    AgentError {
        /// Error category.
        code: ErrorCode,
        /// Agent's message.
        message: String,
    },
    /// The agent is going away.
    GoAway {
        /// Agent's reason.
        reason: String,
    },
    /// Committed offsets of edge consumer groups; each replaces what was known of its group.
    GroupOffsets(Vec<crate::frame::GroupOffsets>),
    /// The agent's own figures (edge lag, retention gaps, plugin failures); each replaces the
    /// previous.
    SiteReport(crate::frame::SiteReport),
    /// Edge topics with their partition counts and configs (protocol version 3); each replaces
    /// what was known of its topic. Untrusted: check names and counts against the site's limits.
    TopicMetadata(Vec<crate::frame::TopicMetadata>),
    /// Literal ACL bindings of edge topics (protocol version 4), every binding of each topic
    /// named. Untrusted: a site may only ever ask for what the hub's ACL policy allows.
    TopicAcls(Vec<crate::frame::TopicAcl>),
    /// The agent said where each offered downlink partition resumes (protocol version 5).
    DownlinkStart(Vec<Position>),
    /// Counters of the hub-distributed plugin versions the site runs.
    PluginReport {
        /// What plugins the agent can run.
        platform: crate::frame::PluginPlatform,
        /// Per plugin name.
        runs: Vec<crate::frame::PluginRun>,
    },
    /// The agent's edge committed a downlink partition up to `next_offset`.
    DownlinkAck {
        /// The partition, by its edge topic name.
        tp: TopicPartition,
        /// Next central offset the edge has not committed.
        next_offset: i64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitingHello,
    HelloReceived { version: u16 },
    Welcomed { version: u16 },
    Closed { reason: &'static str },
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitingHello => "awaiting hello",
            State::HelloReceived { .. } => "awaiting welcome from the hub driver",
            State::Welcomed { .. } => "welcomed",
            State::Closed { .. } => "closed",
        }
    }
}

#[derive(Debug, Default)]
struct PartitionState {
    last_seq: Option<u64>,
    next_offset: Option<i64>,
    /// Received, not yet acked: (seq, next_offset).
    pending: VecDeque<(u64, i64)>,
    /// The partition was stopped at a record it cannot write ([`HubConn::stop`]): later
    /// batches are dropped, not handed on.
    stopped: bool,
}

/// The hub's end of one agent connection.
#[derive(Debug)]
pub struct HubConn {
    config: HubConnConfig,
    site: String,
    state: State,
    transmit: VecDeque<(Channel, Frame)>,
    events: VecDeque<HubEvent>,
    partitions: HashMap<TopicPartition, PartitionState>,
    downlinks: crate::downlink::Downlinks,
    last_activity: Instant,
}

impl HubConn {
    /// A connection from `site`, the alias taken from the agent's certificate.
    pub fn new(config: HubConnConfig, site: String, now: Instant) -> Self {
        Self {
            config,
            site,
            state: State::AwaitingHello,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            partitions: HashMap::new(),
            downlinks: Default::default(),
            last_activity: now,
        }
    }

    /// Site alias of this connection (from the certificate).
    pub fn site(&self) -> &str {
        &self.site
    }

    /// Negotiated version, once Hello arrived.
    pub fn version(&self) -> Option<u16> {
        match self.state {
            State::HelloReceived { version } | State::Welcomed { version } => Some(version),
            _ => None,
        }
    }

    /// Time of the last frame received.
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// Handles a frame received on `channel`; a Ping is answered with a Pong automatically.
    ///
    /// On error the connection is closed and an Error frame telling the agent why is queued:
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
        self.last_activity = now;
        let result = self.on_frame(channel, frame);
        if let Err(e) = &result {
            self.reject(e.code(), e.to_string());
        }
        result
    }

    fn on_frame(&mut self, channel: &Channel, frame: Frame) -> Result<(), ProtocolError> {
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
        // An agent may give up (Error, GoAway) before saying Hello; anything else must wait.
        if self.state == State::AwaitingHello
            && !matches!(
                frame,
                Frame::Hello { .. } | Frame::Error { .. } | Frame::GoAway { .. }
            )
        {
            return Err(self.unexpected(kind));
        }
        match frame {
            Frame::Hello {
                min_version,
                max_version,
                agent_version,
                site_claim,
            } => {
                expect_control(channel)?;
                if self.state != State::AwaitingHello {
                    return Err(self.unexpected(kind));
                }
                let version = max_version.min(PROTOCOL_VERSION);
                if min_version > max_version
                    || version < min_version
                    || version < MIN_PROTOCOL_VERSION
                {
                    return Err(ProtocolError::VersionMismatch {
                        peer_min: min_version,
                        peer_max: max_version,
                        local_min: MIN_PROTOCOL_VERSION,
                        local_max: PROTOCOL_VERSION,
                    });
                }
                self.state = State::HelloReceived { version };
                self.events.push_back(HubEvent::Hello {
                    agent_version,
                    site_claim,
                    version,
                });
                Ok(())
            }
            Frame::Batch(batch) => {
                if !matches!(self.state, State::Welcomed { .. }) {
                    return Err(self.unexpected(kind));
                }
                self.check_batch(channel, &batch)?;
                let h = &batch.header;
                let part = self.partitions.entry(h.tp.clone()).or_default();
                part.last_seq = Some(h.seq);
                part.next_offset = Some(h.next_offset);
                if part.stopped {
                    // Sent before the agent learnt of the stop: dropped unwritten.
                    return Ok(());
                }
                part.pending.push_back((h.seq, h.next_offset));
                self.events.push_back(HubEvent::Batch(batch));
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
            Frame::Error { code, message } => {
                self.events
                    .push_back(HubEvent::AgentError { code, message });
                self.state = State::Closed {
                    reason: "agent reported an error",
                };
                Ok(())
            }
            Frame::GoAway { reason } => {
                expect_control(channel)?;
                self.events.push_back(HubEvent::GoAway { reason });
                Ok(())
            }
            Frame::GroupOffsets { groups } => {
                expect_control(channel)?;
                if !matches!(self.state, State::Welcomed { .. }) {
                    return Err(self.unexpected(kind));
                }
                self.events.push_back(HubEvent::GroupOffsets(groups));
                Ok(())
            }
            Frame::SiteReport(report) => {
                expect_control(channel)?;
                if !matches!(self.state, State::Welcomed { .. }) {
                    return Err(self.unexpected(kind));
                }
                self.events.push_back(HubEvent::SiteReport(report));
                Ok(())
            }
            Frame::TopicMetadata { topics } => {
                expect_control(channel)?;
                match self.state {
                    State::Welcomed { version } if version >= crate::TOPIC_METADATA_VERSION => {}
                    _ => return Err(self.unexpected(kind)),
                }
                self.events.push_back(HubEvent::TopicMetadata(topics));
                Ok(())
            }
            Frame::TopicAcls { acls } => {
                expect_control(channel)?;
                match self.state {
                    State::Welcomed { version } if version >= crate::TOPIC_ACLS_VERSION => {}
                    _ => return Err(self.unexpected(kind)),
                }
                self.events.push_back(HubEvent::TopicAcls(acls));
                Ok(())
            }
            Frame::DownlinkStart { positions } => {
                expect_control(channel)?;
                if !matches!(self.state, State::Welcomed { .. }) {
                    return Err(self.unexpected(kind));
                }
                self.downlinks.start(&positions)?;
                self.events.push_back(HubEvent::DownlinkStart(positions));
                Ok(())
            }
            Frame::DownlinkAck { tp, next_offset } => {
                expect_control(channel)?;
                if !matches!(self.state, State::Welcomed { .. }) {
                    return Err(self.unexpected(kind));
                }
                self.downlinks.ack(&tp, next_offset)?;
                self.events
                    .push_back(HubEvent::DownlinkAck { tp, next_offset });
                Ok(())
            }
            Frame::PluginReport { platform, runs } => {
                expect_control(channel)?;
                match self.state {
                    State::Welcomed { version } if version >= crate::DOWNLINK_VERSION => {}
                    _ => return Err(self.unexpected(kind)),
                }
                self.events
                    .push_back(HubEvent::PluginReport { platform, runs });
                Ok(())
            }
            Frame::Welcome { .. }
            | Frame::PluginOffer(_)
            | Frame::DownlinkOffer { .. }
            | Frame::DownlinkBatch(_)
            | Frame::Ack { .. }
            | Frame::Stopped { .. }
            | Frame::Pong { .. }
            | Frame::Redirect { .. } => Err(self.unexpected(kind)),
        }
    }

    fn check_batch(&self, channel: &Channel, batch: &Batch) -> Result<(), ProtocolError> {
        let h = &batch.header;
        match channel {
            Channel::Partition(tp) if *tp == h.tp => {}
            other => {
                return Err(ProtocolError::WrongChannel {
                    frame: "Batch",
                    expected: Channel::Partition(h.tp.clone()).to_string(),
                    got: other.to_string(),
                });
            }
        }
        if h.next_offset < h.first_offset || h.first_offset < 0 {
            return Err(ProtocolError::InvalidBatch {
                tp: h.tp.clone(),
                reason: "offsets must satisfy 0 <= first_offset <= next_offset",
            });
        }
        let len = batch.payload.len() as u64;
        if len > u64::from(self.config.max_batch_bytes) {
            return Err(ProtocolError::BatchTooLarge {
                tp: h.tp.clone(),
                what: "payload",
                len,
                max: self.config.max_batch_bytes.into(),
            });
        }
        if h.uncompressed_len > self.config.max_uncompressed_bytes {
            return Err(ProtocolError::BatchTooLarge {
                tp: h.tp.clone(),
                what: "uncompressed_len",
                len: h.uncompressed_len.into(),
                max: self.config.max_uncompressed_bytes.into(),
            });
        }
        let part = self.partitions.get(&h.tp);
        if let Some(last) = part.and_then(|p| p.last_seq)
            && h.seq <= last
        {
            return Err(ProtocolError::OutOfOrderBatch {
                tp: h.tp.clone(),
                seq: h.seq,
                expected: last.saturating_add(1),
            });
        }
        if let Some(expected) = part.and_then(|p| p.next_offset)
            && h.first_offset < expected
        {
            return Err(ProtocolError::OffsetRegression {
                tp: h.tp.clone(),
                first_offset: h.first_offset,
                expected,
            });
        }
        Ok(())
    }

    fn unexpected(&self, frame: &'static str) -> ProtocolError {
        ProtocolError::UnexpectedFrame {
            frame,
            state: self.state.name(),
        }
    }

    /// Next frame to send, with the channel to send it on.
    pub fn poll_transmit(&mut self) -> Option<(Channel, Frame)> {
        self.transmit.pop_front()
    }

    /// Next event for the driver.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.events.pop_front()
    }

    /// Accepts the agent after its Hello, telling it where each known partition resumes and
    /// which cluster alias its heartbeats target.
    pub fn welcome(
        &mut self,
        positions: Vec<Position>,
        heartbeat_target: String,
    ) -> Result<(), ProtocolError> {
        let State::HelloReceived { version } = self.state else {
            return Err(ProtocolError::InvalidCall {
                call: "welcome",
                state: self.state.name(),
            });
        };
        let mut seen = HashSet::with_capacity(positions.len());
        for p in &positions {
            if p.next_offset < 0 || p.tp.partition < 0 {
                return Err(ProtocolError::InvalidPosition {
                    tp: p.tp.clone(),
                    reason: "partition and next_offset must not be negative",
                });
            }
            if !seen.insert(&p.tp) {
                return Err(ProtocolError::InvalidPosition {
                    tp: p.tp.clone(),
                    reason: "listed twice",
                });
            }
        }
        for p in &positions {
            self.partitions.entry(p.tp.clone()).or_default().next_offset = Some(p.next_offset);
        }
        self.transmit.push_back((
            Channel::Control,
            Frame::Welcome {
                version,
                site: self.site.clone(),
                hub_id: self.config.hub_id.clone(),
                positions,
                max_batch_bytes: self.config.max_batch_bytes,
                heartbeat_target,
            },
        ));
        self.state = State::Welcomed { version };
        Ok(())
    }

    /// Queues a downlink offer on the control channel, after Welcome: central topics this site
    /// receives, by their edge names (later offers: topics created or grown since). Returns `false`, queuing nothing, when
    /// the agent speaks a version older than [`crate::DOWNLINK_VERSION`].
    pub fn offer_downlinks(
        &mut self,
        topics: Vec<crate::frame::TopicMetadata>,
    ) -> Result<bool, ProtocolError> {
        let State::Welcomed { version } = self.state else {
            return Err(ProtocolError::InvalidCall {
                call: "offer_downlinks",
                state: self.state.name(),
            });
        };
        if version < crate::DOWNLINK_VERSION {
            return Ok(false);
        }
        self.downlinks.offer(&topics)?;
        self.transmit
            .push_back((Channel::Control, Frame::DownlinkOffer { topics }));
        Ok(true)
    }

    /// Acknowledges the oldest unacked batch of `tp` once it is committed; queues an Ack on
    /// the partition's channel.
    pub fn ack(
        &mut self,
        tp: &TopicPartition,
        seq: u64,
        next_offset: i64,
    ) -> Result<(), ProtocolError> {
        if let State::Closed { reason } = self.state {
            return Err(ProtocolError::Closed { reason });
        }
        let part = self.partitions.get_mut(tp);
        match part.as_ref().and_then(|p| p.pending.front()) {
            Some(&(s, n)) if s == seq && n == next_offset => {}
            other => {
                return Err(ProtocolError::AckMismatch {
                    tp: tp.clone(),
                    seq,
                    next_offset,
                    expected: other.copied(),
                });
            }
        }
        if let Some(p) = part {
            p.pending.pop_front();
        }
        self.transmit.push_back((
            Channel::Partition(tp.clone()),
            Frame::Ack {
                seq,
                tp: tp.clone(),
                next_offset,
            },
        ));
        Ok(())
    }

    /// Stops `tp` at the record at `offset` of batch `seq`, the oldest unacked batch of the
    /// partition, whose records before it are committed: queues a Stopped frame on the
    /// partition's channel instead of an Ack. Later batches of the partition, pending or still
    /// to come, are never acked: the driver drops them unwritten ([`HubConn::skip`] for those
    /// already handed on). Only for agents of [`crate::STOPPED_VERSION`] or later.
    pub fn stop(
        &mut self,
        tp: &TopicPartition,
        seq: u64,
        offset: i64,
        reason: String,
    ) -> Result<(), ProtocolError> {
        match self.state {
            State::Welcomed { version } if version >= crate::STOPPED_VERSION => {}
            State::Closed { reason } => return Err(ProtocolError::Closed { reason }),
            other => {
                return Err(ProtocolError::InvalidCall {
                    call: "stop",
                    state: other.name(),
                });
            }
        }
        let part = self.partitions.get_mut(tp);
        match part.as_ref().and_then(|p| p.pending.front()) {
            // An offset below 0 is no record's (and the agent's decoder refuses the frame).
            Some(&(s, n)) if s == seq && (0..=n).contains(&offset) => {}
            other => {
                return Err(ProtocolError::AckMismatch {
                    tp: tp.clone(),
                    seq,
                    next_offset: offset,
                    expected: other.copied(),
                });
            }
        }
        if let Some(p) = part {
            p.pending.clear();
            p.stopped = true;
        }
        let reason = crate::frame::cap_text(reason, crate::frame::MAX_STOPPED_REASON_BYTES);
        self.transmit.push_back((
            Channel::Partition(tp.clone()),
            Frame::Stopped {
                seq,
                tp: tp.clone(),
                offset,
                reason,
            },
        ));
        Ok(())
    }

    /// Forgets batch `seq` of `tp`, which the driver dropped unwritten because the partition
    /// stopped at an earlier batch (whose [`HubConn::stop`] may come before or after this):
    /// it is never acked.
    pub fn skip(&mut self, tp: &TopicPartition, seq: u64) {
        if let Some(p) = self.partitions.get_mut(tp) {
            p.pending.retain(|&(s, _)| s != seq);
        }
    }

    /// Whether `tp` was stopped in this connection.
    pub fn is_stopped(&self, tp: &TopicPartition) -> bool {
        self.partitions.get(tp).is_some_and(|p| p.stopped)
    }

    /// Sends the agent to other hubs instead of welcoming it (this hub does not serve its
    /// site): queues a Redirect on the control channel and closes. Only before `welcome`;
    /// `addresses` (`host:port`, best first) must hold 1 to [`MAX_REDIRECT_ADDRESSES`]
    /// non-empty entries of at most [`MAX_REDIRECT_ADDRESS_BYTES`], `reason` at most
    /// [`MAX_REDIRECT_REASON_BYTES`]. Flush `poll_transmit`, then close the connection once the
    /// agent had time to read it (it closes first when it follows).
    ///
    /// [`MAX_REDIRECT_ADDRESSES`]: crate::MAX_REDIRECT_ADDRESSES
    /// [`MAX_REDIRECT_ADDRESS_BYTES`]: crate::MAX_REDIRECT_ADDRESS_BYTES
    /// [`MAX_REDIRECT_REASON_BYTES`]: crate::MAX_REDIRECT_REASON_BYTES
    pub fn redirect(
        &mut self,
        addresses: Vec<String>,
        reason: String,
    ) -> Result<(), ProtocolError> {
        match self.state {
            State::AwaitingHello | State::HelloReceived { .. } => {}
            State::Closed { reason } => return Err(ProtocolError::Closed { reason }),
            other => {
                return Err(ProtocolError::InvalidCall {
                    call: "redirect",
                    state: other.name(),
                });
            }
        }
        crate::frame::check_redirect(&addresses, &reason)
            .map_err(|(field, reason)| ProtocolError::InvalidRedirect { field, reason })?;
        self.transmit
            .push_back((Channel::Control, Frame::Redirect { addresses, reason }));
        self.state = State::Closed {
            reason: "redirected the agent",
        };
        Ok(())
    }

    /// Refuses or ends the connection: queues an Error on the control channel and closes.
    /// The message is cut to [`crate::frame::MAX_ERROR_MESSAGE_BYTES`] (it may quote the peer).
    pub fn reject(&mut self, code: ErrorCode, message: String) {
        let message = crate::frame::cap_text(message, crate::frame::MAX_ERROR_MESSAGE_BYTES);
        self.transmit
            .push_back((Channel::Control, Frame::Error { code, message }));
        self.state = State::Closed {
            reason: "rejected by the hub",
        };
    }

    /// Asks the agent to finish and reconnect later (e.g. on shutdown); acks still go out.
    pub fn go_away(&mut self, reason: String) {
        let reason = crate::frame::cap_text(reason, crate::frame::MAX_ERROR_MESSAGE_BYTES);
        self.transmit
            .push_back((Channel::Control, Frame::GoAway { reason }));
    }

    /// True once the connection is closed (error, rejection).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed { .. })
    }
}
