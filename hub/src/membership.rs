//! The hub's membership in its group on one central cluster: the shards it owns, the group
//! metadata that fences its transactions (KIP-447), and a gate that lets in-flight transactions
//! finish before shards are revoked.
//!
//! Every hub of a group is a static member (`group.instance.id` = hub id) of the consumer group
//! `<group_id>` subscribed to the shards topic, with the range assignor. The broker's group
//! coordinator decides who owns which shard; a hub never decides it alone. Static membership
//! and the range assignor (which orders static members by instance id) give the same
//! assignment on every cluster for the same set of live hubs, and let a restarted hub rejoin
//! without a rebalance.
//!
//! Fencing: every transaction that writes a shard's data also commits an offset for that
//! shard's partition with this member's group metadata (`send_offsets_to_transaction`). Once
//! the coordinator moved the shard to another hub, such a commit fails and the transaction
//! aborts, so a zombie hub's writes never become visible. The new owner reads the shard's
//! committed offsets with `require_stable` (librdkafka does under `read_committed`), which
//! waits for any transaction of the old owner still pending on that shard, and only then reads
//! the shard's positions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::config::ClusterConfig;
use crate::kafka::{KafkaOpError, client_config};
use crate::shards::Shard;

/// What this hub owns on one cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Increases with every assignment this member receives.
    pub epoch: u64,
    /// Shards assigned to this hub, each with the epoch since which it has been held without
    /// interruption (state loaded before that epoch may be stale: another hub may have
    /// written the shard in between).
    pub shards: BTreeMap<Shard, u64>,
    /// A rebalance is under way: no new transaction starts until the next assignment.
    pub rebalancing: bool,
}

#[derive(Debug, Default)]
struct GateState {
    ownership: Ownership,
    /// Transactions begun and not yet committed or aborted.
    active: usize,
    /// The last revocation lost the assignment (session timed out, fenced): nothing held
    /// before it counts as continuous.
    lost: bool,
}

#[derive(Debug)]
struct Shared {
    cluster: String,
    state: Mutex<GateState>,
    changed: Condvar,
    tx: watch::Sender<Ownership>,
    /// How long a revocation waits for in-flight transactions.
    drain_timeout: Duration,
}

impl Ownership {
    /// Whether `shard` is owned and no rebalance is under way.
    pub fn owns(&self, shard: Shard) -> bool {
        !self.rebalancing && self.shards.contains_key(&shard)
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, st: &GateState) {
        self.tx.send_replace(st.ownership.clone());
        self.changed.notify_all();
    }
}

/// Consumer context that turns rebalances into ownership changes.
struct MemberContext {
    shared: Arc<Shared>,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let sh = &self.shared;
            let lost = consumer.assignment_lost();
            let mut st = sh.lock();
            st.ownership.rebalancing = true;
            st.lost |= lost;
            sh.publish(&st);
            // Let transactions that began under the current generation commit while it is still
            // valid, as Kafka Streams commits before giving partitions up.
            let deadline = Instant::now() + sh.drain_timeout;
            while st.active > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!(cluster = %sh.cluster, active = st.active, "shards revoked while transactions are still in flight; they will be fenced and abort");
                    break;
                }
                st = sh
                    .changed
                    .wait_timeout(st, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            tracing::info!(cluster = %sh.cluster, revoked = tpl.count(), lost, "group rebalance: shards revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let sh = &self.shared;
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned: BTreeSet<Shard> = tpl
                    .elements()
                    .iter()
                    .filter_map(|e| u32::try_from(e.partition()).ok())
                    .collect();
                let mut st = sh.lock();
                let epoch = st.ownership.epoch + 1;
                let previous = std::mem::take(&mut st.ownership.shards);
                let continuous = !std::mem::take(&mut st.lost);
                let mut gained = 0;
                let shards: BTreeMap<Shard, u64> = assigned
                    .into_iter()
                    .map(|s| match previous.get(&s) {
                        Some(&since) if continuous => (s, since),
                        _ => {
                            gained += 1;
                            (s, epoch)
                        }
                    })
                    .collect();
                let lost = previous.keys().filter(|s| !shards.contains_key(s)).count();
                st.ownership.epoch = epoch;
                st.ownership.shards = shards;
                st.ownership.rebalancing = false;
                tracing::info!(cluster = %sh.cluster, epoch = st.ownership.epoch, owned = st.ownership.shards.len(), gained, lost, "group rebalance: shards assigned");
                sh.publish(&st);
            }
            // The held shards stay listed (with `rebalancing` set) until the assignment that
            // follows tells which ones stay.
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(cluster = %sh.cluster, error = %e, "group rebalance error");
            }
        }
    }
}

/// A permit to run one transaction under the current ownership; dropping it ends the
/// transaction's claim (a revocation waits for all permits).
pub struct TxnPermit {
    shared: Arc<Shared>,
    /// Ownership when the permit was taken.
    pub ownership: Ownership,
    /// The member's group metadata (member id, generation) under that ownership: the
    /// transaction's fence. `None` if the consumer has none (not a member).
    pub group: Option<Arc<ConsumerGroupMetadata>>,
}

impl std::fmt::Debug for TxnPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnPermit")
            .field("ownership", &self.ownership)
            .field("member", &self.group.is_some())
            .finish()
    }
}

impl Drop for TxnPermit {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.active -= 1;
        drop(st);
        self.shared.changed.notify_all();
    }
}

/// The hub's group membership on one cluster, polled by a thread of its own.
pub struct Membership {
    /// The group member; replaced by the membership thread when it hits a fatal error.
    consumer: Arc<Mutex<Member>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    shards_topic: String,
    hub_id: String,
    /// Sequence of fence marks (unique per transaction of this process).
    seq: std::sync::atomic::AtomicU64,
    /// The last fence mark this hub committed per shard.
    fences: Mutex<std::collections::HashMap<Shard, String>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("cluster", &self.shared.cluster)
            .finish_non_exhaustive()
    }
}

/// How often the membership thread polls (serves rebalances; heartbeats run in librdkafka's
/// own thread).
const POLL: Duration = Duration::from_millis(100);

/// A rebalance that has not ended after this long (at least; 10 session timeouts if longer)
/// is taken as a member stuck outside the group: it is replaced by a new one.
const REBALANCE_STUCK_MIN: Duration = Duration::from_secs(120);

/// The first wait before a fenced member is replaced; doubles up to `REJOIN_BACKOFF_MAX`
/// while replacements keep being fenced (two hubs configured with one hub id).
const REJOIN_BACKOFF: Duration = Duration::from_secs(1);
const REJOIN_BACKOFF_MAX: Duration = Duration::from_secs(30);

type Member = Arc<BaseConsumer<MemberContext>>;

/// The membership thread: serves rebalances by polling, and replaces the member when
/// librdkafka declares it dead. A static member is fenced for good (a fatal error) when the
/// coordinator believes another process holds its instance id: after a broker restart that
/// lost the member's last join, or when two hubs share one `hub_id`. librdkafka then never
/// rejoins on its own, and without a replacement this hub would sit "rebalancing" forever,
/// owning nothing.
fn member_loop(
    shared: &Shared,
    slot: &Mutex<Member>,
    stop: &AtomicBool,
    stuck_after: Duration,
    make: impl Fn() -> Result<Member, KafkaOpError>,
) {
    let mut backoff = REJOIN_BACKOFF;
    let mut rebalancing_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let member = slot.lock().unwrap_or_else(PoisonError::into_inner).clone();
        // The shards topic holds no records: poll serves rebalances and errors.
        if let Some(Err(e)) = member.poll(POLL) {
            tracing::warn!(cluster = %shared.cluster, error = %e, "group member");
        }
        let rebalancing = shared.lock().ownership.rebalancing;
        let since = match (rebalancing, rebalancing_since) {
            (false, _) => {
                rebalancing_since = None;
                if backoff > REJOIN_BACKOFF && member.assignment().is_ok_and(|a| a.count() > 0) {
                    backoff = REJOIN_BACKOFF;
                }
                None
            }
            (true, None) => {
                rebalancing_since = Some(Instant::now());
                None
            }
            (true, Some(t)) => Some(t),
        };
        let fatal = member.client().fatal_error();
        let stuck = since.filter(|t| t.elapsed() >= stuck_after);
        if fatal.is_none() && stuck.is_none() {
            continue;
        }
        match &fatal {
            Some((code, reason)) => tracing::error!(
                cluster = %shared.cluster,
                ?code,
                reason = %reason,
                rejoin_in_ms = backoff.as_millis() as u64,
                "the hub's group member was fenced (another process with this hub_id, or a coordinator that lost its last join); it owns nothing until a new member joins"
            ),
            None => tracing::error!(
                cluster = %shared.cluster,
                stuck_s = stuck_after.as_secs(),
                "a group rebalance did not end; replacing the group member"
            ),
        }
        drop(member);
        if replace_member(shared, slot, stop, backoff, &make) {
            rebalancing_since = None;
        }
        if fatal.is_some() {
            backoff = (backoff * 2).min(REJOIN_BACKOFF_MAX);
        }
    }
}

/// Gives up the shards, waits `backoff` and puts a new member in `slot`; whether it could.
fn replace_member(
    shared: &Shared,
    slot: &Mutex<Member>,
    stop: &AtomicBool,
    backoff: Duration,
    make: impl Fn() -> Result<Member, KafkaOpError>,
) -> bool {
    {
        // Nothing held counts as continuous: another hub may own the shards meanwhile.
        let mut st = shared.lock();
        st.ownership.rebalancing = true;
        st.lost = true;
        shared.publish(&st);
    }
    let wait_until = Instant::now() + backoff;
    while Instant::now() < wait_until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL);
    }
    match make() {
        Ok(new) => {
            tracing::info!(cluster = %shared.cluster, "a new group member joins");
            let old = std::mem::replace(
                &mut *slot.lock().unwrap_or_else(PoisonError::into_inner),
                new,
            );
            // Closed outside the lock: closing may serve a last revocation.
            drop(old);
            true
        }
        Err(e) => {
            tracing::error!(cluster = %shared.cluster, error = %e, "cannot create a new group member; retrying");
            false
        }
    }
}

/// A group member of `group` on `cluster`, static member `hub_id`, subscribed to `topic`.
fn new_member(
    config: &ClusterConfig,
    group: &str,
    hub_id: &str,
    topic: &str,
    session_timeout: Duration,
    shared: &Arc<Shared>,
) -> Result<Member, KafkaOpError> {
    let err = |what: &str| KafkaOpError::kafka(&config.alias, what);
    let consumer: BaseConsumer<MemberContext> = client_config(config)
        .set("group.id", group)
        .set("group.instance.id", hub_id)
        .set("partition.assignment.strategy", "range")
        .set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (session_timeout.as_millis() / 5).max(500).to_string(),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // require_stable on offset fetches (see the module doc).
        .set("isolation.level", "read_committed")
        .create_with_context(MemberContext {
            shared: shared.clone(),
        })
        .map_err(err("creating the group member"))?;
    consumer
        .subscribe(&[topic])
        .map_err(err("subscribing to the shards topic"))?;
    Ok(Arc::new(consumer))
}

impl Membership {
    /// Joins `group` on `cluster` as static member `hub_id`, subscribed to `shards_topic`.
    pub fn join(
        cluster: &ClusterConfig,
        group: &str,
        hub_id: &str,
        shards_topic: &str,
        session_timeout: Duration,
    ) -> Result<Self, KafkaOpError> {
        let (tx, _) = watch::channel(Ownership::default());
        let shared = Arc::new(Shared {
            cluster: cluster.alias.clone(),
            state: Mutex::new(GateState::default()),
            changed: Condvar::new(),
            tx,
            drain_timeout: session_timeout / 2,
        });
        let make = {
            let (config, group, hub_id, topic) = (
                cluster.clone(),
                group.to_owned(),
                hub_id.to_owned(),
                shards_topic.to_owned(),
            );
            let shared = shared.clone();
            move || new_member(&config, &group, &hub_id, &topic, session_timeout, &shared)
        };
        let consumer = Arc::new(Mutex::new(make()?));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (consumer, stop, shared) = (consumer.clone(), stop.clone(), shared.clone());
            let name = format!("member-{}", cluster.alias);
            let stuck_after = (session_timeout * 10).max(REBALANCE_STUCK_MIN);
            std::thread::Builder::new()
                .name(name)
                .spawn(move || member_loop(&shared, &consumer, &stop, stuck_after, make))
                .expect("spawning the membership thread")
        };
        Ok(Self {
            consumer,
            shared,
            stop,
            thread: Some(thread),
            shards_topic: shards_topic.to_owned(),
            // Unique per process start, so a restarted hub never matches its former self.
            hub_id: format!("{hub_id}@{}", crate::metrics::now_ms()),
            seq: std::sync::atomic::AtomicU64::new(0),
            fences: Mutex::new(std::collections::HashMap::new()),
        })
    }

    fn member(&self) -> Member {
        self.consumer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current ownership.
    pub fn ownership(&self) -> Ownership {
        self.shared.lock().ownership.clone()
    }

    /// Changes of ownership, for the async side.
    pub fn watch(&self) -> watch::Receiver<Ownership> {
        self.shared.tx.subscribe()
    }

    /// Whether `shard` is owned right now (and no rebalance is under way).
    pub fn owns(&self, shard: Shard) -> bool {
        self.shared.lock().ownership.owns(shard)
    }

    /// Waits (up to `timeout`) until no rebalance is under way, then returns a permit for one
    /// transaction with the ownership it runs under. Blocking.
    pub fn begin(&self, timeout: Duration) -> Option<TxnPermit> {
        let deadline = Instant::now() + timeout;
        loop {
            let epoch = self.wait_settled(deadline)?;
            // Asked without holding the gate's lock (a rebalance callback may hold
            // librdkafka's while it waits for the gate), then kept only if no assignment came
            // in between: the metadata then belongs to the ownership the permit carries.
            let group = self.member().group_metadata().map(Arc::new);
            let mut st = self.shared.lock();
            if st.ownership.rebalancing || st.ownership.epoch != epoch {
                continue;
            }
            st.active += 1;
            return Some(TxnPermit {
                shared: self.shared.clone(),
                ownership: st.ownership.clone(),
                group,
            });
        }
    }

    /// Waits until no rebalance is under way and returns the epoch; `None` at `deadline`.
    fn wait_settled(&self, deadline: Instant) -> Option<u64> {
        let mut st = self.shared.lock();
        while st.ownership.rebalancing || st.ownership.epoch == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Some(st.ownership.epoch)
    }

    /// The offsets to commit in a transaction that carries data of `shards`, and the fence
    /// marks they carry. The shards topic holds no records: the commit is the fence, and its
    /// metadata (`<hub id>:<sequence>`, unique per transaction) tells later who wrote the
    /// shard last.
    pub fn fence_offsets(
        &self,
        shards: impl IntoIterator<Item = Shard>,
    ) -> (TopicPartitionList, Vec<(Shard, String)>) {
        let mut tpl = TopicPartitionList::new();
        let mut marks = Vec::new();
        for s in shards {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let mark = format!("{}:{seq}", self.hub_id);
            // Partition numbers come from `Shard`s below the configured count (<= 4096).
            let mut e = tpl.add_partition(&self.shards_topic, s as i32);
            let _ = e.set_offset(Offset::Offset(0));
            e.set_metadata(mark.clone());
            marks.push((s, mark));
        }
        (tpl, marks)
    }

    /// Records the fence marks of a committed transaction.
    pub fn fences_committed(&self, marks: Vec<(Shard, String)>) {
        let mut f = self.fences.lock().unwrap_or_else(PoisonError::into_inner);
        for (s, m) in marks {
            f.insert(s, m);
        }
    }

    /// Whether `mark` (a shard's committed fence) is the last one this hub committed for it:
    /// then nobody wrote the shard since, and what this hub holds of it is current.
    pub fn is_own_last_fence(&self, shard: Shard, mark: &str) -> bool {
        let f = self.fences.lock().unwrap_or_else(PoisonError::into_inner);
        f.get(&shard).map_or(mark.is_empty(), |m| m == mark)
    }

    /// Waits until no transaction of a previous owner is pending on `shards` (an offset fetch
    /// with require_stable), so that what is read afterwards is final. Blocking.
    pub fn await_stable(
        &self,
        shards: &BTreeSet<Shard>,
        timeout: Duration,
    ) -> Result<BTreeMap<Shard, String>, KafkaOpError> {
        let deadline = Instant::now() + timeout;
        let mut tpl = TopicPartitionList::new();
        for s in shards {
            tpl.add_partition(&self.shards_topic, *s as i32);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .member()
                .committed_offsets(tpl.clone(), left.max(Duration::from_millis(100)))
            {
                Ok(tpl) => {
                    return Ok(tpl
                        .elements()
                        .iter()
                        .map(|e| (e.partition() as Shard, e.metadata().to_owned()))
                        .collect());
                }
                Err(e) if left.is_zero() => {
                    return Err(KafkaOpError::Kafka {
                        cluster: self.shared.cluster.clone(),
                        what: format!("waiting for pending transactions on shards {shards:?}"),
                        source: Box::new(e),
                    });
                }
                Err(KafkaError::OffsetFetch(code)) => {
                    tracing::debug!(cluster = %self.shared.cluster, ?code, "shard offsets not stable yet");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    tracing::debug!(cluster = %self.shared.cluster, error = %e, "shard offsets not readable yet");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
