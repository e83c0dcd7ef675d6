//! One site's session: a small dispatcher between the connection's streams, the protocol state
//! machine and the writers. Each `select!` arm calls one handler.

use std::sync::Arc;
use std::time::{Duration, Instant};

use er_net::wire::{FrameReader, StreamError};
use er_protocol::{Channel, ErrorCode, HubConn, HubEvent};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::accept::Greeted;
use super::streams::{Inbound, StreamWriters, spawn_stream_reader};
use super::{Hub, SessionEnd};
use crate::downlink::SiteDownlink;
use crate::sink::{Completion, WriteError, WriteJob, Written};
use crate::sites::Site;

/// Inbound frames queued between the stream readers and the session.
const INBOUND_QUEUE: usize = 256;

/// The state a session's handlers change.
struct Session<'a> {
    hub: &'a Hub,
    conn: &'a quinn::Connection,
    site: &'a Arc<Site>,
    id: u64,
    proto: HubConn,
    writers: StreamWriters,
    completions_tx: mpsc::UnboundedSender<Completion>,
    /// What goes down to the site, when `[[downlinks]]` has something for it.
    downlink: Option<SiteDownlink>,
    /// Why the downlink sender stopped, if it did.
    downlink_failed: mpsc::UnboundedSender<String>,
    /// The plugin version offered on this connection, by name.
    plugins_offered: std::collections::HashMap<String, u64>,
}

impl Hub {
    /// Welcomes the site and serves it until the link ends, a batch fails, or a newer
    /// connection supersedes this one.
    pub(super) async fn run_session(
        self: Arc<Self>,
        conn: &quinn::Connection,
        site: &Arc<Site>,
        id: u64,
        greeted: Greeted,
        mut supersede: watch::Receiver<bool>,
    ) -> Result<(), SessionEnd> {
        let Greeted {
            ctl_reader,
            mut writers,
            mut proto,
            early,
            budget,
        } = greeted;
        self.welcome(site, &mut writers, &mut proto, early).await?;
        let (completions_tx, mut completions) = mpsc::unbounded_channel::<Completion>();
        let (downlink_failed, mut downlink_stopped) = mpsc::unbounded_channel();
        let downlink = self
            .fleet
            .downlinks
            .clone()
            .map(|d| SiteDownlink::new(d, &site.alias, &self.heartbeat_target(&site.alias)));
        let mut offer_tick = tokio::time::interval(
            downlink
                .as_ref()
                .map_or(Duration::from_secs(3600), |d| d.refresh_interval()),
        );
        let mut s = Session {
            hub: &self,
            conn,
            site,
            id,
            proto,
            writers,
            completions_tx,
            downlink,
            downlink_failed,
            plugins_offered: std::collections::HashMap::new(),
        };
        let mut plugin_changes = self.fleet.plugins.store.subscribe();
        s.offer_plugins().await?;
        let (in_tx, mut inbound) = mpsc::channel::<Inbound>(INBOUND_QUEUE);
        spawn_stream_reader(ctl_reader, None, in_tx.clone());
        let max_frame = self.fleet.config.raw.limits.max_frame_bytes();
        loop {
            let step = tokio::select! {
                stream = conn.accept_bi() => match stream {
                    Ok((send, recv)) => {
                        let reader = FrameReader::with_budget(recv, max_frame, budget.clone());
                        spawn_stream_reader(reader, Some(send), in_tx.clone());
                        Ok(false)
                    }
                    Err(e) => Err(SessionEnd::Link(e.to_string())),
                },
                msg = inbound.recv() => match msg {
                    Some(msg) => s.on_inbound(msg).await,
                    None => Ok(true),
                },
                done = completions.recv() => match done {
                    Some(done) => s.on_completion(done).map(|()| false),
                    None => Ok(true),
                },
                _ = offer_tick.tick(), if s.downlink.is_some() => s.offer_downlinks().map(|()| false),
                Some(why) = downlink_stopped.recv() => Err(SessionEnd::Internal(why)),
                Ok(()) = plugin_changes.changed() => s.offer_plugins().await.map(|()| false),
                _ = superseded(&mut supersede) => Err(SessionEnd::Superseded),
                closed = conn.closed() => Err(SessionEnd::Link(closed.to_string())),
            };
            // Deliver what the protocol queued (acks, or the Error frame saying why the
            // session ends) before acting on the outcome.
            let flushed = s.writers.flush(&mut s.proto).await;
            match step {
                Ok(false) => flushed?,
                Ok(true) => return Ok(()),
                Err(end) => return Err(end),
            }
        }
    }
}

impl Session<'_> {
    /// A frame or the end of a stream; true when the agent closed the control stream.
    async fn on_inbound(&mut self, msg: Inbound) -> Result<bool, SessionEnd> {
        match msg {
            Inbound::Frame {
                channel,
                frame,
                send,
                held,
            } => {
                // The frame's bytes return to the connection's budget once it is handed on (a
                // batch to its writer's queue, which has a byte budget of its own).
                let _held = held;
                if let (Channel::Partition(tp), Some(send)) = (&channel, send) {
                    self.writers
                        .partitions
                        .insert(tp.clone(), er_net::wire::FrameWriter::new(send));
                }
                self.proto
                    .handle_frame(Instant::now(), &channel, frame)
                    .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                while let Some(ev) = self.proto.poll_event() {
                    self.on_event(ev).await?;
                }
                Ok(false)
            }
            Inbound::Closed { channel, error } => match error {
                Some(StreamError::Decode(e)) => {
                    let m = format!("malformed frame on {channel:?}: {e}");
                    self.proto.reject(ErrorCode::Protocol, m.clone());
                    Err(SessionEnd::Protocol(m))
                }
                Some(e) => Err(SessionEnd::from_stream(e)),
                None => Ok(matches!(channel, Channel::Control)),
            },
        }
    }

    /// What the protocol made of a frame: batches to their writers, reports to the site, the
    /// downlink's start and acks to its sender.
    async fn on_event(&mut self, ev: HubEvent) -> Result<(), SessionEnd> {
        match ev {
            HubEvent::Batch(batch) => self.on_batch(batch).await,
            HubEvent::GroupOffsets(groups) => {
                debug!(groups = groups.len(), "group offsets reported");
                let max = self.hub.fleet.config.raw.limits.max_groups_per_site;
                let checked = self
                    .site
                    .groups
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .update_checked(groups, max);
                checked.map_err(|m| {
                    let m = format!("group offsets refused: {m}");
                    self.proto.reject(ErrorCode::Protocol, m.clone());
                    SessionEnd::Protocol(m)
                })
            }
            HubEvent::SiteReport(r) => {
                self.site
                    .metrics
                    .agent_report(crate::metrics::AgentFigures {
                        lag_records: r.lag_records,
                        retention_gap_records: r.retention_gap_records,
                        plugin_errors: r.plugin_errors,
                        route_stops: r.route_stops,
                    });
                Ok(())
            }
            HubEvent::TopicMetadata(topics) => self.on_topic_metadata(topics),
            HubEvent::TopicAcls(acls) => {
                self.on_topic_acls(&acls);
                Ok(())
            }
            HubEvent::DownlinkStart(positions) => {
                let Some(d) = self.downlink.as_mut() else {
                    return Err(SessionEnd::Protocol(
                        "downlink start with nothing offered".into(),
                    ));
                };
                d.start(self.conn, positions, self.downlink_failed.clone())
                    .await
                    .map_err(SessionEnd::Internal)
            }
            HubEvent::PluginReport { platform, runs } => {
                let store = &self.hub.fleet.plugins.store;
                store.report(&self.site.alias, platform, runs);
                // What the site can run, and which sites run a canary, follow the reports.
                self.offer_plugins().await
            }
            HubEvent::DownlinkAck { tp, next_offset } => match &self.downlink {
                Some(d) => d.ack(tp, next_offset).map_err(SessionEnd::Protocol),
                None => Err(SessionEnd::Protocol(
                    "downlink ack with nothing offered".into(),
                )),
            },
            _ => Ok(()),
        }
    }

    /// A batch goes to its cluster's writers, waiting while the writer's queue is full
    /// (backpressure to the link); a batch of one topic more than the site may send ends the
    /// session.
    async fn on_batch(&mut self, batch: er_protocol::Batch) -> Result<(), SessionEnd> {
        let fleet = &self.hub.fleet;
        let max_topics = fleet.config.raw.limits.max_topics_per_site;
        if !self.site.admit_topic(&batch.header.tp.topic, max_topics) {
            let m = format!(
                "batch of {}: the site already sends {max_topics} topics (limits.max_topics_per_site)",
                batch.header.tp
            );
            self.proto.reject(ErrorCode::BadBatch, m.clone());
            return Err(SessionEnd::Protocol(m));
        }
        let cluster = fleet
            .config
            .cluster_for(&self.site.alias, &batch.header.tp.topic);
        crate::events::BatchReceived {
            site: &self.site.metrics,
            tp: &batch.header.tp,
            seq: batch.header.seq,
            records: batch.header.record_count,
            bytes: batch.payload.len(),
        }
        .emit();
        let stop_on_unwritable = fleet.config.raw.replication.on_unwritable
            == crate::config::OnUnwritable::Stop
            && self
                .proto
                .version()
                .is_some_and(|v| v >= er_protocol::STOPPED_VERSION);
        let job = WriteJob {
            site: self.site.clone(),
            session: self.id,
            batch,
            stop_on_unwritable,
            reply: self.completions_tx.clone(),
        };
        fleet.pools[cluster]
            .submit(job)
            .await
            .map_err(|e| SessionEnd::Internal(e.to_string()))
    }

    /// Offers the site each plugin version it is to run and was not offered on this connection,
    /// on a stream of its own (below the up direction), to agents that take offers.
    async fn offer_plugins(&mut self) -> Result<(), SessionEnd> {
        if self
            .proto
            .version()
            .is_none_or(|v| v < er_protocol::DOWNLINK_VERSION)
        {
            return Ok(());
        }
        for (name, version, signed) in self.hub.fleet.plugins.store.wanted(&self.site.alias) {
            if self.plugins_offered.get(&name) == Some(&version) {
                continue;
            }
            let link = |e: &dyn std::fmt::Display| {
                SessionEnd::Link(format!("offering plugin {name}: {e}"))
            };
            let send = self.conn.open_uni().await.map_err(|e| link(&e))?;
            send.set_priority(-1).map_err(|e| link(&e))?;
            let mut w = er_net::wire::FrameWriter::new(send);
            let frame = er_protocol::Frame::PluginOffer(er_protocol::PluginOffer {
                name: name.clone(),
                version,
                sha256: signed.sha256,
                signature: signed.signature.clone(),
                wasm: signed.wasm.clone(),
            });
            // Written on its own task: a large component on a slow link must not hold up the
            // session (acks, reports).
            let (site, plugin) = (self.site.alias.clone(), name.clone());
            tokio::spawn(async move {
                match w.write(&frame).await {
                    Ok(()) => w.finish(),
                    Err(e) => debug!(%site, %plugin, error = %e, "a plugin offer was cut off"),
                }
            });
            tracing::info!(site = %self.site.alias, plugin = %name, version, bytes = signed.wasm.len(), "plugin offered");
            self.plugins_offered.insert(name, version);
        }
        Ok(())
    }

    /// Offers the site the downlink topics that appeared (or grew) since the last offer; stops
    /// offering to an agent too old for downlinks.
    fn offer_downlinks(&mut self) -> Result<(), SessionEnd> {
        let Some(d) = self.downlink.as_mut() else {
            return Ok(());
        };
        let topics = d.next_offer();
        if topics.is_empty() {
            return Ok(());
        }
        debug!(site = %self.site.alias, topics = topics.len(), "offering downlink topics");
        let offered = self
            .proto
            .offer_downlinks(topics)
            .map_err(|e| SessionEnd::Internal(e.to_string()))?;
        if !offered {
            debug!(site = %self.site.alias, "the agent is too old for downlinks");
            self.downlink = None;
        }
        Ok(())
    }

    /// The agent's edge topics (untrusted): each is counted against the site's topic limit
    /// and checked against the partition limit, as a batch of it would be; what passes goes
    /// to the topic syncer with only the configs `topic_sync` lets a site set.
    /// Edge ACL bindings: those [`crate::acl_sync::admit`] keeps go to the topic syncer.
    fn on_topic_acls(&mut self, acls: &[er_protocol::TopicAcl]) {
        let config = &self.hub.fleet.config;
        if !config.raw.acl_sync.enabled {
            return;
        }
        let admitted = crate::acl_sync::admit(config, &self.site.alias, acls);
        crate::events::TopicAclsReported {
            site: &self.site.alias,
            reported: acls.len(),
            admitted: admitted.grants.len(),
            refused: admitted.refused,
            over_limit: admitted.over_limit,
            max: config.raw.acl_sync.max_per_site,
        }
        .emit();
        if admitted.grants.is_empty() {
            return;
        }
        let report = crate::topic_sync::SiteAcls {
            site: self.site.alias.clone(),
            grants: admitted.grants,
        };
        if !self.hub.fleet.topic_sync.report_acls(report) {
            crate::events::TopicReportDropped { of: "ACLs" }.emit();
        }
    }

    fn on_topic_metadata(
        &mut self,
        topics: Vec<er_protocol::TopicMetadata>,
    ) -> Result<(), SessionEnd> {
        let config = &self.hub.fleet.config;
        if !config.raw.topic_sync.enabled
            || matches!(config.policy, er_protocol::ReplicationPolicy::Identity)
        {
            return Ok(());
        }
        let limits = &config.raw.limits;
        let mut wanted = Vec::with_capacity(topics.len());
        for t in topics {
            let refuse = |proto: &mut HubConn, m: String| {
                proto.reject(ErrorCode::Protocol, m.clone());
                Err(SessionEnd::Protocol(m))
            };
            if t.partitions > limits.max_partitions_per_topic {
                let m = format!(
                    "topic metadata of {}: {} partitions, more than limits.max_partitions_per_topic ({})",
                    er_net::Untrusted(&t.topic),
                    t.partitions,
                    limits.max_partitions_per_topic
                );
                return refuse(&mut self.proto, m);
            }
            let Ok(remote) = crate::sink::remote_topic(
                &config.policy,
                &config.identity_allow,
                &self.site.alias,
                &t.topic,
            ) else {
                // Its records, if any, go to the dead letters with the reason.
                debug!(topic = %er_net::Untrusted(&t.topic), "no remote topic for a reported topic");
                continue;
            };
            if !self.site.admit_topic(&t.topic, limits.max_topics_per_site) {
                let m = format!(
                    "topic metadata of {}: the site already sends {} topics (limits.max_topics_per_site)",
                    er_net::Untrusted(&t.topic),
                    limits.max_topics_per_site
                );
                return refuse(&mut self.proto, m);
            }
            let cluster = config.cluster_for(&self.site.alias, &t.topic);
            let configs = crate::topic_sync::wanted_configs(
                &config.topic_config_filter,
                &t.configs,
                &config.raw.clusters[cluster].topic_configs,
            );
            wanted.push(crate::topic_sync::Wanted {
                cluster,
                topic: remote,
                partitions: t.partitions,
                configs,
            });
        }
        debug!(topics = wanted.len(), "topic metadata reported");
        let report = crate::topic_sync::SiteTopics {
            site: self.site.alias.clone(),
            topics: wanted,
        };
        if !self.hub.fleet.topic_sync.report(report) {
            crate::events::TopicReportDropped { of: "topics" }.emit();
        }
        Ok(())
    }

    /// A batch committed (ack it), stopped its partition (tell the agent), was dropped
    /// after such a stop (forget it) or failed (end the session: the agent resumes from the
    /// committed positions).
    fn on_completion(&mut self, done: Completion) -> Result<(), SessionEnd> {
        let protocol = |e: er_protocol::ProtocolError| SessionEnd::Protocol(e.to_string());
        let e = match done.result {
            Ok(Written::Committed) => {
                return self
                    .proto
                    .ack(&done.tp, done.seq, done.next_offset)
                    .map_err(protocol);
            }
            Ok(Written::Stopped { offset, reason }) => {
                tracing::error!(tp = %done.tp, offset, %reason, "partition stopped at a record the hub cannot write (replication.on_unwritable = \"stop\"); it moves again in the agent's next session");
                return self
                    .proto
                    .stop(&done.tp, done.seq, offset, reason)
                    .map_err(protocol);
            }
            Ok(Written::Dropped) => {
                self.proto.skip(&done.tp, done.seq);
                return Ok(());
            }
            Err(e) => e,
        };
        let (code, end) = match &e {
            WriteError::BadBatch { .. } => {
                (ErrorCode::BadBatch, SessionEnd::Protocol(e.to_string()))
            }
            WriteError::NotOwner { .. } => {
                (ErrorCode::Internal, SessionEnd::NotOwner(e.to_string()))
            }
            WriteError::Fenced { .. } => (ErrorCode::Internal, SessionEnd::Fenced(e.to_string())),
            _ => (ErrorCode::Internal, SessionEnd::Internal(e.to_string())),
        };
        self.proto.reject(code, e.to_string());
        Err(end)
    }
}

/// Resolves once the session is asked to end (never if the asking side is gone).
async fn superseded(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
