//! One site replicating through a [`LinkProxy`]: a fresh hub, a fresh site's agent (heartbeats
//! off) reaching the hub through the proxy, and one source topic on the shared clusters. For
//! tests that change the link under a running replicator.

use std::net::SocketAddr;
use std::time::Duration;

use crate::client::{self, NewRecord};
use crate::delivery::{self, SeqIn};
use crate::kafka::shared;
use crate::proxy::LinkProxy;
use crate::replicator::{AgentSetup, HubSetup, Pki, Proc, digest};
use crate::unique_name;

/// A hub, an agent behind a link proxy, and the topic `{prefix}-…-events` they replicate.
#[derive(Debug)]
pub struct ProxiedSite {
    /// The hub (its log: [`Proc::log_text`]).
    pub hub: Proc,
    /// The agent.
    pub agent: Proc,
    /// The link between them.
    pub proxy: LinkProxy,
    /// The source topic on the edge cluster.
    pub topic: String,
    /// Its replica on the central cluster.
    pub remote: String,
    /// Partitions of the source topic.
    pub partitions: i32,
    _pki: Pki,
    _work: tempfile::TempDir,
}

impl ProxiedSite {
    /// Creates the topic and starts hub, proxy and agent.
    pub async fn start(prefix: &str, partitions: i32) -> anyhow::Result<Self> {
        let k = shared();
        let p = unique_name(prefix);
        let site = unique_name("site");
        let pki = Pki::new(&[&site])?;
        let work = tempfile::tempdir()?;
        let topic = format!("{p}-events");
        client::create_topic(k.edge(), &topic, partitions, &[]).await?;
        let hub_setup = HubSetup::new(k.central())?;
        let hub = hub_setup.start(&pki, work.path())?;
        let proxy = LinkProxy::start(SocketAddr::from(([127, 0, 0, 1], hub_setup.port)))?;
        let mut agent_setup = AgentSetup::new(
            &site,
            k.edge(),
            proxy.local_addr().port(),
            &format!("{p}-.*"),
        );
        agent_setup
            .extra
            .push_str("\n[heartbeats]\nenabled = false\n");
        let agent = agent_setup.start(&pki, work.path())?;
        Ok(Self {
            remote: format!("{site}.{topic}"),
            hub,
            agent,
            proxy,
            topic,
            partitions,
            _pki: pki,
            _work: work,
        })
    }

    /// Both processes' log tails, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- hub log ---\n{}\n--- agent log ---\n{}",
            digest(&self.hub.log_text(), 60),
            digest(&self.agent.log_text(), 60)
        )
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
