//! The baseline: the plainest rdkafka consume -> produce loop, run as `er-bench pipe` in its own
//! process so that its CPU and memory are measured like the replicators'.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::data::{canonical_json, transform_json};

/// `er-bench pipe`: copies topics from one cluster to another until killed.
#[derive(Debug, Clone, clap::Args)]
pub struct PipeArgs {
    /// Source bootstrap servers.
    #[arg(long)]
    pub from: String,
    /// Destination bootstrap servers.
    #[arg(long)]
    pub to: String,
    /// `source=destination` topic pairs (destination topics must exist with as many partitions).
    #[arg(long = "map", required = true)]
    pub maps: Vec<String>,
    /// Partitions per source topic.
    #[arg(long)]
    pub partitions: i32,
    /// Keep only records carrying this header with this value (`name=value`).
    #[arg(long)]
    pub keep_header: Option<String>,
    /// Apply the JSON transform (drop `humidity`, rename `temp` to `temperature`).
    #[arg(long)]
    pub json_transform: bool,
    /// Producer compression.
    #[arg(long, default_value = "zstd")]
    pub compression: String,
    /// Producer linger.
    #[arg(long, default_value_t = 10)]
    pub linger_ms: u32,
    /// Producer batch size in bytes.
    #[arg(long, default_value_t = 262_144)]
    pub batch_bytes: u32,
}

/// Runs the pipe forever (or until an error).
pub fn run(args: &PipeArgs) -> Result<()> {
    let maps: Vec<(String, String)> = args
        .maps
        .iter()
        .map(|m| {
            m.split_once('=')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .with_context(|| format!("--map {m:?}: expected source=destination"))
        })
        .collect::<Result<_>>()?;
    let keep = args
        .keep_header
        .as_deref()
        .map(|h| {
            h.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
                .context("--keep-header: expected name=value")
        })
        .transpose()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.from)
        .set("group.id", "er-bench-pipe")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("creating the pipe consumer")?;
    let mut tpl = TopicPartitionList::new();
    for (src, _) in &maps {
        for p in 0..args.partitions {
            tpl.add_partition_offset(src, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.to)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", args.linger_ms.to_string())
        .set("batch.size", args.batch_bytes.to_string())
        .set("compression.type", &args.compression)
        .set("message.timeout.ms", "120000")
        .create()
        .context("creating the pipe producer")?;
    loop {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            producer.poll(Duration::ZERO);
            continue;
        };
        let m = m.context("consuming")?;
        let dest = &maps
            .iter()
            .find(|(s, _)| s == m.topic())
            .context("record from an unmapped topic")?
            .1;
        if let Some((k, v)) = &keep {
            let hit = m.headers().is_some_and(|h| {
                h.iter()
                    .filter(|h| h.key == k)
                    .last()
                    .is_some_and(|h| h.value == Some(v.as_slice()))
            });
            if !hit {
                continue;
            }
        }
        let transformed;
        let value = match m.payload() {
            Some(p) if args.json_transform => match serde_json::from_slice(p) {
                Ok(mut v) => {
                    transform_json(&mut v);
                    transformed = canonical_json(&v).into_bytes();
                    Some(transformed.as_slice())
                }
                Err(_) => Some(p),
            },
            other => other,
        };
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(dest).partition(m.partition());
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        if let Some(ts) = m.timestamp().to_millis() {
            rec = rec.timestamp(ts);
        }
        if let Some(h) = m.headers() {
            let mut out = OwnedHeaders::new_with_capacity(h.count());
            for h in h.iter() {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
            rec = rec.headers(out);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    rec = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("producing: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
}
