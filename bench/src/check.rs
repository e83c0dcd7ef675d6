//! Reads the destination while a replicator runs: times the first and last arrival and checks
//! that every partition holds exactly the expected records (count and digest).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

use crate::data::{Digest, Expected, canonical_json};

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    /// Destination bootstrap servers.
    pub bootstrap: String,
    /// Destination topic of each source topic, in source order.
    pub topics: Vec<String>,
    /// Partitions per topic.
    pub partitions: i32,
    /// Compare values as canonical JSON (after a transform whose serializer we do not control).
    pub canonical_json: bool,
    /// Give up when nothing new arrived for this long (replicator start-up included).
    pub stall_timeout: Duration,
    /// Records read so far, for watchers while the check runs (the lag sampler).
    pub progress: Arc<AtomicU64>,
}

/// The outcome of a check.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    /// `None` when the destination holds exactly the expected records.
    pub failure: Option<String>,
    /// First arrival: the first end offset above zero or the first record read, whichever came
    /// first.
    pub first: Option<Instant>,
    /// When the last expected record was read (read_committed).
    pub last: Option<Instant>,
    /// Records read.
    pub records: u64,
}

/// Runs the check on the calling thread until done, failed, stalled or `abort` is set (with
/// `abort_reason` read then).
pub fn run(
    spec: &CheckSpec,
    expected: &Expected,
    abort: &AtomicBool,
    abort_reason: &dyn Fn() -> String,
) -> CheckOutcome {
    let mut out = CheckOutcome {
        failure: None,
        first: None,
        last: None,
        records: 0,
    };
    if let Err(e) = check(spec, expected, abort, abort_reason, &mut out) {
        out.failure = Some(format!("{e:#}"));
    }
    out
}

fn consumer(bootstrap: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", er_tests::unique_name("er-bench-check"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "50")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .context("creating the check consumer")
}

/// Whether every destination topic exists with all partitions led.
fn topics_ready(c: &BaseConsumer, topics: &[String], partitions: i32) -> bool {
    topics.iter().all(|t| {
        c.fetch_metadata(Some(t), Duration::from_secs(2))
            .ok()
            .is_some_and(|md| {
                md.topics().iter().any(|mt| {
                    mt.name() == t
                        && mt.error().is_none()
                        && mt.partitions().len() == partitions as usize
                        && mt.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
    })
}

fn check(
    spec: &CheckSpec,
    expected: &Expected,
    abort: &AtomicBool,
    abort_reason: &dyn Fn() -> String,
    out: &mut CheckOutcome,
) -> Result<()> {
    let started = Instant::now();
    let meta = consumer(&spec.bootstrap)?;
    let mut progress_at = Instant::now();
    let aborted = || -> Result<()> {
        if abort.load(Ordering::Relaxed) {
            anyhow::bail!("{}", abort_reason());
        }
        Ok(())
    };
    // 1. The replicator creates the destination topics (the baseline's exist already).
    while !topics_ready(&meta, &spec.topics, spec.partitions) {
        aborted()?;
        if progress_at.elapsed() > spec.stall_timeout {
            anyhow::bail!(
                "destination topics {:?} did not appear within {:?}",
                spec.topics,
                spec.stall_timeout
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // 2. Read everything from the beginning.
    let c = consumer(&spec.bootstrap)?;
    let mut tpl = TopicPartitionList::new();
    for t in &spec.topics {
        for p in 0..spec.partitions {
            tpl.add_partition_offset(t, p, Offset::Beginning)?;
        }
    }
    c.assign(&tpl)?;
    let parts = spec.partitions as usize;
    let mut got: Vec<Vec<Digest>> = vec![vec![Digest::default(); parts]; spec.topics.len()];
    let mut done = 0u64;
    let mut last_watermark_poll = Instant::now() - Duration::from_secs(1);
    progress_at = Instant::now();
    let mut headers_buf: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    while done < expected.kept_records {
        aborted()?;
        // Until the first record is read, end offsets tell when data started landing (the
        // consumer's first fetch can trail it).
        if out.first.is_none() && last_watermark_poll.elapsed() >= Duration::from_millis(50) {
            last_watermark_poll = Instant::now();
            let landed = spec.topics.iter().any(|t| {
                (0..spec.partitions).any(|p| {
                    meta.fetch_watermarks(t, p, Duration::from_secs(1))
                        .is_ok_and(|(_, high)| high > 0)
                })
            });
            if landed {
                out.first = Some(last_watermark_poll);
            }
        }
        let Some(msg) = c.poll(Duration::from_millis(50)) else {
            if progress_at.elapsed() > spec.stall_timeout {
                anyhow::bail!(
                    "stalled: {done} of {} records after {:?} (nothing new for {:?})",
                    expected.kept_records,
                    started.elapsed(),
                    spec.stall_timeout
                );
            }
            continue;
        };
        let m = msg.context("reading the destination")?;
        let now = Instant::now();
        out.first.get_or_insert(now);
        progress_at = now;
        let ti = spec
            .topics
            .iter()
            .position(|t| t == m.topic())
            .context("record from an unexpected topic")?;
        let pi = m.partition() as usize;
        let exp = expected
            .part(ti, m.partition())
            .with_context(|| format!("unexpected partition {}", m.partition()))?;
        let d = &mut got[ti][pi];
        if d.count >= exp.count {
            anyhow::bail!(
                "{}[{}] holds more than the {} expected records (duplicates?)",
                m.topic(),
                pi,
                exp.count
            );
        }
        headers_buf.clear();
        if let Some(h) = m.headers() {
            for h in h.iter() {
                headers_buf.push((h.key.to_owned(), h.value.map(<[u8]>::to_vec)));
            }
        }
        let headers: Vec<(&str, Option<&[u8]>)> = headers_buf
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        let canonical;
        let value = if spec.canonical_json {
            canonical = m
                .payload()
                .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                .map(|v| canonical_json(&v).into_bytes());
            canonical.as_deref()
        } else {
            m.payload()
        };
        d.add(
            m.key(),
            value,
            &headers,
            m.timestamp().to_millis().unwrap_or(-1),
        );
        done += 1;
        out.records = done;
        spec.progress.store(done, Ordering::Relaxed);
        if done == expected.kept_records {
            out.last = Some(now);
        }
    }
    // 3. Anything beyond the expected count (a duplicate of the last records) shows up now.
    let linger = Instant::now() + Duration::from_millis(500);
    while Instant::now() < linger {
        if let Some(m) = c.poll(Duration::from_millis(50)) {
            let m = m?;
            anyhow::bail!(
                "extra record after all {} expected: {}[{}]@{}",
                expected.kept_records,
                m.topic(),
                m.partition(),
                m.offset()
            );
        }
    }
    for (ti, t) in spec.topics.iter().enumerate() {
        for p in 0..spec.partitions {
            let e = expected.part(ti, p).context("expected partition")?;
            let g = &got[ti][p as usize];
            if g.count != e.count || g.value() != e.value() {
                anyhow::bail!(
                    "{t}[{p}]: {} records, digest {:016x}; expected {} records, digest {:016x}",
                    g.count,
                    g.value(),
                    e.count,
                    e.value()
                );
            }
        }
    }
    Ok(())
}

/// Runs [`run`] on its own thread.
pub fn spawn(
    spec: CheckSpec,
    expected: Arc<Expected>,
    abort: Arc<AtomicBool>,
    abort_reason: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::thread::JoinHandle<CheckOutcome> {
    std::thread::Builder::new()
        .name("er-bench-check".into())
        .spawn(move || run(&spec, &expected, &abort, &*abort_reason))
        .expect("spawning the check thread")
}
