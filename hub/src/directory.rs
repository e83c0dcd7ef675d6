//! Where the other hubs of the group are: each hub advertises its addresses and owned shards in
//! the compacted `er-hubs.<group>.internal` topic and reads everyone else's, so that a site
//! reaching the wrong hub can be sent to its shard's owner.
//!
//! The adverts only guide agents; they decide nothing. Ownership itself is the group
//! coordinator's assignment, and a stale advert costs an agent one more redirect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::config::ClusterConfig;
use crate::kafka::{KafkaOpError, PolledProducer, client_config};
use crate::membership::Ownership;
use crate::shards::{HubAdvert, Shard, hubs_topic};

/// The other hubs' adverts, kept fresh by a thread.
pub struct Directory {
    hub_id: String,
    adverts: Arc<Mutex<HashMap<String, HubAdvert>>>,
    /// Adverts older than this are ignored (a hub that stopped advertising is gone).
    max_age: Duration,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("hub_id", &self.hub_id)
            .finish_non_exhaustive()
    }
}

/// Writes this hub's advert.
struct Advertiser {
    producer: PolledProducer,
    topic: String,
    hub_id: String,
    addresses: Vec<String>,
}

impl Advertiser {
    /// Advertises the addresses and the shards of `own` (none while it rebalances).
    fn send(&self, own: &Ownership) {
        let advert = HubAdvert {
            hub_id: self.hub_id.clone(),
            addresses: self.addresses.clone(),
            shards: if own.rebalancing {
                Default::default()
            } else {
                own.shards.keys().copied().collect()
            },
            updated_ms: crate::metrics::now_ms(),
        };
        let value = serde_json::to_vec(&advert).expect("adverts serialize");
        let r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic)
            .partition(0)
            .key(self.hub_id.as_bytes())
            .payload(&value);
        if let Err((e, _)) = self.producer.send(r) {
            tracing::warn!(error = %e, "advertising this hub failed");
        }
    }
}

/// Reads the next advert (waiting up to 200 ms) into `adverts`; an unreadable one is skipped.
fn read_advert(consumer: &BaseConsumer, adverts: &Mutex<HashMap<String, HubAdvert>>) {
    match consumer.poll(Duration::from_millis(200)) {
        Some(Ok(m)) => match serde_json::from_slice::<HubAdvert>(m.payload().unwrap_or(&[])) {
            Ok(a) => {
                adverts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(a.hub_id.clone(), a);
            }
            Err(e) => {
                tracing::debug!(offset = m.offset(), error = %e, "ignoring an unreadable hub advert");
            }
        },
        Some(Err(e)) => tracing::debug!(error = %e, "reading hub adverts"),
        None => {}
    }
}

impl Directory {
    /// Starts advertising `addresses` and the shards of `ownership`, every `every` and at each
    /// change, on the coordination cluster, and reading the other hubs' adverts.
    pub fn start(
        cluster: &ClusterConfig,
        group: &str,
        hub_id: &str,
        addresses: Vec<String>,
        mut ownership: watch::Receiver<Ownership>,
        every: Duration,
    ) -> Result<Self, KafkaOpError> {
        let topic = hubs_topic(group);
        let err = |what: &str| KafkaOpError::kafka(&cluster.alias, what);
        let producer =
            PolledProducer::new(client_config(cluster).set("linger.ms", "0"), "dir-reports")
                .map_err(err("creating the directory producer"))?;
        let consumer: BaseConsumer = client_config(cluster)
            .set("group.id", format!("{group}-directory"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(err("creating the directory reader"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .map_err(err("assigning the hubs topic"))?;
        consumer
            .assign(&tpl)
            .map_err(err("assigning the hubs topic"))?;
        let adverts: Arc<Mutex<HashMap<String, HubAdvert>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let advertiser = Advertiser {
            producer,
            topic,
            hub_id: hub_id.to_owned(),
            addresses,
        };
        let thread = {
            let (adverts, stop) = (adverts.clone(), stop.clone());
            std::thread::Builder::new()
                .name("hub-directory".into())
                .spawn(move || {
                    let mut due = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let changed = ownership.has_changed().unwrap_or(false);
                        if changed || Instant::now() >= due {
                            advertiser.send(&ownership.borrow_and_update());
                            due = Instant::now() + every;
                        }
                        read_advert(&consumer, &adverts);
                    }
                    let _ = advertiser.producer.flush(Duration::from_secs(2));
                })
                .expect("spawning the directory thread")
        };
        Ok(Self {
            hub_id: hub_id.to_owned(),
            adverts,
            max_age: every * 4,
            stop,
            thread: Some(thread),
        })
    }

    /// The addresses of the hub that owns `shard`, from the freshest advert that claims it
    /// (never this hub's own); `None` when no live hub claims it or the owner has no address.
    pub fn owner_of(&self, shard: Shard) -> Option<(String, Vec<String>)> {
        let now = crate::metrics::now_ms();
        let adverts = self.adverts.lock().unwrap_or_else(PoisonError::into_inner);
        owner_in(adverts.values(), &self.hub_id, shard, now, self.max_age)
    }
}

/// The owner of `shard` among `adverts` at `now_ms`: see [`Directory::owner_of`].
fn owner_in<'a>(
    adverts: impl IntoIterator<Item = &'a HubAdvert>,
    me: &str,
    shard: Shard,
    now_ms: i64,
    max_age: Duration,
) -> Option<(String, Vec<String>)> {
    adverts
        .into_iter()
        .filter(|a| a.hub_id != me && a.shards.contains(&shard) && !a.addresses.is_empty())
        .filter(|a| now_ms.saturating_sub(a.updated_ms) <= max_age.as_millis() as i64)
        .max_by_key(|a| a.updated_ms)
        .map(|a| (a.hub_id.clone(), a.addresses.clone()))
}

impl Drop for Directory {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert(hub: &str, shards: &[Shard], updated_ms: i64) -> HubAdvert {
        HubAdvert {
            hub_id: hub.into(),
            addresses: vec![format!("{hub}:4433")],
            shards: shards.iter().copied().collect(),
            updated_ms,
        }
    }

    #[test]
    fn the_freshest_live_other_hub_claiming_the_shard_owns_it() {
        let age = Duration::from_secs(10);
        let ads = [
            advert("a", &[1, 2], 1_000),
            advert("b", &[2], 5_000),
            advert("me", &[3], 5_000),
            advert("dead", &[4], -20_000),
        ];
        let owner = |s| owner_in(&ads, "me", s, 6_000, age).map(|(h, _)| h);
        assert_eq!(owner(1).as_deref(), Some("a"));
        assert_eq!(owner(2).as_deref(), Some("b"), "newer claim wins");
        assert_eq!(owner(3), None, "never redirect to ourselves");
        assert_eq!(owner(4), None, "stale adverts are ignored");
        assert_eq!(owner(9), None);
        let mut silent = advert("c", &[5], 5_000);
        silent.addresses.clear();
        assert_eq!(
            owner_in([&silent], "me", 5, 6_000, age),
            None,
            "no address, no redirect"
        );
    }
}
