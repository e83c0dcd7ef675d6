//! Several hubs of one group on real Kafka: sites reach the hub that owns their shard (redirects),
//! a killed hub's sites move to the others, and a paused (zombie) hub is fenced by the group
//! coordinator; every record arrives exactly once, in order per partition.

use std::time::Duration;

use er_tests::client;
use er_tests::delivery::{self, SeqIn};
use er_tests::kafka::shared;
use er_tests::replicator::{AgentSetup, HubSetup, Pki, Proc, logs};
use er_tests::unique_name;

/// Session timeout of the hubs' group membership in these tests (the broker's minimum is 6 s).
const SESSION_TIMEOUT_MS: u64 = 6_000;

/// A site alias whose shard (of `shards`) is in `range`.
fn site_in(prefix: &str, shards: u32, range: std::ops::Range<u32>) -> String {
    (0..)
        .map(|i| format!("{prefix}-s{i}"))
        .find(|s| range.contains(&er_hub::shards::shard_of(s, shards)))
        .expect("some alias hashes into the range")
}

/// Hubs of one group with ids that sort in order (the range assignor gives the first hub the
/// first shards).
fn hubs(central: &str, n: usize, shards: u32) -> anyhow::Result<Vec<HubSetup>> {
    let prefix = unique_name("fh");
    let group = unique_name("fleet");
    (0..n)
        .map(|i| {
            let mut h = HubSetup::new(central)?;
            h.hub_id = format!("{prefix}-{}", (b'a' + i as u8) as char);
            h.group_id = group.clone();
            h.extra = format!(
                "[fleet]\nshards = {shards}\nsession_timeout_ms = {SESSION_TIMEOUT_MS}\nshard_wait_ms = 60000\n"
            );
            Ok(h)
        })
        .collect()
}

/// Produces `total` records (value = sequence number) round robin over `partitions`, spread
/// over `over`.
fn produce(
    edge: &str,
    topic: &str,
    total: usize,
    partitions: i32,
    over: Duration,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let (edge, topic) = (edge.to_owned(), topic.to_owned());
    tokio::spawn(async move {
        let producer = client::producer(&edge, &[("linger.ms", "5")])?;
        let chunk = 100;
        let pause = over / (total / chunk).max(1) as u32;
        for start in (0..total).step_by(chunk) {
            let recs: Vec<client::NewRecord> = (start..(start + chunk).min(total))
                .map(|i| {
                    client::NewRecord::new(format!("k{i}"), i.to_string())
                        .partition((i % partitions as usize) as i32)
                })
                .collect();
            client::send_all(&producer, &topic, &recs).await?;
            tokio::time::sleep(pause).await;
        }
        Ok(())
    })
}

fn signal(p: &Proc, sig: &str) -> anyhow::Result<()> {
    let pid = p
        .pid()
        .ok_or_else(|| anyhow::anyhow!("process not running"))?;
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill {sig} {pid} failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sites_reach_their_shards_owner_and_move_when_a_hub_dies() -> anyhow::Result<()> {
    let k = shared();
    const SHARDS: u32 = 6;
    const TOTAL: usize = 3_000;
    let prefix = unique_name("move");
    // Hub i owns shards 2i and 2i+1: one site per hub.
    let sites: Vec<String> = (0..3u32)
        .map(|i| site_in(&prefix, SHARDS, 2 * i..2 * i + 2))
        .collect();
    let site_refs: Vec<&str> = sites.iter().map(String::as_str).collect();
    let pki = Pki::new(&site_refs)?;
    let work = tempfile::tempdir()?;
    let setups = hubs(k.central(), 3, SHARDS)?;
    let mut procs: Vec<Proc> = setups
        .iter()
        .map(|h| h.start(&pki, work.path()))
        .collect::<anyhow::Result<_>>()?;
    let ports: Vec<u16> = setups.iter().map(|h| h.port).collect();
    let mut agents = Vec::new();
    let mut producers = Vec::new();
    for site in &sites {
        let topic = format!("{site}-events");
        client::create_topic(k.edge(), &topic, 2, &[]).await?;
        // Every agent starts at the first hub, which sends two of them on.
        let mut a = AgentSetup::new(site, k.edge(), ports[0], &topic);
        a.more_hub_ports = ports[1..].to_vec();
        a.max_records = 100;
        agents.push(a.start(&pki, work.path())?);
        producers.push(produce(k.edge(), &topic, TOTAL, 2, Duration::from_secs(20)));
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The second hub dies mid-stream; its shards move to the others after the session timeout.
    procs[1].kill();
    for p in producers {
        p.await??;
    }
    let all: Vec<&Proc> = procs.iter().chain(agents.iter()).collect();
    for site in &sites {
        let remote = format!("{site}.{site}-events");
        let got =
            client::wait_for_count(k.central(), &remote, TOTAL, Duration::from_secs(180)).await;
        delivery::assert_exactly_once_in_order(
            &remote,
            &delivery::seqs_by_partition(&got, SeqIn::Value)?,
            &delivery::round_robin(TOTAL, 2),
            &logs(&all),
        );
    }
    assert!(
        procs[0].log_text().contains("site belongs to another hub"),
        "the first hub redirected the sites it does not own\n{}",
        logs(&all)
    );
    let survivors_loaded = [&procs[0], &procs[2]]
        .iter()
        .map(|p| p.log_text().matches("owned shards loaded").count())
        .sum::<usize>();
    assert!(
        survivors_loaded >= 3,
        "the survivors loaded their own shards and then the dead hub's\n{}",
        logs(&all)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_hub_is_fenced_and_its_sites_move_without_duplicates() -> anyhow::Result<()> {
    let k = shared();
    const SHARDS: u32 = 2;
    const TOTAL: usize = 4_000;
    let prefix = unique_name("zombie");
    // The first hub owns shard 0, where the site lives.
    let site = site_in(&prefix, SHARDS, 0..1);
    let pki = Pki::new(&[&site])?;
    let work = tempfile::tempdir()?;
    let setups = hubs(k.central(), 2, SHARDS)?;
    let a = setups[0].start(&pki, work.path())?;
    let b = setups[1].start(&pki, work.path())?;
    let topic = format!("{site}-events");
    client::create_topic(k.edge(), &topic, 2, &[]).await?;
    let mut agent = AgentSetup::new(&site, k.edge(), setups[0].port, &topic);
    agent.more_hub_ports = vec![setups[1].port];
    agent.max_records = 50;
    let agent = agent.start(&pki, work.path())?;
    let producing = produce(k.edge(), &topic, TOTAL, 2, Duration::from_secs(25));
    a.wait_for_log("welcoming site", Duration::from_secs(60))?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Hub a freezes mid-stream (as a long GC pause or a partition from the coordinator would):
    // the coordinator gives its shards to b after the session timeout, the agent moves to b.
    signal(&a, "-STOP")?;
    tokio::time::sleep(Duration::from_millis(3 * SESSION_TIMEOUT_MS)).await;
    // Thawed, a is a zombie: whatever transaction it held fails its fence and aborts.
    signal(&a, "-CONT")?;
    producing.await??;
    let all = [&a, &b, &agent];
    let remote = format!("{site}.{topic}");
    let got = client::wait_for_count(k.central(), &remote, TOTAL, Duration::from_secs(180)).await;
    delivery::assert_exactly_once_in_order(
        &remote,
        &delivery::seqs_by_partition(&got, SeqIn::Value)?,
        &delivery::round_robin(TOTAL, 2),
        &logs(&all),
    );
    assert!(
        b.log_text().matches("welcoming site").count() >= 1,
        "the site moved to b\n{}",
        logs(&all)
    );
    a.wait_for_log("lost=true", Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("a learned it lost its shards: {e}\n{}", logs(&all)))?;
    Ok(())
}

/// A static member is fenced for good when the coordinator believes another process holds its
/// instance id (a broker restart that lost the member's last join does this; here a client
/// with the hub's id joins its group). librdkafka never rejoins such a member: the hub must
/// replace it, or it owns nothing from then on and its sites wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_whose_group_member_was_fenced_rejoins_and_its_sites_flow_again() -> anyhow::Result<()>
{
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let k = shared();
    const TOTAL: usize = 2_000;
    let site = unique_name("fenced");
    let pki = Pki::new(&[&site])?;
    let work = tempfile::tempdir()?;
    let setup = hubs(k.central(), 1, 4)?.remove(0);
    let hub = setup.start(&pki, work.path())?;
    let topic = format!("{site}-events");
    client::create_topic(k.edge(), &topic, 2, &[]).await?;
    let mut a = AgentSetup::new(&site, k.edge(), setup.port, &topic);
    a.max_records = 100;
    let agent = a.start(&pki, work.path())?;
    let remote = format!("{site}.{topic}");
    er_tests::proxied::produce(k.edge(), &topic, 0, TOTAL / 2, 2).await?;
    client::wait_for_count(k.central(), &remote, TOTAL / 2, Duration::from_secs(60)).await;

    // The impostor joins with the hub's instance id, which fences the hub's member; it then
    // goes away without leaving (static members do not leave).
    let impostor: BaseConsumer = client::config(k.central())
        .set("group.id", &setup.group_id)
        .set("group.instance.id", &setup.hub_id)
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .create()?;
    impostor.subscribe(&[&er_hub::shards::shards_topic(&setup.group_id)])?;
    let fenced = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let _ = impostor.poll(Duration::from_millis(100));
            if impostor.assignment().is_ok_and(|a| a.count() > 0) {
                return true;
            }
        }
        false
    })
    .await?;
    anyhow::ensure!(
        fenced,
        "the impostor never got the hub's shards\n{}",
        logs(&[&hub, &agent])
    );

    er_tests::proxied::produce(k.edge(), &topic, TOTAL / 2, TOTAL, 2).await?;
    let got = client::wait_for_count(k.central(), &remote, TOTAL, Duration::from_secs(120)).await;
    delivery::assert_exactly_once_in_order(
        &remote,
        &delivery::seqs_by_partition(&got, SeqIn::Value)?,
        &delivery::round_robin(TOTAL, 2),
        &logs(&[&hub, &agent]),
    );
    assert!(
        hub.log_text().contains("group member was fenced"),
        "the hub said its member was fenced\n{}",
        logs(&[&hub, &agent])
    );
    Ok(())
}
