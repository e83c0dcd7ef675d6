//! The stream plumbing of a site connection: one reader task per QUIC stream feeding the
//! session's inbound queue, and the writers of the frames the protocol queues.

use std::collections::HashMap;

use er_net::wire::{FrameReader, FrameWriter, Held, StreamError};
use er_protocol::{Channel, Frame, HubConn, TopicPartition};
use tokio::sync::mpsc;

use super::SessionEnd;

/// What a stream reader hands the session.
pub(super) enum Inbound {
    Frame {
        channel: Channel,
        frame: Frame,
        /// The send half of a partition stream, handed over with its first frame.
        send: Option<quinn::SendStream>,
        /// The frame's share of the connection's inbound budget.
        held: Held,
    },
    Closed {
        channel: Channel,
        error: Option<StreamError>,
    },
}

/// Reads one stream's frames into the session. A partition stream is identified by its first
/// frame, which must be a batch.
pub(super) fn spawn_stream_reader(
    mut reader: FrameReader,
    mut send: Option<quinn::SendStream>,
    tx: mpsc::Sender<Inbound>,
) {
    let mut channel = if send.is_none() {
        Some(Channel::Control)
    } else {
        None
    };
    tokio::spawn(async move {
        loop {
            match reader.next_held().await {
                Ok(Some((frame, held))) => {
                    let ch = match &channel {
                        Some(c) => c.clone(),
                        None => {
                            let c = match &frame {
                                Frame::Batch(b) => Channel::Partition(b.header.tp.clone()),
                                // Anything else opening a data stream is a protocol error the
                                // state machine reports; use a placeholder channel for it.
                                _ => Channel::Partition(TopicPartition {
                                    topic: String::new(),
                                    partition: -1,
                                }),
                            };
                            channel = Some(c.clone());
                            c
                        }
                    };
                    if tx
                        .send(Inbound::Frame {
                            channel: ch,
                            frame,
                            send: send.take(),
                            held,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = tx
                        .send(Inbound::Closed {
                            channel: channel.unwrap_or(Channel::Control),
                            error: None,
                        })
                        .await;
                    return;
                }
                Err(e) => {
                    let _ = tx
                        .send(Inbound::Closed {
                            channel: channel.unwrap_or(Channel::Control),
                            error: Some(e),
                        })
                        .await;
                    return;
                }
            }
        }
    });
}

/// The send halves of a connection's streams.
pub(super) struct StreamWriters {
    pub(super) control: FrameWriter,
    pub(super) partitions: HashMap<TopicPartition, FrameWriter>,
}

impl StreamWriters {
    /// Sends every frame the protocol queued.
    pub(super) async fn flush(&mut self, proto: &mut HubConn) -> Result<(), SessionEnd> {
        while let Some((channel, frame)) = proto.poll_transmit() {
            let w = match &channel {
                Channel::Control => &mut self.control,
                Channel::Partition(tp) => match self.partitions.get_mut(tp) {
                    Some(w) => w,
                    None => {
                        return Err(SessionEnd::Protocol(format!(
                            "no stream for {tp} to send {} on",
                            frame.kind()
                        )));
                    }
                },
                // The downlink task writes its own stream; the protocol queues nothing there.
                Channel::Downlink => {
                    return Err(SessionEnd::Internal(format!(
                        "{} queued on the downlink channel",
                        frame.kind()
                    )));
                }
            };
            w.write(&frame).await.map_err(SessionEnd::from_stream)?;
        }
        Ok(())
    }
}
