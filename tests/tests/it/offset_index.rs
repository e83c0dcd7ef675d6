//! The hub's offset index on real Kafka, driven at the er-hub library level: hand-built batches
//! (filtered, renamed, fanned out, several records per source offset) go through a real site
//! writer into the central broker; the index must answer exactly what the destination topics
//! hold, and a writer started afresh (as after a hub restart) must rebuild the same index from
//! the central cluster and keep it up to date.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use er_hub::fleet::Fleet;
use er_hub::offsets::{SharedOffsetIndex, Translation};
use er_hub::shards::offset_index_topic;
use er_hub::sink::{Completion, WriteJob};
use er_hub::sites::Site as HubSite;
use er_protocol::{Batch, BatchBuilder, Codec, Position, RecordRef, TimestampType, TopicPartition};
use er_tests::client;
use er_tests::kafka::shared;
use er_tests::unique_name;
use rdkafka::admin::{AdminOptions, ResourceSpecifier};
use tokio::sync::mpsc;

use crate::common::tp;

/// Header carrying a record's source partition and offset, to map destination records back.
const SRC_HEADER: &str = "er-test-src";

/// One output record of a source offset: optional topic and partition overrides.
type Out = (Option<&'static str>, Option<i32>);

/// A batch of `source` (of a topic with `partitions` partitions) covering offsets up to `next`:
/// `plan(offset)` gives the records each source offset becomes (empty = dropped).
fn batch(
    source: &TopicPartition,
    partitions: i32,
    offsets: std::ops::Range<i64>,
    next: i64,
    plan: impl Fn(i64) -> Vec<Out>,
) -> Result<Batch> {
    let mut b = BatchBuilder::new(source.clone(), partitions);
    let ts = client::now_ms();
    for o in offsets {
        for (copy, (topic, partition)) in plan(o).into_iter().enumerate() {
            let id = format!("{}/{}/{o}", source.topic, source.partition);
            let value = format!("{id}#{copy}");
            let headers = [(SRC_HEADER, Some(id.as_bytes()))];
            b.push(&RecordRef {
                offset: o,
                timestamp: ts,
                timestamp_type: TimestampType::CreateTime,
                key: Some(id.as_bytes()),
                value: Some(value.as_bytes()),
                headers: &headers,
                topic,
                partition,
            });
        }
    }
    b.set_next_offset(next);
    Ok(b.finish(0, Codec::Zstd, 3)?)
}

/// A site written through a real in-process hub fleet (group membership, shared writers,
/// shard loading), without QUIC: batches go straight to the writer pool.
struct Site {
    name: String,
    group: String,
    hub_id: String,
    dir: tempfile::TempDir,
    bootstrap: String,
}

/// A running fleet and the site's state in it.
struct Running {
    fleet: Arc<Fleet>,
    site: Arc<HubSite>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Site {
    fn new(bootstrap: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        er_net::devcerts::generate(dir.path(), &[], &["oi".into()], false)?;
        Ok(Self {
            name: unique_name("oi"),
            group: unique_name("oi-hubs"),
            hub_id: unique_name("oi-hub"),
            dir,
            bootstrap: bootstrap.to_owned(),
        })
    }

    /// Starts a fleet as a hub does (joining the group fences nothing of its own: its writers'
    /// transactional ids fence the previous incarnation), waits until it owns and loaded the
    /// site's shard.
    async fn start(&self) -> Result<Running> {
        let text = format!(
            "hub_id = {:?}\ngroup_id = {:?}\nlisten = \"127.0.0.1:0\"\n[tls]\nca_cert = \"ca.pem\"\ncert = \"hub.pem\"\nkey = \"hub.key\"\n[[clusters]]\nalias = \"central\"\nbootstrap_servers = {:?}\nreplication_factor = 1\n[fleet]\nshards = 4\nwriters_per_cluster = 2\nsession_timeout_ms = 6000\n",
            self.hub_id, self.group, self.bootstrap
        );
        let cfg = er_hub::config::parse(&self.dir.path().join("hub.toml"), &text)?;
        let rt = tokio::runtime::Handle::current();
        let fleet = Arc::new(tokio::task::spawn_blocking(move || Fleet::start(rt, cfg)).await??);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(fleet.clone().run_loader(stop_rx));
        let site = fleet
            .registry
            .wait_site(&self.name, Duration::from_secs(90))
            .await
            .context("the site's shard was not owned and loaded within 90 s")?;
        Ok(Running { fleet, site, stop })
    }

    fn remote(&self, topic: &str) -> String {
        format!("{}.{topic}", self.name)
    }
}

impl Running {
    fn positions(&self) -> Vec<Position> {
        self.site.clusters[0].positions()
    }

    fn offset_index(&self) -> &SharedOffsetIndex {
        &self.site.clusters[0].index
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        let fleet = self.fleet;
        drop(self.site);
        tokio::task::spawn_blocking(move || drop(fleet)).await?;
        Ok(())
    }
}

/// Submits batches back to back (a writer may group them into one transaction) and waits
/// until all committed.
async fn write(run: &Running, batches: Vec<Batch>) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Completion>();
    let n = batches.len();
    for batch in batches {
        run.fleet.pools[0]
            .submit(WriteJob {
                site: run.site.clone(),
                session: 1,
                batch,
                stop_on_unwritable: false,
                reply: tx.clone(),
            })
            .await?;
    }
    for _ in 0..n {
        let done = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .context("no completion within 120 s")?
            .context("writer dropped the reply channel")?;
        done.result
            .with_context(|| format!("batch of {} failed", done.tp))?;
    }
    Ok(())
}

/// What the central cluster holds: per (source, destination) partition the records as
/// (source offset, destination offset), and each destination's end offset.
#[derive(Debug, Default)]
struct Truth {
    pairs: BTreeMap<TopicPartition, BTreeMap<TopicPartition, Vec<(i64, i64)>>>,
    ends: BTreeMap<TopicPartition, i64>,
}

async fn read_truth(bootstrap: &str, dest_topics: &[String]) -> Result<Truth> {
    let mut truth = Truth::default();
    for topic in dest_topics {
        for (p, end) in client::end_offsets(bootstrap, topic).await? {
            truth.ends.insert(tp(topic, p), end);
        }
        let records = client::consume_to_end(bootstrap, topic, Duration::from_secs(60)).await?;
        for r in records {
            let (_, v) = r
                .headers
                .iter()
                .find(|(k, _)| k == SRC_HEADER)
                .with_context(|| {
                    format!("{topic}/{}@{} has no source header", r.partition, r.offset)
                })?;
            let id = String::from_utf8(v.clone().unwrap_or_default())?;
            let mut parts = id.rsplitn(3, '/');
            let (o, p, t) = (parts.next(), parts.next(), parts.next());
            let (Some(o), Some(p), Some(t)) = (o, p, t) else {
                bail!("bad source header {id:?}");
            };
            truth
                .pairs
                .entry(tp(t, p.parse()?))
                .or_default()
                .entry(tp(topic, r.partition))
                .or_default()
                .push((o.parse()?, r.offset));
        }
    }
    for dests in truth.pairs.values_mut() {
        for recs in dests.values_mut() {
            recs.sort_by_key(|r| r.1);
        }
    }
    Ok(truth)
}

impl Truth {
    /// The exact translation of `u`, by brute force over the destination records.
    fn translate(
        &self,
        source: &TopicPartition,
        u: i64,
        position: i64,
    ) -> BTreeMap<TopicPartition, Translation> {
        let Some(dests) = self.pairs.get(source) else {
            return BTreeMap::new();
        };
        dests
            .iter()
            .map(|(dest, recs)| {
                let t = match recs.iter().find(|r| r.0 >= u) {
                    Some(r) => Translation::Exact(r.1),
                    None if position >= u => Translation::EndOffset(self.ends[dest]),
                    None => Translation::NotYet,
                };
                (dest.clone(), t)
            })
            .collect()
    }
}

/// Checks every source offset up to past the position against the brute-force answer.
fn check_index(
    index: &SharedOffsetIndex,
    truth: &Truth,
    positions: &BTreeMap<TopicPartition, i64>,
    what: &str,
) -> Result<usize> {
    let index = index.read().expect("index lock");
    let mut checked = 0;
    for (source, &position) in positions {
        ensure!(
            index.position(source) == Some(position),
            "{what}: position of {source}: {:?} != {position}",
            index.position(source)
        );
        let dests: BTreeSet<TopicPartition> = index.dest_partitions(source).into_iter().collect();
        let want: BTreeSet<TopicPartition> = truth
            .pairs
            .get(source)
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        ensure!(
            dests == want,
            "{what}: destinations of {source}: {dests:?} != {want:?}"
        );
        for u in 0..=position + 2 {
            let got: BTreeMap<TopicPartition, Translation> = index
                .translate(source, u, |d| truth.ends.get(d).copied())
                .into_iter()
                .collect();
            let want = truth.translate(source, u, position);
            ensure!(
                got == want,
                "{what}: {source} at {u}: index {got:?}, records say {want:?}"
            );
            checked += 1;
        }
    }
    Ok(checked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn index_matches_the_destination_records_and_survives_a_restart() -> Result<()> {
    let k = shared();
    let site = Site::new(k.central())?;
    let writer = site.start().await?;
    let positions = writer.positions();
    ensure!(
        positions.is_empty(),
        "a new site has no positions: {positions:?}"
    );

    let orders0 = tp("orders", 0);
    let orders1 = tp("orders", 1);
    let metrics = tp("metrics", 0);
    let clean = tp("clean", 0);
    let default: Out = (None, None);
    // orders/0: unfiltered, then sparse with renames, copies fanned out to partition 1 (which
    // orders/1 also feeds), a dropped tail, then an all-dropped batch.
    let sparse = move |o: i64| -> Vec<Out> {
        if o % 3 != 0 {
            vec![]
        } else if o % 9 == 0 {
            vec![(Some("orders-audit"), Some(0))]
        } else if o % 7 == 0 {
            vec![default, (None, Some(1)), default]
        } else {
            vec![default]
        }
    };
    write(
        &writer,
        vec![
            batch(&orders0, 2, 0..50, 50, |_| vec![default])?,
            batch(&orders1, 2, 0..40, 40, |o| {
                if o % 2 == 0 { vec![default] } else { vec![] }
            })?,
            // Every record renamed: no `<site>.metrics` may appear.
            batch(&metrics, 1, 10..30, 30, |_| {
                vec![(Some("metrics-renamed"), None)]
            })?,
        ],
    )
    .await?;
    write(
        &writer,
        vec![
            batch(&orders0, 2, 50..120, 125, sparse)?,
            batch(&clean, 1, 0..60, 60, |o| {
                if o % 4 == 1 { vec![] } else { vec![default] }
            })?,
        ],
    )
    .await?;
    write(
        &writer,
        vec![
            batch(&orders0, 2, 130..130, 130, sparse)?,
            batch(&clean, 1, 60..100, 100, |o| {
                if o % 4 == 1 { vec![] } else { vec![default] }
            })?,
        ],
    )
    .await?;

    let dest_topics: Vec<String> = ["orders", "orders-audit", "metrics-renamed", "clean"]
        .iter()
        .map(|t| site.remote(t))
        .collect();
    let mut positions: BTreeMap<TopicPartition, i64> = [
        (orders0.clone(), 130),
        (orders1.clone(), 40),
        (metrics.clone(), 30),
        (clean.clone(), 100),
    ]
    .into_iter()
    .collect();
    let truth = read_truth(k.central(), &dest_topics).await?;
    let records: usize = truth
        .pairs
        .values()
        .flat_map(|d| d.values())
        .map(Vec::len)
        .sum();
    ensure!(records > 150, "only {records} records in the destinations");
    let checked = check_index(writer.offset_index(), &truth, &positions, "live")?;
    {
        let index = writer.offset_index().read().expect("index lock");
        ensure!(!index.is_one_to_one(&orders0), "orders/0 fans out");
        ensure!(
            !index.is_one_to_one(&orders1),
            "orders/1 shares its destination"
        );
        ensure!(index.is_one_to_one(&metrics), "metrics/0 is renamed 1:1");
        ensure!(index.is_one_to_one(&clean), "clean/0 only drops records");
    }

    let topics = client::list_topics(k.central()).await?;
    let index_topic = offset_index_topic(&site.group);
    ensure!(
        !topics.contains(&site.remote("metrics")),
        "a topic whose records were all renamed left an empty destination behind"
    );
    ensure!(
        topics.contains(&index_topic),
        "no {index_topic} in {topics:?}"
    );
    ensure!(er_protocol::is_internal_topic(&index_topic));
    ensure!(
        client::partition_ids(k.central(), &index_topic).await? == vec![0, 1, 2, 3],
        "one partition per shard"
    );
    let admin = client::admin(k.central())?;
    let configs = admin
        .describe_configs(
            [&ResourceSpecifier::Topic(&index_topic)],
            &AdminOptions::new(),
        )
        .await?;
    let config = configs.into_iter().next().context("no config")??;
    let value = |name: &str| {
        config
            .get(name)
            .and_then(|e| e.value.clone())
            .unwrap_or_default()
    };
    ensure!(
        value("cleanup.policy") == "delete",
        "{:?}",
        value("cleanup.policy")
    );
    ensure!(
        value("retention.ms") == "604800000",
        "{:?}",
        value("retention.ms")
    );

    // A hub restart: the old fleet goes away, a new one rejoins the group (same hub id),
    // loads the site's shard and rebuilds the index from the central cluster.
    let old_index = writer.offset_index().clone();
    writer.stop().await?;
    let rebuild_started = Instant::now();
    let writer = site.start().await?;
    let rebuild = rebuild_started.elapsed();
    let resumed: BTreeMap<TopicPartition, i64> = writer
        .positions()
        .into_iter()
        .map(|p| (p.tp, p.next_offset))
        .collect();
    ensure!(resumed == positions, "positions after restart: {resumed:?}");
    check_index(writer.offset_index(), &truth, &positions, "rebuilt")?;
    // The stopped fleet's index must not answer end offsets any more: the new fleet's
    // commits are invisible to it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = old_index
            .read()
            .expect("index lock")
            .translate(&orders0, 128, |d| truth.ends.get(d).copied());
        if t.iter().all(|(_, t)| *t == Translation::NotYet) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "stopped index still answers {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The rebuilt index keeps learning.
    write(
        &writer,
        vec![batch(&orders0, 2, 130..150, 160, |o| {
            if o % 2 == 0 {
                vec![default]
            } else {
                vec![(None, Some(1))]
            }
        })?],
    )
    .await?;
    positions.insert(orders0.clone(), 160);
    let truth = read_truth(k.central(), &dest_topics).await?;
    check_index(writer.offset_index(), &truth, &positions, "after restart")?;
    eprintln!(
        "offset index: {records} records, {checked} translations checked; restart with rebuild took {:.2} s",
        rebuild.as_secs_f64()
    );
    writer.stop().await
}
