//! Transactional edge sources on real Apache Kafka: an edge application writing with Kafka's
//! transactional producer leaves commit and abort markers that occupy offsets, and (under
//! read_committed) aborted records that are never delivered. The agent moves the hub's committed
//! position over them, so failover stays exact: aborted records never arrive centrally, every
//! committed record arrives once and in order, a group caught up to the end of the topic (its
//! offset past the last marker) gets a checkpoint at the end of the remote topic, and groups
//! committed just after a marker or just before an aborted run resume at exactly their next
//! record. Kafka's own `RemoteClusterUtils` reads the same offsets. Also: what
//! `kafka.isolation_level = "read_uncommitted"` replicates, and loop prevention at discovery.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use er_tests::client::{self, NewRecord, Record};
use er_tests::delivery::{self, SeqIn, Seqs};
use er_tests::kafka::shared;
use er_tests::replicator::{Proc, logs};
use er_tests::rig::Rig;
use er_tests::unique_name;
use rdkafka::producer::Producer;

const PARTITIONS: i32 = 2;
const ROUNDS: usize = 6;
/// Rounds produced before the agent starts; the rest are produced while it runs, a little
/// apart, so markers also arrive after their records were batched.
const ROUNDS_BEFORE_START: usize = 3;
const ABORTED_PER_ROUND: usize = 5;

/// The latest checkpoint per (group, destination partition): (upstream, downstream).
async fn checkpoints(central: &str, site: &str) -> BTreeMap<(String, i32), (i64, i64)> {
    let recs = client::consume_to_end(
        central,
        &format!("{site}.checkpoints.internal"),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_default();
    let mut out = BTreeMap::new();
    for r in recs {
        let c = er_protocol::Checkpoint::decode(
            r.key.as_deref().unwrap_or_default(),
            r.value.as_deref().unwrap_or_default(),
        )
        .expect("an MM2 checkpoint");
        out.insert(
            (c.consumer_group_id, c.topic_partition.partition),
            (c.upstream_offset, c.downstream_offset),
        );
    }
    out
}

/// Waits until `dest` on the central cluster holds at least `n` records, then for
/// [`client::SETTLE`], and returns all it holds then (a duplicate committed just after the `n`th
/// record is in it too) with the moment it first held `n`.
async fn wait_for_records(
    central: &str,
    dest: &str,
    n: usize,
    procs: &[&Proc],
) -> anyhow::Result<(Vec<Record>, Instant)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = if client::partition_ids(central, dest).await.is_ok() {
            client::consume_to_end(central, dest, Duration::from_secs(20)).await?
        } else {
            Vec::new()
        };
        if got.len() >= n {
            let reached = Instant::now();
            tokio::time::sleep(client::SETTLE).await;
            let got = client::consume_to_end(central, dest, Duration::from_secs(20)).await?;
            return Ok((got, reached));
        }
        assert!(
            Instant::now() < deadline,
            "{dest}: {} of {n} records\n{}",
            got.len(),
            logs(procs)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits for checkpoints of every `(group, partition) -> upstream` in `want_upstream`.
async fn wait_for_checkpoints(
    central: &str,
    site: &str,
    want_upstream: &BTreeMap<(String, i32), i64>,
    within: Duration,
    procs: &[&Proc],
) -> BTreeMap<(String, i32), (i64, i64)> {
    let deadline = Instant::now() + within;
    loop {
        let c = checkpoints(central, site).await;
        if want_upstream
            .iter()
            .all(|(k, u)| c.get(k).is_some_and(|(up, _)| up == u))
        {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoints at {want_upstream:?} within {within:?}: {c:?}\n{}",
            logs(procs)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One committed record as the edge holds it.
#[derive(Debug, Clone, Copy)]
struct Committed {
    seq: i64,
    partition: i32,
    offset: i64,
}

/// What the edge application wrote.
#[derive(Debug, Default)]
struct EdgeLog {
    committed: Vec<Committed>,
    /// Per round, the (partition, offset) of its aborted records.
    aborted: Vec<Vec<(i32, i64)>>,
    /// Per round, the first committed offset in each partition.
    round_starts: Vec<BTreeMap<i32, i64>>,
}

impl EdgeLog {
    /// One round: a committed transaction of `8 + round` records (sequence numbers as values,
    /// round robin over the partitions), then an aborted one.
    async fn round(&mut self, edge: &str, topic: &str, round: usize) -> anyhow::Result<()> {
        let first = self.committed.len() as i64;
        let seqs: Vec<i64> = (first..first + 8 + round as i64).collect();
        let recs: Vec<NewRecord> = seqs
            .iter()
            .map(|s| NewRecord::new(format!("k{s}"), s.to_string()).partition((s % 2) as i32))
            .collect();
        let at = client::produce_transactional(edge, topic, &recs, true).await?;
        let mut starts = BTreeMap::new();
        for (s, (partition, offset)) in seqs.iter().zip(at) {
            starts.entry(partition).or_insert(offset);
            self.committed.push(Committed {
                seq: *s,
                partition,
                offset,
            });
        }
        self.round_starts.push(starts);
        let aborted: Vec<NewRecord> = (0..ABORTED_PER_ROUND)
            .map(|j| {
                NewRecord::new("aborted", format!("aborted-{round}-{j}")).partition((j % 2) as i32)
            })
            .collect();
        let at = client::produce_transactional(edge, topic, &aborted, false).await?;
        self.aborted.push(at);
        Ok(())
    }

    fn want(&self) -> Seqs {
        let mut out: Seqs = (0..PARTITIONS).map(|p| (p, Vec::new())).collect();
        let mut c = self.committed.clone();
        c.sort_by_key(|r| (r.partition, r.offset));
        for r in c {
            out.entry(r.partition).or_default().push(r.seq);
        }
        out
    }

    /// The first committed record of `partition` at or after edge offset `u`.
    fn next_committed(&self, partition: i32, u: i64) -> Option<Committed> {
        self.committed
            .iter()
            .filter(|r| r.partition == partition && r.offset >= u)
            .min_by_key(|r| r.offset)
            .copied()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactional_source_replicates_committed_records_and_checkpoints_exactly()
-> anyhow::Result<()> {
    let k = shared();
    let p = unique_name("txs");
    let site = unique_name("site");
    let topic = format!("{p}-orders");
    let dest = format!("{site}.{topic}");
    client::create_topic(k.edge(), &topic, PARTITIONS, &[]).await?;
    // Loop prevention: topics whose names say they came from the destination cluster or from
    // this site are selected by the include pattern but never replicated.
    let from_central = format!("central.{p}-loop");
    let from_site = format!("{site}.{p}-echo");
    for t in [&from_central, &from_site] {
        client::create_topic(k.edge(), t, 1, &[]).await?;
        client::produce(k.edge(), t, &[NewRecord::new("k", "0")]).await?;
    }

    let mut edge = EdgeLog::default();
    for round in 0..ROUNDS_BEFORE_START {
        edge.round(k.edge(), &topic, round).await?;
    }

    let rig = Rig::builder()
        .hub(|h| h.extra = "[checkpoints]\ninterval_ms = 500\n".into())
        .agent_with(&site, &format!(".*{p}-.*"), |a| {
            a.max_records = 4;
            a.extra
                .push_str("\n[groups]\ninterval_ms = 300\n\n[heartbeats]\nenabled = false\n");
        })
        .start()?;
    for round in ROUNDS_BEFORE_START..ROUNDS {
        tokio::time::sleep(Duration::from_millis(300)).await;
        edge.round(k.edge(), &topic, round).await?;
    }
    let procs = rig.procs();

    // Every committed record exactly once, in order; no aborted record.
    let (got, _) = wait_for_records(k.central(), &dest, edge.committed.len(), &procs).await?;
    let aborted: Vec<&Record> = got
        .iter()
        .filter(|r| {
            r.value
                .as_deref()
                .is_some_and(|v| v.starts_with(b"aborted"))
        })
        .collect();
    assert!(
        aborted.is_empty(),
        "aborted records reached the central cluster: {aborted:?}"
    );
    delivery::assert_exactly_once_in_order(
        &dest,
        &delivery::seqs_by_partition(&got, SeqIn::Value)?,
        &edge.want(),
        &rig.logs(),
    );
    // Central offset of each sequence number.
    let central_at: BTreeMap<i64, i64> = got
        .iter()
        .map(|r| {
            let seq: i64 = std::str::from_utf8(r.value.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            (seq, r.offset)
        })
        .collect();
    let central_end: BTreeMap<i32, i64> = client::end_offsets(k.central(), &dest)
        .await?
        .into_iter()
        .collect();

    // The groups: caught up to the end (past the last abort marker), just after a commit
    // marker, just before an aborted run.
    let edge_end: BTreeMap<i32, i64> = client::end_offsets(k.edge(), &topic)
        .await?
        .into_iter()
        .collect();
    let last_aborted = edge.aborted.last().unwrap();
    for part in 0..PARTITIONS {
        let last = last_aborted
            .iter()
            .filter(|(pp, _)| *pp == part)
            .map(|(_, o)| *o)
            .max()
            .unwrap();
        assert_eq!(
            edge_end[&part],
            last + 2,
            "the edge partition {part} ends with an abort marker"
        );
    }
    let after_marker: BTreeMap<i32, i64> = edge.round_starts[4].clone();
    for (part, u) in &after_marker {
        assert!(
            !edge
                .committed
                .iter()
                .any(|r| r.partition == *part && r.offset == u - 1),
            "offset {} of partition {part} is a marker, not a record",
            u - 1
        );
    }
    let before_abort: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|part| {
            let first = edge.aborted[1]
                .iter()
                .filter(|(pp, _)| *pp == part)
                .map(|(_, o)| *o)
                .min()
                .unwrap();
            (part, first)
        })
        .collect();
    let groups = [
        (format!("{p}-caught-up"), edge_end.clone()),
        (format!("{p}-after-marker"), after_marker),
        (format!("{p}-before-abort"), before_abort),
    ];
    for (g, offsets) in &groups {
        client::commit_group(k.edge(), g, &topic, offsets);
    }
    let want_upstream: BTreeMap<(String, i32), i64> = groups
        .iter()
        .flat_map(|(g, offsets)| offsets.iter().map(move |(p, u)| ((g.clone(), *p), *u)))
        .collect();
    let committed_at = Instant::now();
    let ours = wait_for_checkpoints(
        k.central(),
        &site,
        &want_upstream,
        Duration::from_secs(30),
        &procs,
    )
    .await;
    println!(
        "checkpoints of all three groups {:?} after the edge commits",
        committed_at.elapsed()
    );
    for ((g, part), u) in &want_upstream {
        let want_down = match edge.next_committed(*part, *u) {
            Some(r) => central_at[&r.seq],
            None => central_end[part],
        };
        assert_eq!(
            ours[&(g.clone(), *part)].1,
            want_down,
            "group {g} at edge offset {u} of partition {part} resumes at its next record\n{}",
            rig.logs()
        );
    }
    assert_eq!(
        ours[&(groups[0].0.clone(), 0)].1,
        central_end[&0],
        "the caught-up group resumes at the end of the remote topic"
    );

    // Kafka's own RemoteClusterUtils reads the same translation.
    let central = k.central().to_owned();
    let site2 = site.clone();
    let names: Vec<String> = groups.iter().map(|(g, _)| g.clone()).collect();
    let kafka_says = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        er_tests::oracle::translate_groups(&central, &site2, &refs, Duration::from_secs(30), &[])
    })
    .await??;
    for (g, _) in &groups {
        let theirs: BTreeMap<i32, i64> = kafka_says[g]
            .iter()
            .map(|((t, part), tr)| {
                assert_eq!(t, &dest);
                (*part, tr.offset)
            })
            .collect();
        let mine: BTreeMap<i32, i64> = (0..PARTITIONS)
            .map(|part| (part, ours[&(g.clone(), part)].1))
            .collect();
        assert_eq!(theirs, mine, "RemoteClusterUtils.translateOffsets for {g}");
    }

    // Loop prevention: skipped with a reason, never replicated.
    let central_topics = client::list_topics(k.central()).await?;
    for t in [&from_central, &from_site] {
        assert!(
            !central_topics.contains(&format!("{site}.{t}")),
            "{t} was replicated"
        );
    }
    let log = rig.agent(&site).log_text();
    for (t, reason) in [
        (&from_central, "from_destination"),
        (&from_site, "from_site"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(t.as_str()) && l.contains(reason)),
            "the agent says why it skips {t}\n{}",
            rig.logs()
        );
    }
    Ok(())
}

/// `read_uncommitted`: records are replicated as the edge log holds them, committed, aborted
/// and still open alike (in offset order); markers are skipped like under read_committed, so a
/// caught-up group still gets a checkpoint at the end. A group failing over from before an
/// aborted run re-reads those aborted records centrally.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_uncommitted_replicates_aborted_and_open_transactions() -> anyhow::Result<()> {
    let k = shared();
    let p = unique_name("txu");
    let site = unique_name("site");
    let topic = format!("{p}-events");
    let dest = format!("{site}.{topic}");
    client::create_topic(k.edge(), &topic, 1, &[]).await?;
    let recs = |tag: &str, n: usize| -> Vec<NewRecord> {
        (0..n)
            .map(|i| NewRecord::new("k", format!("{tag}{i}")))
            .collect()
    };
    client::produce_transactional(k.edge(), &topic, &recs("c", 5), true).await?;
    let aborted = client::produce_transactional(k.edge(), &topic, &recs("a", 3), false).await?;
    // A transaction left open while the agent reads (longer than the default 60 s timeout,
    // after which the broker would abort it itself).
    let open = client::producer(
        k.edge(),
        &[
            ("transactional.id", &unique_name("open-tx")),
            ("transaction.timeout.ms", "300000"),
        ],
    )?;
    let o1 = open.clone();
    tokio::task::spawn_blocking(move || o1.init_transactions(Duration::from_secs(30))).await??;
    open.begin_transaction()?;
    client::send_all(&open, &topic, &recs("o", 4)).await?;

    let rig = Rig::builder()
        .hub(|h| h.extra = "[checkpoints]\ninterval_ms = 500\n".into())
        .agent_with(&site, &format!("{p}-.*"), |a| {
            a.kafka_extra = "isolation_level = \"read_uncommitted\"\n".into();
            a.extra
                .push_str("\n[groups]\ninterval_ms = 300\n\n[heartbeats]\nenabled = false\n");
        })
        .start()?;
    let started = Instant::now();
    let procs = rig.procs();
    let values = |rs: &[Record]| -> Vec<String> {
        rs.iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
            .collect()
    };
    let want_open: Vec<String> = ["c0", "c1", "c2", "c3", "c4", "a0", "a1", "a2"]
        .into_iter()
        .map(String::from)
        .chain((0..4).map(|i| format!("o{i}")))
        .collect();
    let (got, arrived) = wait_for_records(k.central(), &dest, want_open.len(), &procs).await?;
    assert_eq!(
        values(&got),
        want_open,
        "aborted and still-open records are replicated in edge order"
    );
    println!(
        "the open transaction's records arrived {:?} after the agent started",
        arrived - started
    );

    // The open transaction aborts at the edge; it stays replicated. More committed records
    // follow and arrive once.
    let o2 = open.clone();
    tokio::task::spawn_blocking(move || o2.abort_transaction(Duration::from_secs(30))).await??;
    client::produce_transactional(k.edge(), &topic, &recs("d", 2), true).await?;
    let mut want_all = want_open.clone();
    want_all.extend(["d0".to_owned(), "d1".to_owned()]);
    let (got, _) = wait_for_records(k.central(), &dest, want_all.len(), &procs).await?;
    assert_eq!(values(&got), want_all);

    let edge_end = client::end_offsets(k.edge(), &topic).await?[0].1;
    let central_end = client::end_offsets(k.central(), &dest).await?[0].1;
    let caught_up = format!("{p}-caught-up");
    let before_abort = format!("{p}-before-abort");
    client::commit_group(
        k.edge(),
        &caught_up,
        &topic,
        &BTreeMap::from([(0, edge_end)]),
    );
    client::commit_group(
        k.edge(),
        &before_abort,
        &topic,
        &BTreeMap::from([(0, aborted[0].1)]),
    );
    let ours = wait_for_checkpoints(
        k.central(),
        &site,
        &BTreeMap::from([
            ((caught_up.clone(), 0), edge_end),
            ((before_abort.clone(), 0), aborted[0].1),
        ]),
        Duration::from_secs(30),
        &procs,
    )
    .await;
    assert_eq!(
        ours[&(caught_up, 0)].1,
        central_end,
        "end of the remote topic"
    );
    let a0 = got
        .iter()
        .find(|r| r.value.as_deref() == Some(b"a0"))
        .unwrap()
        .offset;
    assert_eq!(
        ours[&(before_abort, 0)].1,
        a0,
        "a group from before the aborted run resumes at its first (replicated) aborted record"
    );
    Ok(())
}
