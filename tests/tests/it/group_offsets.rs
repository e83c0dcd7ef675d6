//! Group offset sync on the real central cluster, at the er-hub library level: one client (like
//! the checkpointer's end-offset client) reads and alters any number of groups through the Admin
//! API; a group only moves forward, and a group with an active member is left alone and reported.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use er_hub::checkpoints::{GroupSync, sync_group};
use er_hub::group_offsets;
use er_protocol::TopicPartition;
use er_tests::kafka::shared;
use er_tests::{client, unique_name};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A client like the hub's end-offset client: it never joins the groups it syncs.
fn hub_client(bootstrap: &str) -> Result<BaseConsumer> {
    client::config(bootstrap)
        .set("group.id", "er-hub-ends")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the sync client")
}

fn targets(topic: &str, offsets: &[(i32, i64)]) -> BTreeMap<TopicPartition, i64> {
    offsets
        .iter()
        .map(|&(p, o)| (TopicPartition::new(topic, p), o))
        .collect()
}

/// The group's committed offsets as an independent reader sees them: a consumer of the group
/// that never joins it (`None` where there is none).
fn committed_by_consumer(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<BTreeMap<i32, Option<i64>>> {
    let c: BaseConsumer = client::config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut ask = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        ask.add_partition(topic, p);
    }
    let got = c.committed_offsets(ask, TIMEOUT)?;
    Ok(got
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw().filter(|o| *o >= 0)))
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_group_moves_forward_and_never_back() -> Result<()> {
    let k = shared();
    let topic = unique_name("groupsync");
    client::create_topic(k.central(), &topic, 2, &[]).await?;
    let group = unique_name("idle-group");
    let hub = hub_client(k.central())?;

    let current = group_offsets::committed(
        hub.client(),
        &group,
        &targets(&topic, &[(0, 0), (1, 0)])
            .into_keys()
            .collect::<Vec<_>>(),
        TIMEOUT,
    )?;
    ensure!(
        current.values().all(|r| *r == Ok(None)),
        "a new group has no offsets: {current:?}"
    );

    let s = sync_group(
        hub.client(),
        &group,
        &targets(&topic, &[(0, 5), (1, 7)]),
        TIMEOUT,
    )?;
    ensure!(
        s == GroupSync {
            committed: 2,
            ..GroupSync::default()
        },
        "{s:?}"
    );
    let read = committed_by_consumer(k.central(), &group, &topic, 2)?;
    ensure!(
        read == BTreeMap::from([(0, Some(5)), (1, Some(7))]),
        "after the first sync: {read:?}"
    );

    // p0's target is behind what the group has: it stays; p1 moves on.
    let s = sync_group(
        hub.client(),
        &group,
        &targets(&topic, &[(0, 3), (1, 9)]),
        TIMEOUT,
    )?;
    ensure!(
        s.committed == 1 && !s.active && s.failed.is_empty(),
        "{s:?}"
    );
    let read = committed_by_consumer(k.central(), &group, &topic, 2)?;
    ensure!(
        read == BTreeMap::from([(0, Some(5)), (1, Some(9))]),
        "a target behind the group moved it back: {read:?}"
    );

    // Nothing ahead: no alteration at all.
    let s = sync_group(
        hub.client(),
        &group,
        &targets(&topic, &[(0, 5), (1, 9)]),
        TIMEOUT,
    )?;
    ensure!(s == GroupSync::default(), "{s:?}");

    // The same client serves another group (no client per group).
    let other = unique_name("idle-group");
    let s = sync_group(hub.client(), &other, &targets(&topic, &[(0, 1)]), TIMEOUT)?;
    ensure!(s.committed == 1, "{s:?}");
    let read = committed_by_consumer(k.central(), &other, &topic, 1)?;
    ensure!(read == BTreeMap::from([(0, Some(1))]), "{read:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_with_an_active_member_is_left_alone_and_reported() -> Result<()> {
    let k = shared();
    let topic = unique_name("groupsync-active");
    client::create_topic(k.central(), &topic, 1, &[]).await?;
    let group = unique_name("live-group");
    let hub = hub_client(k.central())?;
    let s = sync_group(hub.client(), &group, &targets(&topic, &[(0, 2)]), TIMEOUT)?;
    ensure!(s.committed == 1, "while empty: {s:?}");

    // A live consumer of the group on the central cluster.
    let member: BaseConsumer = client::config(k.central())
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "10000")
        .create()?;
    member.subscribe(&[&topic])?;
    let started = Instant::now();
    while member.assignment()?.count() == 0 {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the member got no assignment"
        );
        if let Some(Err(e)) = member.poll(Duration::from_millis(100)) {
            anyhow::bail!("member poll: {e}");
        }
    }

    let s = sync_group(hub.client(), &group, &targets(&topic, &[(0, 10)]), TIMEOUT)?;
    ensure!(
        s == GroupSync {
            active: true,
            ..GroupSync::default()
        },
        "an active group must be refused and reported, not failed: {s:?}"
    );
    let read = committed_by_consumer(k.central(), &group, &topic, 1)?;
    ensure!(
        read == BTreeMap::from([(0, Some(2))]),
        "the live group moved: {read:?}"
    );

    // Once the member left, the group is empty again and moves.
    member.unsubscribe();
    drop(member);
    let started = Instant::now();
    loop {
        let s = sync_group(hub.client(), &group, &targets(&topic, &[(0, 10)]), TIMEOUT)?;
        if s.committed == 1 {
            break;
        }
        ensure!(s.active, "{s:?}");
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the group stayed active after its member left"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let read = committed_by_consumer(k.central(), &group, &topic, 1)?;
    ensure!(read == BTreeMap::from([(0, Some(10))]), "{read:?}");
    Ok(())
}

/// The checkpointer's and the shard reader's end offsets come from one ListOffsets request per
/// leader for any number of partitions: the high watermark for a read_uncommitted client, the
/// last stable offset (below a transaction still open) for a read_committed one; a partition
/// the cluster does not have is left out instead of failing the others.
#[tokio::test(flavor = "multi_thread")]
async fn end_offsets_of_many_partitions_in_one_ask_honour_the_isolation_level() -> Result<()> {
    let k = shared();
    let topic = unique_name("ends");
    client::create_topic(k.central(), &topic, 3, &[]).await?;
    let rec = |p: i32| client::NewRecord::new("k", "v").partition(p);
    client::produce(k.central(), &topic, &[rec(0), rec(0), rec(1)]).await?;
    // Two more records on partition 2 inside a transaction left open.
    let open = client::transactional_producer(k.central(), &unique_name("ends-tx")).await?;
    open.begin_transaction()?;
    client::send_all(&open, &topic, &[rec(2), rec(2)]).await?;

    let reader = |isolation: &str| -> Result<BaseConsumer> {
        client::config(k.central())
            .set("group.id", "er-hub-ends")
            .set("isolation.level", isolation)
            .set("enable.auto.commit", "false")
            .create()
            .context("creating an end-offset client")
    };
    let ask = [
        (topic.as_str(), 0),
        (topic.as_str(), 1),
        (topic.as_str(), 2),
        (topic.as_str(), 7),
    ];
    let ends = |isolation: &str| -> Result<BTreeMap<(String, i32), i64>> {
        let client = reader(isolation)?;
        Ok(er_hub::kafka::end_offsets(&client, ask, TIMEOUT)?
            .into_iter()
            .collect())
    };
    let key = |p: i32| (topic.clone(), p);
    let want_uncommitted = BTreeMap::from([(key(0), 2), (key(1), 1), (key(2), 2)]);
    let want_committed = BTreeMap::from([(key(0), 2), (key(1), 1), (key(2), 0)]);
    let uncommitted = ends("read_uncommitted")?;
    let committed = ends("read_committed")?;
    let open2 = open.clone();
    tokio::task::spawn_blocking(move || open2.abort_transaction(TIMEOUT)).await??;
    ensure!(
        uncommitted == want_uncommitted,
        "read_uncommitted ends: {uncommitted:?}, want {want_uncommitted:?}"
    );
    ensure!(
        committed == want_committed,
        "read_committed ends (last stable offsets): {committed:?}, want {want_committed:?}"
    );
    Ok(())
}
