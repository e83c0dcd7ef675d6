//! Length-prefixed binary encoding of [`Frame`]s and an incremental decoder for byte streams.
//!
//! Wire: `u32 BE length` (type byte + body), `u8 frame type`, body. Integers are big-endian;
//! strings are a `u16 BE` length then UTF-8 bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::frame::{
    Batch, BatchHeader, Codec, ErrorCode, Frame, GroupOffsets, MAX_ACL_HOST_BYTES,
    MAX_ACL_PRINCIPAL_BYTES, MAX_CONFIG_NAME_BYTES, MAX_CONFIG_VALUE_BYTES, MAX_HELLO_FIELD_BYTES,
    MAX_PLUGIN_NAME_BYTES, MAX_PLUGIN_RUNS, MAX_PLUGIN_SIGNATURE_BYTES, MAX_REDIRECT_ADDRESS_BYTES,
    MAX_REDIRECT_ADDRESSES, MAX_REDIRECT_REASON_BYTES, MAX_STOPPED_REASON_BYTES, MAX_TOPIC_CONFIGS,
    PluginOffer, PluginPlatform, PluginRun, Position, SiteReport, TopicAcl, TopicMetadata,
    TopicPartition, check_plugin_name, check_topic_acl, check_topic_metadata, frame_type,
};

/// Encodes one frame (length prefix included) at the end of `out`.
///
/// Strings longer than 65535 bytes cannot be represented and are cut at the last char boundary
/// that fits; only free-text fields (messages, versions) can be that long in practice, since topic
/// names and site aliases are validated far shorter. A Redirect is cut to its caps the same way
/// (the first [`MAX_REDIRECT_ADDRESSES`] addresses, each and the reason cut at a char boundary);
/// `HubConn::redirect` never queues one that needs it. Use [`try_encode_frame`] to refuse instead.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(frame.type_byte());
    match frame {
        Frame::Hello {
            min_version,
            max_version,
            agent_version,
            site_claim,
        } => {
            out.put_u16(*min_version);
            out.put_u16(*max_version);
            put_str(out, agent_version);
            put_str(out, site_claim);
        }
        Frame::Welcome {
            version,
            site,
            hub_id,
            positions,
            max_batch_bytes,
            heartbeat_target,
        } => {
            out.put_u16(*version);
            put_str(out, site);
            put_str(out, hub_id);
            put_positions(out, positions);
            out.put_u32(*max_batch_bytes);
            put_str(out, heartbeat_target);
        }
        Frame::GroupOffsets { groups } => {
            out.put_u32(u32::try_from(groups.len()).unwrap_or(u32::MAX));
            for g in groups.iter().take(u32::MAX as usize) {
                put_str(out, &g.group);
                put_positions(out, &g.offsets);
            }
        }
        Frame::TopicMetadata { topics } | Frame::DownlinkOffer { topics } => {
            put_topics(out, topics)
        }
        Frame::DownlinkStart { positions } => put_positions(out, positions),
        Frame::TopicAcls { acls } => {
            out.put_u32(u32::try_from(acls.len()).unwrap_or(u32::MAX));
            for a in acls.iter().take(u32::MAX as usize) {
                put_str(out, &a.topic);
                put_str_max(out, &a.principal, MAX_ACL_PRINCIPAL_BYTES);
                put_str_max(out, &a.host, MAX_ACL_HOST_BYTES);
                out.put_u8(a.operation);
                out.put_u8(a.permission);
            }
        }
        Frame::Batch(batch) | Frame::DownlinkBatch(batch) => {
            put_batch_header(out, &batch.header);
            out.extend_from_slice(&batch.payload);
        }
        Frame::DownlinkAck { tp, next_offset } => {
            put_tp(out, tp);
            out.put_i64(*next_offset);
        }
        Frame::PluginOffer(p) => {
            put_str_max(out, &p.name, MAX_PLUGIN_NAME_BYTES);
            out.put_u64(p.version);
            out.extend_from_slice(&p.sha256);
            let signature = &p.signature[..p.signature.len().min(MAX_PLUGIN_SIGNATURE_BYTES)];
            out.put_u16(signature.len() as u16);
            out.extend_from_slice(signature);
            out.extend_from_slice(&p.wasm);
        }
        Frame::PluginReport { platform, runs } => {
            put_str_max(out, &platform.target, MAX_PLUGIN_NAME_BYTES);
            out.put_u8(u8::from(platform.compiler));
            let runs = &runs[..runs.len().min(MAX_PLUGIN_RUNS)];
            out.put_u16(runs.len() as u16);
            for r in runs {
                put_str_max(out, &r.name, MAX_PLUGIN_NAME_BYTES);
                out.put_u64(r.version);
                out.put_u64(r.records_in);
                out.put_u64(r.errors);
                out.put_u64(r.dropped);
            }
        }
        Frame::Ack {
            seq,
            tp,
            next_offset,
        } => {
            out.put_u64(*seq);
            put_tp(out, tp);
            out.put_i64(*next_offset);
        }
        Frame::Stopped {
            seq,
            tp,
            offset,
            reason,
        } => {
            out.put_u64(*seq);
            put_tp(out, tp);
            out.put_i64(*offset);
            put_str_max(out, reason, MAX_STOPPED_REASON_BYTES);
        }
        Frame::Ping {
            nonce,
            sent_at_micros,
        }
        | Frame::Pong {
            nonce,
            sent_at_micros,
        } => {
            out.put_u64(*nonce);
            out.put_u64(*sent_at_micros);
        }
        Frame::Error { code, message } => {
            out.put_u16(code.to_u16());
            put_str(out, message);
        }
        Frame::GoAway { reason } => put_str(out, reason),
        Frame::SiteReport(r) => {
            out.put_i64(r.lag_records.map_or(-1, |l| l.max(0)));
            out.put_u64(r.retention_gap_records);
            out.put_u64(r.plugin_errors);
            out.put_u64(r.route_stops);
        }
        Frame::Redirect { addresses, reason } => {
            let addresses = &addresses[..addresses.len().min(MAX_REDIRECT_ADDRESSES)];
            out.put_u16(addresses.len() as u16);
            for a in addresses {
                put_str_max(out, a, MAX_REDIRECT_ADDRESS_BYTES);
            }
            put_str_max(out, reason, MAX_REDIRECT_REASON_BYTES);
        }
    }
    let len = out.len() - start - 4;
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Like [`encode_frame`] but refuses strings that do not fit their u16 length and frames longer
/// than `max_frame_bytes`; on error `out` is left unchanged. Returns the bytes appended.
pub fn try_encode_frame(
    frame: &Frame,
    out: &mut BytesMut,
    max_frame_bytes: u32,
) -> Result<usize, EncodeError> {
    let kind = frame.kind();
    let check = |field: &'static str, s: &str| {
        if s.len() > u16::MAX as usize {
            Err(EncodeError::StringTooLong {
                frame: kind,
                field,
                len: s.len(),
            })
        } else {
            Ok(())
        }
    };
    match frame {
        Frame::Hello {
            agent_version,
            site_claim,
            ..
        } => {
            check("agent_version", agent_version)?;
            check("site_claim", site_claim)?;
        }
        Frame::Welcome {
            site,
            hub_id,
            positions,
            heartbeat_target,
            ..
        } => {
            check("site", site)?;
            check("hub_id", hub_id)?;
            check("heartbeat_target", heartbeat_target)?;
            for p in positions {
                check("positions.topic", &p.tp.topic)?;
            }
        }
        Frame::GroupOffsets { groups } => {
            for g in groups {
                check("group", &g.group)?;
                for p in &g.offsets {
                    check("offsets.topic", &p.tp.topic)?;
                }
            }
        }
        Frame::TopicMetadata { topics } | Frame::DownlinkOffer { topics } => {
            for t in topics {
                check("topics.topic", &t.topic)?;
                check_topic_metadata(t).map_err(|(field, reason)| EncodeError::InvalidField {
                    frame: kind,
                    field,
                    reason,
                })?;
            }
        }
        Frame::TopicAcls { acls } => {
            for a in acls {
                check("acls.topic", &a.topic)?;
                check_topic_acl(a).map_err(|(field, reason)| EncodeError::InvalidField {
                    frame: kind,
                    field,
                    reason,
                })?;
            }
        }
        Frame::DownlinkStart { positions } => {
            for p in positions {
                check("positions.topic", &p.tp.topic)?;
            }
        }
        Frame::Batch(b) | Frame::DownlinkBatch(b) => check("topic", &b.header.tp.topic)?,
        Frame::Ack { tp, .. } | Frame::DownlinkAck { tp, .. } => check("topic", &tp.topic)?,
        Frame::Stopped { tp, reason, .. } => {
            check("topic", &tp.topic)?;
            if reason.len() > MAX_STOPPED_REASON_BYTES {
                return Err(EncodeError::OverLimit {
                    frame: kind,
                    field: "reason",
                    len: reason.len(),
                    max: MAX_STOPPED_REASON_BYTES,
                });
            }
        }
        Frame::Ping { .. } | Frame::Pong { .. } => {}
        Frame::PluginOffer(PluginOffer {
            name, signature, ..
        }) => {
            check_plugin_name(name).map_err(|reason| EncodeError::InvalidField {
                frame: kind,
                field: "name",
                reason,
            })?;
            if signature.len() > MAX_PLUGIN_SIGNATURE_BYTES {
                return Err(EncodeError::OverLimit {
                    frame: kind,
                    field: "signature",
                    len: signature.len(),
                    max: MAX_PLUGIN_SIGNATURE_BYTES,
                });
            }
        }
        Frame::PluginReport { platform, runs } => {
            if platform.target.len() > MAX_PLUGIN_NAME_BYTES {
                return Err(EncodeError::OverLimit {
                    frame: kind,
                    field: "platform.target",
                    len: platform.target.len(),
                    max: MAX_PLUGIN_NAME_BYTES,
                });
            }
            if runs.len() > MAX_PLUGIN_RUNS {
                return Err(EncodeError::OverLimit {
                    frame: kind,
                    field: "runs",
                    len: runs.len(),
                    max: MAX_PLUGIN_RUNS,
                });
            }
            for r in runs {
                check_plugin_name(&r.name).map_err(|reason| EncodeError::InvalidField {
                    frame: kind,
                    field: "runs.name",
                    reason,
                })?;
            }
        }
        Frame::Error { message, .. } => check("message", message)?,
        Frame::GoAway { reason } => check("reason", reason)?,
        Frame::SiteReport(_) => {}
        Frame::Redirect { addresses, reason } => {
            let over = |field, len, max| {
                if len > max {
                    Err(EncodeError::OverLimit {
                        frame: kind,
                        field,
                        len,
                        max,
                    })
                } else {
                    Ok(())
                }
            };
            over("addresses", addresses.len(), MAX_REDIRECT_ADDRESSES)?;
            for a in addresses {
                over("addresses[]", a.len(), MAX_REDIRECT_ADDRESS_BYTES)?;
            }
            over("reason", reason.len(), MAX_REDIRECT_REASON_BYTES)?;
        }
    }
    let start = out.len();
    encode_frame(frame, out);
    let len = out.len() - start - 4;
    if len > max_frame_bytes as usize {
        out.truncate(start);
        return Err(EncodeError::FrameTooLarge {
            frame: kind,
            len,
            max: max_frame_bytes,
        });
    }
    Ok(len + 4)
}

/// Encodes a Batch frame without its payload: length prefix, type byte and header.
///
/// Write `batch.payload` right after these bytes (e.g. as a second chunk of a vectored write)
/// to avoid copying the payload.
pub fn encode_batch_prefix(batch: &Batch, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(frame_type::BATCH);
    put_batch_header(out, &batch.header);
    let len = out.len() - start - 4 + batch.payload.len();
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_str(out: &mut BytesMut, s: &str) {
    put_str_max(out, s, u16::MAX as usize);
}

/// Writes `s` cut to at most `max` (<= 65535) bytes at a char boundary.
fn put_str_max(out: &mut BytesMut, s: &str, max: usize) {
    let mut end = s.len().min(max).min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_topics(out: &mut BytesMut, topics: &[TopicMetadata]) {
    out.put_u32(u32::try_from(topics.len()).unwrap_or(u32::MAX));
    for t in topics.iter().take(u32::MAX as usize) {
        put_str(out, &t.topic);
        out.put_i32(t.partitions);
        let configs = &t.configs[..t.configs.len().min(MAX_TOPIC_CONFIGS)];
        out.put_u16(configs.len() as u16);
        for (name, value) in configs {
            put_str_max(out, name, MAX_CONFIG_NAME_BYTES);
            put_str_max(out, value, MAX_CONFIG_VALUE_BYTES);
        }
    }
}

fn put_positions(out: &mut BytesMut, positions: &[Position]) {
    out.put_u32(u32::try_from(positions.len()).unwrap_or(u32::MAX));
    for p in positions.iter().take(u32::MAX as usize) {
        put_tp(out, &p.tp);
        out.put_i64(p.next_offset);
    }
}

fn put_tp(out: &mut BytesMut, tp: &TopicPartition) {
    put_str(out, &tp.topic);
    out.put_i32(tp.partition);
}

fn put_batch_header(out: &mut BytesMut, h: &BatchHeader) {
    out.put_u64(h.seq);
    put_tp(out, &h.tp);
    out.put_i32(h.partition_count);
    out.put_i64(h.first_offset);
    out.put_i64(h.next_offset);
    out.put_u32(h.record_count);
    out.put_u8(h.codec as u8);
    out.put_u32(h.uncompressed_len);
}

/// Decodes one frame from its type byte and body (the bytes after the length prefix).
pub fn decode_frame(body_with_type: &[u8]) -> Result<Frame, DecodeError> {
    decode_frame_bytes(Bytes::copy_from_slice(body_with_type))
}

/// Decodes one frame from its type byte and body; a Batch payload shares `body_with_type`'s
/// memory instead of being copied.
pub fn decode_frame_bytes(body_with_type: Bytes) -> Result<Frame, DecodeError> {
    let Some(&ty) = body_with_type.first() else {
        return Err(DecodeError::EmptyFrame);
    };
    let frame = match ty {
        frame_type::HELLO => "Hello",
        frame_type::WELCOME => "Welcome",
        frame_type::BATCH => "Batch",
        frame_type::ACK => "Ack",
        frame_type::PING => "Ping",
        frame_type::PONG => "Pong",
        frame_type::ERROR => "Error",
        frame_type::GO_AWAY => "GoAway",
        frame_type::GROUP_OFFSETS => "GroupOffsets",
        frame_type::REDIRECT => "Redirect",
        frame_type::SITE_REPORT => "SiteReport",
        frame_type::STOPPED => "Stopped",
        frame_type::TOPIC_METADATA => "TopicMetadata",
        frame_type::TOPIC_ACLS => "TopicAcls",
        frame_type::DOWNLINK_OFFER => "DownlinkOffer",
        frame_type::DOWNLINK_START => "DownlinkStart",
        frame_type::DOWNLINK_BATCH => "DownlinkBatch",
        frame_type::DOWNLINK_ACK => "DownlinkAck",
        frame_type::PLUGIN_OFFER => "PluginOffer",
        frame_type::PLUGIN_REPORT => "PluginReport",
        other => return Err(DecodeError::UnknownFrameType { frame_type: other }),
    };
    let mut r = Reader {
        buf: &body_with_type[1..],
        frame,
    };
    let decoded = match ty {
        frame_type::HELLO => Frame::Hello {
            min_version: r.u16("min_version")?,
            max_version: r.u16("max_version")?,
            agent_version: r.bounded_string("agent_version", MAX_HELLO_FIELD_BYTES)?,
            site_claim: r.bounded_string("site_claim", MAX_HELLO_FIELD_BYTES)?,
        },
        frame_type::WELCOME => {
            let version = r.u16("version")?;
            let site = r.string("site")?;
            let hub_id = r.string("hub_id")?;
            let positions = r.positions([
                "positions.count",
                "positions.topic",
                "positions.partition",
                "positions.next_offset",
            ])?;
            Frame::Welcome {
                version,
                site,
                hub_id,
                positions,
                max_batch_bytes: r.u32("max_batch_bytes")?,
                heartbeat_target: r.string("heartbeat_target")?,
            }
        }
        frame_type::GROUP_OFFSETS => {
            let count = r.u32("groups.count")? as usize;
            // Smallest encoded group: empty name (2) + no offsets (4).
            let mut groups = Vec::with_capacity(count.min(r.buf.len() / 6));
            for _ in 0..count {
                let group = r.string("groups.group")?;
                let offsets = r.positions([
                    "groups.offsets.count",
                    "groups.offsets.topic",
                    "groups.offsets.partition",
                    "groups.offsets.offset",
                ])?;
                groups.push(GroupOffsets { group, offsets });
            }
            Frame::GroupOffsets { groups }
        }
        frame_type::TOPIC_METADATA => Frame::TopicMetadata {
            topics: r.topics()?,
        },
        frame_type::DOWNLINK_OFFER => Frame::DownlinkOffer {
            topics: r.topics()?,
        },
        frame_type::DOWNLINK_START => Frame::DownlinkStart {
            positions: r.positions([
                "positions.count",
                "positions.topic",
                "positions.partition",
                "positions.next_offset",
            ])?,
        },
        frame_type::DOWNLINK_ACK => Frame::DownlinkAck {
            tp: r.tp("topic", "partition")?,
            next_offset: r.non_negative_i64("next_offset")?,
        },
        frame_type::TOPIC_ACLS => {
            let count = r.u32("acls.count")? as usize;
            // Smallest encoded binding: three empty strings (6) + two codes (2).
            let mut acls = Vec::with_capacity(count.min(r.buf.len() / 8));
            for _ in 0..count {
                let acl = TopicAcl {
                    topic: r.string("acls.topic")?,
                    principal: r.bounded_string("acls.principal", MAX_ACL_PRINCIPAL_BYTES)?,
                    host: r.bounded_string("acls.host", MAX_ACL_HOST_BYTES)?,
                    operation: r.u8("acls.operation")?,
                    permission: r.u8("acls.permission")?,
                };
                check_topic_acl(&acl).map_err(|(field, reason)| DecodeError::InvalidField {
                    frame,
                    field,
                    reason,
                })?;
                acls.push(acl);
            }
            Frame::TopicAcls { acls }
        }
        frame_type::BATCH => Frame::Batch(r.batch(&body_with_type)?),
        frame_type::PLUGIN_OFFER => r.plugin_offer(&body_with_type)?,
        frame_type::PLUGIN_REPORT => {
            let platform = PluginPlatform {
                target: r.bounded_string("platform.target", MAX_PLUGIN_NAME_BYTES)?,
                compiler: match r.u8("platform.compiler")? {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(DecodeError::InvalidField {
                            frame,
                            field: "platform.compiler",
                            reason: format!("is {other}, not 0 or 1"),
                        });
                    }
                },
            };
            let count = r.u16("runs.count")? as usize;
            if count > MAX_PLUGIN_RUNS {
                return Err(DecodeError::OverLimit {
                    frame,
                    field: "runs.count",
                    len: count,
                    max: MAX_PLUGIN_RUNS,
                });
            }
            let mut runs = Vec::with_capacity(count);
            for _ in 0..count {
                runs.push(PluginRun {
                    name: r.plugin_name("runs.name")?,
                    version: r.u64("runs.version")?,
                    records_in: r.u64("runs.records_in")?,
                    errors: r.u64("runs.errors")?,
                    dropped: r.u64("runs.dropped")?,
                });
            }
            Frame::PluginReport { platform, runs }
        }
        frame_type::DOWNLINK_BATCH => Frame::DownlinkBatch(r.batch(&body_with_type)?),
        frame_type::ACK => Frame::Ack {
            seq: r.u64("seq")?,
            tp: r.tp("topic", "partition")?,
            next_offset: r.non_negative_i64("next_offset")?,
        },
        frame_type::STOPPED => Frame::Stopped {
            seq: r.u64("seq")?,
            tp: r.tp("topic", "partition")?,
            offset: r.non_negative_i64("offset")?,
            reason: r.bounded_string("reason", MAX_STOPPED_REASON_BYTES)?,
        },
        frame_type::PING => Frame::Ping {
            nonce: r.u64("nonce")?,
            sent_at_micros: r.u64("sent_at_micros")?,
        },
        frame_type::PONG => Frame::Pong {
            nonce: r.u64("nonce")?,
            sent_at_micros: r.u64("sent_at_micros")?,
        },
        frame_type::ERROR => Frame::Error {
            code: ErrorCode::from_u16(r.u16("code")?),
            message: r.string("message")?,
        },
        frame_type::GO_AWAY => Frame::GoAway {
            reason: r.string("reason")?,
        },
        frame_type::SITE_REPORT => {
            // -1 says "unknown"; anything below is malformed.
            let lag = r.i64("lag_records")?;
            if lag < -1 {
                return Err(DecodeError::Negative {
                    frame,
                    field: "lag_records",
                    value: lag,
                });
            }
            Frame::SiteReport(SiteReport {
                lag_records: (lag >= 0).then_some(lag),
                retention_gap_records: r.u64("retention_gap_records")?,
                plugin_errors: r.u64("plugin_errors")?,
                route_stops: r.u64("route_stops")?,
            })
        }
        frame_type::REDIRECT => {
            let count = r.u16("addresses.count")? as usize;
            if count > MAX_REDIRECT_ADDRESSES {
                return Err(DecodeError::OverLimit {
                    frame,
                    field: "addresses.count",
                    len: count,
                    max: MAX_REDIRECT_ADDRESSES,
                });
            }
            let mut addresses = Vec::with_capacity(count);
            for _ in 0..count {
                addresses.push(r.bounded_string("addresses", MAX_REDIRECT_ADDRESS_BYTES)?);
            }
            Frame::Redirect {
                addresses,
                reason: r.bounded_string("reason", MAX_REDIRECT_REASON_BYTES)?,
            }
        }
        other => return Err(DecodeError::UnknownFrameType { frame_type: other }),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::TrailingBytes {
            frame,
            count: r.buf.len(),
        });
    }
    Ok(decoded)
}

struct Reader<'a> {
    buf: &'a [u8],
    frame: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                frame: self.frame,
                field,
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_be_bytes)
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_be_bytes)
    }
    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }
    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    fn non_negative_i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let v = self.i64(field)?;
        if v < 0 {
            return Err(DecodeError::Negative {
                frame: self.frame,
                field,
                value: v,
            });
        }
        Ok(v)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        self.bounded_string(field, usize::from(u16::MAX))
    }

    /// A string of at most `max` bytes, refused from its length prefix.
    fn bounded_string(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = self.u16(field)? as usize;
        if len > max {
            return Err(DecodeError::OverLimit {
                frame: self.frame,
                field,
                len,
                max,
            });
        }
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 {
                frame: self.frame,
                field,
            })
    }

    fn tp(
        &mut self,
        topic_field: &'static str,
        partition_field: &'static str,
    ) -> Result<TopicPartition, DecodeError> {
        let topic = self.string(topic_field)?;
        let partition = self.i32(partition_field)?;
        if partition < 0 {
            return Err(DecodeError::Negative {
                frame: self.frame,
                field: partition_field,
                value: partition.into(),
            });
        }
        Ok(TopicPartition { topic, partition })
    }

    /// A u32 count then topics (name, partition count of at least 1, configs within the caps).
    fn topics(&mut self) -> Result<Vec<TopicMetadata>, DecodeError> {
        let count = self.u32("topics.count")? as usize;
        // Smallest encoded topic: empty name (2) + partitions (4) + no configs (2).
        let mut topics = Vec::with_capacity(count.min(self.buf.len() / 8));
        for _ in 0..count {
            let topic = self.string("topics.topic")?;
            let partitions = self.i32("topics.partitions")?;
            if partitions < 1 {
                return Err(DecodeError::InvalidField {
                    frame: self.frame,
                    field: "topics.partitions",
                    reason: format!("is {partitions}, less than 1"),
                });
            }
            let n = self.u16("topics.configs.count")? as usize;
            if n > MAX_TOPIC_CONFIGS {
                return Err(DecodeError::OverLimit {
                    frame: self.frame,
                    field: "topics.configs.count",
                    len: n,
                    max: MAX_TOPIC_CONFIGS,
                });
            }
            let mut configs = Vec::with_capacity(n.min(self.buf.len() / 4));
            for _ in 0..n {
                let name = self.bounded_string("topics.configs.name", MAX_CONFIG_NAME_BYTES)?;
                if name.is_empty() {
                    return Err(DecodeError::InvalidField {
                        frame: self.frame,
                        field: "topics.configs.name",
                        reason: "is empty".into(),
                    });
                }
                let value = self.bounded_string("topics.configs.value", MAX_CONFIG_VALUE_BYTES)?;
                configs.push((name, value));
            }
            topics.push(TopicMetadata {
                topic,
                partitions,
                configs,
            });
        }
        Ok(topics)
    }

    /// A batch header then its payload (the rest of the frame), sharing `body_with_type`'s
    /// memory.
    fn batch(&mut self, body_with_type: &Bytes) -> Result<Batch, DecodeError> {
        let seq = self.u64("seq")?;
        let tp = self.tp("topic", "partition")?;
        let partition_count = self.i32("partition_count")?;
        if partition_count <= tp.partition {
            return Err(DecodeError::PartitionOutOfRange {
                partition: tp.partition,
                partition_count,
            });
        }
        let first_offset = self.non_negative_i64("first_offset")?;
        let next_offset = self.i64("next_offset")?;
        if next_offset < first_offset {
            return Err(DecodeError::OffsetsReversed {
                frame: self.frame,
                first_offset,
                next_offset,
            });
        }
        let record_count = self.u32("record_count")?;
        let codec_byte = self.u8("codec")?;
        let codec =
            Codec::from_u8(codec_byte).ok_or(DecodeError::UnknownCodec { codec: codec_byte })?;
        let uncompressed_len = self.u32("uncompressed_len")?;
        let consumed = body_with_type.len() - self.buf.len();
        let payload = body_with_type.slice(consumed..);
        self.buf = &[];
        Ok(Batch {
            header: BatchHeader {
                seq,
                tp,
                partition_count,
                first_offset,
                next_offset,
                record_count,
                codec,
                uncompressed_len,
            },
            payload,
        })
    }

    /// A plugin name: 1 to [`MAX_PLUGIN_NAME_BYTES`] of `[A-Za-z0-9._-]`.
    fn plugin_name(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let name = self.bounded_string(field, MAX_PLUGIN_NAME_BYTES)?;
        check_plugin_name(&name).map_err(|reason| DecodeError::InvalidField {
            frame: self.frame,
            field,
            reason,
        })?;
        Ok(name)
    }

    /// A PluginOffer's body; the component shares `body_with_type`'s memory.
    fn plugin_offer(&mut self, body_with_type: &Bytes) -> Result<Frame, DecodeError> {
        let name = self.plugin_name("name")?;
        let version = self.u64("version")?;
        let sha256 = self.array::<32>("sha256")?;
        let len = self.u16("signature.len")? as usize;
        if len > MAX_PLUGIN_SIGNATURE_BYTES {
            return Err(DecodeError::OverLimit {
                frame: self.frame,
                field: "signature",
                len,
                max: MAX_PLUGIN_SIGNATURE_BYTES,
            });
        }
        let at = body_with_type.len() - self.buf.len();
        self.take(len, "signature")?;
        let signature = body_with_type.slice(at..at + len);
        let consumed = body_with_type.len() - self.buf.len();
        let wasm = body_with_type.slice(consumed..);
        self.buf = &[];
        Ok(Frame::PluginOffer(PluginOffer {
            name,
            version,
            sha256,
            signature,
            wasm,
        }))
    }

    /// A u32 count then (topic, partition, non-negative offset) entries; `fields` names the
    /// count, topic, partition and offset fields in errors.
    fn positions(&mut self, fields: [&'static str; 4]) -> Result<Vec<Position>, DecodeError> {
        let [count_f, topic_f, partition_f, offset_f] = fields;
        let count = self.u32(count_f)? as usize;
        // Smallest encoded position: empty topic (2) + partition (4) + offset (8).
        let mut positions = Vec::with_capacity(count.min(self.buf.len() / 14));
        for _ in 0..count {
            let tp = self.tp(topic_f, partition_f)?;
            let next_offset = self.non_negative_i64(offset_f)?;
            positions.push(Position { tp, next_offset });
        }
        Ok(positions)
    }
}

/// Incremental decoder turning a byte stream into frames.
///
/// Any error is fatal for the stream: close the connection rather than calling again.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_bytes: u32,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_frame_bytes` (type byte + body).
    pub fn new(max_frame_bytes: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_bytes,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    ///
    /// An oversized length prefix is refused as soon as its 4 bytes are in, before any of the
    /// body is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if len == 0 {
            return Err(DecodeError::EmptyFrame);
        }
        if len > self.max_frame_bytes {
            return Err(DecodeError::FrameTooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        let total = 4 + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(total);
        frame.advance(4);
        decode_frame_bytes(frame.freeze()).map(Some)
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }
}
