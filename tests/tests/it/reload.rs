//! The agent's configuration reloaded without a restart (SIGHUP): a new topic pattern takes
//! effect, nothing is lost or duplicated across the reload, and an invalid file is refused with
//! the running configuration kept.

use std::time::Duration;

use er_tests::client;
use er_tests::delivery::{self, SeqIn};
use er_tests::kafka::shared;
use er_tests::proxied::produce;
use er_tests::replicator::{Proc, logs};
use er_tests::rig::Rig;
use er_tests::unique_name;

fn hangup(p: &Proc) -> anyhow::Result<()> {
    let pid = p.pid().ok_or_else(|| anyhow::anyhow!("not running"))?;
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill -HUP {pid} failed");
    Ok(())
}

async fn assert_exactly(
    bootstrap: &str,
    topic: &str,
    count: usize,
    procs: &[&Proc],
) -> anyhow::Result<()> {
    let got = client::wait_for_count(bootstrap, topic, count, Duration::from_secs(90)).await;
    delivery::assert_exactly_once_in_order(
        topic,
        &delivery::seqs_by_partition(&got, SeqIn::Value)?,
        &delivery::round_robin(count, 1),
        &logs(procs),
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_the_agents_topics_and_an_invalid_file_is_refused() -> anyhow::Result<()> {
    let k = shared();
    let p = unique_name("reload");
    let site = unique_name("site");
    let (a, b) = (format!("{p}-a"), format!("{p}-b"));
    client::create_topic(k.edge(), &a, 1, &[]).await?;
    client::create_topic(k.edge(), &b, 1, &[]).await?;
    let mut rig = Rig::builder().site(&site).start()?;
    let mut setup = rig.agent_setup(&site, &a);
    setup.extra.push_str("\n[heartbeats]\nenabled = false\n");
    rig.start_agent(&setup)?;
    let agent = rig.agent(&site);
    let config = rig.agent_config(&site);
    let (remote_a, remote_b) = (format!("{site}.{a}"), format!("{site}.{b}"));

    produce(k.edge(), &a, 0, 100, 1).await?;
    produce(k.edge(), &b, 0, 100, 1).await?;
    assert_exactly(k.central(), &remote_a, 100, &rig.procs()).await?;
    assert!(
        !client::list_topics(k.central()).await?.contains(&remote_b),
        "b is not selected yet"
    );

    // Select b as well, and reload.
    setup.include = vec![format!("{p}-(a|b)")];
    std::fs::write(config, setup.toml(rig.pki()))?;
    hangup(agent)?;
    agent.wait_for_log("configuration reloaded", Duration::from_secs(30))?;
    produce(k.edge(), &a, 100, 200, 1).await?;
    assert_exactly(k.central(), &remote_b, 100, &rig.procs()).await?;
    assert_exactly(k.central(), &remote_a, 200, &rig.procs()).await?;

    // An invalid file is refused, naming the field; the agent goes on as it was.
    let good = std::fs::read_to_string(config)?;
    std::fs::write(
        config,
        good.replace("linger_ms = 10", "linger_ms = 10\ncompression = \"lz5\""),
    )?;
    hangup(agent)?;
    agent.wait_for_log("configuration reload refused", Duration::from_secs(30))?;
    let log = agent.log_text();
    let refusal = log
        .lines()
        .find(|l| l.contains("configuration reload refused"))
        .unwrap_or_default();
    assert!(
        refusal.contains("compression"),
        "the refusal names the field: {refusal}"
    );
    produce(k.edge(), &a, 200, 300, 1).await?;
    produce(k.edge(), &b, 100, 150, 1).await?;
    assert_exactly(k.central(), &remote_a, 300, &rig.procs()).await?;
    assert_exactly(k.central(), &remote_b, 150, &rig.procs()).await?;
    assert_eq!(
        log.matches("configuration reloaded").count(),
        1,
        "only the valid file was applied"
    );
    Ok(())
}
