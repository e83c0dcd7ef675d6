//! Consumer-group failover on real Apache Kafka: an edge group commits at arbitrary offsets, the
//! agent reports them, the hub translates them through its exact offset index into MM2
//! checkpoints, and a consumer on the central cluster starting from the checkpoints reads exactly
//! the remaining kept records: no gap, no replay. Kafka's own `RemoteClusterUtils` must agree.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use er_tests::client::{self, NewRecord, Record};
use er_tests::kafka::shared;
use er_tests::replicator::{bin, example_plugin};
use er_tests::rig::Rig;
use er_tests::unique_name;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// No plugin; group offset sync on.
    Plain,
    /// A filter keeping about 10%, plus a route whose plugin traps on every record.
    Filter,
    /// A rename, with a hub restart before the group commits.
    RenameAcrossHubRestart,
}

const PARTITIONS: i32 = 2;
const TOTAL: usize = 4_000;

fn hot(i: usize) -> bool {
    (i * 7919) % 100 < 10
}

/// Reads `topic` from the given offsets to the end of every partition (read_committed).
fn read_from(bootstrap: &str, topic: &str, from: &BTreeMap<i32, i64>) -> Vec<Record> {
    let c: BaseConsumer = client::config(bootstrap)
        .set("group.id", unique_name("failover-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for (p, o) in from {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut eof = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while eof.len() < from.len() && Instant::now() < deadline {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push(Record {
                topic: m.topic().into(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: Vec::new(),
                timestamp: m.timestamp(),
            }),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// `hub checkpoints` for one group: (destination partition -> (upstream, downstream)).
fn checkpoints_command(
    hub_config: &Path,
    site: &str,
    group: &str,
) -> BTreeMap<(String, i32), (i64, i64)> {
    let out = std::process::Command::new(bin("hub").unwrap())
        .args(["checkpoints", "--config"])
        .arg(hub_config)
        .args(["--site", site, "--group", group])
        .output()
        .unwrap();
    if !out.status.success() {
        return BTreeMap::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                (
                    v["topic"].as_str().unwrap().to_owned(),
                    v["partition"].as_i64().unwrap() as i32,
                ),
                (
                    v["upstream_offset"].as_i64().unwrap(),
                    v["downstream_offset"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

async fn failover(shape: Shape) -> anyhow::Result<()> {
    let k = shared();
    let p = unique_name("ckp");
    let site = unique_name("site");
    let topic = format!("{p}-orders");
    client::create_topic(k.edge(), &topic, PARTITIONS, &[]).await?;
    let now = client::now_ms();
    let recs: Vec<NewRecord> = (0..TOTAL)
        .map(|i| {
            let t = if hot(i) { 35 } else { 20 };
            NewRecord::new(
                format!("k{i}"),
                format!(r#"{{"seq":{i},"temperature":{t}}}"#),
            )
            .partition((i % PARTITIONS as usize) as i32)
            .timestamp(now - 60_000 + i as i64)
        })
        .collect();
    client::send_all(&client::producer(k.edge(), &[])?, &topic, &recs).await?;
    // The edge log as it is: (partition, offset, value).
    let edge = client::consume_all(k.edge(), &topic, TOTAL, Duration::from_secs(60)).await?;
    assert_eq!(edge.len(), TOTAL);
    let seq_of = |r: &Record| -> usize {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        v["seq"].as_u64().unwrap() as usize
    };
    let kept = |r: &Record| shape != Shape::Filter || hot(seq_of(r));
    let dest_topic = match shape {
        Shape::RenameAcrossHubRestart => format!("{site}.{p}-renamed"),
        _ => format!("{site}.{topic}"),
    };

    let mut rig = Rig::builder()
        .site(&site)
        .hub(|h| {
            h.extra = format!(
                "[checkpoints]\ninterval_ms = 500\nsync_group_offsets = {}\n",
                shape == Shape::Plain
            );
        })
        .start()?;
    let hub_config = rig.hub_config();
    let mut agent_setup = rig.agent_setup(&site, &format!("{p}-.*"));
    agent_setup.max_records = 300;
    agent_setup
        .extra
        .push_str("\n[groups]\ninterval_ms = 500\n\n[heartbeats]\ninterval_ms = 300\n");
    match shape {
        Shape::Plain => {}
        Shape::Filter => {
            agent_setup.extra.push_str(&format!(
                "\n[[routes]]\ntopics = [{:?}]\non_error = \"stop\"\n[[routes.plugins]]\npath = {:?}\nconfig = {{ condition = \"temperature > 30\" }}\n",
                topic,
                example_plugin("filter")
            ));
            agent_setup.extra.push_str(&format!(
                "\n[[routes]]\ntopics = [\"{p}-trap\"]\non_error = \"stop\"\n[[routes.plugins]]\npath = {:?}\nconfig = {{ mode = \"panic\" }}\n",
                example_plugin("fixture_hostile")
            ));
            client::create_topic(k.edge(), &format!("{p}-trap"), 1, &[]).await?;
            client::produce(k.edge(), &format!("{p}-trap"), &[NewRecord::new("k", "x")]).await?;
        }
        Shape::RenameAcrossHubRestart => {
            agent_setup.extra.push_str(&format!(
                "\n[[routes]]\ntopics = [{:?}]\non_error = \"stop\"\n[[routes.plugins]]\npath = {:?}\nconfig = {{ \"rule.1\" = \"{topic} => {p}-renamed\" }}\n",
                topic,
                example_plugin("rename")
            ));
        }
    }
    rig.start_agent(&agent_setup)?;

    let want_total = edge.iter().filter(|r| kept(r)).count();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = if client::partition_ids(k.central(), &dest_topic)
            .await
            .is_ok()
        {
            client::consume_to_end(k.central(), &dest_topic, Duration::from_secs(20))
                .await?
                .len()
        } else {
            0
        };
        if n >= want_total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicated {n} of {want_total}\n{}",
            rig.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if shape == Shape::RenameAcrossHubRestart {
        rig.hub.kill();
        rig.hub.restart()?;
        rig.hub.wait_for_log("hub ready", Duration::from_secs(30))?;
    }

    // The edge group stops at arbitrary offsets (with the filter, inside dropped runs).
    let group = format!("{p}-app");
    let commits: BTreeMap<i32, i64> = BTreeMap::from([(0, 1237), (1, 611)]);
    client::commit_group(k.edge(), &group, &topic, &commits);

    // Wait for checkpoints naming exactly those upstream offsets.
    let deadline = Instant::now() + Duration::from_secs(90);
    let checkpoints = loop {
        let c = checkpoints_command(&hub_config, &site, &group);
        let done = (0..PARTITIONS).all(|part| {
            c.get(&(dest_topic.clone(), part))
                .is_some_and(|(up, _)| *up == commits[&part])
        });
        if done {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoints for {group}: {c:?}\n{}",
            rig.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let resume: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|part| (part, checkpoints[&(dest_topic.clone(), part)].1))
        .collect();

    // Fail over: read the central cluster from the translated offsets.
    let central = k.central().to_owned();
    let dt = dest_topic.clone();
    let r2 = resume.clone();
    let got = tokio::task::spawn_blocking(move || read_from(&central, &dt, &r2)).await?;
    for part in 0..PARTITIONS {
        let want: Vec<usize> = edge
            .iter()
            .filter(|r| r.partition == part && r.offset >= commits[&part] && kept(r))
            .map(seq_of)
            .collect();
        let have: Vec<usize> = got
            .iter()
            .filter(|r| r.partition == part)
            .map(seq_of)
            .collect();
        assert_eq!(
            have, want,
            "{shape:?} partition {part}: resuming at {} must read exactly the kept records from edge offset {}",
            resume[&part], commits[&part]
        );
    }

    // Kafka's own RemoteClusterUtils reads the same translation from our checkpoints.
    let site2 = site.clone();
    let group2 = group.clone();
    let central = k.central().to_owned();
    let kafka_says = tokio::task::spawn_blocking(move || {
        er_tests::oracle::translate_offsets(&central, &site2, &group2)
    })
    .await??;
    let ours: BTreeMap<(String, i32), i64> = checkpoints
        .iter()
        .map(|(tp, (_, down))| (tp.clone(), *down))
        .collect();
    assert_eq!(
        kafka_says, ours,
        "RemoteClusterUtils.translateOffsets agrees"
    );

    if shape == Shape::Plain {
        // One-to-one partitions also get MM2 offset syncs at the translated points, readable by
        // Kafka's own OffsetSync class.
        let syncs_topic = format!("mm2-offset-syncs.{site}.internal");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let recs = client::consume_to_end(k.central(), &syncs_topic, Duration::from_secs(10))
                .await
                .unwrap_or_default();
            let syncs: Vec<er_protocol::OffsetSync> = recs
                .iter()
                .map(|r| {
                    er_protocol::OffsetSync::decode(
                        r.key.as_deref().unwrap_or_default(),
                        r.value.as_deref().unwrap_or_default(),
                    )
                    .expect("an MM2 offset sync")
                })
                .collect();
            let all_there = (0..PARTITIONS).all(|part| {
                syncs.iter().any(|s| {
                    s.topic_partition == er_protocol::TopicPartition::new(topic.clone(), part)
                        && s.upstream_offset == commits[&part]
                        && s.downstream_offset == resume[&part]
                })
            });
            if all_there {
                let first = &recs[0];
                let (key, value) = (
                    first.key.clone().unwrap_or_default(),
                    first.value.clone().unwrap_or_default(),
                );
                let decoded = tokio::task::spawn_blocking(move || {
                    er_tests::oracle::decode_offset_sync(&key, &value)
                })
                .await??;
                let ours = er_protocol::OffsetSync::decode(
                    first.key.as_deref().unwrap_or_default(),
                    first.value.as_deref().unwrap_or_default(),
                )?;
                assert_eq!(
                    decoded["topic"],
                    topic.as_str(),
                    "Kafka decodes our offset sync: {decoded}"
                );
                assert_eq!(decoded["partition"], ours.topic_partition.partition);
                assert_eq!(decoded["upstreamOffset"], ours.upstream_offset, "{decoded}");
                assert_eq!(
                    decoded["downstreamOffset"], ours.downstream_offset,
                    "{decoded}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "offset syncs missing: {syncs:?}\n{}",
                rig.logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Group offset sync: the idle central group now sits at the translated offsets.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let c: BaseConsumer = client::config(k.central())
                .set("group.id", &group)
                .create()?;
            let mut ask = TopicPartitionList::new();
            for part in 0..PARTITIONS {
                ask.add_partition(&dest_topic, part);
            }
            let committed = c.committed_offsets(ask, Duration::from_secs(10))?;
            let synced: BTreeMap<i32, i64> = committed
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect();
            if synced == resume {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "central group offsets {synced:?}, want {resume:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    if shape == Shape::Filter {
        // Heartbeats keep arriving while one route drops 90% and another is stopped by a trap.
        let since = client::now_ms();
        assert!(
            rig.agent(&site)
                .log_text()
                .contains("route stopped by a plugin failure"),
            "the trap route stopped\n{}",
            rig.logs()
        );
        let hb_topic = format!("{site}.heartbeats");
        let deadline = Instant::now() + Duration::from_secs(30);
        let fresh = loop {
            let hbs = client::consume_to_end(k.central(), &hb_topic, Duration::from_secs(10))
                .await
                .unwrap_or_default();
            let fresh: Vec<er_protocol::Heartbeat> = hbs
                .iter()
                .map(|r| {
                    er_protocol::Heartbeat::decode(
                        r.key.as_deref().unwrap_or_default(),
                        r.value.as_deref().unwrap_or_default(),
                    )
                    .expect("an MM2 heartbeat")
                })
                .filter(|h| h.timestamp >= since)
                // The edge cluster is shared by every test, so its `heartbeats` topic also carries
                // other sites' heartbeats; only this site's own prove it keeps emitting.
                .filter(|h| h.source_cluster_alias == site)
                .collect();
            if fresh.len() >= 3 {
                break fresh;
            }
            assert!(
                Instant::now() < deadline,
                "heartbeats stopped\n{}",
                rig.logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(
            fresh.iter().all(|h| h.target_cluster_alias == "central"),
            "this site's heartbeats name the central cluster as target: {fresh:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_is_exact_without_plugins_and_syncs_idle_central_groups() -> anyhow::Result<()> {
    failover(Shape::Plain).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_is_exact_when_a_filter_drops_90_percent_and_heartbeats_keep_flowing()
-> anyhow::Result<()> {
    failover(Shape::Filter).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_is_exact_with_a_rename_after_a_hub_restart() -> anyhow::Result<()> {
    failover(Shape::RenameAcrossHubRestart).await
}
