//! MM2 heartbeats: the agent writes a Heartbeat record (source alias = site, target alias = the
//! central cluster the hub names in Welcome) into the edge `heartbeats` topic every interval. The
//! topic is replicated like any other (as `<site>.heartbeats`) but never through plugins, so
//! consumers on the central cluster see the link is alive and how far behind it is.

use std::sync::Arc;
use std::time::Duration;

use er_protocol::{HEARTBEATS_TOPIC, Heartbeat};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::watch;

use crate::Stats;
use crate::config::Settings;

/// Who the heartbeats are from and for, learned from the hub's Welcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aliases {
    /// The site (the certificate's CN, as the hub saw it).
    pub site: String,
    /// The central cluster alias the site's heartbeats go to.
    pub target: String,
}

/// Writes a heartbeat every `interval` until `shutdown`, once the first Welcome told the
/// aliases.
pub async fn run(
    cfg: Settings,
    interval: std::time::Duration,
    mut aliases: watch::Receiver<Option<Aliases>>,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let producer: FutureProducer = match crate::kafka::base_config(&cfg.kafka)
        .set("linger.ms", "0")
        .set("message.timeout.ms", "30000")
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the heartbeat producer; no heartbeats");
            return;
        }
    };
    let mut topic_ready = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Some(a) = aliases.borrow_and_update().clone() else {
            continue;
        };
        if !topic_ready {
            match ensure_topic(&cfg).await {
                Ok(()) => topic_ready = true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the edge heartbeats topic; retrying");
                    continue;
                }
            }
        }
        let hb = Heartbeat {
            source_cluster_alias: a.site.clone(),
            target_cluster_alias: a.target.clone(),
            timestamp: now_ms(),
        };
        let key = match hb.encode_key() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a heartbeat; no heartbeats");
                return;
            }
        };
        let value = hb.encode_value();
        let record = FutureRecord::to(HEARTBEATS_TOPIC)
            .partition(0)
            .key(&key)
            .payload(&value)
            .timestamp(hb.timestamp);
        match producer.send(record, Duration::from_secs(5)).await {
            Ok(_) => {
                crate::events::HeartbeatSent.emit(&stats);
                if failing {
                    tracing::info!("heartbeats are written again");
                    failing = false;
                }
            }
            Err((e, _)) => {
                if !failing {
                    tracing::warn!(error = %e, "writing a heartbeat to the edge cluster failed");
                }
                failing = true;
            }
        }
    }
}

/// Creates the edge `heartbeats` topic as MM2 does (one partition, compacted) unless it exists.
async fn ensure_topic(cfg: &Settings) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        crate::kafka::base_config(&cfg.kafka).create()?;
    let topic = NewTopic::new(HEARTBEATS_TOPIC, 1, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact");
    let res = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => anyhow::bail!("creating {t}: {code}"),
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
