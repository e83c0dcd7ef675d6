//! The link under a running agent changes: its address moves (a NAT rebinding, as an edge
//! gateway's LTE or DHCP address change looks to the hub), or its connection dies and it comes
//! back with a resumed TLS session, saying hello in 0-RTT. Every record still arrives exactly
//! once, in order per partition, and the hub only acts on an early hello in ways a replay
//! could not abuse (see `hub/src/server.rs`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use er_tests::client::{self, NewRecord};
use er_tests::delivery::{self, SeqIn};
use er_tests::kafka::shared;
use er_tests::proxy::{Direction, LinkProxy};
use er_tests::replicator::{AgentSetup, HubSetup, Pki, Proc, tail};
use er_tests::unique_name;

/// Both processes' log tails, for failure messages.
fn logs(hub: &Proc, agent: &Proc) -> String {
    format!(
        "--- hub log ---\n{}\n--- agent log ---\n{}",
        tail(&hub.log_text(), 60),
        tail(&agent.log_text(), 60)
    )
}

/// Produces records `from..to` (value = sequence number) round-robin over `partitions`.
async fn produce(edge: &str, topic: &str, from: usize, to: usize, partitions: i32) {
    let p = client::producer(edge, &[("linger.ms", "5")]).expect("edge producer");
    let recs: Vec<NewRecord> = (from..to)
        .map(|i| {
            NewRecord::new(format!("k{i}"), format!("{i}"))
                .partition((i % partitions as usize) as i32)
        })
        .collect();
    client::send_all(&p, topic, &recs)
        .await
        .expect("producing at the edge");
}

/// Waits until `topic` on `bootstrap` holds at least `count` records (or `timeout` passed), then
/// checks that it holds `0..count` exactly once, in order per partition.
async fn assert_delivered(
    bootstrap: &str,
    topic: &str,
    count: usize,
    partitions: i32,
    timeout: Duration,
    logs: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    let records = loop {
        let got = client::consume_to_end(bootstrap, topic, Duration::from_secs(30))
            .await
            .unwrap_or_default();
        if got.len() >= count || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let got = delivery::seqs_by_partition(&records, SeqIn::Value).expect("sequence numbers");
    delivery::assert_exactly_once_in_order(
        topic,
        &got,
        &delivery::round_robin(count, partitions),
        &logs(),
    );
}

/// An agent replicating `{prefix}-events` (`partitions` partitions) to a fresh hub through a
/// link proxy.
struct Rig {
    _work: tempfile::TempDir,
    _pki: Pki,
    hub: Proc,
    agent: Proc,
    proxy: LinkProxy,
    topic: String,
    remote: String,
}

impl Rig {
    async fn start(prefix: &str, partitions: i32) -> anyhow::Result<Self> {
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
            _work: work,
            _pki: pki,
            hub,
            agent,
            proxy,
            topic,
        })
    }

    fn logs(&self) -> String {
        logs(&self.hub, &self.agent)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agents_address_changes_twice_mid_stream_and_the_session_carries_on()
-> anyhow::Result<()> {
    let k = shared();
    let partitions = 4;
    let rig = Rig::start("addr", partitions).await?;
    let ctl = rig.proxy.control();
    produce(k.edge(), &rig.topic, 0, 2_000, partitions).await;
    assert_delivered(
        k.central(),
        &rig.remote,
        2_000,
        partitions,
        Duration::from_secs(90),
        || rig.logs(),
    )
    .await;
    let first_path = ctl.clients();
    assert_eq!(first_path.len(), 1, "one agent path through the proxy");

    // Records keep flowing while the hub sees the agent move to a new source address, twice.
    let edge = k.edge().to_owned();
    let topic = rig.topic.clone();
    let producer = tokio::spawn(async move {
        for chunk in 0..10 {
            produce(
                &edge,
                &topic,
                2_000 + chunk * 600,
                2_000 + (chunk + 1) * 600,
                partitions,
            )
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(ctl.rebind_nat()?, 1);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(ctl.rebind_nat()?, 1);
    producer.await?;
    assert_delivered(
        k.central(),
        &rig.remote,
        8_000,
        partitions,
        Duration::from_secs(90),
        || rig.logs(),
    )
    .await;

    let moved = ctl.clients();
    assert_ne!(
        moved[0].upstream_local, first_path[0].upstream_local,
        "the hub saw the agent from a new address"
    );
    // QUIC migrated the connection: no reconnect, no second hello.
    let agent_log = rig.agent.log_text();
    assert_eq!(
        agent_log.matches("connected to hub").count(),
        1,
        "the agent reconnected instead of migrating\n{}",
        rig.logs()
    );
    assert_eq!(
        rig.hub.log_text().matches("hello agent_version").count(),
        1,
        "the hub saw a second hello\n{}",
        rig.logs()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_agent_says_hello_in_0rtt_and_falls_back_when_the_hub_forgot_it()
-> anyhow::Result<()> {
    let k = shared();
    let partitions = 2;
    let mut rig = Rig::start("zrtt", partitions).await?;
    let ctl = rig.proxy.control();
    produce(k.edge(), &rig.topic, 0, 1_000, partitions).await;
    assert_delivered(
        k.central(),
        &rig.remote,
        1_000,
        partitions,
        Duration::from_secs(90),
        || rig.logs(),
    )
    .await;

    // The hub hears nothing from the agent for longer than the idle timeout (10 s) and ends the
    // session (parking the site's writers); the agent still hears the hub's last packets, so it
    // does not give up first. When the link heals, its next packet gets a stateless reset and
    // its first reconnect attempt reaches the hub: a resumed session with a 0-RTT hello, which
    // the hub answers in 0.5-RTT from the parked writers.
    ctl.blackhole(Direction::ToServer, true);
    rig.hub
        .wait_for_log("site link lost", Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("{e}\n{}", rig.logs()))?;
    ctl.blackhole(Direction::ToServer, false);
    rig.hub
        .wait_for_log("welcoming site in 0.5-RTT", Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("{e}\n{}", rig.logs()))?;
    produce(k.edge(), &rig.topic, 1_000, 2_000, partitions).await;
    assert_delivered(
        k.central(),
        &rig.remote,
        2_000,
        partitions,
        Duration::from_secs(90),
        || rig.logs(),
    )
    .await;
    assert!(
        rig.agent.log_text().contains("zero_rtt=true"),
        "the agent resumed with 0-RTT\n{}",
        rig.logs()
    );

    // A restarted hub has no memory of the TLS session: it refuses the early data, the agent
    // says hello again on the same connection, and nothing is lost or repeated.
    rig.hub.kill();
    rig.hub.restart()?;
    rig.agent
        .wait_for_log(
            "the hub refused the 0-RTT hello; saying hello again",
            Duration::from_secs(60),
        )
        .map_err(|e| anyhow::anyhow!("{e}\n{}", rig.logs()))?;
    produce(k.edge(), &rig.topic, 2_000, 3_000, partitions).await;
    assert_delivered(
        k.central(),
        &rig.remote,
        3_000,
        partitions,
        Duration::from_secs(120),
        || rig.logs(),
    )
    .await;
    Ok(())
}
