//! The hub's fleet machinery, started once per process: per central cluster the group
//! membership, a pool of writers and a checkpointer; the site registry and the loader that
//! keeps it in step with the shards this hub owns; the directory of the other hubs.
//!
//! Threads and Kafka clients are fixed by the configuration (clusters x writers, plus a few per
//! cluster), never by the number of sites.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::checkpoints::{CheckpointSettings, Checkpointer};
use crate::config::Validated;
use crate::directory::Directory;
use crate::kafka::{KafkaOpError, TopicManager};
use crate::membership::{Membership, Ownership};
use crate::shards::{Shard, shards_topic};
use crate::sink::{WriterPool, WriterSettings};
use crate::sites::{Registry, SiteCluster};

/// Time budget for reading the offset index of newly owned shards; past it they start with
/// empty indexes (older offsets then answer "too old", never a wrong offset).
pub const DEFAULT_OFFSET_INDEX_REBUILD_TIMEOUT: Duration = Duration::from_secs(45);

/// How long a shard read again waits for its sites' batches to leave the writers (a writer's
/// transaction may take up to its 60 s timeout).
const QUIESCE_WAIT: Duration = Duration::from_secs(70);

/// How long a shard load waits for the previous owner's pending transactions.
const STABLE_WAIT: Duration = Duration::from_secs(60);

/// Where a site's shard is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// By this hub.
    Here,
    /// By another hub of the group, reachable at these addresses.
    Elsewhere {
        /// The owner's hub id.
        hub_id: String,
        /// Where agents reach it.
        addresses: Vec<String>,
    },
    /// Nobody, as far as this hub knows (a rebalance is under way, or the owner did not
    /// advertise an address).
    Unknown,
}

/// Everything the hub shares among its sessions.
pub struct Fleet {
    /// The configuration.
    pub config: Validated,
    /// Topic creation per cluster.
    pub topics: Vec<Arc<TopicManager>>,
    /// Remote topics shaped after the edge's (`topic_sync`).
    pub topic_sync: crate::topic_sync::TopicSync,
    /// Group membership per cluster; the first is the coordination cluster, whose assignment
    /// decides which sites this hub accepts.
    pub memberships: Vec<Arc<Membership>>,
    /// Writers per cluster.
    pub pools: Vec<WriterPool>,
    /// The sites of the owned shards.
    pub registry: Arc<Registry>,
    /// Central -> edge flows, when `[[downlinks]]` names any.
    pub downlinks: Option<Arc<crate::downlink::Downlinks>>,
    /// Hub-distributed plugins: the store, rollouts and canaries.
    pub plugins: Arc<crate::plugins::PluginHub>,
    directory: Directory,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("hub_id", &self.config.raw.hub_id)
            .finish_non_exhaustive()
    }
}

/// Per cluster, in configuration order: its topic manager and this hub's group membership.
type Joined = (Vec<Arc<TopicManager>>, Vec<Arc<Membership>>);

/// On every cluster, the group's topics (created if missing) and this hub's group membership.
fn join_clusters(rt: &tokio::runtime::Handle, config: &Validated) -> Result<Joined, KafkaOpError> {
    let raw = &config.raw;
    let session_timeout = Duration::from_millis(raw.fleet.session_timeout_ms);
    let mut topics = Vec::new();
    let mut memberships = Vec::new();
    for (i, cluster) in raw.clusters.iter().enumerate() {
        let t = TopicManager::new(cluster)?;
        crate::kafka::setup_group_topics(
            rt,
            &t,
            &raw.group_id,
            raw.fleet.shards,
            raw.limits.offset_index_retention_ms,
            i == 0,
        )?;
        memberships.push(Arc::new(Membership::join(
            cluster,
            &raw.group_id,
            &raw.hub_id,
            &shards_topic(&raw.group_id),
            session_timeout,
        )?));
        topics.push(t);
    }
    Ok((topics, memberships))
}

/// A checkpointer per cluster, and a heartbeat relay per cluster when there is more than one;
/// each on its own thread until `stop`.
fn start_side_threads(
    rt: &tokio::runtime::Handle,
    config: &Validated,
    topics: &[Arc<TopicManager>],
    registry: &Arc<Registry>,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<std::thread::JoinHandle<()>>, KafkaOpError> {
    let raw = &config.raw;
    let mut threads = Vec::new();
    for (i, cluster) in raw.clusters.iter().enumerate() {
        let mut c = Checkpointer::start(
            i,
            cluster,
            topics[i].clone(),
            CheckpointSettings {
                sync_group_offsets: raw.checkpoints.sync_group_offsets,
                offset_syncs: raw.checkpoints.offset_syncs,
            },
        )?;
        let (registry, stop, rt) = (registry.clone(), stop.clone(), rt.clone());
        let interval = Duration::from_millis(raw.checkpoints.interval_ms);
        let alias = cluster.alias.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("checkpoints-{alias}"))
                .spawn(move || checkpoint_loop(&mut c, &registry, &rt, i, &alias, interval, &stop))
                .expect("spawning a checkpointer thread"),
        );
    }
    // Heartbeats on every other cluster a site writes to: only with more than one.
    if raw.clusters.len() > 1 {
        for (i, cluster) in raw.clusters.iter().enumerate() {
            let relay = crate::heartbeats::Relay::start(i, config, topics[i].clone())?;
            let (registry, stop, rt) = (registry.clone(), stop.clone(), rt.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("heartbeats-{}", cluster.alias))
                    .spawn(move || crate::heartbeats::relay_loop(relay, &registry, &rt, &stop))
                    .expect("spawning a heartbeat relay thread"),
            );
        }
    }
    Ok(threads)
}

impl Fleet {
    /// Creates the group's topics, joins the group on every cluster and starts writers,
    /// checkpointers and the directory. Blocking: call it off the executor.
    pub fn start(rt: tokio::runtime::Handle, config: Validated) -> Result<Self, KafkaOpError> {
        let raw = &config.raw;
        let group = raw.group_id.clone();
        let session_timeout = Duration::from_millis(raw.fleet.session_timeout_ms);
        let (topics, memberships) = join_clusters(&rt, &config)?;
        let pools = raw
            .clusters
            .iter()
            .enumerate()
            .map(|(i, cluster)| {
                WriterPool::start(
                    rt.clone(),
                    i,
                    cluster,
                    topics[i].clone(),
                    memberships[i].clone(),
                    memberships[0].clone(),
                    WriterSettings::new(&config),
                )
            })
            .collect();
        let registry = Arc::new(
            Registry::new(
                raw.fleet.shards,
                raw.clusters.len(),
                raw.limits.offset_index_max_entries_per_partition,
            )
            .with_site_queue_bytes(raw.limits.site_writer_queue_bytes),
        );
        if config.advertised.is_empty() {
            warn!(listen = %config.listen, "this hub listens on a wildcard address and has no fleet.advertised_addresses: other hubs cannot send sites here");
        }
        let directory = Directory::start(
            &raw.clusters[0],
            &group,
            &raw.hub_id,
            config.advertised.clone(),
            memberships[0].watch(),
            session_timeout / 2,
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = start_side_threads(&rt, &config, &topics, &registry, &stop)?;
        let downlinks = crate::downlink::Downlinks::start(&rt, &config)?;
        let (plugins, store_reader) =
            crate::plugins::PluginHub::start(&rt, &config, &topics[0], &stop)?;
        threads.push(store_reader);
        info!(hub_id = %raw.hub_id, group = %group, shards = raw.fleet.shards, clusters = raw.clusters.len(), writers_per_cluster = config.writers_per_cluster, "fleet started; waiting for the group to assign shards");
        let topic_sync = crate::topic_sync::TopicSync::start(
            &rt,
            topics.clone(),
            config.topic_config_filter.clone(),
            std::time::Duration::from_millis(raw.topic_sync.min_interval_ms),
            raw.acl_sync.max_per_site,
        );
        Ok(Self {
            config,
            topics,
            topic_sync,
            memberships,
            pools,
            registry,
            downlinks,
            plugins,
            directory,
            stop,
            threads,
        })
    }

    /// Where `shard` is served now.
    pub fn owner_of(&self, shard: Shard) -> Owner {
        let own = self.memberships[0].ownership();
        if own.owns(shard) {
            return Owner::Here;
        }
        if own.rebalancing || own.epoch == 0 {
            return Owner::Unknown;
        }
        match self.directory.owner_of(shard) {
            Some((hub_id, addresses)) => Owner::Elsewhere { hub_id, addresses },
            None => Owner::Unknown,
        }
    }

    /// Keeps the registry in step with the owned shards until `shutdown`: loads shards this
    /// hub gained (after their previous owner's transactions settled), forgets shards it lost
    /// (ending their sessions), reloads shards whose state may be stale.
    pub async fn run_loader(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut own = self.memberships[0].watch();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status_due = Instant::now() + crate::metrics::STATUS_INTERVAL;
        let mut sample_due = Instant::now();
        loop {
            tokio::select! {
                _ = own.changed() => {}
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if Instant::now() >= sample_due {
                sample_due = Instant::now() + crate::metrics::HISTORY_INTERVAL;
                let now = crate::metrics::now_ms();
                for s in self.registry.sites() {
                    s.metrics.sample(now);
                }
            }
            let ownership = self.memberships[0].ownership();
            crate::metrics::set_shards_owned(ownership.shards.len());
            if Instant::now() >= status_due {
                status_due = Instant::now() + crate::metrics::STATUS_INTERVAL;
                self.log_status(&ownership);
            }
            if ownership.rebalancing || ownership.epoch == 0 {
                continue;
            }
            self.drop_lost_shards(&ownership);
            let mut need = self.registry.to_load(&ownership.shards);
            // Shards held anew after a lost assignment that nobody wrote since this hub did
            // (their committed fence is this hub's last) are current in memory: kept as they are.
            let kept = self.still_current(&need, ownership.epoch).await;
            need.retain(|s| !kept.contains(s));
            if need.is_empty() {
                continue;
            }
            // A shard read again (held anew after a lost assignment, or holding a stale site)
            // must not change under the read: its sessions end and its batches still with the
            // writers complete (commit or fail) first, so nothing commits after the positions
            // were read.
            if self.quiesce(&need).await {
                self.clone().load(need, &ownership).await;
            }
        }
    }

    /// The `fleet status` line: shards, sites, records written and the worst lag.
    fn log_status(&self, ownership: &Ownership) {
        let sites = self.registry.sites();
        let records: u64 = sites.iter().map(|s| s.metrics.records()).sum();
        let worst = sites
            .iter()
            .filter_map(|s| s.metrics.lag_seconds().map(|l| (l, s.alias.as_str())))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        info!(
            shards_owned = ownership.shards.len(),
            sites = sites.len(),
            sites_connected = self.registry.connected(),
            records,
            lag_seconds = worst.map(|w| w.0),
            worst_site = worst.map(|w| w.1),
            "fleet status"
        );
    }

    /// Forgets the loaded shards `ownership` no longer holds, ending their sessions.
    fn drop_lost_shards(&self, ownership: &Ownership) {
        for (shard, _) in self.registry.loaded() {
            if !ownership.shards.contains_key(&shard) {
                let sites = self.registry.drop_shard(shard);
                info!(
                    shard,
                    sites = sites.len(),
                    "shard moved to another hub; its sessions end"
                );
                for s in sites {
                    s.supersede_session();
                }
            }
        }
    }

    /// Reads `need` from Kafka and installs what this hub still owns under the epoch of
    /// `ownership` once the read is over; a failed read is tried again on the next round.
    async fn load(self: Arc<Self>, need: BTreeSet<Shard>, ownership: &Ownership) {
        let fleet = self.clone();
        let started = Instant::now();
        let loading = need.clone();
        let read = tokio::task::spawn_blocking(move || fleet.read(&loading)).await;
        match read {
            Ok(Ok(mut contents)) => {
                // Ownership may have moved while reading: install only what is still ours
                // under the epoch the read began in.
                let now = self.memberships[0].ownership();
                for shard in need {
                    let held = now.shards.get(&shard).copied();
                    if now.rebalancing || held.is_none_or(|since| since > ownership.epoch) {
                        continue;
                    }
                    let c = contents.remove(&shard).unwrap_or_default();
                    for s in self.registry.install(shard, ownership.epoch, c) {
                        s.supersede_session();
                    }
                }
                crate::events::ShardsLoaded {
                    shards: self.registry.loaded().len(),
                    elapsed: started.elapsed(),
                }
                .emit();
            }
            Ok(Err(e)) => warn!(error = %e, "loading owned shards failed; retrying"),
            Err(e) => warn!(error = %e, "loading owned shards panicked; retrying"),
        }
    }

    /// The loaded ones among `shards` (with no stale site) whose committed fence on every
    /// cluster is the last one this hub committed; marks them current under `epoch`.
    async fn still_current(&self, shards: &BTreeSet<Shard>, epoch: u64) -> BTreeSet<Shard> {
        let loaded = self.registry.loaded();
        let candidates: BTreeSet<Shard> = shards
            .iter()
            .copied()
            .filter(|s| loaded.contains_key(s) && !self.registry.has_stale_site(*s))
            .collect();
        if candidates.is_empty() {
            return candidates;
        }
        let memberships = self.memberships.clone();
        let checking = candidates.clone();
        let marks = tokio::task::spawn_blocking(move || {
            memberships
                .iter()
                .map(|m| {
                    m.await_stable(&checking, STABLE_WAIT)
                        .map(|f| (m.clone(), f))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
        let Ok(Ok(marks)) = marks else {
            return BTreeSet::new();
        };
        let current: BTreeSet<Shard> = candidates
            .into_iter()
            .filter(|s| {
                marks
                    .iter()
                    .all(|(m, f)| m.is_own_last_fence(*s, f.get(s).map_or("", String::as_str)))
            })
            .collect();
        for s in &current {
            self.registry.revalidate(*s, epoch);
        }
        if !current.is_empty() {
            info!(
                shards = current.len(),
                "shards held again that nobody wrote meanwhile: kept in memory"
            );
        }
        current
    }

    /// Ends the sessions of the loaded ones among `shards` and waits until none of their
    /// sites has a batch with a writer; false if that took too long (tried again later).
    async fn quiesce(&self, shards: &BTreeSet<Shard>) -> bool {
        let loaded = self.registry.loaded();
        let mut sites = Vec::new();
        for shard in shards.iter().filter(|s| loaded.contains_key(s)) {
            let gone = self.registry.drop_shard(*shard);
            info!(
                shard,
                sites = gone.len(),
                "reading a shard again: its sessions end first"
            );
            for s in &gone {
                s.supersede_session();
            }
            sites.extend(gone);
        }
        for s in &sites {
            if !s.drained(QUIESCE_WAIT).await {
                warn!(site = %s.alias, inflight = s.inflight(), "batches of the site are still with the writers; reading its shard later");
                return false;
            }
        }
        true
    }

    /// Reads `shards` from every cluster, once their previous owner's pending transactions
    /// settled. Blocking.
    fn read(
        &self,
        shards: &BTreeSet<Shard>,
    ) -> Result<HashMap<Shard, crate::sites::ShardContents>, KafkaOpError> {
        let raw = &self.config.raw;
        let mut per_cluster = Vec::new();
        for (i, cluster) in raw.clusters.iter().enumerate() {
            if !self.pools[i].wait_initialised(STABLE_WAIT) {
                tracing::warn!(cluster = %cluster.alias, "the writers did not initialise transactions in time; reading shards anyway (a commit of this hub's previous run may still be under way)");
            }
            self.memberships[i].await_stable(shards, STABLE_WAIT)?;
            let (read, _) = crate::kafka::read_shards(
                cluster,
                &raw.group_id,
                shards,
                raw.limits.offset_index_max_entries_per_partition,
                DEFAULT_OFFSET_INDEX_REBUILD_TIMEOUT,
            )?;
            per_cluster.push(read);
        }
        let mut out: HashMap<Shard, crate::sites::ShardContents> = HashMap::new();
        for shard in shards {
            let mut sites: BTreeSet<String> = BTreeSet::new();
            for r in &per_cluster {
                if let Some(s) = r.get(shard) {
                    sites.extend(s.positions.keys().cloned());
                    sites.extend(s.indexes.keys().cloned());
                }
            }
            let mut contents = crate::sites::ShardContents::new();
            for site in sites {
                let clusters = per_cluster
                    .iter_mut()
                    .map(|read| {
                        let new_index = || {
                            crate::offsets::OffsetIndex::new(
                                raw.limits.offset_index_max_entries_per_partition,
                            )
                        };
                        match read.get_mut(shard) {
                            Some(r) => SiteCluster::new(
                                r.positions.remove(&site).unwrap_or_default(),
                                r.indexes.remove(&site).unwrap_or_else(new_index),
                            ),
                            None => SiteCluster::new(Vec::new(), new_index()),
                        }
                    })
                    .collect();
                contents.insert(site, clusters);
            }
            out.insert(*shard, contents);
        }
        Ok(out)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for s in self.registry.sites() {
            s.retire();
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The checkpointer of one cluster: a round every `interval` over every loaded site.
fn checkpoint_loop(
    c: &mut Checkpointer,
    registry: &Registry,
    rt: &tokio::runtime::Handle,
    cluster_index: usize,
    alias: &str,
    interval: Duration,
    stop: &AtomicBool,
) {
    let mut next_gauge = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let sites = registry.sites();
        let here: BTreeSet<&str> = sites.iter().map(|s| s.alias.as_str()).collect();
        c.retain(|s| here.contains(s));
        match c.run_once(rt, &sites) {
            Ok(rounds) => {
                for (site, r) in rounds {
                    if r.checkpoints + r.offset_syncs + r.group_commits + r.groups_active > 0 {
                        crate::events::CheckpointRound {
                            site: &site.metrics,
                            cluster: alias,
                            round: &r,
                        }
                        .emit();
                    }
                }
            }
            Err(e) => {
                warn!(cluster = alias, error = %e, "checkpoint round failed; retrying next interval")
            }
        }
        if Instant::now() >= next_gauge {
            next_gauge = Instant::now() + crate::metrics::INDEX_GAUGE_INTERVAL;
            for s in &sites {
                let runs = s.clusters[cluster_index]
                    .index
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .stats()
                    .runs;
                crate::metrics::set_offset_index_entries(&s.alias, alias, runs);
            }
        }
        // Sleep in short steps so shutdown is prompt.
        while !stop.load(Ordering::Relaxed) && started.elapsed() < interval {
            std::thread::sleep(Duration::from_millis(50).min(interval));
        }
    }
}
