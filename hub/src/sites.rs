//! The site registry: every site of the shards this hub owns, as plain data (positions, offset
//! index, reported group offsets, the live session's slot). No I/O, no threads, no Kafka
//! clients: a site costs memory, never a thread or a connection.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use er_protocol::{Position, TopicPartition};
use tokio::sync::{Notify, watch};

use crate::checkpoints::GroupTable;
use crate::metrics::SiteMetrics;
use crate::offsets::{OffsetIndex, SharedOffsetIndex};
use crate::shards::{Shard, shard_of};

/// A site's state on one central cluster.
#[derive(Debug)]
pub struct SiteCluster {
    /// Committed source positions (what the last committed transaction wrote).
    positions: Mutex<HashMap<TopicPartition, i64>>,
    /// The site's offset index on this cluster.
    pub index: SharedOffsetIndex,
}

impl SiteCluster {
    /// State read from a cluster (or empty for a new site).
    pub fn new(positions: Vec<Position>, mut index: OffsetIndex) -> Self {
        for p in &positions {
            index.set_position(&p.tp, p.next_offset);
        }
        Self {
            positions: Mutex::new(
                positions
                    .into_iter()
                    .map(|p| (p.tp, p.next_offset))
                    .collect(),
            ),
            index: index.shared(),
        }
    }

    /// The committed positions.
    pub fn positions(&self) -> Vec<Position> {
        let mut v: Vec<Position> = self
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(tp, &next_offset)| Position {
                tp: tp.clone(),
                next_offset,
            })
            .collect();
        v.sort_by(|a, b| a.tp.cmp(&b.tp));
        v
    }

    /// The committed position of one source partition.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tp)
            .copied()
    }

    /// Records positions a transaction committed.
    pub fn committed(&self, positions: impl IntoIterator<Item = (TopicPartition, i64)>) {
        let mut p = self
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (tp, next) in positions {
            p.insert(tp, next);
        }
    }
}

/// One site: what the hub knows of it, shared by its session, the writers and the
/// checkpointers.
#[derive(Debug)]
pub struct Site {
    /// The site alias (from its certificate).
    pub alias: String,
    /// Its shard.
    pub shard: Shard,
    /// State per central cluster, in configuration order.
    pub clusters: Vec<SiteCluster>,
    /// The latest committed offsets of edge consumer groups the agent reported.
    pub groups: Mutex<GroupTable>,
    /// Metric handles.
    pub metrics: Arc<SiteMetrics>,
    /// Batches handed to writers and not yet completed.
    inflight: AtomicUsize,
    drained: Notify,
    /// The session whose batches writers refuse from now on (its earlier batch failed: a later
    /// one of the same partition would leave a gap).
    failed_session: AtomicU64,
    /// The live session, if any.
    session: Mutex<Option<SessionSlot>>,
    /// Source topics the site has sent (bounded by `limits.max_topics_per_site`).
    topics: Mutex<std::collections::HashSet<String>>,
    /// Partitions stopped at a record that can never be written, with the session they were
    /// stopped in (`replication.on_unwritable = "stop"`); a new session starts them again.
    stopped: Mutex<HashMap<TopicPartition, u64>>,
    /// A commit's outcome is unknown: the state in memory may be behind Kafka's, and the shard
    /// must be read again before the site resumes.
    stale: std::sync::atomic::AtomicBool,
    /// The coordination membership's epoch under which this state was read (or found
    /// unchanged): it is current only while the shard has been held without interruption
    /// since then.
    valid_since: AtomicU64,
    /// The registry no longer holds this state (the shard moved or was read again).
    retired: std::sync::atomic::AtomicBool,
    /// Bytes of this site's batches the writers' queues may hold at once, all writers together
    /// (`limits.site_writer_queue_bytes`): one busy site cannot fill the queues other sites
    /// share.
    queue_budget: Arc<tokio::sync::Semaphore>,
    queue_budget_size: u32,
}

/// The live session of a site: its id, its connection and how to end it.
#[derive(Debug)]
pub struct SessionSlot {
    /// Session id (unique per hub process).
    pub id: u64,
    /// The connection (for `/status`: RTT and remote address; nothing is sent through it here).
    pub conn: quinn::Connection,
    /// Hub time the session started, epoch ms.
    pub started_ms: i64,
    /// Set to true to ask the session to end (a newer connection replaces it).
    pub supersede: watch::Sender<bool>,
    /// Turns true once the session ended.
    pub ended: watch::Receiver<bool>,
}

impl Site {
    /// A site with the given per-cluster state.
    pub fn new(alias: &str, shard: Shard, clusters: Vec<SiteCluster>) -> Self {
        Self {
            alias: alias.to_owned(),
            shard,
            clusters,
            groups: Mutex::new(GroupTable::default()),
            metrics: crate::metrics::site(alias),
            inflight: AtomicUsize::new(0),
            drained: Notify::new(),
            failed_session: AtomicU64::new(0),
            session: Mutex::new(None),
            topics: Mutex::new(std::collections::HashSet::new()),
            stopped: Mutex::new(HashMap::new()),
            stale: std::sync::atomic::AtomicBool::new(false),
            valid_since: AtomicU64::new(0),
            retired: std::sync::atomic::AtomicBool::new(false),
            queue_budget: Arc::new(tokio::sync::Semaphore::new(u32::MAX as usize)),
            queue_budget_size: u32::MAX,
        }
    }

    /// This site with a budget of `bytes` in the writers' queues.
    pub fn with_queue_budget(mut self, bytes: u32) -> Self {
        let bytes = bytes.max(1);
        self.queue_budget = Arc::new(tokio::sync::Semaphore::new(bytes as usize));
        self.queue_budget_size = bytes;
        self
    }

    /// Waits until the site's share of the writers' queues has room for `cost` bytes (at most
    /// the whole share: a larger batch waits until none of the site's batches is queued) and
    /// takes it; it returns when the permit is dropped.
    pub async fn reserve_queue(
        &self,
        cost: u32,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError> {
        self.queue_budget
            .clone()
            .acquire_many_owned(cost.min(self.queue_budget_size))
            .await
    }

    /// Whether this state may be written from under `ownership` (of the coordination
    /// cluster): the registry still holds it and it was read after the shard was last gained.
    /// A transaction built on anything else could carry positions another hub has overtaken.
    pub fn is_current(&self, ownership: &crate::membership::Ownership) -> bool {
        !self.retired.load(Ordering::Acquire)
            && ownership
                .shards
                .get(&self.shard)
                .is_some_and(|since| self.valid_since.load(Ordering::Acquire) >= *since)
    }

    fn validate(&self, epoch: u64) {
        self.valid_since.fetch_max(epoch, Ordering::AcqRel);
    }

    /// Admits a source topic of the site: true if it is known or fits within `max` topics.
    pub fn admit_topic(&self, topic: &str, max: usize) -> bool {
        let mut t = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        if t.contains(topic) {
            return true;
        }
        if t.len() >= max {
            return false;
        }
        t.insert(topic.to_owned());
        true
    }

    /// The source topics the site has sent, in no particular order.
    pub fn topics(&self) -> Vec<String> {
        let t = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        t.iter().cloned().collect()
    }

    /// Marks the site's state as possibly behind what Kafka holds.
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Whether the site's state must be read again before it resumes.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// Counts a batch handed to a writer.
    pub fn batch_started(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a batch completed (committed or failed).
    pub fn batch_done(&self) {
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }

    /// Batches handed to writers and not completed yet.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Waits until no batch of the site is with a writer; false on timeout. After it, the
    /// positions are exactly what is committed.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.inflight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Stops `tp` for the rest of `session`: its later batches are dropped unwritten.
    pub fn stop_partition(&self, session: u64, tp: &TopicPartition) {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        stopped.insert(tp.clone(), session);
        let n = stopped.values().filter(|s| **s == session).count();
        self.metrics.stopped_partitions(n);
    }

    /// Whether `tp` was stopped in `session`.
    pub fn is_stopped(&self, session: u64, tp: &TopicPartition) -> bool {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tp)
            == Some(&session)
    }

    /// Marks `session`'s remaining batches as refused.
    pub fn fail_session(&self, session: u64) {
        self.failed_session.fetch_max(session, Ordering::AcqRel);
    }

    /// Whether batches of `session` are refused.
    pub fn session_failed(&self, session: u64) -> bool {
        self.failed_session.load(Ordering::Acquire) >= session
    }

    /// The committed positions on every cluster, each keeping only the partitions `keep`
    /// routes to it (positions a cluster holds for partitions now routed elsewhere are stale).
    pub fn positions(&self, keep: impl Fn(usize, &TopicPartition) -> bool) -> Vec<Position> {
        let mut out = Vec::new();
        for (i, c) in self.clusters.iter().enumerate() {
            out.extend(c.positions().into_iter().filter(|p| keep(i, &p.tp)));
        }
        out
    }

    /// Forgets the partitions stopped in earlier sessions, once none of their batches is
    /// being written any more: a new session tries them again.
    pub fn restart_stopped(&self) {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.metrics.stopped_partitions(0);
    }

    /// Installs a new live session, returning the one it replaces.
    pub fn replace_session(&self, slot: SessionSlot) -> Option<SessionSlot> {
        self.session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(slot)
    }

    /// Removes the live session if it is still `id`.
    pub fn end_session(&self, id: u64) {
        let mut s = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        if s.as_ref().is_some_and(|s| s.id == id) {
            *s = None;
        }
    }

    /// Marks the site's indexes as no longer kept up to date (its shard moved or was read
    /// again): they stop answering end offsets, which only an up-to-date index may.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        for c in &self.clusters {
            c.index
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .mark_stopped();
        }
    }

    /// Asks the live session, if any, to end.
    pub fn supersede_session(&self) {
        if let Some(s) = self
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = s.supersede.send(true);
        }
    }

    /// The live session's link, if any: (remote address, RTT, start time in epoch ms).
    pub fn link(&self) -> Option<(std::net::SocketAddr, Duration, i64)> {
        self.session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| (s.conn.remote_address(), s.conn.rtt(), s.started_ms))
    }

    /// Whether a session is live.
    pub fn has_session(&self) -> bool {
        self.session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

/// The sites of one loaded shard.
#[derive(Debug)]
struct LoadedShard {
    /// The membership epoch whose ownership the state was read under.
    epoch: u64,
    sites: HashMap<String, Arc<Site>>,
}

/// What a shard load read from the central clusters: per site, state per cluster.
pub type ShardContents = HashMap<String, Vec<SiteCluster>>;

/// All sites of the loaded shards.
#[derive(Debug)]
pub struct Registry {
    shards: u32,
    clusters: usize,
    max_index_entries: usize,
    site_queue_bytes: u32,
    loaded: Mutex<HashMap<Shard, LoadedShard>>,
    changed: watch::Sender<u64>,
}

impl Registry {
    /// An empty registry of `shards` shards over `clusters` clusters.
    pub fn new(shards: u32, clusters: usize, max_index_entries: usize) -> Self {
        Self {
            shards,
            clusters,
            max_index_entries,
            site_queue_bytes: u32::MAX,
            loaded: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
        }
    }

    /// Gives every site of this registry a budget of `bytes` in the writers' queues.
    pub fn with_site_queue_bytes(mut self, bytes: u32) -> Self {
        self.site_queue_bytes = bytes;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Shard, LoadedShard>> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shard of a site.
    pub fn shard_of(&self, site: &str) -> Shard {
        shard_of(site, self.shards)
    }

    /// Installs what a load read for `shard` under membership `epoch`, replacing older state;
    /// returns the sites it replaced (their sessions must end: they resumed from old state).
    pub fn install(&self, shard: Shard, epoch: u64, contents: ShardContents) -> Vec<Arc<Site>> {
        let sites = contents
            .into_iter()
            .map(|(alias, clusters)| {
                let site = Arc::new(
                    Site::new(&alias, shard, clusters).with_queue_budget(self.site_queue_bytes),
                );
                site.validate(epoch);
                (alias, site)
            })
            .collect();
        let old = self.lock().insert(shard, LoadedShard { epoch, sites });
        self.changed.send_modify(|n| *n += 1);
        let old: Vec<Arc<Site>> = old
            .map(|o| o.sites.into_values().collect())
            .unwrap_or_default();
        old.iter().for_each(|s| s.retire());
        old
    }

    /// Marks a loaded shard's state as current under membership `epoch` (it was checked to
    /// be unchanged since it was loaded).
    pub fn revalidate(&self, shard: Shard, epoch: u64) {
        if let Some(l) = self.lock().get_mut(&shard) {
            l.epoch = l.epoch.max(epoch);
            l.sites.values().for_each(|s| s.validate(epoch));
        }
    }

    /// Whether a loaded shard holds a site whose state may be behind Kafka's.
    pub fn has_stale_site(&self, shard: Shard) -> bool {
        self.lock()
            .get(&shard)
            .is_some_and(|l| l.sites.values().any(|s| s.is_stale()))
    }

    /// Forgets a shard (it moved to another hub); returns its sites.
    pub fn drop_shard(&self, shard: Shard) -> Vec<Arc<Site>> {
        let gone = self.lock().remove(&shard);
        self.changed.send_modify(|n| *n += 1);
        let gone: Vec<Arc<Site>> = gone
            .map(|s| s.sites.into_values().collect())
            .unwrap_or_default();
        gone.iter().for_each(|s| s.retire());
        gone
    }

    /// Loaded shards with the epoch they were loaded under.
    pub fn loaded(&self) -> HashMap<Shard, u64> {
        self.lock().iter().map(|(s, l)| (*s, l.epoch)).collect()
    }

    /// The site, created empty if its shard is loaded and it has no state yet; `None` while its
    /// shard is not loaded.
    pub fn site(&self, alias: &str) -> Option<Arc<Site>> {
        let shard = self.shard_of(alias);
        let mut loaded = self.lock();
        let l = loaded.get_mut(&shard)?;
        let epoch = l.epoch;
        Some(
            l.sites
                .entry(alias.to_owned())
                .or_insert_with(|| {
                    let clusters = (0..self.clusters)
                        .map(|_| {
                            SiteCluster::new(Vec::new(), OffsetIndex::new(self.max_index_entries))
                        })
                        .collect();
                    let site = Arc::new(
                        Site::new(alias, shard, clusters).with_queue_budget(self.site_queue_bytes),
                    );
                    site.validate(epoch);
                    site
                })
                .clone(),
        )
    }

    /// Waits up to `timeout` for the site's shard to be loaded.
    pub async fn wait_site(&self, alias: &str, timeout: Duration) -> Option<Arc<Site>> {
        let mut changed = self.changed.subscribe();
        let wait = async {
            loop {
                if let Some(s) = self.site(alias) {
                    return s;
                }
                if changed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    /// Every site of the loaded shards.
    pub fn sites(&self) -> Vec<Arc<Site>> {
        self.lock()
            .values()
            .flat_map(|l| l.sites.values().cloned())
            .collect()
    }

    /// Number of sites with a live session.
    pub fn connected(&self) -> usize {
        self.sites().iter().filter(|s| s.has_session()).count()
    }

    /// Shards that must be (re)loaded under `owned` (shard -> epoch held since): owned and not
    /// loaded, loaded before the epoch since which they are held, or holding a stale site.
    pub fn to_load(&self, owned: &std::collections::BTreeMap<Shard, u64>) -> BTreeSet<Shard> {
        let loaded = self.lock();
        owned
            .iter()
            .filter(|(s, since)| {
                loaded.get(s).is_none_or(|l| {
                    l.epoch < **since || l.sites.values().any(|site| site.is_stale())
                })
            })
            .map(|(s, _)| *s)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn contents(site: &str, next: i64) -> ShardContents {
        let p = Position {
            tp: TopicPartition::new("t", 0),
            next_offset: next,
        };
        HashMap::from([(
            site.to_owned(),
            vec![SiteCluster::new(vec![p], OffsetIndex::new(10))],
        )])
    }

    #[test]
    fn a_site_exists_only_while_its_shard_is_loaded() {
        let r = Registry::new(4, 1, 10);
        let shard = r.shard_of("plant-7");
        assert!(r.site("plant-7").is_none());
        r.install(shard, 1, contents("plant-7", 42));
        let s = r.site("plant-7").unwrap();
        assert_eq!(s.positions(|_, _| true)[0].next_offset, 42);
        let fresh = (0..100)
            .map(|i| format!("new-{i}"))
            .find(|a| r.shard_of(a) == shard)
            .unwrap();
        assert!(r.site(&fresh).unwrap().positions(|_, _| true).is_empty());
        assert_eq!(r.drop_shard(shard).len(), 2);
        assert!(r.site("plant-7").is_none());
    }

    #[test]
    fn shards_held_since_after_their_load_are_loaded_again() {
        let r = Registry::new(4, 1, 10);
        r.install(0, 3, ShardContents::new());
        r.install(1, 3, ShardContents::new());
        let owned = BTreeMap::from([(0, 2), (1, 5), (2, 5)]);
        assert_eq!(r.to_load(&owned), BTreeSet::from([1, 2]));
    }

    #[test]
    fn state_read_before_the_shard_was_last_gained_is_not_current() {
        let r = Registry::new(4, 1, 10);
        let shard = r.shard_of("plant-7");
        r.install(shard, 1, contents("plant-7", 42));
        let s = r.site("plant-7").unwrap();
        let held_since = |since| crate::membership::Ownership {
            epoch: 3,
            shards: BTreeMap::from([(shard, since)]),
            rebalancing: false,
        };
        // Held without interruption since the read: current.
        assert!(s.is_current(&held_since(1)));
        // Lost and gained again at epoch 3 (another hub may have written meanwhile).
        assert!(!s.is_current(&held_since(3)));
        assert!(!s.is_current(&crate::membership::Ownership::default()));
        // Found unchanged at epoch 3: current again.
        r.revalidate(shard, 3);
        assert!(s.is_current(&held_since(3)));
        // A site created empty in a loaded shard is as current as the shard's read.
        let fresh = (0..100)
            .map(|i| format!("new-{i}"))
            .find(|a| r.shard_of(a) == shard)
            .unwrap();
        assert!(r.site(&fresh).unwrap().is_current(&held_since(3)));
        // Read again: the old state is retired and never current again.
        r.install(shard, 3, contents("plant-7", 50));
        assert!(!s.is_current(&held_since(3)));
        assert!(r.site("plant-7").unwrap().is_current(&held_since(3)));
    }

    #[tokio::test]
    async fn draining_waits_for_every_batch_and_a_failed_session_refuses_the_rest() {
        let s = Arc::new(Site::new("x", 0, vec![]));
        assert!(s.drained(Duration::from_millis(1)).await);
        s.batch_started();
        s.batch_started();
        assert!(!s.drained(Duration::from_millis(20)).await);
        let s2 = s.clone();
        let t = tokio::spawn(async move { s2.drained(Duration::from_secs(5)).await });
        s.batch_done();
        s.batch_done();
        assert!(t.await.unwrap());
        assert!(!s.session_failed(3));
        s.fail_session(3);
        assert!(s.session_failed(3) && s.session_failed(2) && !s.session_failed(4));
    }
}
