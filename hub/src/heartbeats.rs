//! MM2 heartbeats on every destination cluster of a site (MM2 emits one heartbeat flow per
//! replication flow, so each target cluster's `<source>.heartbeats` shows the source alive).
//!
//! A site writes its heartbeats into the edge `heartbeats` topic; that topic is replicated
//! byte for byte, exactly once, to the one cluster it routes to (the *primary*). For every
//! other cluster the site's topics route to, the relay here writes, after each heartbeat the
//! primary committed, a heartbeat of its own into `<site>.heartbeats` on that cluster:
//! source alias = the site, target alias = that cluster, timestamp = the committed heartbeat's
//! (the site's clock), with the same record timestamp. These copies are derived, not
//! replicated: at least once (a key is `(source, target)` in a compacted topic, so a repeat
//! changes nothing), never ahead of what the primary committed, and at most one per site and
//! cluster per round. One producer per destination cluster, whatever the number of sites.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use er_protocol::{HEARTBEATS_TOPIC, Heartbeat};
use rdkafka::producer::BaseRecord;

use crate::config::Validated;
use crate::kafka::{KafkaOpError, PolledProducer, TopicManager, client_config};
use crate::sites::{Registry, Site};

/// How often the relay looks for newly committed heartbeats: MM2's default heartbeat interval.
pub const RELAY_INTERVAL: Duration = Duration::from_secs(1);

/// Writes the derived heartbeats of every site on one destination cluster.
pub struct Relay {
    cluster_index: usize,
    alias: String,
    config: Validated,
    topics: Arc<TopicManager>,
    producer: PolledProducer,
    /// Newest heartbeat relayed per site (the site's clock, epoch ms).
    relayed: HashMap<String, i64>,
    /// Remote heartbeats topics known to exist.
    ready: HashSet<String>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("cluster", &self.alias)
            .field("sites", &self.relayed.len())
            .finish_non_exhaustive()
    }
}

/// What a site's heartbeats need on one cluster this round.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing: the cluster is the heartbeats' primary, the site writes nothing here, or no
    /// heartbeat newer than the last relayed one committed.
    Nothing,
    /// A heartbeat stamped this (site clock, epoch ms) is to be written.
    Write(i64),
}

/// Decides what `site` needs on cluster `cluster_index`: pure, so the rule is tested apart
/// from Kafka. `topics` are the source topics the site has sent; `committed` the timestamp of
/// its newest heartbeat committed on the primary; `relayed` the newest already relayed here.
pub fn due(
    config: &Validated,
    cluster_index: usize,
    site: &str,
    topics: &[String],
    committed: Option<i64>,
    relayed: Option<i64>,
) -> Due {
    if config.cluster_for(site, HEARTBEATS_TOPIC) == cluster_index {
        return Due::Nothing;
    }
    let writes_here = topics
        .iter()
        .any(|t| t != HEARTBEATS_TOPIC && config.cluster_for(site, t) == cluster_index);
    match committed {
        Some(ts) if writes_here && relayed.is_none_or(|r| ts > r) => Due::Write(ts),
        _ => Due::Nothing,
    }
}

impl Relay {
    /// The relay of cluster `cluster_index`, with its producer. Blocking.
    pub fn start(
        cluster_index: usize,
        config: &Validated,
        topics: Arc<TopicManager>,
    ) -> Result<Self, KafkaOpError> {
        let cluster = &config.raw.clusters[cluster_index];
        let producer = PolledProducer::new(
            client_config(cluster)
                .set("enable.idempotence", "true")
                .set("linger.ms", "5"),
            "hb-reports",
        )
        .map_err(KafkaOpError::kafka(
            &cluster.alias,
            "creating the heartbeat relay's producer",
        ))?;
        Ok(Self {
            cluster_index,
            alias: cluster.alias.clone(),
            config: config.clone(),
            topics,
            producer,
            relayed: HashMap::new(),
            ready: HashSet::new(),
        })
    }

    /// One round over `sites`; returns how many heartbeats were handed to the producer.
    /// Blocking.
    pub fn run_once(&mut self, rt: &tokio::runtime::Handle, sites: &[Arc<Site>]) -> usize {
        let here: HashSet<&str> = sites.iter().map(|s| s.alias.as_str()).collect();
        self.relayed.retain(|s, _| here.contains(s.as_str()));
        let mut written = 0;
        for site in sites {
            let Due::Write(ts) = due(
                &self.config,
                self.cluster_index,
                &site.alias,
                &site.topics(),
                site.metrics.heartbeat_ms(),
                self.relayed.get(&site.alias).copied(),
            ) else {
                continue;
            };
            match self.write(rt, &site.alias, ts) {
                Ok(()) => {
                    self.relayed.insert(site.alias.clone(), ts);
                    crate::events::HeartbeatRelayed {
                        site: &site.alias,
                        cluster: &self.alias,
                    }
                    .emit();
                    written += 1;
                }
                Err(e) => {
                    tracing::warn!(site = %site.alias, cluster = %self.alias, error = %e, "cannot relay a heartbeat; trying again next round");
                }
            }
        }
        written
    }

    fn write(
        &mut self,
        rt: &tokio::runtime::Handle,
        site: &str,
        ts: i64,
    ) -> Result<(), KafkaOpError> {
        let topic = self.config.policy.remote_topic(site, HEARTBEATS_TOPIC);
        if !self.ready.contains(&topic) {
            // As MM2 creates its heartbeats topics: one partition, compacted.
            self.topics
                .ensure_many(rt, &[(topic.clone(), 1)], &[("cleanup.policy", "compact")])?;
            self.ready.insert(topic.clone());
        }
        let hb = Heartbeat {
            source_cluster_alias: site.to_owned(),
            target_cluster_alias: self.alias.clone(),
            timestamp: ts,
        };
        let key = hb.encode_key().map_err(|e| KafkaOpError::Layout {
            cluster: self.alias.clone(),
            message: format!("encoding a heartbeat of {site:?}: {e}"),
        })?;
        let value = hb.encode_value();
        let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic)
            .partition(0)
            .key(key.as_slice())
            .payload(value.as_slice())
            .timestamp(ts);
        // A full queue means the cluster is not taking writes: this heartbeat is dropped and
        // a newer one is tried next round.
        self.producer
            .send(record)
            .map_err(|(e, _)| KafkaOpError::Kafka {
                cluster: self.alias.clone(),
                what: format!("writing a heartbeat to {topic}"),
                source: Box::new(e),
            })
    }
}

/// Runs `relay` every [`RELAY_INTERVAL`] until `stop`.
pub fn relay_loop(
    mut relay: Relay,
    registry: &Registry,
    rt: &tokio::runtime::Handle,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let n = relay.run_once(rt, &registry.sites());
        if n > 0 {
            tracing::debug!(cluster = %relay.alias, heartbeats = n, "heartbeats relayed");
        }
        while !stop.load(Ordering::Relaxed) && started.elapsed() < RELAY_INTERVAL {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example routes `alarms` of `plant-*` sites to cluster 1; the rest (heartbeats
    /// too) to cluster 0.
    fn example() -> Validated {
        let dir = crate::config::example_dir();
        crate::config::load(&dir.path().join("hub.toml")).unwrap()
    }

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn a_heartbeat_is_relayed_once_to_each_other_cluster_the_site_writes_to() {
        let v = example();
        let t = topics(&["heartbeats", "alarms", "sensors"]);
        assert_eq!(v.cluster_for("plant-7", "alarms"), 1);
        assert_eq!(due(&v, 1, "plant-7", &t, Some(10), None), Due::Write(10));
        assert_eq!(due(&v, 1, "plant-7", &t, Some(10), Some(9)), Due::Write(10));
        assert_eq!(
            due(&v, 1, "plant-7", &t, Some(10), Some(10)),
            Due::Nothing,
            "already relayed"
        );
        assert_eq!(
            due(&v, 1, "plant-7", &t, Some(9), Some(10)),
            Due::Nothing,
            "never backwards"
        );
        assert_eq!(
            due(&v, 1, "plant-7", &t, None, None),
            Due::Nothing,
            "nothing committed yet"
        );
    }

    #[test]
    fn no_relay_to_the_primary_or_to_a_cluster_the_site_does_not_write_to() {
        let v = example();
        let t = topics(&["heartbeats", "alarms"]);
        assert_eq!(
            due(&v, 0, "plant-7", &t, Some(10), None),
            Due::Nothing,
            "cluster 0 takes the replicated heartbeats themselves"
        );
        assert_eq!(
            due(
                &v,
                1,
                "plant-7",
                &topics(&["heartbeats", "sensors"]),
                Some(10),
                None
            ),
            Due::Nothing,
            "no topic of the site routes to cluster 1"
        );
        assert_eq!(
            due(&v, 1, "depot-1", &t, Some(10), None),
            Due::Nothing,
            "the route to cluster 1 is for plant sites only"
        );
    }
}
