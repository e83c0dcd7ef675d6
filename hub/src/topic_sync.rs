//! Remote topics shaped after the edge's: created at discovery with the source's partition
//! count and configs, grown when the edge grows, and kept in step with the configs the
//! agents report (as MM2's `sync.topic.configs.*`), by incremental alter only.
//!
//! A site's reports are untrusted: the session has checked names and counts against the
//! site's limits, only configs `topic_sync.include` lists (and `exclude` does not) are kept,
//! and a site's reports are applied at most once per `topic_sync.min_interval_ms`, merged in
//! between, so the memory and the admin requests a site can cause are bounded.
//!
//! The same worker creates the ACL bindings [`crate::acl_sync`] admitted, at the same pace:
//! each binding once per hub process (creating one that exists is no error, so a restarted
//! hub creates them again harmlessly), at most `acl_sync.max_per_site` remembered per site.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::Regex;
use tokio::sync::mpsc;

use crate::kafka::{KafkaOpError, TopicManager};

/// Longest config value the hub syncs; longer ones are left out (every value a synced key
/// takes is a number or a short word).
pub const MAX_SYNCED_VALUE_BYTES: usize = 1024;

/// Reports waiting for the syncer, over all sites; more are dropped (the agent sends its
/// topics again at its next discovery change, and every few minutes).
const QUEUE: usize = 1024;

/// Which topic configs follow the edge.
#[derive(Debug)]
pub struct ConfigFilter {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
}

impl ConfigFilter {
    /// A filter keeping what matches one of `include` and none of `exclude` (whole names).
    pub fn new(include: Vec<Regex>, exclude: Vec<Regex>) -> Self {
        Self { include, exclude }
    }

    /// Whether config `name` follows the edge.
    pub fn syncs(&self, name: &str) -> bool {
        self.include.iter().any(|r| r.is_match(name))
            && !self.exclude.iter().any(|r| r.is_match(name))
    }
}

/// What a site wants of one remote topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Index of the central cluster.
    pub cluster: usize,
    /// The remote topic.
    pub topic: String,
    /// The source's partition count.
    pub partitions: i32,
    /// Configs it should have: the edge's synced ones, then the cluster's `topic_configs`.
    pub configs: BTreeMap<String, String>,
}

/// The configs of an edge topic that follow it, with the cluster's overrides on top.
pub fn wanted_configs(
    filter: &ConfigFilter,
    edge: &[(String, String)],
    overrides: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = edge
        .iter()
        .filter(|(k, v)| filter.syncs(k) && v.len() <= MAX_SYNCED_VALUE_BYTES)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// One change of an incremental alter (defined with the call that applies it).
pub use er_kafka_admin::ConfigOp;

/// A config of a remote topic as the central cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// Config name.
    pub name: String,
    /// Its value, if the broker tells it.
    pub value: Option<String>,
    /// Whether the value is set on the topic itself (not a broker default).
    pub on_topic: bool,
}

/// The changes that bring a remote topic from `current` to `wanted`: a wanted config whose
/// value differs is set; a synced config set on the topic that the edge no longer sets (and
/// no override names) is deleted, as MM2 does. Configs neither synced nor wanted are left
/// alone, so an operator's own settings stay.
pub fn config_ops(
    filter: &ConfigFilter,
    wanted: &BTreeMap<String, String>,
    current: &[Current],
) -> Vec<ConfigOp> {
    let now: HashMap<&str, &Current> = current.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut ops: Vec<ConfigOp> = wanted
        .iter()
        .filter(|(k, v)| {
            now.get(k.as_str())
                .is_none_or(|c| c.value.as_deref() != Some(v))
        })
        .map(|(k, v)| ConfigOp::Set(k.clone(), v.clone()))
        .collect();
    ops.extend(
        current
            .iter()
            .filter(|c| c.on_topic && filter.syncs(&c.name) && !wanted.contains_key(&c.name))
            .map(|c| ConfigOp::Delete(c.name.clone())),
    );
    ops
}

/// One site's report of its topics, checked by its session.
#[derive(Debug)]
pub struct SiteTopics {
    /// The site.
    pub site: String,
    /// Its topics; each replaces what was pending for the same remote topic.
    pub topics: Vec<Wanted>,
}

/// ACL bindings a site's report asks for, admitted by [`crate::acl_sync::admit`].
#[derive(Debug)]
pub struct SiteAcls {
    /// The site.
    pub site: String,
    /// The bindings to create.
    pub grants: Vec<crate::acl_sync::Grant>,
}

/// What the syncer is handed.
#[derive(Debug)]
enum Report {
    Topics(SiteTopics),
    Acls(SiteAcls),
}

/// The hub's handle to its topic syncer.
#[derive(Debug, Clone)]
pub struct TopicSync {
    tx: mpsc::Sender<Report>,
}

impl TopicSync {
    /// Starts the syncer on `rt`: it applies each site's reports to the
    /// clusters of `managers`, at most once per `min_interval` per site.
    pub fn start(
        rt: &tokio::runtime::Handle,
        managers: Vec<Arc<TopicManager>>,
        filter: Arc<ConfigFilter>,
        min_interval: Duration,
        max_acls_per_site: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        rt.spawn(run(managers, filter, min_interval, max_acls_per_site, rx));
        Self { tx }
    }

    /// Hands a site's report on; `false` when the queue is full (the report is dropped).
    pub fn report(&self, topics: SiteTopics) -> bool {
        self.tx.try_send(Report::Topics(topics)).is_ok()
    }

    /// Hands a site's admitted ACL bindings on; `false` when the queue is full (dropped: the
    /// agent reports them again).
    pub fn report_acls(&self, acls: SiteAcls) -> bool {
        self.tx.try_send(Report::Acls(acls)).is_ok()
    }
}

/// A site's ACL bindings waiting, and those created by this process.
#[derive(Debug, Default)]
struct SiteAclState {
    pending: BTreeSet<crate::acl_sync::Grant>,
    created: HashSet<crate::acl_sync::Grant>,
}

async fn run(
    managers: Vec<Arc<TopicManager>>,
    filter: Arc<ConfigFilter>,
    min_interval: Duration,
    max_acls_per_site: usize,
    mut rx: mpsc::Receiver<Report>,
) {
    let mut syncer = Syncer {
        managers,
        filter,
        min_interval,
        max_acls_per_site,
        pending: HashMap::new(),
        acls: HashMap::new(),
        last: HashMap::new(),
        last_acls: HashMap::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                None => return,
                Some(report) => syncer.take(report),
            },
            _ = tick.tick() => {
                syncer.sync_topics().await;
                syncer.sync_acls().await;
                syncer.forget_old();
            }
        }
    }
}

/// The syncer's state: the latest wanted topics and ACLs of each site, and when each site was
/// last synced (a site is synced at most once per `min_interval`).
struct Syncer {
    managers: Vec<Arc<TopicManager>>,
    filter: Arc<ConfigFilter>,
    min_interval: Duration,
    max_acls_per_site: usize,
    pending: HashMap<String, HashMap<(usize, String), Wanted>>,
    acls: HashMap<String, SiteAclState>,
    last: HashMap<String, Instant>,
    /// ACLs keep their own pace: a site reporting topics often must not starve its ACLs.
    last_acls: HashMap<String, Instant>,
}

impl Syncer {
    /// Keeps a report until its site is due (a newer report of a topic replaces the older).
    fn take(&mut self, report: Report) {
        match report {
            Report::Topics(report) => {
                let site = self.pending.entry(report.site).or_default();
                for w in report.topics {
                    site.insert((w.cluster, w.topic.clone()), w);
                }
            }
            Report::Acls(report) => {
                let site = self.acls.entry(report.site).or_default();
                for g in report.grants {
                    if site.pending.len() + site.created.len() >= self.max_acls_per_site {
                        break;
                    }
                    if !site.created.contains(&g) {
                        site.pending.insert(g);
                    }
                }
            }
        }
    }

    /// Creates, grows and configures the topics of every site that is due.
    async fn sync_topics(&mut self) {
        let min_interval = self.min_interval;
        let due: Vec<String> = self
            .pending
            .keys()
            .filter(|s| {
                self.last
                    .get(*s)
                    .is_none_or(|t| t.elapsed() >= min_interval)
            })
            .cloned()
            .collect();
        for site in due {
            let Some(topics) = self.pending.remove(&site) else {
                continue;
            };
            self.last.insert(site.clone(), Instant::now());
            let managers = self.managers.clone();
            let filter = self.filter.clone();
            let rt = tokio::runtime::Handle::current();
            let s = site.clone();
            let res = tokio::task::spawn_blocking(move || {
                apply(&rt, &managers, &filter, &s, topics.into_values().collect())
            })
            .await;
            if let Err(e) = res {
                tracing::error!(site, error = %e, "topic sync panicked");
            }
        }
    }

    /// Creates the pending ACL bindings of every site that is due.
    async fn sync_acls(&mut self) {
        let min_interval = self.min_interval;
        let due: Vec<String> = self
            .acls
            .iter()
            .filter(|(s, a)| {
                !a.pending.is_empty()
                    && self
                        .last_acls
                        .get(*s)
                        .is_none_or(|t| t.elapsed() >= min_interval)
            })
            .map(|(s, _)| s.clone())
            .collect();
        for site in due {
            let Some(state) = self.acls.get_mut(&site) else {
                continue;
            };
            let grants: Vec<_> = std::mem::take(&mut state.pending).into_iter().collect();
            self.last_acls.insert(site.clone(), Instant::now());
            let managers = self.managers.clone();
            let s = site.clone();
            let created = tokio::task::spawn_blocking(move || create_acls(&managers, &s, grants))
                .await
                .unwrap_or_default();
            state.created.extend(created);
        }
    }

    /// Forgets when sites were synced once that no longer holds them back.
    fn forget_old(&mut self) {
        let min_interval = self.min_interval;
        self.last.retain(|_, t| t.elapsed() < min_interval);
        self.last_acls.retain(|_, t| t.elapsed() < min_interval);
    }
}

/// Creates one site's admitted ACL bindings, per cluster; returns those created. Blocking.
fn create_acls(
    managers: &[Arc<TopicManager>],
    site: &str,
    grants: Vec<crate::acl_sync::Grant>,
) -> Vec<crate::acl_sync::Grant> {
    let mut by_cluster: BTreeMap<usize, Vec<crate::acl_sync::Grant>> = BTreeMap::new();
    for g in grants {
        by_cluster.entry(g.cluster).or_default().push(g);
    }
    let mut created = Vec::new();
    for (cluster, grants) in by_cluster {
        let Some(tm) = managers.get(cluster) else {
            continue;
        };
        let bindings: Vec<_> = grants.iter().map(|g| g.acl.clone()).collect();
        match tm.create_topic_acls(&bindings) {
            Ok(results) => {
                let mut n = 0;
                for (g, res) in grants.into_iter().zip(results) {
                    match res {
                        Ok(()) => {
                            n += 1;
                            created.push(g);
                        }
                        Err(e) => {
                            tracing::warn!(site, cluster = tm.alias(), acl = %g.acl, error = %e, "the central cluster refused an ACL binding; the agent's next report tries again");
                        }
                    }
                }
                crate::events::TopicAclsCreated {
                    site,
                    cluster: tm.alias(),
                    bindings: n,
                }
                .emit();
            }
            Err(e) => {
                tracing::warn!(site, cluster = tm.alias(), error = %e, "cannot create remote topic ACLs; the agent's next report tries again");
            }
        }
    }
    created
}

/// Creates, grows and configures one site's remote topics. Blocking.
fn apply(
    rt: &tokio::runtime::Handle,
    managers: &[Arc<TopicManager>],
    filter: &ConfigFilter,
    site: &str,
    topics: Vec<Wanted>,
) {
    let mut by_cluster: BTreeMap<usize, Vec<Wanted>> = BTreeMap::new();
    for w in topics {
        by_cluster.entry(w.cluster).or_default().push(w);
    }
    for (cluster, wanted) in by_cluster {
        let Some(tm) = managers.get(cluster) else {
            continue;
        };
        if let Err(e) = apply_on(rt, tm, filter, site, &wanted) {
            tracing::warn!(site, cluster = tm.alias(), error = %e, "topic sync failed; the agent's next report tries again");
        }
    }
}

fn apply_on(
    rt: &tokio::runtime::Handle,
    tm: &TopicManager,
    filter: &ConfigFilter,
    site: &str,
    wanted: &[Wanted],
) -> Result<(), KafkaOpError> {
    let existed = tm.create_or_grow(rt, wanted)?;
    crate::events::TopicsCreated {
        site,
        cluster: tm.alias(),
        created: wanted.len().saturating_sub(existed.len()),
    }
    .emit();
    if existed.is_empty() {
        return Ok(());
    }
    let current = tm.describe_topic_configs(rt, &existed)?;
    let mut changes = Vec::new();
    for w in wanted.iter().filter(|w| existed.contains(&w.topic)) {
        let Some(now) = current.get(&w.topic) else {
            continue;
        };
        let ops = config_ops(filter, &w.configs, now);
        if !ops.is_empty() {
            changes.push((w.topic.clone(), ops));
        }
    }
    if changes.is_empty() {
        return Ok(());
    }
    for (topic, res) in tm.incremental_alter_topic_configs(&changes)? {
        let ops = changes
            .iter()
            .find(|(t, _)| *t == topic)
            .map(|(_, o)| o.as_slice())
            .unwrap_or_default();
        match res {
            Ok(()) => crate::events::TopicConfigsChanged {
                site,
                cluster: tm.alias(),
                topic: &topic,
                changes: ops,
            }
            .emit(),
            Err(e) => {
                tracing::warn!(site, cluster = tm.alias(), topic, changes = ?ops, error = %e, "the central cluster refused the remote topic's configs");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> ConfigFilter {
        let re = |p: &str| crate::config::whole_match(p).unwrap();
        ConfigFilter::new(
            vec![re("cleanup\\.policy"), re("retention\\.(ms|bytes)")],
            vec![re("retention\\.bytes")],
        )
    }

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_included_configs_follow_the_edge_and_overrides_win() {
        let edge = [
            ("cleanup.policy", "compact"),
            ("retention.ms", "1000"),
            ("retention.bytes", "5"),
            ("segment.bytes", "1024"),
            ("cleanup.policy.x", "y"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let long = [(
            "retention.ms".to_string(),
            "9".repeat(MAX_SYNCED_VALUE_BYTES + 1),
        )];
        assert_eq!(
            wanted_configs(&filter(), &edge, &map(&[("retention.ms", "86400000")])),
            map(&[("cleanup.policy", "compact"), ("retention.ms", "86400000")])
        );
        assert!(wanted_configs(&filter(), &long, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn ops_set_what_differs_and_delete_only_synced_topic_overrides() {
        let cur = |name: &str, value: &str, on_topic| Current {
            name: name.into(),
            value: Some(value.into()),
            on_topic,
        };
        let current = [
            cur("cleanup.policy", "delete", false),
            cur("retention.ms", "604800000", true),
            cur("retention.bytes", "100", true),
            cur("segment.bytes", "1024", true),
        ];
        // The edge compacts and no longer sets retention.ms: set the one, delete the other;
        // an excluded and an unsynced topic override stay.
        assert_eq!(
            config_ops(&filter(), &map(&[("cleanup.policy", "compact")]), &current),
            vec![
                ConfigOp::Set("cleanup.policy".into(), "compact".into()),
                ConfigOp::Delete("retention.ms".into()),
            ]
        );
        // In step: nothing to do.
        assert!(
            config_ops(
                &filter(),
                &map(&[("cleanup.policy", "delete"), ("retention.ms", "604800000")]),
                &current
            )
            .is_empty()
        );
    }
}
