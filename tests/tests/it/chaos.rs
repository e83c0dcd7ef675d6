//! Faults on real Apache Kafka with the link-fault proxy between agent and hub: flapping, lossy,
//! slow links; SIGKILLs of agent and hub; a central broker restart or freeze; two hubs fighting over one
//! site; long outages. Every source record must arrive exactly once, in order per partition.
//!
//! The default is a shortened run that fits the test command. The full chaos run of the issue:
//! `ER_CHAOS_FULL=1 cargo test --release -p er-tests --test it -- --nocapture chaos::chaos`.

use std::time::{Duration, Instant};

use er_tests::client::{self, NewRecord};
use er_tests::delivery::{self, SeqIn};
use er_tests::kafka::{KafkaNode, shared};
use er_tests::proxied::ProxiedSite;
use er_tests::proxy::{Direction, Flap, Schedule};
use er_tests::replicator::{AgentSetup, HubSetup, Pki, logs};
use er_tests::rig::Rig;
use er_tests::unique_name;

/// How hard the chaos run pushes.
#[derive(Debug, Clone)]
struct Plan {
    records: usize,
    partitions: i32,
    blackholes: usize,
    down: std::ops::RangeInclusive<Duration>,
    up: std::ops::RangeInclusive<Duration>,
    agent_kills: usize,
    hub_kills: usize,
    broker_restarts: usize,
}

impl Plan {
    fn from_env() -> Self {
        if std::env::var_os("ER_CHAOS_FULL").is_some() {
            Plan {
                records: 500_000,
                partitions: 8,
                blackholes: 20,
                down: Duration::from_secs(1)..=Duration::from_secs(10),
                up: Duration::from_secs(2)..=Duration::from_secs(8),
                agent_kills: 3,
                hub_kills: 2,
                broker_restarts: 1,
            }
        } else {
            Plan {
                records: 40_000,
                partitions: 4,
                blackholes: 6,
                down: Duration::from_secs(1)..=Duration::from_secs(3),
                up: Duration::from_secs(2)..=Duration::from_secs(5),
                agent_kills: 1,
                hub_kills: 1,
                broker_restarts: 1,
            }
        }
    }
}

/// Produces `total` records (value = sequence number) spread over `partitions`, paced over
/// about `over`.
fn spawn_producer(
    edge: String,
    topic: String,
    total: usize,
    partitions: i32,
    over: Duration,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let p = client::producer(&edge, &[("linger.ms", "20")])?;
        let chunk = 1_000;
        let chunks = total.div_ceil(chunk);
        let pause = over / chunks as u32;
        for c in 0..chunks {
            let recs: Vec<NewRecord> = (c * chunk..((c + 1) * chunk).min(total))
                .map(|i| {
                    NewRecord::new(format!("k{i}"), format!("{i}"))
                        .partition((i % partitions as usize) as i32)
                })
                .collect();
            client::send_all(&p, &topic, &recs).await?;
            tokio::time::sleep(pause).await;
        }
        anyhow::Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_flapping_lossy_link_kills_and_broker_restart_lose_and_duplicate_nothing()
-> anyhow::Result<()> {
    let plan = Plan::from_env();
    let k = shared();
    let mut central = tokio::task::spawn_blocking(|| KafkaNode::start("chaos-central")).await??;
    let p = unique_name("chaos");
    let site = unique_name("site");
    let topic = format!("{p}-events");
    let remote = format!("{site}.{topic}");
    client::create_topic(k.edge(), &topic, plan.partitions, &[]).await?;

    let mut rig = Rig::builder()
        .central(central.bootstrap())
        .site(&site)
        .proxy_seed(0x5eed)
        .start()?;
    let ctl = rig.start_proxy(&site)?.control();
    // 50 ms +/- 20 ms one way, 5% loss each way.
    ctl.delay(
        Direction::Both,
        Duration::from_millis(30),
        Duration::from_millis(40),
    );
    ctl.loss(Direction::Both, 0.05);
    let mut agent_setup = rig.agent_setup(&site, &format!("{p}-.*"));
    agent_setup.max_records = 1_000;
    rig.start_agent_via_proxy(&agent_setup)?;

    let started = Instant::now();
    let produce_over = Duration::from_secs(if plan.records > 100_000 { 240 } else { 60 });
    let producing = spawn_producer(
        k.edge().to_owned(),
        topic.clone(),
        plan.records,
        plan.partitions,
        produce_over,
    );
    let flaps = ctl.run_schedule(Schedule::new().flap(Flap {
        direction: Direction::Both,
        count: plan.blackholes,
        up: plan.up.clone(),
        down: plan.down.clone(),
        seed: 7,
    }));

    // Process faults, spread over the production time.
    let faults = plan.agent_kills + plan.hub_kills + plan.broker_restarts;
    let gap = produce_over / (faults as u32 + 1);
    let mut done = (0, 0, 0);
    for i in 0..faults {
        tokio::time::sleep(gap).await;
        if done.0 < plan.agent_kills && (i % 3 == 0 || done.1 >= plan.hub_kills) {
            eprintln!("[{:>5.1}s] SIGKILL agent", started.elapsed().as_secs_f64());
            rig.agent_mut(&site).kill();
            rig.agent_mut(&site).restart()?;
            done.0 += 1;
        } else if done.1 < plan.hub_kills && (i % 3 == 1 || done.2 >= plan.broker_restarts) {
            eprintln!("[{:>5.1}s] SIGKILL hub", started.elapsed().as_secs_f64());
            rig.hub.kill();
            rig.hub.restart()?;
            done.1 += 1;
        } else if done.2 < plan.broker_restarts {
            eprintln!(
                "[{:>5.1}s] restart central broker",
                started.elapsed().as_secs_f64()
            );
            central = tokio::task::spawn_blocking(move || {
                central.restart()?;
                anyhow::Ok(central)
            })
            .await??;
            done.2 += 1;
        }
    }
    producing.await??;
    let outages = flaps.join();
    eprintln!(
        "[{:>5.1}s] produced {} records; link events:\n{}",
        started.elapsed().as_secs_f64(),
        plan.records,
        outages
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let got = client::wait_for_count(
        central.bootstrap(),
        &remote,
        plan.records,
        Duration::from_secs(300),
    )
    .await;
    // Without the settle period the read waited for after the last record.
    let elapsed = started.elapsed().saturating_sub(client::SETTLE);
    delivery::assert_exactly_once_in_order(
        &remote,
        &delivery::seqs_by_partition(&got, SeqIn::Value)?,
        &delivery::round_robin(plan.records, plan.partitions),
        &rig.logs(),
    );
    let stats = ctl.stats();
    eprintln!(
        "chaos: {} records exactly once in {:.1} s with {} blackholes, {} agent kills, {} hub kills, {} broker restarts; proxy: {stats:?}",
        plan.records,
        elapsed.as_secs_f64(),
        plan.blackholes,
        done.0,
        done.1,
        done.2
    );
    assert_eq!(
        done,
        (plan.agent_kills, plan.hub_kills, plan.broker_restarts)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hubs_of_one_group_serve_a_site_from_its_shard_owner_only_and_duplicate_nothing()
-> anyhow::Result<()> {
    let k = shared();
    let p = unique_name("fence");
    let site = unique_name("site");
    let pki = Pki::new(&[&site])?;
    let work = tempfile::tempdir()?;
    let topic = format!("{p}-events");
    let remote = format!("{site}.{topic}");
    const TOTAL: usize = 20_000;
    client::create_topic(k.edge(), &topic, 2, &[]).await?;
    // Two hubs of one group, each with an agent of the same site: only the hub that owns the
    // site's shard writes it; the other sends its agent there, where the two agents replace
    // each other's sessions. Records still land exactly once.
    let hub_a = HubSetup::new(k.central())?;
    let mut hub_b = HubSetup::new(k.central())?;
    hub_b.group_id = hub_a.group_id.clone();
    let a = hub_a.start(&pki, work.path())?;
    let b = hub_b.start(&pki, work.path())?;
    let mut agent_a = AgentSetup::new(&site, k.edge(), hub_a.port, &format!("{p}-.*"));
    agent_a.max_records = 200;
    let mut agent_b = agent_a.clone();
    agent_b.hub_port = hub_b.port;
    let x = agent_a.start(&pki, work.path())?;
    let dir_b = work.path().join("b");
    std::fs::create_dir_all(&dir_b)?;
    let y = agent_b.start(&pki, &dir_b)?;
    let producing = spawn_producer(
        k.edge().to_owned(),
        topic.clone(),
        TOTAL,
        2,
        Duration::from_secs(15),
    );
    producing.await??;
    let got = client::wait_for_count(k.central(), &remote, TOTAL, Duration::from_secs(180)).await;
    let procs = [&a, &b, &x, &y];
    delivery::assert_exactly_once_in_order(
        &remote,
        &delivery::seqs_by_partition(&got, SeqIn::Value)?,
        &delivery::round_robin(TOTAL, 2),
        &logs(&procs),
    );
    // Exactly one hub owns the site's shard: the other one sent the site away every time.
    let sent_away = [&a, &b]
        .iter()
        .filter(|h| h.log_text().contains("site belongs to another hub"))
        .count();
    assert_eq!(
        sent_away,
        1,
        "the non-owner hub sent the site to the owner, the owner never did\n{}",
        logs(&procs)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_long_blackhole_the_first_new_record_arrives_quickly() -> anyhow::Result<()> {
    let k = shared();
    let rig = ProxiedSite::start("resume", 1).await?;
    let ctl = rig.proxy().control();
    let (hub, agent, topic, remote) = (rig.hub(), rig.agent(), &rig.topic, &rig.remote);
    let producer = client::producer(k.edge(), &[("linger.ms", "0")])?;
    client::send_all(&producer, topic, &[NewRecord::new("k", "0")]).await?;
    assert_eq!(
        client::wait_for_count(k.central(), remote, 1, Duration::from_secs(90))
            .await
            .len(),
        1
    );

    let outage: u64 = std::env::var("ER_BLACKHOLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let samples: usize = std::env::var("ER_RESUME_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut delays = Vec::new();
    for i in 0..samples {
        ctl.blackhole(Direction::Both, true);
        tokio::time::sleep(Duration::from_secs(outage)).await;
        // A reader already waiting at the next offset, so the measurement is the replicator's.
        let central = k.central().to_owned();
        let r = remote.clone();
        let want = format!("{}", i + 1);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<Instant> {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let c: BaseConsumer = client::config(&central)
                .set("group.id", unique_name("resume-reader"))
                .set("isolation.level", "read_committed")
                .set("fetch.wait.max.ms", "10")
                .create()?;
            let mut tpl = rdkafka::TopicPartitionList::new();
            // From the current end: destination offsets include transaction markers, so the
            // new record's offset is not known in advance; its value is.
            let (_, end) = c.fetch_watermarks(&r, 0, Duration::from_secs(10))?;
            tpl.add_partition_offset(&r, 0, rdkafka::Offset::Offset(end))?;
            c.assign(&tpl)?;
            let _ = c.poll(Duration::from_millis(200));
            let _ = ready_tx.send(());
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Some(m) = c.poll(Duration::from_millis(5)) {
                    use rdkafka::Message;
                    if m?.payload() == Some(want.as_bytes()) {
                        return Ok(Instant::now());
                    }
                }
            }
            anyhow::bail!("no record within 60 s after the link returned")
        });
        let _ = ready_rx.recv_timeout(Duration::from_secs(10));
        ctl.blackhole(Direction::Both, false);
        let back = Instant::now();
        client::send_all(
            &producer,
            topic,
            &[NewRecord::new("k", format!("{}", i + 1))],
        )
        .await?;
        let arrived = reader
            .await?
            .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&[hub, agent])))?;
        delays.push(arrived - back);
    }
    delays.sort();
    if std::env::var_os("ER_DUMP_LOGS").is_some() {
        eprintln!("{}", logs(&[hub, agent]));
    }
    eprintln!(
        "first record after a {outage} s blackhole: {:?} (sorted; from lifting the blackhole to the record being readable centrally, including its produce at the edge)",
        delays
    );
    // The site came back to the same hub: it resumed from the positions in the hub's memory;
    // the hub read its shards from Kafka once, at start, never again.
    assert_eq!(
        hub.log_text().matches("owned shards loaded").count(),
        1,
        "the hub kept the site's state in memory\n{}",
        logs(&[hub, agent])
    );
    // README promises that the first record after a 30 s outage lands "within about 1.5 s":
    // while the hub is silent the agent probes, each attempt waiting one, two, then three
    // `hub.probe_interval_ms` (500 ms by default) for an answer, resumes its TLS session with a
    // 0-RTT hello, and the hub welcomes it in 0.5-RTT from memory. On top of that come the new
    // session's edge consumers (assignment, first fetch), one hub transaction and this reader's
    // 5 ms polls: about 1 s at worst in a release build. The bound allows for the debug build
    // of our crates on a shared 2-core machine; it still fails an agent that waits out QUIC's
    // backed-off Initial retransmits (seconds) or its reconnect backoff instead of probing.
    const PROMISED: Duration = Duration::from_millis(1500);
    const BOUND: Duration = Duration::from_secs(4);
    assert!(
        delays.iter().all(|d| *d < BOUND),
        "first record after a {outage} s blackhole: {delays:?}; README promises about \
         {PROMISED:?}, this test allows {BOUND:?}\n{}",
        logs(&[hub, agent])
    );
    Ok(())
}

/// The central broker freezes (SIGSTOP) for longer than the hubs' group session and the
/// transactions' delivery timeout while records flow from two sites through two writers: its
/// controller fences it, the hub's membership times out and rejoins, transactions in flight
/// fail. Once it runs again every record must arrive exactly once, and soon: a writer that
/// stays stuck (the sites then wait forever on "batches of the previous session are still being
/// written") fails this test by its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_central_broker_stalls_nothing_for_good_and_loses_nothing() -> anyhow::Result<()> {
    const RECORDS: usize = 6_000;
    const PARTITIONS: i32 = 4;
    let k = shared();
    let central = tokio::task::spawn_blocking(|| KafkaNode::start("stall-central")).await??;
    let p = unique_name("stall");
    let sites = [unique_name("site"), unique_name("site")];
    let topic = format!("{p}-events");
    client::create_topic(k.edge(), &topic, PARTITIONS, &[]).await?;
    let mut builder = Rig::builder().central(central.bootstrap()).hub(|h| {
        h.extra =
            "[fleet]\nshards = 8\nwriters_per_cluster = 2\nsession_timeout_ms = 6000\n".into();
    });
    for s in &sites {
        builder = builder.agent(s, &format!("{p}-.*"));
    }
    let rig = builder.start()?;

    let producing = spawn_producer(
        k.edge().to_owned(),
        topic.clone(),
        RECORDS,
        PARTITIONS,
        Duration::from_secs(40),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    eprintln!("freezing the central broker for 25 s");
    assert!(central.pause(), "SIGSTOP the central broker");
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(central.resume(), "SIGCONT the central broker");
    producing.await??;
    let mut got = Vec::new();
    for s in &sites {
        let remote = format!("{s}.{topic}");
        let records = client::wait_for_count(
            central.bootstrap(),
            &remote,
            RECORDS,
            Duration::from_secs(180),
        )
        .await;
        got.push((remote, records));
    }
    for (remote, records) in got {
        delivery::assert_exactly_once_in_order(
            &remote,
            &delivery::seqs_by_partition(&records, SeqIn::Value)?,
            &delivery::round_robin(RECORDS, PARTITIONS),
            &rig.logs(),
        );
    }
    Ok(())
}
