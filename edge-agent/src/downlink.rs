//! Central -> edge: the records the hub sends down, written into the edge cluster exactly once.
//!
//! A session that accepts the hub's offer starts one writer thread. It owns a transactional
//! producer (`transactional.id` = `edge-replicator-downlink-<site>`: a second agent of the site
//! fences the first) and a consumer of `[downlink] group` that is never subscribed: its group's
//! committed offsets are the downlink positions, and its group metadata lets a transaction
//! commit them. Each transaction carries the records of every batch that arrived since the last
//! one and, for each of their partitions, the next central offset as the group's committed
//! offset of that edge partition (`central.T/p` holds its own source position). Records and
//! position commit together or not at all, so a session that dies anywhere resumes from the
//! positions of the last committed transaction: nothing twice, nothing missed.
//!
//! Loop prevention: the hub names each downlinked topic `<central alias>.<topic>`; the agent
//! takes only names whose source chain passes through a central cluster it replicates to, the
//! very topics its [`LoopGuard`] never sends back up.

use std::collections::BTreeMap;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use er_protocol::{Batch, Position, TopicMetadata, TopicPartition};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::{DownlinkSettings, KafkaSettings};
use crate::source::{LoopGuard, SkipReason};

/// How long a Kafka call of the writer may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// Most batches one edge transaction takes.
const BATCHES_PER_TRANSACTION: usize = 256;

/// Largest uncompressed batch the agent decodes (the hub's downlink batches are far smaller).
const MAX_UNCOMPRESSED: u32 = 64 * 1024 * 1024;

/// What the session hands the writer thread.
enum Cmd {
    /// Create (or grow) the offered topics and read where each new partition resumes.
    Prepare(Vec<TopicMetadata>),
    /// Write these records and their position.
    Write(Batch),
}

/// What the writer thread answers.
#[derive(Debug)]
pub enum Reply {
    /// Where each accepted partition resumes.
    Started(Vec<Position>),
    /// A transaction committed these partitions up to these offsets, holding `bytes` of the
    /// batches received.
    Committed {
        /// Partition and its next central offset.
        positions: Vec<(TopicPartition, i64)>,
        /// Payload bytes of the batches the transaction held.
        bytes: u64,
    },
    /// The writer failed; the session ends and the next one resumes from the committed positions.
    Failed(anyhow::Error),
}

/// The session's handle on its downlink writer.
pub struct Downlink {
    cmds: std_mpsc::Sender<Cmd>,
    /// The writer's answers, for the session's select loop.
    pub replies: mpsc::UnboundedReceiver<Reply>,
    pending_bytes: u64,
    max_pending_bytes: u64,
}

impl std::fmt::Debug for Downlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downlink")
            .field("pending_bytes", &self.pending_bytes)
            .finish_non_exhaustive()
    }
}

/// The offered topics the agent takes: valid names that the loop guard keeps from going back
/// up (they came from a central cluster). The others are logged and left out.
pub fn accepted(offer: Vec<TopicMetadata>, guard: &LoopGuard) -> Vec<TopicMetadata> {
    offer
        .into_iter()
        .filter(|t| {
            let valid = er_protocol::validate_topic_name(&t.topic);
            let from_central = matches!(guard.check(&t.topic), Some(SkipReason::FromDestination));
            if valid.is_err() || !from_central {
                warn!(topic = %er_net::Untrusted(&t.topic), "the hub offered a downlink topic that is not named after a central cluster; not taken (it could loop back up)");
            }
            valid.is_ok() && from_central
        })
        .collect()
}

impl Downlink {
    /// Starts the writer thread of `site`; [`Downlink::prepare`] hands it the topics.
    pub fn start(
        kafka: &KafkaSettings,
        settings: &DownlinkSettings,
        site: &str,
    ) -> anyhow::Result<Self> {
        let writer = Writer::new(kafka, settings, site)?;
        let (cmds, cmd_rx) = std_mpsc::channel();
        let (reply_tx, replies) = mpsc::unbounded_channel();
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("downlink-writer".into())
            .spawn(move || writer.run(&handle, &cmd_rx, &reply_tx))
            .context("starting the downlink writer thread")?;
        Ok(Self {
            cmds,
            replies,
            pending_bytes: 0,
            max_pending_bytes: settings.max_pending_bytes,
        })
    }

    /// Asks the writer to create (or grow) offered topics and read where their new partitions
    /// resume; its [`Reply::Started`] comes on `replies`.
    pub fn prepare(&mut self, topics: Vec<TopicMetadata>) -> anyhow::Result<()> {
        self.cmds
            .send(Cmd::Prepare(topics))
            .map_err(|_| anyhow!("the downlink writer stopped"))
    }

    /// Hands a batch to the writer; an error when the hub sent more than
    /// `downlink.max_pending_bytes` ahead of what the edge committed.
    pub fn write(&mut self, batch: Batch) -> anyhow::Result<()> {
        self.pending_bytes += batch.payload.len() as u64;
        if self.pending_bytes > self.max_pending_bytes {
            bail!(
                "the hub sent {} downlink bytes not yet committed at the edge, more than downlink.max_pending_bytes ({})",
                self.pending_bytes,
                self.max_pending_bytes
            );
        }
        self.cmds
            .send(Cmd::Write(batch))
            .map_err(|_| anyhow!("the downlink writer stopped"))
    }

    /// A transaction committed `bytes` of what was handed over.
    pub fn committed(&mut self, bytes: u64) {
        self.pending_bytes = self.pending_bytes.saturating_sub(bytes);
    }
}

/// The writer thread's clients.
struct Writer {
    producer: BaseProducer,
    positions: BaseConsumer,
    admin: AdminClient<DefaultClientContext>,
    group: String,
    transactional_id: String,
    /// Next central offset committed per accepted partition.
    committed: BTreeMap<TopicPartition, i64>,
}

impl Writer {
    fn new(kafka: &KafkaSettings, settings: &DownlinkSettings, site: &str) -> anyhow::Result<Self> {
        let transactional_id = format!("edge-replicator-downlink-{site}");
        let base = crate::kafka::base_config(kafka);
        let producer: BaseProducer = base
            .clone()
            .set("transactional.id", &transactional_id)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .context("creating the downlink producer")?;
        let positions: BaseConsumer = base
            .clone()
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .context("creating the downlink position reader")?;
        let admin = base
            .create()
            .context("creating the downlink admin client")?;
        Ok(Self {
            producer,
            positions,
            admin,
            group: settings.group.clone(),
            transactional_id,
            committed: BTreeMap::new(),
        })
    }

    fn run(
        mut self,
        rt: &tokio::runtime::Handle,
        cmds: &std_mpsc::Receiver<Cmd>,
        replies: &mpsc::UnboundedSender<Reply>,
    ) {
        let result = (|| -> anyhow::Result<()> {
            self.producer
                .init_transactions(KAFKA_TIMEOUT)
                .context("initialising the downlink producer's transactions")?;
            info!(transactional_id = %self.transactional_id, group = %self.group, "downlink writer ready");
            while let Ok(cmd) = cmds.recv() {
                let reply = match cmd {
                    Cmd::Prepare(topics) => Reply::Started(self.prepare(rt, &topics)?),
                    Cmd::Write(first) => {
                        let mut batches = vec![first];
                        while batches.len() < BATCHES_PER_TRANSACTION
                            && let Ok(Cmd::Write(b)) = cmds.try_recv()
                        {
                            batches.push(b);
                        }
                        self.transact(&batches)?
                    }
                };
                if replies.send(reply).is_err() {
                    break;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = replies.send(Reply::Failed(e));
        }
    }

    /// Creates the offered topics that are missing, adds partitions to those with fewer, and
    /// reads the committed position of every partition not started yet (0, the start, where
    /// none is).
    fn prepare(
        &mut self,
        rt: &tokio::runtime::Handle,
        topics: &[TopicMetadata],
    ) -> anyhow::Result<Vec<Position>> {
        rt.block_on(self.ensure_topics(topics))?;
        // Partitions started before on this connection keep going: only new ones start.
        let mut ask = TopicPartitionList::new();
        for t in topics {
            for p in 0..t.partitions {
                if !self
                    .committed
                    .contains_key(&TopicPartition::new(&t.topic, p))
                {
                    ask.add_partition(&t.topic, p);
                }
            }
        }
        if ask.count() == 0 {
            return Ok(Vec::new());
        }
        let committed = self
            .positions
            .committed_offsets(ask, KAFKA_TIMEOUT)
            .context("reading the committed downlink positions")?;
        let mut positions = Vec::with_capacity(committed.count());
        for e in committed.elements() {
            let next_offset = match e.offset() {
                Offset::Offset(n) if n >= 0 => n,
                _ => 0,
            };
            let tp = TopicPartition::new(e.topic(), e.partition());
            self.committed.insert(tp.clone(), next_offset);
            positions.push(Position { tp, next_offset });
        }
        info!(
            topics = topics.len(),
            partitions = positions.len(),
            "downlink positions read"
        );
        Ok(positions)
    }

    async fn ensure_topics(&self, topics: &[TopicMetadata]) -> anyhow::Result<()> {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                t.configs.iter().fold(
                    NewTopic::new(&t.topic, t.partitions, TopicReplication::Fixed(-1)),
                    |n, (k, v)| n.set(k, v),
                )
            })
            .collect();
        for r in self.admin.create_topics(&new, &opts).await? {
            match r {
                Ok(t) => info!(topic = %t, "created a downlink topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => bail!("creating the downlink topic {t}: {code}"),
            }
        }
        let meta = self
            .positions
            .fetch_metadata(None, KAFKA_TIMEOUT)
            .context("reading edge topic metadata")?;
        let grow: Vec<NewPartitions<'_>> = topics
            .iter()
            .filter_map(|t| {
                let have = meta
                    .topics()
                    .iter()
                    .find(|m| m.name() == t.topic)?
                    .partitions()
                    .len();
                (have < t.partitions as usize)
                    .then(|| NewPartitions::new(&t.topic, t.partitions as usize))
            })
            .collect();
        if grow.is_empty() {
            return Ok(());
        }
        for r in self.admin.create_partitions(&grow, &opts).await? {
            match r {
                Ok(t) => info!(topic = %t, "added partitions to a downlink topic"),
                Err((t, code)) => bail!("adding partitions to the downlink topic {t}: {code}"),
            }
        }
        Ok(())
    }

    /// One transaction: the batches' records (those not committed already) and the new
    /// positions, as the downlink group's committed offsets.
    fn transact(&mut self, batches: &[Batch]) -> anyhow::Result<Reply> {
        self.producer
            .begin_transaction()
            .context("beginning a downlink transaction")?;
        let mut moved = BTreeMap::new();
        let mut bytes = 0;
        let mut records = 0usize;
        for batch in batches {
            bytes += batch.payload.len() as u64;
            let tp = &batch.header.tp;
            let from = moved
                .get(tp)
                .or(self.committed.get(tp))
                .copied()
                .unwrap_or(0);
            let decoded = batch
                .decode_records(MAX_UNCOMPRESSED)
                .with_context(|| format!("decoding a downlink batch of {tp}"))?;
            for r in &decoded {
                let r = r.with_context(|| format!("decoding a downlink record of {tp}"))?;
                if r.offset < from {
                    continue;
                }
                self.produce(tp, &r)?;
                records += 1;
            }
            let next = moved.entry(tp.clone()).or_insert(from);
            *next = (*next).max(batch.header.next_offset);
        }
        let mut offsets = TopicPartitionList::new();
        for (tp, next) in &moved {
            offsets.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*next))?;
        }
        let meta = self
            .positions
            .group_metadata()
            .ok_or_else(|| anyhow!("the downlink position reader has no group metadata"))?;
        self.producer
            .send_offsets_to_transaction(&offsets, &meta, KAFKA_TIMEOUT)
            .context("adding the downlink positions to the transaction")?;
        self.producer
            .commit_transaction(KAFKA_TIMEOUT)
            .context("committing a downlink transaction")?;
        debug!(
            batches = batches.len(),
            records,
            partitions = moved.len(),
            "downlink transaction committed"
        );
        crate::events::DownlinkCommitted {
            records: records as u64,
            bytes,
        }
        .emit();
        self.committed.extend(moved.clone());
        Ok(Reply::Committed {
            positions: moved.into_iter().collect(),
            bytes,
        })
    }

    fn produce(&self, tp: &TopicPartition, r: &er_protocol::RecordView<'_>) -> anyhow::Result<()> {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (key, value) in r.headers.iter() {
            headers = headers.insert(Header { key, value });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&tp.topic)
            .partition(tp.partition)
            .headers(headers);
        if let Some(k) = r.key {
            record = record.key(k);
        }
        if let Some(v) = r.value {
            record = record.payload(v);
        }
        if r.timestamp >= 0 {
            record = record.timestamp(r.timestamp);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    return Err(e).with_context(|| format!("writing a downlink record to {tp}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> TopicMetadata {
        TopicMetadata {
            topic: name.into(),
            partitions: 1,
            configs: Vec::new(),
        }
    }

    #[test]
    fn only_topics_named_after_a_central_cluster_are_taken() {
        let guard = LoopGuard::new(
            er_protocol::ReplicationPolicy::default(),
            "plant-7",
            vec!["central".into()],
        );
        let offer = [
            "central.commands",
            "commands",
            "plant-7.alarms",
            "central.bad name",
            "other.x",
        ]
        .map(topic)
        .to_vec();
        let taken: Vec<String> = accepted(offer, &guard)
            .into_iter()
            .map(|t| t.topic)
            .collect();
        assert_eq!(
            taken,
            ["central.commands"],
            "a name the agent would replicate back up (or not a topic name) is refused"
        );
    }
}
