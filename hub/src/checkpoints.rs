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
use rdkafka::client::{Client, ClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};

use crate::config::ClusterConfig;
use crate::group_offsets::{self, ErrorCode, GroupOffsetsError, PartitionResult};
use crate::kafka::{KafkaOpError, PolledProducer, TopicManager, client_config};
use crate::offsets::Translation;
use crate::sites::Site;

/// How checkpoints are produced.
#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    /// Also commit translated offsets to the central cluster's consumer groups of the same name
    /// (MM2's `sync.group.offsets.enabled`): only forward, and only while the group has no
    /// active members there (the broker refuses commits from outside an active group).
    /// See [`sync_group`].
    pub sync_group_offsets: bool,
    /// Write MM2 offset syncs for one-to-one partitions.
    pub offset_syncs: bool,
}

/// The latest committed offsets the agent reported, by group.
#[derive(Debug, Default, Clone)]
pub struct GroupTable {
    pub(crate) groups: BTreeMap<String, BTreeMap<TopicPartition, i64>>,
}

impl GroupTable {
    /// Longest edge group name accepted (Kafka sets none; a checkpoint key holds at most
    /// 32,767 bytes, and names this long are an attack, not a consumer group).
    pub const MAX_GROUP_NAME: usize = 255;

    /// Checks a report against the site's limits before applying it: every group name at most
    /// [`Self::MAX_GROUP_NAME`] bytes, not empty, offsets not negative, and at most `max_groups`
    /// groups known afterwards. Nothing is applied when something is wrong.
    pub fn update_checked(
        &mut self,
        report: Vec<GroupOffsets>,
        max_groups: usize,
    ) -> Result<(), String> {
        for g in &report {
            if g.group.is_empty() || g.group.len() > Self::MAX_GROUP_NAME {
                return Err(format!(
                    "group name of {} bytes (1 to {} allowed)",
                    g.group.len(),
                    Self::MAX_GROUP_NAME
                ));
            }
            if let Some(p) = g.offsets.iter().find(|p| p.next_offset < 0) {
                return Err(format!(
                    "group {:?}: negative offset {} for {}",
                    g.group, p.next_offset, p.tp
                ));
            }
        }
        let new = report
            .iter()
            .filter(|g| !self.groups.contains_key(&g.group))
            .map(|g| &g.group)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if self.groups.len() + new > max_groups {
            return Err(format!(
                "{} groups reported, at most {max_groups} allowed per site (limits.max_groups_per_site)",
                self.groups.len() + new
            ));
        }
        self.update(report);
        Ok(())
    }

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
    /// Central group offsets committed (partitions moved forward).
    pub group_commits: usize,
    /// Central groups left alone because they have active members there.
    pub groups_active: usize,
    /// (group, partition) pairs not translatable yet or too old.
    pub pending: usize,
}

type Key = (String, TopicPartition);

/// The last checkpoint written per (group, destination partition): (upstream, downstream).
type LastCheckpoints = HashMap<Key, (i64, i64)>;

/// What the checkpointer remembers of one site.
#[derive(Debug, Default)]
struct SiteMarks {
    /// Its checkpoints topics exist and `last` holds what they hold.
    ready: bool,
    /// Last checkpoint written per (group, destination partition): (upstream, downstream).
    last: HashMap<Key, (i64, i64)>,
    /// Last offset sync written per source partition.
    last_sync: HashMap<TopicPartition, (i64, i64)>,
}

/// Writes the checkpoints of every site on one cluster, with one producer and one end-offset
/// client whatever the number of sites and groups (group offsets go through that client's Admin
/// API, [`crate::group_offsets`]).
pub struct Checkpointer {
    settings: CheckpointSettings,
    cluster_index: usize,
    cluster: ClusterConfig,
    topics: Arc<TopicManager>,
    producer: PolledProducer,
    ends: BaseConsumer,
    sites: HashMap<String, SiteMarks>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("cluster", &self.cluster.alias)
            .field("sites", &self.sites.len())
            .finish_non_exhaustive()
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// One site's checkpoints of one round, before they are written.
struct Pending {
    site: String,
    checkpoints: Vec<Checkpoint>,
    syncs: Vec<OffsetSync>,
    pending: usize,
}

impl Checkpointer {
    /// Creates the clients of cluster `cluster_index`. Blocking.
    pub fn start(
        cluster_index: usize,
        cluster: &ClusterConfig,
        topics: Arc<TopicManager>,
        settings: CheckpointSettings,
    ) -> Result<Self, KafkaOpError> {
        let err = |what: &str| KafkaOpError::kafka(&cluster.alias, what);
        let producer = PolledProducer::new(
            client_config(cluster)
                .set("enable.idempotence", "true")
                .set("linger.ms", "5"),
            "ckpt-reports",
        )
        .map_err(err("creating the checkpoint producer"))?;
        let ends = client_config(cluster)
            .set("group.id", "er-hub-ends")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(err("creating the end-offset client"))?;
        Ok(Self {
            settings,
            cluster_index,
            cluster: cluster.clone(),
            topics,
            producer,
            ends,
            sites: HashMap::new(),
        })
    }

    /// Creates the checkpoints topics (one partition, compacted) of the sites seen for the
    /// first time and reads what those topics hold, so the new checkpoints stay monotone: one
    /// CreateTopics request and one reader for all of them, whatever their number. Blocking.
    fn ready_sites(
        &mut self,
        rt: &tokio::runtime::Handle,
        sites: &[&str],
    ) -> Result<(), KafkaOpError> {
        let new: Vec<&str> = sites
            .iter()
            .copied()
            .filter(|s| !self.sites.get(*s).is_some_and(|m| m.ready))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut wanted: Vec<(String, i32)> = Vec::new();
        for site in &new {
            wanted.push((er_protocol::checkpoints_topic(site), 1));
            if self.settings.offset_syncs {
                wanted.push((er_protocol::offset_syncs_topic(site), 1));
            }
        }
        let created = self
            .topics
            .ensure_many(rt, &wanted, &[("cleanup.policy", "compact")])?;
        // A checkpoints topic created just now is empty: only the others are read.
        let existing: Vec<&str> = new
            .iter()
            .copied()
            .filter(|s| !created.contains(&er_protocol::checkpoints_topic(s)))
            .collect();
        let mut last = if existing.is_empty() {
            HashMap::new()
        } else {
            read_checkpoints_of(&self.cluster, &existing)?
        };
        for site in new {
            let m = self.sites.entry(site.to_owned()).or_default();
            m.last = last.remove(site).unwrap_or_default();
            m.ready = true;
        }
        Ok(())
    }

    /// Forgets sites that are no longer here (their shard moved): their marks would be stale if
    /// they came back after another hub wrote checkpoints for them.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.sites.retain(|s, _| keep(s));
    }

    /// One round over every site with reported groups; returns what each site's round wrote.
    /// A site whose topics cannot be prepared is skipped this round. Blocking.
    pub fn run_once(
        &mut self,
        rt: &tokio::runtime::Handle,
        sites: &[Arc<Site>],
    ) -> Result<Vec<(Arc<Site>, Round)>, KafkaOpError> {
        let mut work = Vec::new();
        for site in sites {
            let groups = site
                .groups
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if !groups.is_empty() {
                work.push((site.clone(), groups));
            }
        }
        let aliases: Vec<&str> = work.iter().map(|(s, _)| s.alias.as_str()).collect();
        if let Err(e) = self.ready_sites(rt, &aliases) {
            tracing::warn!(cluster = %self.cluster.alias, error = %e, "checkpoints topics of new sites not ready; retrying next round");
        }
        work.retain(|(s, _)| self.sites.get(&s.alias).is_some_and(|m| m.ready));
        let ends = self.end_offsets(&work);
        let mut pending = Vec::new();
        for (site, groups) in &work {
            pending.push(self.translate(site, groups, &ends));
        }
        for p in &pending {
            self.write(p)?;
        }
        self.producer
            .flush(TIMEOUT)
            .map_err(|e| self.kafka_err("flushing checkpoints", e))?;
        let mut out = Vec::new();
        for ((site, groups), p) in work.into_iter().zip(pending) {
            self.remember(&p);
            let mut round = Round {
                checkpoints: p.checkpoints.len(),
                offset_syncs: p.syncs.len(),
                pending: p.pending,
                ..Round::default()
            };
            if self.settings.sync_group_offsets {
                self.sync_groups(&p.site, &groups, &mut round);
            }
            out.push((site, round));
        }
        Ok(out)
    }

    /// End offsets of the destination partitions of every reported source partition (all in
    /// one request per leader), read before translating (see `OffsetIndex::translate`); none
    /// when they cannot be read this round.
    fn end_offsets(&self, work: &[(Arc<Site>, GroupTable)]) -> HashMap<TopicPartition, i64> {
        let mut wanted: std::collections::HashSet<TopicPartition> =
            std::collections::HashSet::new();
        for (site, groups) in work {
            let index = site.clusters[self.cluster_index]
                .index
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for offsets in groups.groups.values() {
                for tp in offsets.keys() {
                    wanted.extend(index.dest_partitions(tp));
                }
            }
        }
        match crate::kafka::end_offsets(
            &self.ends,
            wanted.iter().map(|d| (d.topic.as_str(), d.partition)),
            TIMEOUT,
        ) {
            Ok(ends) => ends
                .into_iter()
                .map(|((topic, partition), end)| (TopicPartition::new(topic, partition), end))
                .collect(),
            Err(e) => {
                tracing::debug!(cluster = %self.cluster.alias, partitions = wanted.len(), error = %e, "end offsets unknown this round");
                HashMap::new()
            }
        }
    }

    /// Sends one site's checkpoints and offset syncs (not flushed). One site's unencodable
    /// checkpoint (a name too long for MM2's format) is skipped with a warning; it must never
    /// stop the round for the other sites.
    fn write(&self, p: &Pending) -> Result<(), KafkaOpError> {
        let checkpoints_topic = er_protocol::checkpoints_topic(&p.site);
        let syncs_topic = er_protocol::offset_syncs_topic(&p.site);
        for c in &p.checkpoints {
            match (c.encode_key(), c.encode_value()) {
                (Ok(key), Ok(value)) => self.send(&checkpoints_topic, &key, &value)?,
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(site = %p.site, group = %c.consumer_group_id, error = %e, "skipping a checkpoint that MM2's format cannot hold");
                }
            }
        }
        for s in &p.syncs {
            match s.encode_key() {
                Ok(key) => self.send(&syncs_topic, &key, &s.encode_value())?,
                Err(e) => {
                    tracing::warn!(site = %p.site, tp = %s.topic_partition, error = %e, "skipping an offset sync that MM2's format cannot hold");
                }
            }
        }
        Ok(())
    }

    /// Remembers what a flushed round wrote for a site, so the next writes only what moved.
    fn remember(&mut self, p: &Pending) {
        let marks = self.sites.entry(p.site.clone()).or_default();
        for c in &p.checkpoints {
            marks.last.insert(
                (c.consumer_group_id.clone(), c.topic_partition.clone()),
                (c.upstream_offset, c.downstream_offset),
            );
        }
        for s in &p.syncs {
            marks.last_sync.insert(
                s.topic_partition.clone(),
                (s.upstream_offset, s.downstream_offset),
            );
        }
    }

    /// Translates one site's reported group offsets into the checkpoints and offset syncs that
    /// moved since the last ones written.
    fn translate(
        &self,
        site: &Site,
        groups: &GroupTable,
        ends: &HashMap<TopicPartition, i64>,
    ) -> Pending {
        let empty = SiteMarks::default();
        let marks = self.sites.get(&site.alias).unwrap_or(&empty);
        let mut p = Pending {
            site: site.alias.clone(),
            checkpoints: Vec::new(),
            syncs: Vec::new(),
            pending: 0,
        };
        let index = site.clusters[self.cluster_index]
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (group, offsets) in &groups.groups {
            for (src, &u) in offsets {
                let one_to_one = self.settings.offset_syncs && index.is_one_to_one(src);
                for (dest, t) in index.translate(src, u, |d| ends.get(d).copied()) {
                    let downstream = match t {
                        Translation::Exact(d) | Translation::EndOffset(d) if d >= 0 => d,
                        _ => {
                            p.pending += 1;
                            continue;
                        }
                    };
                    let key = (group.clone(), dest.clone());
                    let last = marks.last.get(&key);
                    let moved = match last {
                        None => true,
                        Some(&(up, down)) => downstream > down || (downstream == down && u > up),
                    };
                    if last.is_some_and(|&(_, down)| downstream < down) {
                        tracing::debug!(site = %site.alias, %group, %dest, downstream, "translation behind the last checkpoint; kept the last");
                    }
                    if moved {
                        p.checkpoints.push(Checkpoint {
                            consumer_group_id: group.clone(),
                            topic_partition: dest.clone(),
                            upstream_offset: u,
                            downstream_offset: downstream,
                            metadata: String::new(),
                        });
                    }
                    if one_to_one
                        && matches!(t, Translation::Exact(_))
                        && marks.last_sync.get(src).is_none_or(|&(up, _)| up != u)
                    {
                        p.syncs.push(OffsetSync {
                            topic_partition: src.clone(),
                            upstream_offset: u,
                            downstream_offset: downstream,
                        });
                    }
                }
            }
        }
        p
    }

    /// Commits each of the site's reported groups' latest checkpoints to the central cluster
    /// (see [`sync_group`]), through the end-offset client: one Admin API request per group to
    /// read, one to alter, whatever the number of groups.
    fn sync_groups(&self, site: &str, groups: &GroupTable, round: &mut Round) {
        let Some(marks) = self.sites.get(site) else {
            return;
        };
        for (group, targets) in group_targets(&marks.last, groups) {
            match sync_group(self.ends.client(), &group, &targets, TIMEOUT) {
                Ok(s) => {
                    round.group_commits += s.committed;
                    if s.active {
                        round.groups_active += 1;
                        tracing::debug!(site, cluster = %self.cluster.alias, %group, "central group has active members; its offsets are left alone");
                    }
                    for (tp, code) in &s.failed {
                        tracing::warn!(site, cluster = %self.cluster.alias, %group, %tp, error = %code, "central group offset not synced");
                    }
                }
                Err(e) => {
                    tracing::debug!(site, cluster = %self.cluster.alias, %group, error = %e, "central group not synced this round");
                }
            }
        }
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
}

/// The last checkpoint per (group, destination partition) of each site's checkpoints topic,
/// read to its end with one reader. Only this hub writes a served site's checkpoints, and not
/// while it reads them, so each topic reaches its end once.
fn read_checkpoints_of(
    cluster: &ClusterConfig,
    sites: &[&str],
) -> Result<HashMap<String, LastCheckpoints>, KafkaOpError> {
    let mut out: HashMap<String, LastCheckpoints> = HashMap::new();
    let Some(first) = sites.first() else {
        return Ok(out);
    };
    let topics: HashMap<String, &str> = sites
        .iter()
        .map(|s| (er_protocol::checkpoints_topic(s), *s))
        .collect();
    let names: Vec<&str> = topics.keys().map(String::as_str).collect();
    let what = || format!("reading the checkpoints topics of {} sites", sites.len());
    let consumer =
        crate::kafka::committed_reader_of(cluster, format!("er-hub-checkpoints-{first}"), &names)?;
    let mut open = topics.len();
    let started = Instant::now();
    while open > 0 {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                let Some(site) = topics.get(m.topic()) else {
                    continue;
                };
                match Checkpoint::decode(m.key().unwrap_or(&[]), m.payload().unwrap_or(&[])) {
                    Ok(c) => {
                        out.entry((*site).to_owned()).or_default().insert(
                            (c.consumer_group_id, c.topic_partition),
                            (c.upstream_offset, c.downstream_offset),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(topic = m.topic(), offset = m.offset(), error = %e, "skipping a checkpoint record this hub cannot decode");
                    }
                }
            }
            // Every topic has one partition: each end reached is one topic read.
            Some(Err(KafkaError::PartitionEOF(_))) => open -= 1,
            Some(Err(e)) => {
                return Err(KafkaOpError::Kafka {
                    cluster: cluster.alias.clone(),
                    what: what(),
                    source: Box::new(e),
                });
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(KafkaOpError::Timeout {
                cluster: cluster.alias.clone(),
                what: what(),
                waited: started.elapsed(),
            });
        }
    }
    Ok(out)
}

/// What syncing one central group did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupSync {
    /// Partitions moved forward.
    pub committed: usize,
    /// The broker refused the commit because the group has active members on the central
    /// cluster: nothing of it moved.
    pub active: bool,
    /// Partitions refused for another reason, with the broker's error.
    pub failed: Vec<(TopicPartition, ErrorCode)>,
}

/// Moves central group `group` forward to `targets` (destination partition -> offset): reads
/// what the group has committed, then alters, in one request, only the partitions whose target
/// is ahead of it (or where it has none), so a group never moves backwards. Kafka itself refuses
/// the alteration while the group has members ([`GroupSync::active`]), which is the other rule:
/// never move a live consumer. Blocking.
pub fn sync_group<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    targets: &BTreeMap<TopicPartition, i64>,
    timeout: Duration,
) -> Result<GroupSync, GroupOffsetsError> {
    let asked: Vec<TopicPartition> = targets.keys().cloned().collect();
    let current = group_offsets::committed(client, group, &asked, timeout)?;
    let ahead = forward_only(targets, &current);
    let mut sync = GroupSync::default();
    for (tp, result) in group_offsets::alter(client, group, &ahead, timeout)? {
        match result {
            Ok(()) => sync.committed += 1,
            Err(code) if code.means_group_active() => sync.active = true,
            Err(code) => sync.failed.push((tp, code)),
        }
    }
    Ok(sync)
}

/// The targets ahead of what a group has committed (`current`): where it has no offset, or a
/// lower one. A partition whose committed offset could not be read is left out: it might be
/// ahead.
fn forward_only(
    targets: &BTreeMap<TopicPartition, i64>,
    current: &BTreeMap<TopicPartition, PartitionResult<Option<i64>>>,
) -> BTreeMap<TopicPartition, i64> {
    targets
        .iter()
        .filter(|(tp, target)| match current.get(*tp) {
            Some(Ok(None)) => true,
            Some(Ok(Some(now))) => *target > now,
            Some(Err(_)) | None => false,
        })
        .map(|(tp, target)| (tp.clone(), *target))
        .collect()
}

/// The latest checkpoint (downstream offset) of every destination partition, per group the
/// site reports: what each central group should be moved to.
fn group_targets(
    last: &HashMap<Key, (i64, i64)>,
    groups: &GroupTable,
) -> BTreeMap<String, BTreeMap<TopicPartition, i64>> {
    let mut by_group: BTreeMap<String, BTreeMap<TopicPartition, i64>> = BTreeMap::new();
    for ((group, dest), &(_, down)) in last {
        if groups.groups.contains_key(group) {
            by_group
                .entry(group.clone())
                .or_default()
                .insert(dest.clone(), down);
        }
    }
    by_group
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
    #[test]
    fn group_sync_only_moves_a_group_forward() {
        let tp = |p| TopicPartition::new("t", p);
        let refused = ErrorCode(16); // NOT_COORDINATOR
        /// What the group has committed, as read (`None`: not answered).
        type Read = Option<PartitionResult<Option<i64>>>;
        // (partition, target, what the group has committed) -> committed to it
        let table: [(i32, i64, Read, Option<i64>); 6] = [
            (0, 10, Some(Ok(None)), Some(10)),    // no offset yet
            (1, 10, Some(Ok(Some(4))), Some(10)), // behind
            (2, 10, Some(Ok(Some(10))), None),    // there already
            (3, 10, Some(Ok(Some(12))), None),    // ahead: never backwards
            (4, 10, Some(Err(refused)), None),    // unknown: might be ahead
            (5, 10, None, None),                  // not answered
        ];
        let targets: BTreeMap<_, _> = table.iter().map(|(p, t, _, _)| (tp(*p), *t)).collect();
        let current: BTreeMap<_, _> = table
            .iter()
            .filter_map(|(p, _, c, _)| c.map(|c| (tp(*p), c)))
            .collect();
        let want: BTreeMap<_, _> = table
            .iter()
            .filter_map(|(p, _, _, w)| w.map(|w| (tp(*p), w)))
            .collect();
        assert_eq!(forward_only(&targets, &current), want);
    }

    #[test]
    fn group_targets_are_the_last_checkpoints_of_reported_groups_only() {
        let tp = |p| TopicPartition::new("t", p);
        let last = HashMap::from([
            (("a".to_owned(), tp(0)), (5, 50)),
            (("a".to_owned(), tp(1)), (6, 60)),
            (("gone".to_owned(), tp(0)), (7, 70)),
        ]);
        let mut groups = GroupTable::default();
        groups.update(vec![GroupOffsets {
            group: "a".into(),
            offsets: vec![],
        }]);
        assert_eq!(
            group_targets(&last, &groups),
            BTreeMap::from([("a".to_owned(), BTreeMap::from([(tp(0), 50), (tp(1), 60)]))])
        );
    }
}
