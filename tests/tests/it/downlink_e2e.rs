//! Central -> edge flows on real brokers: a `[[downlinks]]` topic reaches two sites' edge
//! clusters exactly once, one of them across a link outage, the other across its agent killed
//! mid-flow; the downlinked topic never comes back up; a topic created while the sites are
//! connected is offered and arrives too.

use std::collections::BTreeMap;
use std::time::Duration;

use er_tests::client;
use er_tests::delivery;
use er_tests::kafka::{KafkaNode, shared};
use er_tests::proxy::Direction;
use er_tests::rig::Rig;
use er_tests::unique_name;

use crate::common::{produce_seqs, read_seqs};

const PARTITIONS: i32 = 2;
/// Records per partition before the outage, and again during it.
const PER_PHASE: i64 = 300;
/// Records per partition coming down while site B's agent is killed.
const BURST: i64 = 3_000;

fn expected(until: i64) -> delivery::Seqs {
    (0..PARTITIONS).map(|p| (p, (0..until).collect())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_downlink_topic_reaches_two_sites_exactly_once_across_an_outage_and_a_kill()
-> anyhow::Result<()> {
    let k = shared();
    let edge_b = KafkaNode::start("downlink-edge-b")?;
    let p = unique_name("dl");
    let (site_a, site_b) = (unique_name("site"), unique_name("site"));
    let central_topic = format!("{p}-commands");
    let edge_topic = format!("central.{central_topic}");
    client::create_topic(k.central(), &central_topic, PARTITIONS, &[]).await?;
    let producer = client::producer(k.central(), &[])?;
    for part in 0..PARTITIONS {
        produce_seqs(&producer, &central_topic, part, 0..PER_PHASE, 50).await?;
    }
    // A topic of site A's own at the edge: up-replication goes on next to the downlink. Site
    // A's include also matches the downlinked topic, which its loop guard must keep down.
    let up_topic = format!("{p}-up");
    client::create_topic(k.edge(), &up_topic, 1, &[]).await?;
    let edge_producer = client::producer(k.edge(), &[])?;
    produce_seqs(&edge_producer, &up_topic, 0, 0..100, 10).await?;

    let downlinks = format!(
        "[[downlinks]]\ntopics = \"{p}-.*\"\n\n[downlink]\npoll_interval_ms = 100\nrefresh_interval_ms = 500\n"
    );
    let mut rig = Rig::builder()
        .hub(|h| h.extra.push_str(&downlinks))
        .agent_via_proxy(&site_a, &format!("{p}-.*|central\\..*"), |_| {})
        .agent_with(&site_b, &format!("{p}-nothing"), |a| {
            a.edge = edge_b.bootstrap().to_owned();
        })
        .start()?;

    let timeout = Duration::from_secs(120);
    let total = (PARTITIONS as i64 * PER_PHASE) as usize;
    for (site, edge) in [(&site_a, k.edge()), (&site_b, edge_b.bootstrap())] {
        let got = read_seqs(edge, &edge_topic, total, timeout).await?;
        let what = format!("{edge_topic} at {site}'s edge before the outage");
        delivery::assert_exactly_once_in_order(&what, &got, &expected(PER_PHASE), &rig.logs());
    }

    // Site A's link goes dark; the central topic grows meanwhile and site B keeps up.
    let ctl = rig.proxy(&site_a).control();
    ctl.blackhole(Direction::Both, true);
    rig.agent(&site_a)
        .wait_for_log("link to hub down", Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", rig.logs()))?;
    for part in 0..PARTITIONS {
        produce_seqs(
            &producer,
            &central_topic,
            part,
            PER_PHASE..2 * PER_PHASE,
            50,
        )
        .await?;
    }
    let got = read_seqs(edge_b.bootstrap(), &edge_topic, 2 * total, timeout).await?;
    let what = format!("{edge_topic} at {site_b}'s edge during site A's outage");
    delivery::assert_exactly_once_in_order(&what, &got, &expected(2 * PER_PHASE), &rig.logs());
    ctl.blackhole(Direction::Both, false);

    let got = read_seqs(k.edge(), &edge_topic, 2 * total, timeout).await?;
    let what = format!("{edge_topic} at {site_a}'s edge after the outage");
    delivery::assert_exactly_once_in_order(&what, &got, &expected(2 * PER_PHASE), &rig.logs());

    // Site B's agent is killed while a third phase comes down, and started again.
    let produce = {
        let producer = producer.clone();
        let topic = central_topic.clone();
        tokio::spawn(async move {
            for part in 0..PARTITIONS {
                produce_seqs(
                    &producer,
                    &topic,
                    part,
                    2 * PER_PHASE..2 * PER_PHASE + BURST,
                    50,
                )
                .await?;
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.agent_mut(&site_b).restart()?;
    produce.await??;
    let until = 2 * PER_PHASE + BURST;
    let all = (PARTITIONS as i64 * until) as usize;
    let got = read_seqs(edge_b.bootstrap(), &edge_topic, all, timeout).await?;
    let what = format!("{edge_topic} at {site_b}'s edge after its agent was killed");
    delivery::assert_exactly_once_in_order(&what, &got, &expected(until), &rig.logs());

    // A topic created now is offered to the connected sites and arrives as well.
    let later = format!("{p}-later");
    client::create_topic(k.central(), &later, 1, &[]).await?;
    produce_seqs(&producer, &later, 0, 0..50, 10).await?;
    let got = read_seqs(edge_b.bootstrap(), &format!("central.{later}"), 50, timeout).await?;
    let want: delivery::Seqs = BTreeMap::from([(0, (0..50).collect())]);
    delivery::assert_exactly_once_in_order(&later, &got, &want, &rig.logs());

    // Site A's own topic went up; the downlinked one never did.
    let up = read_seqs(k.central(), &format!("{site_a}.{up_topic}"), 100, timeout).await?;
    let want: delivery::Seqs = BTreeMap::from([(0, (0..100).collect())]);
    delivery::assert_exactly_once_in_order(&up_topic, &up, &want, &rig.logs());
    let looped = format!("{site_a}.{edge_topic}");
    assert!(
        client::partition_ids(k.central(), &looped).await.is_err(),
        "{looped} exists centrally: the downlinked topic went back up\n{}",
        rig.logs()
    );
    let said = rig.agent(&site_a).log_text().lines().any(|l| {
        l.contains("topic not replicated")
            && l.contains(&edge_topic)
            && l.contains("from_destination")
    });
    assert!(
        said,
        "site A's agent says why it does not replicate {edge_topic}\n{}",
        rig.logs()
    );
    client::delete_topics(k.central(), &[&central_topic, &later]).await?;
    client::delete_topics(k.edge(), &[&edge_topic, &up_topic]).await?;
    Ok(())
}
