//! End to end on real Apache Kafka: edge broker -> edge-agent -> QUIC/mTLS -> hub -> central broker.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use er_tests::client::{self, NewRecord, Record};
use er_tests::kafka::shared;
use er_tests::replicator::{AgentSetup, Cluster, HubSetup, Pki, Proc, logs, tail};
use er_tests::rig::Rig;
use er_tests::unique_name;

type Rec = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
    i64,
);

fn ts(r: &Record) -> i64 {
    match r.timestamp {
        rdkafka::Timestamp::CreateTime(t) | rdkafka::Timestamp::LogAppendTime(t) => t,
        rdkafka::Timestamp::NotAvailable => -1,
    }
}

/// A record exercising every edge case of the byte-exact contract.
fn varied_record(i: usize, partitions: i32, base_ts: i64) -> NewRecord {
    let key = match i % 10 {
        0 => None,
        1 => Some(Vec::new()),
        _ => Some(format!("key-{i}").into_bytes()),
    };
    let value = match i % 13 {
        0 => None,
        1 => Some(Vec::new()),
        _ => Some(format!("value-{i}-{}", "x".repeat(i % 200)).into_bytes()),
    };
    let mut r = NewRecord {
        key,
        value,
        headers: Vec::new(),
        timestamp: Some(base_ts + i as i64),
        partition: Some((i % partitions as usize) as i32),
    };
    if !i.is_multiple_of(7) {
        r = r
            .header("h", Some(i.to_string().as_bytes()))
            .header("h", None)
            .header("empty", Some(b""));
    }
    r
}

fn by_partition(records: &[Record]) -> BTreeMap<i32, Vec<Rec>> {
    let mut m: BTreeMap<i32, Vec<Rec>> = BTreeMap::new();
    for r in records {
        m.entry(r.partition).or_default().push((
            r.key.clone(),
            r.value.clone(),
            r.headers.clone(),
            ts(r),
        ));
    }
    m
}

fn expected_by_partition(records: &[NewRecord]) -> BTreeMap<i32, Vec<Rec>> {
    let mut m: BTreeMap<i32, Vec<Rec>> = BTreeMap::new();
    for r in records {
        m.entry(r.partition.expect("explicit partition"))
            .or_default()
            .push((
                r.key.clone(),
                r.value.clone(),
                r.headers.clone(),
                r.timestamp.expect("explicit timestamp"),
            ));
    }
    m
}

/// Waits until `topic` exists on `bootstrap`; on timeout fails with the processes' logs.
async fn wait_for_topic(bootstrap: &str, topic: &str, procs: &[&Proc]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if client::list_topics(bootstrap)
            .await?
            .iter()
            .any(|t| t == topic)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!(
        "topic {topic} never appeared on {bootstrap}\n{}",
        logs(procs)
    )
}

/// Waits for `topic` on `bootstrap`, then reads `n` committed records of it (or what came in time).
async fn consume_remote(
    bootstrap: &str,
    topic: &str,
    n: usize,
    procs: &[&Proc],
) -> anyhow::Result<Vec<Record>> {
    wait_for_topic(bootstrap, topic, procs).await?;
    client::consume_all(bootstrap, topic, n, Duration::from_secs(90)).await
}

/// A site alias legal for certificates and topic prefixes.
fn site_name(prefix: &str) -> String {
    unique_name(prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicates_100k_records_byte_exact_and_in_order() -> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("bulk");
    let site = site_name("site");
    // Recent timestamps: older ones would fall to the broker's time-based retention.
    let base_ts = client::now_ms() - 3_600_000;
    let topics: Vec<String> = (0..3).map(|i| format!("{prefix}-t{i}")).collect();
    let mut expected = BTreeMap::new();
    let producer = client::producer(k.edge(), &[])?;
    for (n, t) in topics.iter().enumerate() {
        client::create_topic(k.edge(), t, 4, &[]).await?;
        let count = if n == 0 { 33_334 } else { 33_333 };
        let recs: Vec<NewRecord> = (0..count).map(|i| varied_record(i, 4, base_ts)).collect();
        client::send_all(&producer, t, &recs).await?;
        expected.insert(t.clone(), expected_by_partition(&recs));
    }

    let mut rig = Rig::builder().site(&site).start()?;
    let started = Instant::now();
    rig.start_agent(&rig.agent_setup(&site, &format!("{prefix}-.*")))?;

    for t in &topics {
        let want: usize = expected[t].values().map(Vec::len).sum();
        let remote = format!("{site}.{t}");
        wait_for_topic(k.central(), &remote, &rig.procs()).await?;
        let got = client::consume_all(k.central(), &remote, want, Duration::from_secs(180)).await?;
        assert_eq!(
            got.len(),
            want,
            "{remote}: got {} of {want} records\n{}",
            got.len(),
            rig.logs()
        );
        let got = by_partition(&got);
        for (p, want) in &expected[t] {
            let have = got.get(p).map(Vec::as_slice).unwrap_or(&[]);
            assert_eq!(have.len(), want.len(), "{remote}/{p}: count");
            for (i, (h, w)) in have.iter().zip(want).enumerate() {
                assert_eq!(h, w, "{remote}/{p}: record #{i} differs");
            }
        }
    }
    // Without the settle period each topic's read went on for after its last record.
    let elapsed = started
        .elapsed()
        .saturating_sub(client::SETTLE * topics.len() as u32);
    eprintln!(
        "replicated 100,000 records in {:.2} s ({:.0} records/s, debug build, including startup)",
        elapsed.as_secs_f64(),
        100_000.0 / elapsed.as_secs_f64()
    );
    assert_eq!(
        rig.agent_mut(&site).stop().map(|s| s.success()),
        Some(true),
        "agent exits cleanly on SIGTERM"
    );
    assert_eq!(
        rig.hub.stop().map(|s| s.success()),
        Some(true),
        "hub exits cleanly on SIGTERM"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_agent_and_hub_mid_stream_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("kill");
    let site = site_name("site");
    let topic = format!("{prefix}-events");
    let remote = format!("{site}.{topic}");
    client::create_topic(k.edge(), &topic, 4, &[]).await?;
    const TOTAL: usize = 40_000;

    // Produce in the background so the kills land while records are flowing.
    let edge = k.edge().to_owned();
    let t2 = topic.clone();
    let producing = tokio::spawn(async move {
        let p = client::producer(&edge, &[])?;
        for chunk in 0..40 {
            let recs: Vec<NewRecord> = (chunk * 1000..(chunk + 1) * 1000)
                .map(|i| NewRecord::new(format!("k{i}"), format!("{i:08}")).partition(i % 4))
                .collect();
            client::send_all(&p, &t2, &recs).await?;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        anyhow::Ok(())
    });

    let mut rig = Rig::builder()
        .agent_with(&site, &format!("{prefix}-.*"), |a| a.max_records = 300)
        .start()?;

    let wait_for = |n: usize| {
        let central = k.central().to_owned();
        let remote = remote.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let got = client::consume(
                    &central,
                    &remote,
                    client::Isolation::ReadCommitted,
                    client::Until::End,
                    Duration::from_secs(10),
                )
                .await
                .map(|v| v.len())
                .unwrap_or(0);
                if got >= n || Instant::now() > deadline {
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let seen = wait_for(4_000).await;
    assert!(
        seen >= 4_000,
        "no progress before the agent kill\n{}",
        rig.logs()
    );
    rig.agent_mut(&site).kill();
    rig.agent_mut(&site).restart()?;
    let seen = wait_for(seen + 4_000).await;
    rig.hub.kill();
    rig.hub.restart()?;
    rig.hub.wait_for_log("hub ready", Duration::from_secs(30))?;
    let _ = wait_for(seen + 4_000).await;
    producing.await??;

    let got = client::consume_all(k.central(), &remote, TOTAL, Duration::from_secs(180)).await?;
    let values: Vec<usize> = got
        .iter()
        .map(|r| {
            std::str::from_utf8(r.value.as_deref().unwrap_or_default())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let unique: HashSet<usize> = values.iter().copied().collect();
    assert_eq!(
        unique.len(),
        values.len(),
        "duplicates in the central cluster\n{}",
        rig.logs()
    );
    assert_eq!(
        unique,
        (0..TOTAL).collect(),
        "missing records\n{}",
        rig.logs()
    );
    for p in 0..4 {
        let seq: Vec<usize> = got
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| {
                std::str::from_utf8(r.value.as_deref().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "partition {p} out of order"
        );
    }
    assert!(rig.agent(&site).log_text().contains("welcomed by hub"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topic_created_after_start_is_replicated_within_the_refresh_interval() -> anyhow::Result<()>
{
    let k = shared();
    let prefix = unique_name("late");
    let site = site_name("site");
    let first = format!("{prefix}-first");
    client::create_topic(k.edge(), &first, 1, &[]).await?;
    client::produce(k.edge(), &first, &[NewRecord::new("a", "1")]).await?;
    let rig = Rig::builder()
        .agent_with(&site, &format!("{prefix}-.*"), |a| {
            a.refresh_interval_ms = 1_000
        })
        .start()?;
    let got = consume_remote(k.central(), &format!("{site}.{first}"), 1, &rig.procs()).await?;
    assert_eq!(got.len(), 1, "first topic not replicated\n{}", rig.logs());

    let late = format!("{prefix}-late");
    client::create_topic(k.edge(), &late, 2, &[]).await?;
    let created = Instant::now();
    let recs: Vec<NewRecord> = (0..10)
        .map(|i| NewRecord::new(format!("{i}"), "v").partition(i % 2))
        .collect();
    client::produce(k.edge(), &late, &recs).await?;
    let got = consume_remote(k.central(), &format!("{site}.{late}"), 10, &rig.procs()).await?;
    // The read went on for the settle period after the tenth record (duplicates would count).
    let took = created.elapsed().saturating_sub(client::SETTLE);
    eprintln!(
        "late topic replicated {:.2} s after creation (refresh interval 1 s)",
        took.as_secs_f64()
    );
    assert_eq!(got.len(), 10, "late topic not replicated\n{}", rig.logs());
    // One refresh interval plus the remote topic creation and a transaction on a busy machine.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_land_in_the_cluster_they_name_and_nowhere_else() -> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("route");
    let site = site_name("site");
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    for t in [&a, &b] {
        client::create_topic(k.edge(), t, 2, &[]).await?;
        let recs: Vec<NewRecord> = (0..100)
            .map(|i| NewRecord::new(format!("{i}"), t.as_str()).partition(i % 2))
            .collect();
        client::produce(k.edge(), t, &recs).await?;
    }
    let rig = Rig::builder()
        .hub(|h| {
            h.clusters.push(Cluster {
                alias: "central2".into(),
                bootstrap: k.central2().to_owned(),
            });
            h.routes.push((format!("{prefix}-b"), "central2".into()));
        })
        .agent(&site, &format!("{prefix}-.*"))
        .start()?;

    let (ra, rb) = (format!("{site}.{a}"), format!("{site}.{b}"));
    let got_a = consume_remote(k.central(), &ra, 100, &rig.procs()).await?;
    let got_b = consume_remote(k.central2(), &rb, 100, &rig.procs()).await?;
    assert_eq!((got_a.len(), got_b.len()), (100, 100), "{}", rig.logs());
    let central = client::list_topics(k.central()).await?;
    let central2 = client::list_topics(k.central2()).await?;
    assert!(
        central.contains(&ra) && !central.contains(&rb),
        "central has {central:?}"
    );
    assert!(
        central2.contains(&rb) && !central2.contains(&ra),
        "central2 has {central2:?}"
    );
    Ok(())
}

/// Loop prevention (MM2's `ReplicationPolicy` cycle check): an edge topic whose name says it
/// came from the destination cluster (`central.x`) or from this very site (`<site>.x`) is never
/// replicated, so a two-way flow cannot ping-pong; a topic from another source
/// (`other.x`) is, as `<site>.other.x`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topics_that_came_from_the_destination_or_the_site_itself_are_never_replicated()
-> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("loops");
    let site = site_name("site");
    let plain = format!("{prefix}-plain");
    let hop = format!("other.{prefix}-hop");
    let back = format!("central.{prefix}-back");
    let echo = format!("{site}.{prefix}-echo");
    for t in [&plain, &hop, &back, &echo] {
        client::create_topic(k.edge(), t, 1, &[]).await?;
        let recs: Vec<NewRecord> = (0..10)
            .map(|i| NewRecord::new(format!("{i}"), t.as_str()))
            .collect();
        client::produce(k.edge(), t, &recs).await?;
    }
    let rig = Rig::builder()
        .agent(&site, &format!(".*{prefix}-.*"))
        .start()?;
    let agent = rig.agent(&site);

    for t in [&plain, &hop] {
        let remote = format!("{site}.{t}");
        let got = consume_remote(k.central(), &remote, 10, &rig.procs()).await?;
        assert_eq!(got.len(), 10, "{remote}\n{}", rig.logs());
    }
    // Discovery saw all four topics at once; the two that would loop were left out, each
    // logged with its reason.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(agent.log_text().contains(&back) && agent.log_text().contains(&echo)) {
        assert!(
            Instant::now() < deadline,
            "no word of the skipped topics\n{}",
            rig.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = agent.log_text();
    for (t, reason) in [(&back, "from_destination"), (&echo, "from_site")] {
        assert!(
            log.lines().any(|l| l.contains("topic not replicated")
                && l.contains(t.as_str())
                && l.contains(reason)),
            "{t}: {reason}\n{}",
            rig.logs()
        );
    }
    // Two more discovery rounds, and still nothing of them centrally.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let central = client::list_topics(k.central()).await?;
    for t in [&back, &echo] {
        let remote = format!("{site}.{t}");
        assert!(!central.contains(&remote), "{remote} was replicated");
    }
    Ok(())
}

/// This site's heartbeats in `topic` on the cluster at `bootstrap`, stamped `since` or later.
async fn heartbeats_of(
    bootstrap: &str,
    topic: &str,
    site: &str,
    since: i64,
) -> Vec<(er_protocol::Heartbeat, i64)> {
    let records = client::consume_to_end(bootstrap, topic, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    records
        .iter()
        .filter_map(|r| {
            let h = er_protocol::Heartbeat::decode(r.key.as_deref()?, r.value.as_deref()?).ok()?;
            Some((h, ts(r)))
        })
        .filter(|(h, _)| h.source_cluster_alias == site && h.timestamp >= since)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeats_reach_every_cluster_the_site_writes_to() -> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("hbflows");
    let site = site_name("site");
    let b = format!("{prefix}-b");
    client::create_topic(k.edge(), &b, 1, &[]).await?;
    client::produce(k.edge(), &b, &[NewRecord::new("k", "v")]).await?;
    let mut rig = Rig::builder()
        .site(&site)
        .hub(|h| {
            h.clusters.push(Cluster {
                alias: "central2".into(),
                bootstrap: k.central2().to_owned(),
            });
            h.routes.push((b.clone(), "central2".into()));
        })
        .start()?;
    let since = client::now_ms();
    let mut setup = rig.agent_setup(&site, &format!("{prefix}-.*"));
    setup.extra.push_str("\n[heartbeats]\ninterval_ms = 300\n");
    rig.start_agent(&setup)?;

    // The heartbeats topic routes to `central` (the default): there it is replicated; on
    // `central2`, where the site's other topic goes, the hub writes heartbeats naming it.
    let hb = format!("{site}.heartbeats");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (primary, relayed) = loop {
        let primary = heartbeats_of(k.central(), &hb, &site, since).await;
        let relayed = heartbeats_of(k.central2(), &hb, &site, since).await;
        let stamps: HashSet<i64> = relayed.iter().map(|(h, _)| h.timestamp).collect();
        if primary.len() >= 3 && stamps.len() >= 3 {
            break (primary, relayed);
        }
        assert!(
            Instant::now() < deadline,
            "central has {} and central2 {} heartbeats of the site\n{}",
            primary.len(),
            relayed.len(),
            rig.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        primary
            .iter()
            .all(|(h, _)| h.target_cluster_alias == "central"),
        "{primary:?}"
    );
    assert!(
        relayed
            .iter()
            .all(|(h, ts)| h.target_cluster_alias == "central2" && *ts == h.timestamp),
        "relayed heartbeats name central2 and carry the heartbeat's time: {relayed:?}"
    );
    // Never ahead of what the primary committed: the newest relayed, read first, is at most
    // the newest replicated, read after.
    let newest = |hbs: Vec<(er_protocol::Heartbeat, i64)>| {
        hbs.iter().map(|(h, _)| h.timestamp).max().unwrap_or(0)
    };
    let relayed_now = newest(heartbeats_of(k.central2(), &hb, &site, since).await);
    let primary_now = newest(heartbeats_of(k.central(), &hb, &site, since).await);
    assert!(
        relayed_now <= primary_now,
        "relayed {relayed_now} is ahead of the primary's {primary_now}"
    );
    let config = client::topic_configs(k.central2(), &hb).await?;
    assert_eq!(
        config.get("cleanup.policy").map(String::as_str),
        Some("compact"),
        "as MM2's heartbeats topics"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_without_a_certificate_of_our_ca_are_refused_and_nothing_is_written()
-> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("authz");
    let site = site_name("site");
    let rogue = Pki::new(&[&site])?;
    let topic = format!("{prefix}-secret");
    client::create_topic(k.edge(), &topic, 1, &[]).await?;
    client::produce(k.edge(), &topic, &[NewRecord::new("k", "v")]).await?;
    let mut rig = Rig::builder().site(&site).start()?;

    // Same site name, same hub CA to trust, but a client certificate from another CA.
    let rogue_dir = tempfile::tempdir()?;
    for f in [format!("{site}.pem"), format!("{site}.key")] {
        std::fs::copy(rogue.file(&f), rogue_dir.path().join(&f))?;
    }
    std::fs::copy(rig.pki().file("ca.pem"), rogue_dir.path().join("ca.pem"))?;
    let mixed = Pki::from_dir(rogue_dir);
    rig.start_agent_with_pki(&rig.agent_setup(&site, &format!("{prefix}-.*")), &mixed)?;
    rig.hub
        .wait_for_log("refused connection", Duration::from_secs(30))?;

    // No client certificate at all.
    let (endpoint, client_cfg) = er_net::client_endpoint_without_cert(
        "127.0.0.1:0".parse()?,
        &rig.pki().file("ca.pem"),
        &er_net::TransportTuning::default(),
    )?;
    let conn = endpoint
        .connect_with(
            client_cfg,
            format!("127.0.0.1:{}", rig.hub_setup().port).parse()?,
            "localhost",
        )?
        .await;
    let refused_without_cert = match conn {
        Err(_) => true,
        // With TLS 1.3 the client may finish before the server checks; the server then closes.
        Ok(c) => tokio::time::timeout(Duration::from_secs(10), c.accept_uni())
            .await
            .is_ok_and(|r| r.is_err()),
    };
    assert!(
        refused_without_cert,
        "a client without certificate got a usable connection"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = rig.hub.log_text();
    assert!(
        log.matches("refused connection").count() >= 2,
        "hub log:\n{}",
        tail(&log, 30)
    );
    assert!(
        !log.contains("welcoming site"),
        "hub welcomed a refused client:\n{log}"
    );
    let topics = client::list_topics(k.central()).await?;
    assert!(
        !topics.iter().any(|t| t.contains(&site)),
        "something was written for the refused site: {topics:?}\n{}",
        rig.logs()
    );
    Ok(())
}

/// Runs a binary on a config text and returns (exit success, stderr).
fn run_with_config(
    bin: &str,
    text: &str,
    dir: &std::path::Path,
) -> anyhow::Result<(bool, String, String)> {
    let path = dir.join(format!("{}.toml", unique_name("cfg")));
    std::fs::write(&path, text)?;
    let out = std::process::Command::new(er_tests::replicator::bin(bin)?)
        .args(["--config", path.to_str().unwrap()])
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    ))
}

#[test]
fn bad_configs_exit_non_zero_naming_the_file_and_the_field() -> anyhow::Result<()> {
    let pki = Pki::new(&["site1"])?;
    let dir = tempfile::tempdir()?;
    let good_agent = AgentSetup::new("site1", "127.0.0.1:9", 4433, "orders.*").toml(&pki);
    let good_hub = HubSetup::new("127.0.0.1:9")?.toml(&pki);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "edge-agent",
            good_agent.replace("[kafka]\n", "[kafka]\nbogus_field = 1\n"),
            "bogus_field",
        ),
        (
            "edge-agent",
            good_agent.replace("site1.pem", "missing.pem"),
            "hub.cert",
        ),
        (
            "edge-agent",
            good_agent.replace("orders.*", "orders(["),
            "topics.include[0]",
        ),
        (
            "edge-agent",
            good_agent.replace("127.0.0.1:4433", "hub.example.com"),
            "hub.address",
        ),
        (
            "edge-agent",
            good_agent.replace("127.0.0.1:4433", "hub.example.com:notaport"),
            "hub.address",
        ),
        (
            "hub",
            good_hub.replace("[tls]\n", "[tls]\nextra = true\n"),
            "extra",
        ),
        ("hub", good_hub.replace("ca.pem", "nope.pem"), "tls.ca_cert"),
        (
            "hub",
            good_hub.replace("listen = \"127.0.0.1:", "listen = \"localhost:"),
            "listen",
        ),
        (
            "hub",
            format!("{good_hub}[[routes]]\ntopics = \"x\"\ncluster = \"nowhere\"\n"),
            "routes[0].cluster",
        ),
    ];
    for (bin, text, field) in cases {
        let (ok, stderr, path) = run_with_config(bin, &text, dir.path())?;
        assert!(!ok, "{bin} accepted a bad config ({field})");
        assert!(
            stderr.contains(&path),
            "{bin}: error does not name the file {path}: {stderr}"
        );
        assert!(
            stderr.contains(field),
            "{bin}: error does not name {field:?}: {stderr}"
        );
    }
    // And the good ones pass check-config.
    for (bin, text) in [("edge-agent", &good_agent), ("hub", &good_hub)] {
        let path = dir.path().join(format!("{bin}-good.toml"));
        std::fs::write(&path, text)?;
        let out = std::process::Command::new(er_tests::replicator::bin(bin)?)
            .args(["check-config", path.to_str().unwrap()])
            .output()?;
        assert!(
            out.status.success(),
            "{bin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sites_on_one_hub_each_write_only_their_own_namespace() -> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("multi");
    let (s1, s2) = (site_name("north"), site_name("south"));
    // Both sites have a topic of the same name; each has its own records.
    let topic = format!("{prefix}-orders");
    client::create_topic(k.edge(), &topic, 2, &[]).await?;
    let recs: Vec<NewRecord> = (0..200)
        .map(|i| NewRecord::new(format!("{i}"), format!("{i}")).partition(i % 2))
        .collect();
    client::produce(k.edge(), &topic, &recs).await?;
    let include = format!("{prefix}-.*");
    let rig = Rig::builder()
        .agent(&s1, &include)
        .agent(&s2, &include)
        .start()?;
    for s in [&s1, &s2] {
        let got = consume_remote(k.central(), &format!("{s}.{topic}"), 200, &rig.procs()).await?;
        assert_eq!(got.len(), 200, "{s}\n{}", rig.logs());
    }
    let topics = client::list_topics(k.central()).await?;
    let ours: Vec<&String> = topics.iter().filter(|t| t.contains(&prefix)).collect();
    assert_eq!(ours.len(), 2, "only the two site namespaces: {ours:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_too_large_for_central_goes_to_the_dead_letter_topic_and_the_rest_flows()
-> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("poison");
    let site = site_name("poison");
    // The edge topic takes 4 MiB records; the central default (1 MB) does not.
    let topic = format!("{prefix}-big");
    client::create_topic(k.edge(), &topic, 2, &[("max.message.bytes", "4194304")]).await?;
    let mut recs: Vec<NewRecord> = (0..40)
        .map(|i| NewRecord::new(format!("{i}"), format!("small-{i}")).partition(i % 2))
        .collect();
    // Partition 0's 11th record is 2 MiB.
    recs.insert(20, NewRecord::new("big", vec![b'x'; 2 << 20]).partition(0));
    let producer = client::producer(k.edge(), &[("message.max.bytes", "5000000")])?;
    client::send_all(&producer, &topic, &recs).await?;
    let rig = Rig::builder()
        .agent(&site, &format!("{prefix}-.*"))
        .start()?;
    let remote = format!("{site}.{topic}");
    let got = consume_remote(k.central(), &remote, 40, &rig.procs()).await?;
    let values: HashSet<Vec<u8>> = got.iter().filter_map(|r| r.value.clone()).collect();
    assert_eq!(got.len(), 40, "every small record once\n{}", rig.logs());
    assert!(
        (0..40).all(|i| values.contains(format!("small-{i}").as_bytes())),
        "{}",
        rig.logs()
    );
    let dead_topic = format!("er-dead-letter.{site}.internal");
    let dead = client::consume_to_end(k.central(), &dead_topic, Duration::from_secs(30)).await?;
    assert_eq!(dead.len(), 1, "one dead letter\n{}", rig.logs());
    let h = |name: &str| dead[0].header_text(name);
    assert_eq!(h("er.source.topic").as_deref(), Some(topic.as_str()));
    assert_eq!(h("er.source.partition").as_deref(), Some("0"));
    assert_eq!(h("er.source.offset").as_deref(), Some("10"));
    assert_eq!(h("er.destination.topic").as_deref(), Some(remote.as_str()));
    assert_eq!(h("er.value.bytes").as_deref(), Some("2097152"));
    assert!(h("er.reason").is_some_and(|r| r.contains("larger than")));
    assert_eq!(dead[0].key.as_deref(), Some(&b"big"[..]));
    assert_eq!(dead[0].value, None, "the value itself is not kept");
    // The session never failed over it: one welcome, no failed transaction.
    assert_eq!(
        rig.hub.log_text().matches("welcoming site").count(),
        1,
        "{}",
        rig.logs()
    );
    Ok(())
}

/// A record larger than the hub takes in one batch (`limits.max_batch_bytes`, here 1 MiB) can
/// never cross the link: the agent sends a stub in its place and the hub writes the stub to the
/// site's dead letters with the source coordinates and the reason. Before, the hub refused the
/// batch on every reconnect and the partition never moved again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_larger_than_the_hub_takes_in_a_batch_goes_to_the_dead_letters_as_a_stub()
-> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("stub");
    let site = site_name("stub");
    let topic = format!("{prefix}-big");
    client::create_topic(k.edge(), &topic, 2, &[("max.message.bytes", "4194304")]).await?;
    let mut recs: Vec<NewRecord> = (0..40)
        .map(|i| NewRecord::new(format!("{i}"), format!("small-{i}")).partition(i % 2))
        .collect();
    // Partition 0's 11th record: 2 MiB that zstd cannot shrink.
    let mut noise = Vec::with_capacity(2 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 2 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    recs.insert(20, NewRecord::new("big", noise).partition(0));
    let producer = client::producer(k.edge(), &[("message.max.bytes", "5000000")])?;
    client::send_all(&producer, &topic, &recs).await?;
    let rig = Rig::builder()
        .hub(|h| h.extra = "[limits]\nmax_batch_bytes = 1048576\n".into())
        .agent(&site, &format!("{prefix}-.*"))
        .start()?;
    let remote = format!("{site}.{topic}");
    let got = consume_remote(k.central(), &remote, 40, &rig.procs()).await?;
    assert_eq!(got.len(), 40, "every small record once\n{}", rig.logs());
    let dead_topic = format!("er-dead-letter.{site}.internal");
    let dead = client::consume_to_end(k.central(), &dead_topic, Duration::from_secs(30)).await?;
    assert_eq!(dead.len(), 1, "one dead letter\n{}", rig.logs());
    let h = |name: &str| dead[0].header_text(name);
    assert_eq!(h("er.source.topic").as_deref(), Some(topic.as_str()));
    assert_eq!(h("er.source.partition").as_deref(), Some("0"));
    assert_eq!(h("er.source.offset").as_deref(), Some("10"));
    assert_eq!(h("er.destination.topic").as_deref(), Some(remote.as_str()));
    let reason = h("er.reason").unwrap_or_default();
    assert!(
        reason.contains("the agent could not send it") && reason.contains("max_batch_bytes"),
        "{reason}"
    );
    assert_eq!(dead[0].key.as_deref(), Some(&b"big"[..]));
    assert_eq!(
        rig.hub.log_text().matches("welcoming site").count(),
        1,
        "the session never failed over it\n{}",
        rig.logs()
    );
    Ok(())
}

/// `replication.on_unwritable = "stop"`: a record larger than its central topic takes stops its
/// partition there instead of going to the dead letters. The records before it are committed,
/// nothing after it moves (across an agent restart too), the other partition flows, the hub
/// raises its alarm gauge, and no dead letter is written. Once the topic's limit is raised, the
/// agent's next session resumes at the record: every record once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_stop_setting_an_unwritable_record_halts_its_partition_until_fixed()
-> anyhow::Result<()> {
    use er_tests::prom;
    let k = shared();
    let prefix = unique_name("halt");
    let site = site_name("halt");
    let topic = format!("{prefix}-t");
    let remote = format!("{site}.{topic}");
    client::create_topic(k.edge(), &topic, 2, &[]).await?;
    client::create_topic(k.central(), &remote, 2, &[("max.message.bytes", "20000")]).await?;
    let value = |i: usize| {
        if i == 10 {
            "x".repeat(50_000)
        } else {
            format!("p0-{i}")
        }
    };
    let mut recs: Vec<NewRecord> = (0..21)
        .map(|i| NewRecord::new(format!("{i}"), value(i)).partition(0))
        .collect();
    recs.extend((0..20).map(|i| NewRecord::new(format!("{i}"), format!("p1-{i}")).partition(1)));
    client::produce(k.edge(), &topic, &recs).await?;
    let metrics_port = prom::free_tcp_port();
    let mut rig = Rig::builder()
        .hub(|h| {
            h.extra = format!(
                "[replication]\non_unwritable = \"stop\"\n[topic_sync]\nenabled = false\n{}",
                prom::metrics_section(metrics_port)
            );
        })
        .agent(&site, &topic)
        .start()?;
    rig.agent(&site)
        .wait_for_log("the hub stopped the partition", Duration::from_secs(90))?;
    let by_partition = |got: &[Record]| {
        let mut m: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for r in got {
            m.entry(r.partition)
                .or_default()
                .push(String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned());
        }
        m
    };
    let p0_before: Vec<String> = (0..10).map(value).collect();
    let p1: Vec<String> = (0..20).map(|i| format!("p1-{i}")).collect();
    let got = client::consume_all(k.central(), &remote, 30, Duration::from_secs(60)).await?;
    let m = by_partition(&got);
    assert_eq!(
        m.get(&0),
        Some(&p0_before),
        "partition 0 up to the record\n{}",
        rig.logs()
    );
    assert_eq!(m.get(&1), Some(&p1), "partition 1 flows");
    let scraped = prom::parse(&prom::scrape(metrics_port)?);
    assert_eq!(
        prom::value(
            &scraped,
            "er_hub_stopped_partitions",
            &[("site", site.as_str())]
        ),
        Some(1.0),
        "the alarm gauge"
    );
    assert!(rig.hub.log_text().contains("partition stopped"));

    // A restart of the agent stops it at the same record: nothing is written twice or skipped.
    rig.agent_mut(&site).restart()?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while rig
        .agent(&site)
        .log_text()
        .matches("the hub stopped the partition")
        .count()
        < 2
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the restarted agent was not stopped again\n{}",
            rig.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = client::consume_to_end(k.central(), &remote, Duration::from_secs(10)).await?;
    assert_eq!(
        got.len(),
        30,
        "still nothing past the record\n{}",
        rig.logs()
    );
    let dead = client::list_topics(k.central()).await?;
    assert!(
        !dead.contains(&format!("er-dead-letter.{site}.internal")),
        "no dead letters under the stop setting"
    );

    // The operator raises the destination's limit; the next session writes the rest.
    client::alter_topic_config(k.central(), &remote, &[("max.message.bytes", "1000000")]).await?;
    tokio::time::sleep(er_hub::kafka::LIMITS_TTL).await;
    rig.agent_mut(&site).restart()?;
    let got = client::consume_all(k.central(), &remote, 41, Duration::from_secs(90)).await?;
    let m = by_partition(&got);
    assert_eq!(
        m.get(&0),
        Some(&(0..21).map(value).collect::<Vec<_>>()),
        "partition 0 whole, each record once\n{}",
        rig.logs()
    );
    assert_eq!(m.get(&1), Some(&p1));
    let scraped = prom::parse(&prom::scrape(metrics_port)?);
    assert_eq!(
        prom::value(
            &scraped,
            "er_hub_stopped_partitions",
            &[("site", site.as_str())]
        ),
        Some(0.0),
        "the alarm clears in the new session"
    );
    Ok(())
}

/// Topic sync (MM2's `sync.topic.configs`): an empty edge topic appears centrally at
/// discovery with its partition count and the configs it sets that `topic_sync` lets through
/// (a segment size does not pass); partitions added at the edge mid-stream appear centrally and
/// their records arrive once, in order; a config changed at the edge follows, and one no longer
/// set there is removed centrally.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_topics_follow_the_edge_topics_partitions_and_configs() -> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("tsync");
    let site = site_name("tsync");
    let topic = format!("{prefix}-t");
    let remote = format!("{site}.{topic}");
    client::create_topic(
        k.edge(),
        &topic,
        3,
        &[
            ("cleanup.policy", "compact"),
            ("retention.ms", "1234567"),
            ("segment.bytes", "1048576"),
        ],
    )
    .await?;
    let rig = Rig::builder()
        .hub(|h| h.extra = "[topic_sync]\nmin_interval_ms = 500\n".into())
        .agent_with(&site, &topic, |a| a.refresh_interval_ms = 1_000)
        .start()?;

    // Created at discovery, before any record, with the edge's shape.
    let wait_for = async |what: &str, ok: &dyn Fn(usize, &BTreeMap<String, String>) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let parts = client::partition_ids(k.central(), &remote)
                .await
                .unwrap_or_default()
                .len();
            let configs = client::topic_configs(k.central(), &remote)
                .await
                .unwrap_or_default();
            if ok(parts, &configs) {
                return Ok::<_, anyhow::Error>(configs);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{what}: {parts} partitions, configs {configs:?}\n{}",
                rig.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let configs = wait_for("created at discovery", &|n, c| {
        n == 3 && c.get("retention.ms").is_some_and(|v| v == "1234567")
    })
    .await?;
    assert_eq!(
        configs.get("cleanup.policy").map(String::as_str),
        Some("compact")
    );
    assert_eq!(
        configs.get("segment.bytes"),
        None,
        "segment sizes are not synced by default"
    );

    // Partitions grow at the edge mid-stream; records of every partition arrive once, in order.
    let recs = |from: usize, parts: i32| -> Vec<NewRecord> {
        (from..from + 30)
            .map(|i| NewRecord::new(format!("k{i}"), format!("v{i}")).partition(i as i32 % parts))
            .collect()
    };
    client::produce(k.edge(), &topic, &recs(0, 3)).await?;
    client::create_partitions(k.edge(), &topic, 5).await?;
    client::alter_topic_config(
        k.edge(),
        &topic,
        &[("cleanup.policy", "compact"), ("retention.ms", "7654321")],
    )
    .await?;
    client::produce(k.edge(), &topic, &recs(30, 5)).await?;
    wait_for("grown and re-configured", &|n, c| {
        n == 5 && c.get("retention.ms").is_some_and(|v| v == "7654321")
    })
    .await?;
    let got = consume_remote(k.central(), &remote, 60, &rig.procs()).await?;
    let mut by_partition: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for r in &got {
        by_partition
            .entry(r.partition)
            .or_default()
            .push(String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned());
    }
    let mut want: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (i, parts) in (0..30).map(|i| (i, 3)).chain((30..60).map(|i| (i, 5))) {
        want.entry(i % parts).or_default().push(format!("v{i}"));
    }
    assert_eq!(
        by_partition,
        want,
        "every record once, in order, in its partition\n{}",
        rig.logs()
    );

    // A synced config no longer set at the edge is removed centrally.
    client::alter_topic_config(k.edge(), &topic, &[("cleanup.policy", "compact")]).await?;
    wait_for("retention.ms removed", &|_, c| {
        !c.contains_key("retention.ms")
    })
    .await?;
    assert!(
        rig.hub
            .log_text()
            .contains("remote topic configs synced from the edge"),
        "{}",
        rig.logs()
    );
    Ok(())
}
