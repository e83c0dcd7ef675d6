//! The workload: deterministic records, the preloader, and what the destination must hold
//! (count and an order-sensitive digest per partition).

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde_json::Value;

use crate::scenario::{Payload, Processing};

/// Header carrying the send time (µs since the epoch) of latency records.
pub const SENT_HEADER: &str = "bench-sent-us";

/// What to preload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Workload {
    /// Records over all topics.
    pub records: u64,
    /// Value size in bytes (JSON values are padded to it; a JSON skeleton larger than it wins).
    pub value_bytes: usize,
    /// Partitions per topic.
    pub partitions: i32,
    /// Number of source topics.
    pub topics: u32,
    /// Distinct keys.
    pub keys: u64,
    /// Value kind.
    pub payload: Payload,
    /// Whether 10% of records get header `hot` = `1`.
    pub hot_headers: bool,
    /// Compression of the preloading producer (`zstd`, `lz4`, `none`, ...), which is also what
    /// a fetch from the edge broker carries.
    pub source_compression: String,
}

/// SplitMix64: a fast, well-mixed function of the record index.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const WORDS: &[&str] = &[
    "pressure",
    "nominal",
    "valve",
    "line",
    "shift",
    "conveyor",
    "ok",
    "sensor",
    "drift",
    "calibrated",
    "north",
    "south",
    "batch",
    "motor",
    "idle",
    "running",
    "spindle",
    "coolant",
];

/// A generated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenRecord {
    /// Partition (explicit, from the key).
    pub partition: i32,
    /// Key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// Whether it carries `hot: 1`.
    pub hot: bool,
    /// Create time, ms.
    pub timestamp: i64,
}

impl Workload {
    /// Record `i` of the workload (deterministic in `i` and `base_ts`).
    pub fn record(&self, i: u64, base_ts: i64) -> GenRecord {
        let r = mix(i);
        let key_id = mix(i ^ 0x5eed) % self.keys.max(1);
        let key = format!("k-{key_id:08}").into_bytes();
        let partition = (mix(key_id) % self.partitions.max(1) as u64) as i32;
        let value = match self.payload {
            Payload::Json => json_value(i, r, self.value_bytes),
            Payload::Random => {
                let mut v = Vec::with_capacity(self.value_bytes + 8);
                let mut s = r;
                while v.len() < self.value_bytes {
                    s = mix(s);
                    v.extend_from_slice(&s.to_le_bytes());
                }
                v.truncate(self.value_bytes);
                v
            }
        };
        GenRecord {
            partition,
            key,
            value,
            hot: self.hot_headers && mix(i ^ 0x40_7a11).is_multiple_of(10),
            timestamp: base_ts + (i / 1000) as i64,
        }
    }

    /// Source topic `t` of a scenario whose topics share `prefix`.
    pub fn topic(prefix: &str, t: u32) -> String {
        format!("{prefix}-t{t}")
    }
}

/// A sensor-style JSON object of about `size` bytes.
pub fn json_value(i: u64, r: u64, size: usize) -> Vec<u8> {
    let (temp, temp_frac) = ((r >> 24) % 60, (r >> 32) % 10);
    let (hum, hum_frac) = ((r >> 36) % 100, (r >> 44) % 10);
    let mut s = if size < 256 {
        // Small records: the fields the transform touches, little else.
        format!(
            "{{\"seq\":{i},\"temp\":{temp}.{temp_frac},\"humidity\":{hum}.{hum_frac},\"note\":\""
        )
    } else {
        format!(
            "{{\"site\":\"plant-{}\",\"sensor\":\"s-{:05}\",\"seq\":{i},\"temp\":{temp}.{temp_frac},\"humidity\":{hum}.{hum_frac},\"status\":\"{}\",\"note\":\"",
            r % 16,
            (r >> 8) % 100_000,
            if (r >> 48).is_multiple_of(20) {
                "alarm"
            } else {
                "ok"
            },
        )
    };
    let mut w = r;
    while s.len() + 2 < size {
        w = mix(w);
        let word = WORDS[(w % WORDS.len() as u64) as usize];
        if s.len() + word.len() + 3 > size {
            // Fill the last few bytes exactly.
            while s.len() + 2 < size {
                s.push('.');
            }
            break;
        }
        if !s.ends_with('"') {
            s.push(' ');
        }
        s.push_str(word);
    }
    s.push_str("\"}");
    s.into_bytes()
}

/// What our transform (and the baseline's) does to a JSON value.
pub fn transform_json(v: &mut Value) {
    if let Value::Object(m) = v {
        m.remove("humidity");
        if let Some(t) = m.remove("temp") {
            m.insert("temperature".into(), t);
        }
    }
}

/// `v` serialized with object keys sorted at every level: equal for equal JSON, whatever order
/// or spacing a serializer chose.
pub fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            Value::Number(n) => out.push_str(&n.as_f64().map_or(n.to_string(), |f| f.to_string())),
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    write(v, &mut s);
    s
}

/// Order-sensitive digest of one partition's records.
#[derive(Debug, Clone, Default)]
pub struct Digest {
    /// Records folded in.
    pub count: u64,
    h: DefaultHasher,
}

fn opt(h: &mut DefaultHasher, b: Option<&[u8]>) {
    match b {
        None => h.write_u8(0),
        Some(b) => {
            h.write_u8(1);
            h.write_usize(b.len());
            h.write(b);
        }
    }
}

impl Digest {
    /// Folds in a record: key, value, headers in order, timestamp.
    pub fn add(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        timestamp: i64,
    ) {
        let h = &mut self.h;
        opt(h, key);
        opt(h, value);
        h.write_usize(headers.len());
        for (k, v) in headers {
            opt(h, Some(k.as_bytes()));
            opt(h, *v);
        }
        h.write_i64(timestamp);
        self.count += 1;
    }

    /// The digest value.
    pub fn value(&self) -> u64 {
        self.h.finish()
    }
}

/// What the destination must hold, per source topic and partition.
#[derive(Debug, Clone)]
pub struct Expected {
    /// `[topic][partition]`.
    pub parts: Vec<Vec<Digest>>,
    /// Records preloaded (source side).
    pub source_records: u64,
    /// Key + value bytes preloaded.
    pub source_bytes: u64,
    /// Records the destination must hold.
    pub kept_records: u64,
    /// Key + value bytes the destination must hold.
    pub kept_bytes: u64,
}

impl Expected {
    /// Expected digest of `(topic, partition)`.
    pub fn part(&self, topic: usize, partition: i32) -> Option<&Digest> {
        self.parts.get(topic)?.get(usize::try_from(partition).ok()?)
    }
}

/// The value a destination digest sees for a record after `processing` (`None` = dropped).
pub fn processed_value(processing: Processing, rec: &GenRecord) -> Option<Vec<u8>> {
    match processing {
        Processing::None => Some(rec.value.clone()),
        Processing::FilterHot => rec.hot.then(|| rec.value.clone()),
        Processing::JsonTransform => {
            let mut v: Value = serde_json::from_slice(&rec.value).ok()?;
            transform_json(&mut v);
            Some(canonical_json(&v).into_bytes())
        }
    }
}

#[derive(Default)]
struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// A fast producer: idempotent (per-partition order kept under retries), many sends in flight.
fn fast_producer(
    bootstrap: &str,
    compression: &str,
    linger_ms: u32,
) -> Result<BaseProducer<DeliveryCounter>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("batch.size", "1000000")
        .set("compression.type", compression)
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "120000")
        .create_with_context(DeliveryCounter::default())
        .context("creating the preload producer")
}

/// Sends one record, waiting for room in librdkafka's queue when it is full.
fn send_retrying(
    p: &BaseProducer<DeliveryCounter>,
    mut rec: BaseRecord<'_, [u8], [u8]>,
) -> Result<()> {
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                p.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e).context("enqueueing a record"),
        }
    }
}

/// Preloads the workload into `Workload::topic(prefix, t)` (which must exist with the right
/// partitions) and returns what a destination must hold after `processing`.
pub fn preload(
    bootstrap: &str,
    w: &Workload,
    prefix: &str,
    processing: Processing,
    base_ts: i64,
) -> Result<(Expected, Duration)> {
    let p = fast_producer(bootstrap, &w.source_compression, 20)?;
    let parts = w.partitions as usize;
    let mut exp = Expected {
        parts: vec![vec![Digest::default(); parts]; w.topics as usize],
        source_records: 0,
        source_bytes: 0,
        kept_records: 0,
        kept_bytes: 0,
    };
    let topics: Vec<String> = (0..w.topics).map(|t| Workload::topic(prefix, t)).collect();
    let started = Instant::now();
    for i in 0..w.records {
        let t = (i % u64::from(w.topics)) as usize;
        let rec = w.record(i, base_ts);
        let headers_vec: Vec<(&str, Option<&[u8]>)> = if rec.hot {
            vec![("hot", Some(b"1".as_slice()))]
        } else {
            Vec::new()
        };
        exp.source_records += 1;
        exp.source_bytes += (rec.key.len() + rec.value.len()) as u64;
        if let Some(v) = processed_value(processing, &rec) {
            exp.kept_records += 1;
            exp.kept_bytes += (rec.key.len() + v.len()) as u64;
            exp.parts[t][rec.partition as usize].add(
                Some(&rec.key),
                Some(&v),
                &headers_vec,
                rec.timestamp,
            );
        }
        let mut br: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topics[t])
            .key(rec.key.as_slice())
            .payload(rec.value.as_slice())
            .partition(rec.partition)
            .timestamp(rec.timestamp);
        if rec.hot {
            br = br.headers(OwnedHeaders::new().insert(Header {
                key: "hot",
                value: Some(b"1".as_slice()),
            }));
        }
        send_retrying(&p, br)?;
        if i % 1024 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(300))
        .context("flushing the preload")?;
    let ctx = p.context();
    if ctx.failed.load(Ordering::Relaxed) > 0 {
        bail!(
            "preload: {} records failed: {}",
            ctx.failed.load(Ordering::Relaxed),
            ctx.first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default()
        );
    }
    let delivered = ctx.delivered.load(Ordering::Relaxed);
    if delivered != w.records {
        bail!("preload: {delivered} of {} records delivered", w.records);
    }
    Ok((exp, started.elapsed()))
}

/// Produces one small record per partition of `topic` (so that a replicator creates the remote
/// topic before the latency phase starts).
pub fn warm_up(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let p = fast_producer(bootstrap, "none", 0)?;
    for part in 0..partitions {
        send_retrying(
            &p,
            BaseRecord::to(topic)
                .key(b"warm-up".as_slice())
                .payload(b"{}".as_slice())
                .partition(part)
                // Kept by the filter scenarios too.
                .headers(OwnedHeaders::new().insert(Header {
                    key: "hot",
                    value: Some(b"1".as_slice()),
                })),
        )?;
    }
    p.flush(Duration::from_secs(30))?;
    if p.context().delivered.load(Ordering::Relaxed) != partitions as u64 {
        bail!("warm-up records to {topic} not delivered");
    }
    Ok(())
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Microseconds since the epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A producer for the latency phase: no linger, so records leave as they are made.
pub fn latency_producer(
    bootstrap: &str,
) -> Result<BaseProducer<impl ProducerContext<DeliveryOpaque = ()>>> {
    fast_producer(bootstrap, "none", 0)
}

/// Sends `rec` through any base producer, waiting while its queue is full.
pub fn send_one<C: ProducerContext<DeliveryOpaque = ()>>(
    p: &BaseProducer<C>,
    mut rec: BaseRecord<'_, [u8], [u8]>,
) -> Result<()> {
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                p.poll(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e).context("enqueueing a latency record"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(payload: Payload, size: usize) -> Workload {
        Workload {
            records: 1000,
            value_bytes: size,
            partitions: 8,
            topics: 1,
            keys: 100,
            payload,
            hot_headers: true,
            source_compression: "zstd".into(),
        }
    }

    #[test]
    fn json_values_have_the_requested_size_and_parse() {
        for size in [100, 1024, 10_240] {
            let wl = w(Payload::Json, size);
            for i in 0..200 {
                let r = wl.record(i, 0);
                let v: Value = serde_json::from_slice(&r.value).expect("valid JSON");
                assert!(v["temp"].is_number());
                assert_eq!(r.value.len(), size, "record {i}");
            }
        }
    }

    #[test]
    fn records_are_deterministic_and_spread() {
        let wl = w(Payload::Random, 64);
        assert_eq!(wl.record(42, 7), wl.record(42, 7));
        assert_eq!(wl.record(1, 0).value.len(), 64);
        let mut per_part = [0u32; 8];
        let mut hot = 0;
        for i in 0..10_000 {
            let r = wl.record(i, 0);
            per_part[r.partition as usize] += 1;
            hot += u32::from(r.hot);
        }
        assert!(per_part.iter().all(|&n| n > 500), "{per_part:?}");
        assert!((800..1200).contains(&hot), "hot {hot}");
    }

    #[test]
    fn digest_is_order_and_null_sensitive() {
        let mut a = Digest::default();
        a.add(Some(b"k"), Some(b"1"), &[], 1);
        a.add(Some(b"k"), Some(b"2"), &[], 1);
        let mut b = Digest::default();
        b.add(Some(b"k"), Some(b"2"), &[], 1);
        b.add(Some(b"k"), Some(b"1"), &[], 1);
        assert_ne!(a.value(), b.value());
        let mut c = Digest::default();
        c.add(None, Some(b""), &[], 1);
        let mut d = Digest::default();
        d.add(Some(b""), None, &[], 1);
        assert_ne!(c.value(), d.value());
    }

    #[test]
    fn canonical_json_ignores_key_order_and_spacing() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1.50, "a": {"y": [1, "x"], "x": null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,"x"]},"b":1.5}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        let mut t: Value = serde_json::from_str(r#"{"temp":1,"humidity":2,"x":3}"#).unwrap();
        transform_json(&mut t);
        assert_eq!(canonical_json(&t), r#"{"temperature":1,"x":3}"#);
    }
}
