//! Fuzz entry points. The cargo-fuzz targets in `protocol/fuzz` call these with libFuzzer's
//! inputs, and the test suite runs them briefly on stable (`protocol/tests/fuzz_short.rs`).
//! Neither may panic on any input; each also checks what must hold whatever the input.
//!
//! [`hub_session`] reads its input as a program: each step takes an opcode byte, then the bytes
//! it needs, and builds a frame (mostly well-formed, so the fuzzer reaches deep into the state
//! machine instead of stopping at the decoder) or calls the driver side of [`HubConn`] (welcome,
//! ack, reject) as the hub's session would, in any order.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::{
    Batch, BatchHeader, Channel, Codec, DEFAULT_MAX_FRAME_BYTES, ErrorCode, Frame, FrameDecoder,
    GroupOffsets, HubConn, HubConnConfig, HubEvent, PROTOCOL_VERSION, Position, SiteReport,
    TopicAcl, TopicMetadata, TopicPartition, decode_frame, encode_frame,
};

/// The frame decoder (pushed in chunks of the size the first byte picks) and record decoding
/// of whatever batches come out, and of the same bytes as a record payload.
pub fn frame_decoder(data: &[u8]) {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    for piece in rest.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(Frame::Batch(batch))) => walk_records(&batch),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = decode_frame(rest);
    // The same bytes as a record payload, so record decoding is reached without a valid header.
    let codec = if chunk & 1 == 0 {
        Codec::None
    } else {
        Codec::Zstd
    };
    let uncompressed_len = match codec {
        Codec::None => rest.len() as u32,
        Codec::Zstd => u32::from(chunk as u8) * 64,
    };
    walk_records(&Batch {
        header: BatchHeader {
            seq: 0,
            tp: TopicPartition::new("t", 0),
            partition_count: 1,
            first_offset: 100,
            next_offset: 100 + i64::from(chunk as u8),
            record_count: u32::from(chunk as u8 >> 2),
            codec,
            uncompressed_len,
        },
        payload: Bytes::copy_from_slice(rest),
    });
}

fn walk_records(batch: &Batch) {
    if let Ok(records) = batch.decode_records(1 << 20) {
        for r in records.iter().flatten() {
            for _ in r.headers.iter() {}
        }
    }
}

/// The input, read front to back; reads past the end give zeros.
struct Src<'a> {
    data: &'a [u8],
}

impl Src<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) << 16 | u32::from(self.u16())
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) << 32 | u64::from(self.u32())
    }
    /// Small values mostly (offsets near each other), sometimes anything.
    fn i64(&mut self) -> i64 {
        match self.u8() % 8 {
            0 => self.u64() as i64,
            1 => -i64::from(self.u8()),
            _ => i64::from(self.u16()),
        }
    }
    fn string(&mut self) -> String {
        match self.u8() % 8 {
            0 => String::new(),
            1 => "x".repeat(usize::from(self.u16())),
            _ => {
                let n = usize::from(self.u8() % 24);
                String::from_utf8_lossy(self.bytes(n)).into_owned()
            }
        }
    }
    /// A topic partition from a small set (so batches meet each other's streams), or any.
    fn tp(&mut self) -> TopicPartition {
        match self.u8() % 6 {
            0 => TopicPartition::new(self.string(), self.u32() as i32),
            n => TopicPartition::new(
                ["orders", "alarms", "a.b"][usize::from(n % 3)],
                i32::from(n / 3),
            ),
        }
    }
    fn positions(&mut self) -> Vec<Position> {
        (0..self.u8() % 5)
            .map(|_| Position {
                tp: self.tp(),
                next_offset: self.i64(),
            })
            .collect()
    }
}

/// Limits of the fuzzed hub: small, so the fuzzer meets them.
const MAX_BATCH: u32 = 4096;

/// Drives a [`HubConn`] with the frame sequence and driver calls the input spells, and checks
/// after every step that each frame the hub queued encodes and decodes to itself (the agent
/// can read whatever the hub sends) and that a closed connection refuses every later frame.
pub fn hub_session(data: &[u8]) {
    let start = Instant::now();
    let mut hub = HubConn::new(
        HubConnConfig {
            hub_id: "hub".into(),
            max_batch_bytes: MAX_BATCH,
            max_uncompressed_bytes: 4 * MAX_BATCH,
        },
        "site".into(),
        start,
    );
    let mut src = Src { data };
    let mut now = start;
    // Batches the driver was handed, to ack them later (as the writers complete them).
    let mut batches: Vec<(TopicPartition, u64, i64)> = Vec::new();
    while !src.is_empty() {
        now += Duration::from_millis(u64::from(src.u8()));
        let op = src.u8();
        match op % 12 {
            // Raw bytes through the decoder, on the control stream or a partition stream.
            0 => {
                let n = usize::from(src.u8());
                let bytes = src.bytes(n).to_vec();
                let channel = channel(&mut src);
                if let Ok(frame) = decode_frame(&bytes) {
                    feed(&mut hub, now, &channel, frame);
                }
            }
            1 => {
                let frame = Frame::Hello {
                    min_version: version(&mut src),
                    max_version: version(&mut src),
                    agent_version: src.string(),
                    site_claim: src.string(),
                };
                feed(&mut hub, now, &Channel::Control, frame);
            }
            2..=4 => {
                let tp = src.tp();
                let first_offset = src.i64();
                let header = BatchHeader {
                    seq: u64::from(src.u8() % 8),
                    tp: tp.clone(),
                    partition_count: i32::from(src.u8() % 4),
                    first_offset,
                    next_offset: first_offset.wrapping_add(i64::from(src.u8())),
                    record_count: u32::from(src.u8()),
                    codec: if src.u8() & 1 == 0 {
                        Codec::None
                    } else {
                        Codec::Zstd
                    },
                    uncompressed_len: u32::from(src.u16()),
                };
                let n = usize::from(src.u8());
                let payload = Bytes::copy_from_slice(src.bytes(n));
                // Mostly on the batch's own stream.
                let channel = if src.u8().is_multiple_of(4) {
                    channel(&mut src)
                } else {
                    Channel::Partition(tp)
                };
                let frame = Frame::Batch(Batch { header, payload });
                feed(&mut hub, now, &channel, frame);
            }
            5 => {
                let frame = Frame::Ping {
                    nonce: src.u64(),
                    sent_at_micros: src.u64(),
                };
                feed(&mut hub, now, &Channel::Control, frame);
            }
            6 if src.u8() & 1 == 0 => {
                let groups = (0..src.u8() % 4)
                    .map(|_| GroupOffsets {
                        group: src.string(),
                        offsets: src.positions(),
                    })
                    .collect();
                let frame = Frame::GroupOffsets { groups };
                feed(&mut hub, now, &Channel::Control, frame);
            }
            6 => {
                let topics = (0..src.u8() % 4)
                    .map(|_| TopicMetadata {
                        topic: src.string(),
                        partitions: src.i64() as i32,
                        configs: (0..src.u8() % 4)
                            .map(|_| (src.string(), src.string()))
                            .collect(),
                    })
                    .collect();
                let frame = Frame::TopicMetadata { topics };
                feed(&mut hub, now, &Channel::Control, frame);
            }
            7 if src.u8() & 1 == 0 => {
                let acls = (0..src.u8() % 4)
                    .map(|_| TopicAcl {
                        topic: src.string(),
                        principal: src.string(),
                        host: src.string(),
                        operation: src.u8() % 16,
                        permission: src.u8() % 4,
                    })
                    .collect();
                feed(&mut hub, now, &Channel::Control, Frame::TopicAcls { acls });
            }
            7 => {
                let frame = Frame::SiteReport(SiteReport {
                    lag_records: (src.u8() & 1 == 0).then(|| src.i64()),
                    retention_gap_records: src.u64(),
                    plugin_errors: src.u64(),
                    route_stops: src.u64(),
                });
                feed(&mut hub, now, &Channel::Control, frame);
            }
            // Frames only a hub sends, or an agent's goodbye.
            8 => {
                let frame = match src.u8() % 6 {
                    0 => Frame::Ack {
                        seq: src.u64(),
                        tp: src.tp(),
                        next_offset: src.i64(),
                    },
                    5 => Frame::Stopped {
                        seq: src.u64(),
                        tp: src.tp(),
                        offset: src.i64(),
                        reason: src.string(),
                    },
                    1 => Frame::Pong {
                        nonce: src.u64(),
                        sent_at_micros: src.u64(),
                    },
                    2 => Frame::Error {
                        code: ErrorCode::Protocol,
                        message: src.string(),
                    },
                    3 => Frame::GoAway {
                        reason: src.string(),
                    },
                    _ => Frame::Redirect {
                        addresses: vec![src.string()],
                        reason: src.string(),
                    },
                };
                let channel = channel(&mut src);
                feed(&mut hub, now, &channel, frame);
            }
            // The driver: welcome, acks and stops of what it was handed (or made up), refusals.
            9 if src.u8() & 1 == 0 => {
                let positions = src.positions();
                let _ = hub.welcome(positions, src.string());
            }
            // The downlink: the driver's offer, the agent's start and acks; plugin reports.
            9 => match src.u8() % 4 {
                0 => {
                    let topics = (0..src.u8() % 3)
                        .map(|_| TopicMetadata {
                            topic: src.string(),
                            partitions: i32::from(src.u8() % 4),
                            configs: vec![],
                        })
                        .collect();
                    let _ = hub.offer_downlinks(topics);
                }
                1 => {
                    let frame = Frame::DownlinkStart {
                        positions: src.positions(),
                    };
                    feed(&mut hub, now, &Channel::Control, frame);
                }
                2 => {
                    let frame = Frame::DownlinkAck {
                        tp: src.tp(),
                        next_offset: src.i64(),
                    };
                    let channel = channel(&mut src);
                    feed(&mut hub, now, &channel, frame);
                }
                _ => {
                    let runs = (0..src.u8() % 3)
                        .map(|_| crate::PluginRun {
                            name: src.string(),
                            version: src.u64(),
                            records_in: src.u64(),
                            errors: src.u64(),
                            dropped: src.u64(),
                        })
                        .collect();
                    let platform = crate::PluginPlatform {
                        target: src.string(),
                        compiler: src.u8() & 1 == 0,
                    };
                    let channel = channel(&mut src);
                    feed(
                        &mut hub,
                        now,
                        &channel,
                        Frame::PluginReport { platform, runs },
                    );
                }
            },
            10 => {
                let pick = usize::from(src.u8());
                let (tp, seq, next) = match batches.get(pick) {
                    Some(b) if !src.u8().is_multiple_of(4) => b.clone(),
                    _ => (src.tp(), u64::from(src.u8() % 8), src.i64()),
                };
                match src.u8() % 4 {
                    // A record of the batch cannot be written: the partition stops there.
                    0 => {
                        let offset = next.saturating_sub(i64::from(src.u8()));
                        let _ = hub.stop(&tp, seq, offset, src.string());
                    }
                    // A later batch of a stopped partition, dropped by the writer.
                    1 => hub.skip(&tp, seq),
                    _ => {
                        let _ = hub.ack(&tp, seq, next);
                    }
                }
            }
            _ => match src.u8() % 3 {
                0 => hub.reject(ErrorCode::BadBatch, src.string()),
                1 => hub.go_away(src.string()),
                _ => {
                    let _ = hub.redirect(vec![src.string()], src.string());
                }
            },
        }
        let was_closed = hub.is_closed();
        while let Some(ev) = hub.poll_event() {
            if let HubEvent::Batch(b) = ev {
                batches.push((b.header.tp.clone(), b.header.seq, b.header.next_offset));
            }
        }
        while let Some((_, frame)) = hub.poll_transmit() {
            let mut buf = BytesMut::new();
            encode_frame(&frame, &mut buf);
            let decoded = decode_frame(&buf[4..]);
            assert_eq!(
                decoded.as_ref(),
                Ok(&frame),
                "the hub queued a frame that does not survive its own codec"
            );
        }
        if was_closed {
            let later = hub.handle_frame(
                now,
                &Channel::Control,
                Frame::Ping {
                    nonce: 0,
                    sent_at_micros: 0,
                },
            );
            assert!(later.is_err(), "a closed connection took another frame");
        }
    }
}

/// Hands `frame` to the hub as the wire would: encoded and decoded first, so only frames an
/// agent can actually send arrive (the decoder refuses negative partitions, long strings...).
fn feed(hub: &mut HubConn, now: Instant, channel: &Channel, frame: Frame) {
    let mut buf = BytesMut::new();
    encode_frame(&frame, &mut buf);
    if let Ok(frame) = decode_frame(&buf[4..]) {
        let _ = hub.handle_frame(now, channel, frame);
    }
}

fn version(src: &mut Src<'_>) -> u16 {
    match src.u8() % 4 {
        0 => src.u16(),
        n => PROTOCOL_VERSION + u16::from(n) - 2,
    }
}

fn channel(src: &mut Src<'_>) -> Channel {
    if src.u8().is_multiple_of(3) {
        Channel::Control
    } else {
        Channel::Partition(src.tp())
    }
}
