//! The link under a running agent changes: its address moves (a NAT rebinding, as an edge
//! gateway's LTE or DHCP address change looks to the hub), or its connection dies and it comes
//! back with a resumed TLS session, saying hello in 0-RTT. Every record still arrives exactly
//! once, in order per partition, and the hub only acts on an early hello in ways a replay
//! could not abuse (see `hub/src/server.rs`).

use std::time::Duration;

use er_tests::kafka::shared;
use er_tests::proxied::{self, ProxiedSite};
use er_tests::proxy::Direction;

const DELIVERY_WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agents_address_changes_twice_mid_stream_and_the_session_carries_on()
-> anyhow::Result<()> {
    let rig = ProxiedSite::start("addr", 4).await?;
    let ctl = rig.proxy().control();
    rig.produce(0, 2_000).await?;
    rig.assert_delivered(2_000, DELIVERY_WAIT).await;
    let first_path = ctl.clients();
    assert_eq!(first_path.len(), 1, "one agent path through the proxy");

    // Records keep flowing while the hub sees the agent move to a new source address, twice.
    let edge = shared().edge().to_owned();
    let (topic, partitions) = (rig.topic.clone(), rig.partitions);
    let producer = tokio::spawn(async move {
        for chunk in 0..10 {
            let from = 2_000 + chunk * 600;
            proxied::produce(&edge, &topic, from, from + 600, partitions).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        anyhow::Ok(())
    });
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(ctl.rebind_nat()?, 1);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(ctl.rebind_nat()?, 1);
    producer.await??;
    rig.assert_delivered(8_000, DELIVERY_WAIT).await;

    let moved = ctl.clients();
    assert_ne!(
        moved[0].upstream_local, first_path[0].upstream_local,
        "the hub saw the agent from a new address"
    );
    // QUIC migrated the connection: no reconnect, no second hello.
    let agent_log = rig.agent().log_text();
    assert_eq!(
        agent_log.matches("connected to hub").count(),
        1,
        "the agent reconnected instead of migrating\n{}",
        rig.logs()
    );
    assert_eq!(
        rig.hub().log_text().matches("hello agent_version").count(),
        1,
        "the hub saw a second hello\n{}",
        rig.logs()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_agent_says_hello_in_0rtt_and_falls_back_when_the_hub_forgot_it()
-> anyhow::Result<()> {
    let mut rig = ProxiedSite::start("zrtt", 2).await?;
    let ctl = rig.proxy().control();
    rig.produce(0, 1_000).await?;
    rig.assert_delivered(1_000, DELIVERY_WAIT).await;

    // The hub hears nothing from the agent for longer than the idle timeout (10 s) and ends the
    // session (parking the site's writers); the agent still hears the hub's last packets, so it
    // does not give up first. When the link heals, its next packet gets a stateless reset and
    // its first reconnect attempt reaches the hub: a resumed session with a 0-RTT hello, which
    // the hub answers in 0.5-RTT from the parked writers.
    ctl.blackhole(Direction::ToServer, true);
    rig.hub()
        .wait_for_log("site link lost", Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("{e}\n{}", rig.logs()))?;
    ctl.blackhole(Direction::ToServer, false);
    rig.hub()
        .wait_for_log("welcoming site in 0.5-RTT", Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("{e}\n{}", rig.logs()))?;
    rig.produce(1_000, 2_000).await?;
    rig.assert_delivered(2_000, DELIVERY_WAIT).await;
    assert!(
        rig.agent().log_text().contains("zero_rtt=true"),
        "the agent resumed with 0-RTT\n{}",
        rig.logs()
    );

    // A restarted hub has no memory of the TLS session: it refuses the early data, the agent
    // says hello again on the same connection, and nothing is lost or repeated.
    rig.hub_mut().kill();
    rig.hub_mut().restart()?;
    rig.agent()
        .wait_for_log(
            "the hub refused the 0-RTT hello; saying hello again",
            Duration::from_secs(60),
        )
        .map_err(|e| anyhow::anyhow!("{e}\n{}", rig.logs()))?;
    rig.produce(2_000, 3_000).await?;
    rig.assert_delivered(3_000, Duration::from_secs(120)).await;
    Ok(())
}
