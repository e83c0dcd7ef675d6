//! The central -> edge direction (protocol version 5), the rules both ends keep (sans-IO).
//!
//! After Welcome the hub offers the central topics the site receives ([`Frame::DownlinkOffer`],
//! named as the edge will see them, again whenever topics appear or grow); the agent answers
//! each offer with where the partitions it takes resume ([`Frame::DownlinkStart`], the
//! positions its last edge transaction committed); the
//! hub then sends [`Frame::DownlinkBatch`]es on the [`Channel::Downlink`] stream, in offset
//! order per partition, and the agent answers each committed edge transaction with
//! [`Frame::DownlinkAck`]s on the control channel.
//!
//! [`Frame::DownlinkOffer`]: crate::Frame::DownlinkOffer
//! [`Frame::DownlinkStart`]: crate::Frame::DownlinkStart
//! [`Frame::DownlinkBatch`]: crate::Frame::DownlinkBatch
//! [`Frame::DownlinkAck`]: crate::Frame::DownlinkAck
//! [`Channel::Downlink`]: crate::Channel::Downlink

use std::collections::{HashMap, HashSet};

use crate::error::ProtocolError;
use crate::frame::{BatchHeader, Position, TopicMetadata, TopicPartition};

/// First protocol version that has downlinks.
pub const DOWNLINK_VERSION: u16 = 5;

/// Most topics one offer may name.
pub const MAX_DOWNLINK_TOPICS: usize = 1024;

/// What one connection's downlinks have agreed so far.
#[derive(Debug, Default)]
pub(crate) struct Downlinks {
    /// Offered topic -> partition count (the largest offered).
    offered: HashMap<String, i32>,
    /// Per started partition: where the next batch must begin (agent) or the last ack (hub).
    next: HashMap<TopicPartition, i64>,
}

fn refuse(what: impl Into<String>, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Downlink {
        what: what.into(),
        reason: reason.into(),
    }
}

impl Downlinks {
    /// Whether any partition was started.
    pub(crate) fn started(&self) -> bool {
        !self.next.is_empty()
    }

    /// Records an offer. A connection may have several (the hub offers topics created, or
    /// grown, after the first); each names topics not offered before, or offered with fewer
    /// partitions, each once and with at least one partition, and all offers together name at
    /// most [`MAX_DOWNLINK_TOPICS`] topics.
    pub(crate) fn offer(&mut self, topics: &[TopicMetadata]) -> Result<(), ProtocolError> {
        let mut named = HashSet::with_capacity(topics.len());
        for t in topics {
            if t.partitions < 1 {
                return Err(refuse(
                    format!("offer of {:?}", t.topic),
                    format!("{} partitions, less than 1", t.partitions),
                ));
            }
            if !named.insert(&t.topic) {
                return Err(refuse(format!("offer of {:?}", t.topic), "named twice"));
            }
            if let Some(&before) = self.offered.get(&t.topic)
                && before >= t.partitions
            {
                return Err(refuse(
                    format!("offer of {:?}", t.topic),
                    format!(
                        "offered before with {before} partitions, now {}",
                        t.partitions
                    ),
                ));
            }
        }
        let total = self.offered.len()
            + topics
                .iter()
                .filter(|t| !self.offered.contains_key(&t.topic))
                .count();
        if total > MAX_DOWNLINK_TOPICS {
            return Err(refuse(
                "offer",
                format!(
                    "brings the connection to {total} topics, more than the limit of {MAX_DOWNLINK_TOPICS}"
                ),
            ));
        }
        for t in topics {
            self.offered.insert(t.topic.clone(), t.partitions);
        }
        Ok(())
    }

    /// Records where partitions start: each offered, not started before, named once. An
    /// answer to an offer may be empty (nothing taken).
    pub(crate) fn start(&mut self, positions: &[Position]) -> Result<(), ProtocolError> {
        if self.offered.is_empty() {
            return Err(refuse("start", "before any offer"));
        }
        let mut seen = HashSet::with_capacity(positions.len());
        for p in positions {
            self.check_offered(&p.tp)?;
            if p.next_offset < 0 {
                return Err(refuse(format!("start of {}", p.tp), "negative offset"));
            }
            if !seen.insert(&p.tp) || self.next.contains_key(&p.tp) {
                return Err(refuse(format!("start of {}", p.tp), "started twice"));
            }
        }
        self.next
            .extend(positions.iter().map(|p| (p.tp.clone(), p.next_offset)));
        Ok(())
    }

    fn check_offered(&self, tp: &TopicPartition) -> Result<(), ProtocolError> {
        match self.offered.get(&tp.topic) {
            Some(&n) if (0..n).contains(&tp.partition) => Ok(()),
            Some(&n) => Err(refuse(
                format!("partition {tp}"),
                format!("out of range: the offered topic has {n} partitions"),
            )),
            None => Err(refuse(format!("partition {tp}"), "of a topic not offered")),
        }
    }

    /// A batch (agent side): of a started partition, starting at or after where the last one
    /// ended.
    pub(crate) fn batch(&mut self, h: &BatchHeader) -> Result<(), ProtocolError> {
        let Some(next) = self.next.get_mut(&h.tp) else {
            return Err(refuse(
                format!("batch of {}", h.tp),
                "of a partition not started",
            ));
        };
        if h.first_offset < *next || h.next_offset < h.first_offset {
            return Err(refuse(
                format!("batch of {}", h.tp),
                format!(
                    "covers {}..{}, expected to start at or after {next}",
                    h.first_offset, h.next_offset
                ),
            ));
        }
        *next = h.next_offset;
        Ok(())
    }

    /// An ack (hub side): of a started partition, never behind the previous one.
    pub(crate) fn ack(
        &mut self,
        tp: &TopicPartition,
        next_offset: i64,
    ) -> Result<(), ProtocolError> {
        let Some(last) = self.next.get_mut(tp) else {
            return Err(refuse(format!("ack of {tp}"), "of a partition not started"));
        };
        if next_offset < *last {
            return Err(refuse(
                format!("ack of {tp}"),
                format!("at {next_offset}, behind the previous {last}"),
            ));
        }
        *last = next_offset;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Codec;

    fn topic(name: &str, partitions: i32) -> TopicMetadata {
        TopicMetadata {
            topic: name.into(),
            partitions,
            configs: vec![],
        }
    }

    fn header(tp: TopicPartition, first: i64, next: i64) -> BatchHeader {
        BatchHeader {
            seq: 0,
            tp,
            partition_count: 2,
            first_offset: first,
            next_offset: next,
            record_count: 0,
            codec: Codec::None,
            uncompressed_len: 0,
        }
    }

    #[test]
    fn batches_must_follow_the_start_in_offset_order() {
        let mut d = Downlinks::default();
        let tp = TopicPartition::new("central.cmd", 1);
        assert!(
            d.batch(&header(tp.clone(), 0, 1)).is_err(),
            "before any start"
        );
        d.offer(&[topic("central.cmd", 2)]).unwrap();
        d.start(&[Position {
            tp: tp.clone(),
            next_offset: 5,
        }])
        .unwrap();
        let e = d.batch(&header(tp.clone(), 4, 6)).unwrap_err().to_string();
        assert!(e.contains("expected to start at or after 5"), "{e}");
        d.batch(&header(tp.clone(), 5, 9)).unwrap();
        d.batch(&header(tp.clone(), 12, 13)).unwrap();
        assert!(d.batch(&header(tp, 12, 14)).is_err());
        let other = TopicPartition::new("central.cmd", 0);
        let e = d.batch(&header(other, 0, 1)).unwrap_err().to_string();
        assert!(e.contains("not started"), "{e}");
    }

    #[test]
    fn a_start_names_only_offered_partitions_once() {
        let mut d = Downlinks::default();
        assert!(d.start(&[]).is_err(), "start before offer");
        d.offer(&[topic("a", 1)]).unwrap();
        assert!(
            d.offer(&[topic("a", 1)]).is_err(),
            "offered again, not grown"
        );
        let p = |t: &str, part, off| Position {
            tp: TopicPartition::new(t, part),
            next_offset: off,
        };
        let e = d.start(&[p("a", 1, 0)]).unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
        let e = d.start(&[p("b", 0, 0)]).unwrap_err().to_string();
        assert!(e.contains("not offered"), "{e}");
        assert!(d.start(&[p("a", 0, 0), p("a", 0, 1)]).is_err());
        d.start(&[p("a", 0, 3)]).unwrap();
        assert!(d.start(&[p("a", 0, 3)]).is_err(), "started twice");
        // A later offer grows the topic; its new partition starts on its own.
        d.offer(&[topic("a", 2), topic("b", 1)]).unwrap();
        d.start(&[p("a", 1, 0), p("b", 0, 9)]).unwrap();
        let tp = TopicPartition::new("a", 0);
        assert!(d.ack(&tp, 2).is_err(), "ack behind the start");
        d.ack(&tp, 3).unwrap();
        d.ack(&tp, 7).unwrap();
        assert!(d.ack(&tp, 6).is_err(), "ack going back");
    }

    #[test]
    fn an_offer_is_bounded_and_names_each_topic_once() {
        let mut d = Downlinks::default();
        assert!(d.offer(&[topic("a", 1), topic("a", 2)]).is_err());
        let mut d = Downlinks::default();
        assert!(d.offer(&[topic("a", 0)]).is_err());
        let many: Vec<_> = (0..MAX_DOWNLINK_TOPICS)
            .map(|i| topic(&format!("t{i}"), 1))
            .collect();
        let mut d = Downlinks::default();
        d.offer(&many).unwrap();
        let e = d.offer(&[topic("one-more", 1)]).unwrap_err().to_string();
        assert!(e.contains("more than the limit"), "{e}");
    }
}
