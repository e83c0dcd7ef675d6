//! Committed offsets of edge consumer groups, read for the hub's checkpoints.
//!
//! librdkafka has no admin call for another group's offsets; an unsubscribed consumer with that
//! `group.id` can read them with `committed_offsets` without joining the group. One such
//! consumer is kept per reported group.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use er_protocol::{GroupOffsets, Position, TopicPartition};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;
use crate::source::TopicSet;

/// Reads the committed offsets of the configured groups (blocking: run off the executor).
pub struct GroupReader {
    cfg: Settings,
    lister: BaseConsumer,
    consumers: HashMap<String, BaseConsumer>,
}

impl std::fmt::Debug for GroupReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupReader")
            .field("groups", &self.consumers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl GroupReader {
    /// Creates the group-listing client.
    pub fn new(cfg: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            lister: crate::kafka::base_config(&cfg.kafka)
                .create()
                .context("creating the consumer-group client")?,
            consumers: HashMap::new(),
        })
    }

    /// Committed offsets of every selected group for the partitions in `topics` (groups with
    /// none of them committed are left out).
    pub fn read(
        &mut self,
        topics: &TopicSet,
        timeout: Duration,
    ) -> anyhow::Result<Vec<GroupOffsets>> {
        let list = self
            .lister
            .fetch_group_list(None, timeout)
            .context("listing consumer groups of the edge cluster")?;
        let mut names: Vec<String> = list
            .groups()
            .iter()
            .map(|g| g.name().to_owned())
            .filter(|g| reported(&self.cfg.groups, g))
            .collect();
        names.sort();
        names.dedup();
        self.consumers.retain(|g, _| names.binary_search(g).is_ok());
        let mut tpl = TopicPartitionList::new();
        for (tp, _) in crate::source::partitions(topics) {
            tpl.add_partition(&tp.topic, tp.partition);
        }
        let mut out = Vec::new();
        if tpl.count() == 0 {
            return Ok(out);
        }
        for group in names {
            let consumer = match self.consumers.entry(group.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    crate::kafka::base_config(&self.cfg.kafka)
                        .set("group.id", &group)
                        .set("enable.auto.commit", "false")
                        .create()
                        .with_context(|| format!("creating a client for group {group:?}"))?,
                ),
            };
            let committed = match consumer.committed_offsets(tpl.clone(), timeout) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%group, error = %e, "reading committed offsets failed; group skipped this round");
                    continue;
                }
            };
            let offsets: Vec<Position> = committed
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(Position {
                        tp: TopicPartition::new(e.topic(), e.partition()),
                        next_offset: o,
                    }),
                    _ => None,
                })
                .collect();
            if !offsets.is_empty() {
                out.push(GroupOffsets { group, offsets });
            }
        }
        Ok(out)
    }
}

/// Whether an edge group's offsets are reported: the patterns select it, and it is not the
/// agent's own group (whose consumers never commit).
fn reported(groups: &crate::config::GroupSettings, group: &str) -> bool {
    group != crate::kafka::AGENT_GROUP_ID && groups.wants(group)
}

/// What one connection reported of each group, so that a report carries only the groups
/// whose offsets moved. The hub replaces a group's offsets with each report of it and keeps
/// them otherwise, so an unchanged group need not go again: 1,000 idle sites reporting every
/// 5 s were 200 frames a second for the hub to read and change nothing with. A new connection
/// starts empty and reports every group.
#[derive(Debug, Default)]
pub struct Reported {
    groups: HashMap<String, Vec<Position>>,
}

impl Reported {
    /// The groups of `read` whose offsets differ from what this connection last reported of
    /// them (offsets in partition order), taken as reported.
    pub fn changed(&mut self, read: Vec<GroupOffsets>) -> Vec<GroupOffsets> {
        read.into_iter()
            .filter_map(|mut g| {
                g.offsets.sort_by(|a, b| a.tp.cmp(&b.tp));
                if self.groups.get(&g.group) == Some(&g.offsets) {
                    return None;
                }
                self.groups.insert(g.group.clone(), g.offsets.clone());
                Some(g)
            })
            .collect()
    }
}

/// Splits a report into frames of at most `max_positions` offsets, keeping each group whole
/// (a group larger than that gets a frame of its own).
pub fn chunk(groups: Vec<GroupOffsets>, max_positions: usize) -> Vec<Vec<GroupOffsets>> {
    let mut frames: Vec<Vec<GroupOffsets>> = Vec::new();
    let mut size = 0;
    for g in groups {
        let n = g.offsets.len();
        if frames.is_empty() || size + n > max_positions {
            frames.push(Vec::new());
            size = 0;
        }
        size += n;
        frames.last_mut().expect("pushed above").push(g);
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_own_group_is_never_reported_even_when_selected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.pem"), "").unwrap();
        let cfg = crate::config::parse(
            &dir.path().join("agent.toml"),
            "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[hub]\naddress = \"h:1\"\n\
             ca_cert = \"x.pem\"\ncert = \"x.pem\"\nkey = \"x.pem\"\n\
             [groups]\ninclude = [\".*\"]\nexclude = [\"tmp-.*\"]\n",
        )
        .unwrap();
        assert!(reported(&cfg.groups, "orders-app"));
        assert!(!reported(&cfg.groups, "tmp-1"), "excluded");
        assert!(cfg.groups.wants(crate::kafka::AGENT_GROUP_ID));
        assert!(!reported(&cfg.groups, crate::kafka::AGENT_GROUP_ID));
    }

    fn g(name: &str, n: usize) -> GroupOffsets {
        GroupOffsets {
            group: name.into(),
            offsets: (0..n)
                .map(|i| Position {
                    tp: TopicPartition::new("t", i as i32),
                    next_offset: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn a_report_carries_only_the_groups_that_moved_since_this_connection_reported_them() {
        let pos = |t: &str, p: i32, o: i64| Position {
            tp: TopicPartition::new(t, p),
            next_offset: o,
        };
        let group = |name: &str, offsets: Vec<Position>| GroupOffsets {
            group: name.into(),
            offsets,
        };
        let mut r = Reported::default();
        let first = vec![
            group("a", vec![pos("t", 1, 5), pos("t", 0, 7)]),
            group("b", vec![pos("t", 0, 1)]),
        ];
        assert_eq!(
            r.changed(first.clone()).len(),
            2,
            "a connection reports all first"
        );
        // The same offsets, read in another order: nothing to send.
        let same = vec![
            group("b", vec![pos("t", 0, 1)]),
            group("a", vec![pos("t", 0, 7), pos("t", 1, 5)]),
        ];
        assert!(r.changed(same).is_empty());
        // One group moved: only it goes.
        let moved = r.changed(vec![
            group("a", vec![pos("t", 0, 8), pos("t", 1, 5)]),
            group("b", vec![pos("t", 0, 1)]),
        ]);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].group, "a");
        assert_eq!(moved[0].offsets[0], pos("t", 0, 8));
        // A new connection starts over.
        assert_eq!(Reported::default().changed(first).len(), 2);
    }

    #[test]
    fn chunks_keep_groups_whole_and_bounded() {
        let frames = chunk(vec![g("a", 3), g("b", 3), g("c", 10), g("d", 1)], 6);
        let names: Vec<Vec<&str>> = frames
            .iter()
            .map(|f| f.iter().map(|g| g.group.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
        assert!(chunk(Vec::new(), 6).is_empty());
    }
}
