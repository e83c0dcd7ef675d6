//! MM2 checkpoints, offset syncs and (optionally) group offset sync for one site on one central
//! cluster, computed from the site's exact offset index and the group offsets the agent reports.
//!
//! Every interval: read the destination end offsets (read_committed) of every destination
//! partition involved, then translate each group's committed source offset through the index
//! (see [`OffsetIndex::translate`]) and write a `Checkpoint` to `<site>.checkpoints.internal`
//! when it moved forward. Checkpoints are monotone per (group, destination partition): a
//! translation below the last one written is not written (a group rewound at the edge keeps its
//! last central checkpoint until it passes it again). Where a source partition maps one to one,
//! an `OffsetSync` (upstream = the group's offset, downstream = its translation) goes to
//! `mm2-offset-syncs.<site>.internal`, so MM2's own translation rule is exact at that point.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use er_protocol::{Checkpoint, GroupOffsets, OffsetSync, TopicPartition};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::ClusterConfig;
use crate::kafka::{KafkaOpError, TopicManager, client_config};
use crate::offsets::{SharedOffsetIndex, Translation};

/// How checkpoints are produced.
#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    /// Site alias.
    pub site: String,
    /// Also commit translated offsets to the central cluster's consumer groups (MM2's
    /// `sync.group.offsets.enabled`): only forward, and only while the group has no active
    /// members there (the broker refuses commits from outside an active group).
    pub sync_group_offsets: bool,
    /// Write MM2 offset syncs for one-to-one partitions.
    pub offset_syncs: bool,
}

/// The latest committed offsets the agent reported, by group.
#[derive(Debug, Default, Clone)]
pub struct GroupTable {
    groups: BTreeMap<String, BTreeMap<TopicPartition, i64>>,
}

impl GroupTable {
    /// Applies one report: each named group's offsets replace what was known of it.
    pub fn update(&mut self, report: Vec<GroupOffsets>) {
        for g in report {
            self.groups.insert(
                g.group,
                g.offsets
                    .into_iter()
                    .map(|p| (p.tp, p.next_offset))
                    .collect(),
            );
        }
    }

    /// Number of groups known.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether no group is known.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// What one round wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Checkpoints written.
    pub checkpoints: usize,
    /// Offset syncs written.
    pub offset_syncs: usize,
    /// Central group offsets committed.
    pub group_commits: usize,
    /// (group, partition) pairs not translatable yet or too old.
    pub pending: usize,
}

type Key = (String, TopicPartition);

/// Writes checkpoints of one site to one cluster.
pub struct Checkpointer {
    settings: CheckpointSettings,
    cluster: ClusterConfig,
    index: SharedOffsetIndex,
    producer: ThreadedProducer<DefaultProducerContext>,
    ends: BaseConsumer,
    checkpoints_topic: String,
    syncs_topic: String,
    /// Last checkpoint written per (group, destination partition): (upstream, downstream).
    last: HashMap<Key, (i64, i64)>,
    /// Last offset sync written per source partition.
    last_sync: HashMap<TopicPartition, (i64, i64)>,
    /// Central consumers per group, for group offset sync.
    group_clients: HashMap<String, BaseConsumer>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("site", &self.settings.site)
            .field("cluster", &self.cluster.alias)
            .finish_non_exhaustive()
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl Checkpointer {
    /// Creates the topics (one partition, compacted) and clients, and reads the checkpoints
    /// already written so the new ones stay monotone. Blocking.
    pub fn start(
        rt: &tokio::runtime::Handle,
        cluster: &ClusterConfig,
        topics: &Arc<TopicManager>,
        index: SharedOffsetIndex,
        settings: CheckpointSettings,
    ) -> Result<Self, KafkaOpError> {
        let checkpoints_topic = er_protocol::checkpoints_topic(&settings.site);
        let syncs_topic = er_protocol::offset_syncs_topic(&settings.site);
        let compact = [("cleanup.policy", "compact")];
        topics.ensure(rt, &checkpoints_topic, 1, &compact)?;
        if settings.offset_syncs {
            topics.ensure(rt, &syncs_topic, 1, &compact)?;
        }
        let err = |what: &str| {
            let cluster = cluster.alias.clone();
            let what = what.to_owned();
            move |source: KafkaError| KafkaOpError::Kafka {
                cluster,
                what,
                source: Box::new(source),
            }
        };
        let producer = client_config(cluster)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .map_err(err("creating the checkpoint producer"))?;
        let ends = client_config(cluster)
            .set("group.id", format!("er-hub-ends-{}", settings.site))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(err("creating the end-offset client"))?;
        let last = read_checkpoints(cluster, &checkpoints_topic, &settings.site)?;
        Ok(Self {
            settings,
            cluster: cluster.clone(),
            index,
            producer,
            ends,
            checkpoints_topic,
            syncs_topic,
            last,
            last_sync: HashMap::new(),
            group_clients: HashMap::new(),
        })
    }

    /// One round over every known group. Blocking.
    pub fn run_once(&mut self, groups: &GroupTable) -> Result<Round, KafkaOpError> {
        let mut round = Round::default();
        // Destination partitions of every reported source partition that this cluster's index
        // knows; their end offsets are read before translating (see OffsetIndex::translate).
        let mut dests: BTreeMap<TopicPartition, Vec<TopicPartition>> = BTreeMap::new();
        {
            let index = self.index.read().expect("offset index lock");
            for offsets in groups.groups.values() {
                for tp in offsets.keys() {
                    if !dests.contains_key(tp) {
                        let d = index.dest_partitions(tp);
                        if !d.is_empty() {
                            dests.insert(tp.clone(), d);
                        }
                    }
                }
            }
        }
        let mut ends: HashMap<TopicPartition, i64> = HashMap::new();
        for d in dests.values().flatten() {
            if ends.contains_key(d) {
                continue;
            }
            match self.ends.fetch_watermarks(&d.topic, d.partition, TIMEOUT) {
                Ok((_, high)) => {
                    ends.insert(d.clone(), high);
                }
                Err(e) => {
                    tracing::debug!(cluster = %self.cluster.alias, dest = %d, error = %e, "end offset unknown this round");
                }
            }
        }
        let mut checkpoints: Vec<Checkpoint> = Vec::new();
        let mut syncs: Vec<OffsetSync> = Vec::new();
        {
            let index = self.index.read().expect("offset index lock");
            for (group, offsets) in &groups.groups {
                for (src, &u) in offsets {
                    if !dests.contains_key(src) {
                        continue;
                    }
                    let one_to_one = self.settings.offset_syncs && index.is_one_to_one(src);
                    for (dest, t) in index.translate(src, u, |d| ends.get(d).copied()) {
                        let downstream = match t {
                            Translation::Exact(d) | Translation::EndOffset(d) if d >= 0 => d,
                            _ => {
                                round.pending += 1;
                                continue;
                            }
                        };
                        let key = (group.clone(), dest.clone());
                        let moved = match self.last.get(&key) {
                            None => true,
                            Some(&(up, down)) => {
                                downstream > down || (downstream == down && u > up)
                            }
                        };
                        let behind = self
                            .last
                            .get(&key)
                            .is_some_and(|&(_, down)| downstream < down);
                        if behind {
                            tracing::debug!(%group, %dest, downstream, "translation behind the last checkpoint; kept the last");
                        }
                        if moved {
                            checkpoints.push(Checkpoint {
                                consumer_group_id: group.clone(),
                                topic_partition: dest.clone(),
                                upstream_offset: u,
                                downstream_offset: downstream,
                                metadata: String::new(),
                            });
                        }
                        if one_to_one
                            && matches!(t, Translation::Exact(_))
                            && self.last_sync.get(src).is_none_or(|&(up, _)| up != u)
                        {
                            syncs.push(OffsetSync {
                                topic_partition: src.clone(),
                                upstream_offset: u,
                                downstream_offset: downstream,
                            });
                        }
                    }
                }
            }
        }
        for c in &checkpoints {
            let key = c.encode_key().map_err(|e| self.encode_err(e))?;
            let value = c.encode_value().map_err(|e| self.encode_err(e))?;
            self.send(&self.checkpoints_topic, &key, &value)?;
        }
        for s in &syncs {
            let key = s.encode_key().map_err(|e| self.encode_err(e))?;
            let value = s.encode_value();
            self.send(&self.syncs_topic, &key, &value)?;
        }
        self.producer
            .flush(TIMEOUT)
            .map_err(|e| self.kafka_err("flushing checkpoints", e))?;
        for c in &checkpoints {
            self.last.insert(
                (c.consumer_group_id.clone(), c.topic_partition.clone()),
                (c.upstream_offset, c.downstream_offset),
            );
        }
        for s in &syncs {
            self.last_sync.insert(
                s.topic_partition.clone(),
                (s.upstream_offset, s.downstream_offset),
            );
        }
        round.checkpoints = checkpoints.len();
        round.offset_syncs = syncs.len();
        if self.settings.sync_group_offsets {
            round.group_commits = self.sync_groups(groups);
        }
        Ok(round)
    }

    /// Commits each group's latest checkpoints to the central cluster, forward only. The broker
    /// refuses a commit from outside a group that has active members, which is exactly the
    /// rule: never move a live consumer.
    fn sync_groups(&mut self, groups: &GroupTable) -> usize {
        let mut by_group: BTreeMap<&str, Vec<(&TopicPartition, i64)>> = BTreeMap::new();
        for ((group, dest), &(_, down)) in &self.last {
            if groups.groups.contains_key(group) {
                by_group.entry(group).or_default().push((dest, down));
            }
        }
        let mut committed = 0;
        for (group, targets) in by_group {
            let client = match self.group_clients.entry(group.to_owned()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    match client_config(&self.cluster)
                        .set("group.id", group)
                        .set("enable.auto.commit", "false")
                        .create::<BaseConsumer>()
                    {
                        Ok(c) => e.insert(c),
                        Err(err) => {
                            tracing::warn!(%group, error = %err, "cannot create a central group client");
                            continue;
                        }
                    }
                }
            };
            let mut ask = TopicPartitionList::new();
            for (tp, _) in &targets {
                ask.add_partition(&tp.topic, tp.partition);
            }
            let current = match client.committed_offsets(ask, TIMEOUT) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%group, error = %e, "reading central group offsets failed");
                    continue;
                }
            };
            let mut tpl = TopicPartitionList::new();
            for (tp, down) in &targets {
                let now = current
                    .find_partition(&tp.topic, tp.partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                if now.is_none_or(|o| *down > o) {
                    let _ =
                        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*down));
                }
            }
            if tpl.count() == 0 {
                continue;
            }
            match client.commit(&tpl, CommitMode::Sync) {
                Ok(()) => committed += tpl.count(),
                Err(e) => {
                    tracing::debug!(%group, error = %e, "central group not synced (active members, or not reachable)");
                }
            }
        }
        committed
    }

    fn send(&self, topic: &str, key: &[u8], value: &[u8]) -> Result<(), KafkaOpError> {
        let mut r: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).partition(0).key(key).payload(value);
        loop {
            match self.producer.send(r) {
                Ok(()) => return Ok(()),
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    std::thread::sleep(Duration::from_millis(5));
                    r = back;
                }
                Err((e, _)) => return Err(self.kafka_err("writing a checkpoint", e)),
            }
        }
    }

    fn kafka_err(&self, what: &str, e: KafkaError) -> KafkaOpError {
        KafkaOpError::Kafka {
            cluster: self.cluster.alias.clone(),
            what: what.to_owned(),
            source: Box::new(e),
        }
    }

    fn encode_err(&self, e: er_protocol::Mm2Error) -> KafkaOpError {
        KafkaOpError::Kafka {
            cluster: self.cluster.alias.clone(),
            what: format!("encoding a checkpoint: {e}"),
            source: Box::new(KafkaError::Canceled),
        }
    }
}

/// The last checkpoint per (group, destination partition) in `topic`, read to its end.
pub fn read_checkpoints(
    cluster: &ClusterConfig,
    topic: &str,
    site: &str,
) -> Result<HashMap<Key, (i64, i64)>, KafkaOpError> {
    let consumer =
        crate::kafka::committed_reader(cluster, format!("er-hub-checkpoints-{site}"), topic)?;
    let mut last = HashMap::new();
    let started = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                match Checkpoint::decode(m.key().unwrap_or(&[]), m.payload().unwrap_or(&[])) {
                    Ok(c) => {
                        last.insert(
                            (c.consumer_group_id, c.topic_partition),
                            (c.upstream_offset, c.downstream_offset),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(topic, offset = m.offset(), error = %e, "skipping a checkpoint record this hub cannot decode");
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => {
                return Err(KafkaOpError::Kafka {
                    cluster: cluster.alias.clone(),
                    what: format!("reading {topic:?}"),
                    source: Box::new(e),
                });
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(KafkaOpError::Timeout {
                cluster: cluster.alias.clone(),
                what: format!("reading checkpoints topic {topic:?}"),
                waited: started.elapsed(),
            });
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use er_protocol::Position;

    #[test]
    fn a_group_report_replaces_what_was_known_of_that_group_only() {
        let tp = |p| TopicPartition::new("t", p);
        let mut t = GroupTable::default();
        t.update(vec![
            GroupOffsets {
                group: "a".into(),
                offsets: vec![
                    Position {
                        tp: tp(0),
                        next_offset: 5,
                    },
                    Position {
                        tp: tp(1),
                        next_offset: 6,
                    },
                ],
            },
            GroupOffsets {
                group: "b".into(),
                offsets: vec![Position {
                    tp: tp(0),
                    next_offset: 1,
                }],
            },
        ]);
        t.update(vec![GroupOffsets {
            group: "a".into(),
            offsets: vec![Position {
                tp: tp(1),
                next_offset: 9,
            }],
        }]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.groups["a"], BTreeMap::from([(tp(1), 9)]));
        assert_eq!(t.groups["b"], BTreeMap::from([(tp(0), 1)]));
    }
}
