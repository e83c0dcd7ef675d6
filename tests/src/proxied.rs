//! One site replicating through a [`LinkProxy`]: a fresh hub, a fresh site's agent (heartbeats
//! off) reaching the hub through the proxy, and one source topic on the shared clusters. For
//! tests that change the link under a running replicator.

use std::time::Duration;

use crate::client::{self, NewRecord};
use crate::delivery::{self, SeqIn};
use crate::kafka::shared;
use crate::proxy::LinkProxy;
use crate::replicator::Proc;
use crate::rig::Rig;
use crate::unique_name;

/// A hub, an agent behind a link proxy, and the topic `{prefix}-…-events` they replicate.
#[derive(Debug)]
pub struct ProxiedSite {
    /// Hub, agent and proxy (the agent's and the proxy's: under [`ProxiedSite::site`]).
    pub rig: Rig,
    /// The site.
    pub site: String,
    /// The source topic on the edge cluster.
    pub topic: String,
    /// Its replica on the central cluster.
    pub remote: String,
    /// Partitions of the source topic.
    pub partitions: i32,
}

impl ProxiedSite {
    /// Creates the topic and starts hub, proxy and agent.
    pub async fn start(prefix: &str, partitions: i32) -> anyhow::Result<Self> {
        let k = shared();
        let p = unique_name(prefix);
        let site = unique_name("site");
        let topic = format!("{p}-events");
        client::create_topic(k.edge(), &topic, partitions, &[]).await?;
        let rig = Rig::builder()
            .agent_via_proxy(&site, &format!("{p}-.*"), |a| {
                a.extra.push_str("\n[heartbeats]\nenabled = false\n");
            })
            .start()?;
        Ok(Self {
            remote: format!("{site}.{topic}"),
            rig,
            site,
            topic,
            partitions,
        })
    }

    /// The hub.
    pub fn hub(&self) -> &Proc {
        &self.rig.hub
    }

    /// The hub, to kill or restart it.
    pub fn hub_mut(&mut self) -> &mut Proc {
        &mut self.rig.hub
    }

    /// The agent.
    pub fn agent(&self) -> &Proc {
        self.rig.agent(&self.site)
    }

    /// The agent, to kill or restart it.
    pub fn agent_mut(&mut self) -> &mut Proc {
        self.rig.agent_mut(&self.site)
    }

    /// The link between them.
    pub fn proxy(&self) -> &LinkProxy {
        self.rig.proxy(&self.site)
    }

    /// Both processes' log digests, for failure messages.
    pub fn logs(&self) -> String {
        self.rig.logs()
    }

    /// Produces records `from..to` at the edge, value = sequence number, sequence `i` on
    /// partition `i % partitions`.
    pub async fn produce(&self, from: usize, to: usize) -> anyhow::Result<()> {
        produce(shared().edge(), &self.topic, from, to, self.partitions).await
    }

    /// Waits until the replica holds at least `count` records (or `timeout` passed) and then
    /// [`client::SETTLE`], so a late duplicate is counted, then asserts it holds sequences
    /// `0..count` exactly once, in order per partition.
    pub async fn assert_delivered(&self, count: usize, timeout: Duration) {
        let records =
            client::wait_for_count(shared().central(), &self.remote, count, timeout).await;
        let got = delivery::seqs_by_partition(&records, SeqIn::Value)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()));
        delivery::assert_exactly_once_in_order(
            &self.remote,
            &got,
            &delivery::round_robin(count, self.partitions),
            &self.logs(),
        );
    }
}

/// Produces records `from..to` to `topic` on `edge` (see [`ProxiedSite::produce`]); for
/// producing from a task that does not hold the site.
pub async fn produce(
    edge: &str,
    topic: &str,
    from: usize,
    to: usize,
    partitions: i32,
) -> anyhow::Result<()> {
    let p = client::producer(edge, &[("linger.ms", "5")])?;
    let recs: Vec<NewRecord> = (from..to)
        .map(|i| {
            NewRecord::new(format!("k{i}"), format!("{i}"))
                .partition((i % partitions as usize) as i32)
        })
        .collect();
    client::send_all(&p, topic, &recs).await?;
    Ok(())
}
