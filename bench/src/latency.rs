//! End-to-end latency at a fixed moderate rate: records stamped with their send time at the edge,
//! read back at the destination; latency = arrival - send (one clock, one machine).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::data::{self, SENT_HEADER, Workload, now_us};
use crate::scenario::LatencyPlan;

/// Latency percentiles of one run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    /// Records sent.
    pub sent: u64,
    /// Records that arrived.
    pub received: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
    /// MM2 heartbeats that arrived in the replicated heartbeats topic meanwhile (ours only).
    pub heartbeats: u64,
    /// Their median end-to-end latency, ms: arrival minus the heartbeat's own timestamp
    /// (when the agent emitted it; millisecond resolution).
    pub heartbeat_p50_ms: Option<f64>,
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sends `plan.rate` records/s for `plan.duration` to `src` on the edge and measures their
/// arrival in `dest` on the central cluster. Records carry header `hot` = `1` so that a
/// filtering replicator keeps them. With `heartbeats` (the replicated MM2 heartbeats topic on
/// the central cluster), also measures the heartbeats that arrive there meanwhile.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    edge: &str,
    central: &str,
    src: &str,
    dest: &str,
    heartbeats: Option<&str>,
    partitions: i32,
    w: &Workload,
    plan: LatencyPlan,
) -> Result<Latency> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", central)
        .set("group.id", er_tests::unique_name("er-bench-latency"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "100")
        .create()
        .context("creating the latency consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(dest, p, Offset::End)?;
    }
    if let Some(t) = heartbeats {
        tpl.add_partition_offset(t, 0, Offset::End)?;
    }
    c.assign(&tpl)?;
    // Let the consumer settle on its end offsets before anything is sent.
    let settle = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < settle {
        if let Some(m) = c.poll(Duration::from_millis(50)) {
            m?;
        }
    }

    let total = u64::from(plan.rate) * plan.duration.as_secs_f64().round() as u64;
    let sender = {
        let (edge, src, w) = (edge.to_owned(), src.to_owned(), w.clone());
        std::thread::spawn(move || -> Result<()> {
            let p = data::latency_producer(&edge)?;
            let start = Instant::now();
            let base_ts = data::now_ms();
            for i in 0..total {
                let due = start + Duration::from_secs_f64(i as f64 / f64::from(plan.rate));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let rec = w.record(i, base_ts);
                let sent = now_us().to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "hot",
                        value: Some(b"1".as_slice()),
                    })
                    .insert(Header {
                        key: SENT_HEADER,
                        value: Some(sent.as_bytes()),
                    });
                data::send_one(
                    &p,
                    BaseRecord::to(&src)
                        .key(rec.key.as_slice())
                        .payload(rec.value.as_slice())
                        .partition((i % partitions as u64) as i32)
                        .headers(headers),
                )?;
                p.poll(Duration::ZERO);
            }
            p.flush(Duration::from_secs(30))?;
            Ok(())
        })
    };

    let mut lat: Vec<f64> = Vec::with_capacity(total as usize);
    let mut beats: Vec<f64> = Vec::new();
    let mut deadline = None;
    while (lat.len() as u64) < total {
        if deadline.is_none() && sender.is_finished() {
            deadline = Some(Instant::now() + Duration::from_secs(30));
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            break;
        }
        let Some(m) = c.poll(Duration::from_millis(20)) else {
            continue;
        };
        let m = m?;
        let now = now_us();
        if Some(m.topic()) == heartbeats {
            let beat = m
                .key()
                .zip(m.payload())
                .and_then(|(k, v)| er_protocol::Heartbeat::decode(k, v).ok());
            if let Some(b) = beat {
                beats.push((now / 1000 - b.timestamp) as f64);
            }
            continue;
        }
        let sent = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == SENT_HEADER)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<i64>().ok())
        });
        if let Some(sent) = sent {
            lat.push((now - sent) as f64 / 1000.0);
        }
    }
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("latency sender panicked"))??;
    if lat.is_empty() {
        bail!("no latency record arrived in {dest}");
    }
    let received = lat.len() as u64;
    lat.sort_by(f64::total_cmp);
    beats.sort_by(f64::total_cmp);
    Ok(Latency {
        sent: total,
        received,
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        max_ms: *lat.last().expect("not empty"),
        heartbeats: beats.len() as u64,
        heartbeat_p50_ms: (!beats.is_empty()).then(|| quantile(&beats, 0.5)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
