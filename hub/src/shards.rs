//! Site shards: which shard a site belongs to, and the hub's internal topics, partitioned by shard.
//!
//! A fleet's replication state lives in a few topics per central cluster, each with one partition
//! per shard, so that a hub which takes a shard over reads exactly that shard's partitions:
//!
//! | topic | key | value | cleanup |
//! |---|---|---|---|
//! | `er-shards.<group>.internal` | (none: never written) | | the hubs' consumer group subscribes to it; its partitions are the shards |
//! | `er-positions.<group>.internal` | site, source topic, partition | version 0, next source offset | compact |
//! | `er-offset-index.<group>.internal` | site | offset index entries ([`crate::offsets::encode`]) | delete (retention) |
//! | `er-hubs.<group>.internal` (1 partition) | hub id | [`HubAdvert`] as JSON | compact |
//!
//! Positions and index records of a site go to the partition of its shard, in the same
//! transaction as its records; the transaction also commits an offset of that shard's partition
//! of the shards topic for the hubs' group, which is what fences a hub that lost the shard
//! (KIP-447).

use std::collections::BTreeSet;

use er_protocol::{Position, TopicPartition};
use serde::{Deserialize, Serialize};

/// A shard number, `0..shards`.
pub type Shard = u32;

/// The shard of `site` among `shards`: FNV-1a (32 bit) of the alias's bytes, modulo `shards`.
/// This function is part of the stored format (it decides which partition holds a site's
/// state): it must never change.
pub fn shard_of(site: &str, shards: u32) -> Shard {
    let mut h: u32 = 0x811c_9dc5;
    for b in site.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % shards.max(1)
}

/// The topic whose partitions are the shards; the hubs of a group subscribe to it.
pub fn shards_topic(group: &str) -> String {
    format!("er-shards.{group}.internal")
}

/// The compacted topic of committed source positions of every site of the group.
pub fn positions_topic(group: &str) -> String {
    format!("er-positions.{group}.internal")
}

/// The topic of offset index records of every site of the group.
pub fn offset_index_topic(group: &str) -> String {
    format!("er-offset-index.{group}.internal")
}

/// The compacted topic where each hub of the group advertises its address and shards.
pub fn hubs_topic(group: &str) -> String {
    format!("er-hubs.{group}.internal")
}

/// Longest site alias or topic name a position key holds (both are far below Kafka's and the
/// protocol's own limits; the check keeps the i16 length prefix from wrapping whatever a caller
/// passes).
const MAX_NAME: usize = 255;

/// Why a position record could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionRecordError {
    /// A name is longer than a position key holds.
    #[error("{what} of {len} bytes is longer than {MAX_NAME}")]
    NameTooLong {
        /// Which name.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The key does not have the documented layout.
    #[error("position key: {0}")]
    Key(String),
    /// The value does not have the documented layout.
    #[error("position value: {0}")]
    Value(String),
}

fn put_str(out: &mut Vec<u8>, what: &'static str, s: &str) -> Result<(), PositionRecordError> {
    if s.len() > MAX_NAME {
        return Err(PositionRecordError::NameTooLong { what, len: s.len() });
    }
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn take_str<'a>(key: &mut &'a [u8], what: &str) -> Result<&'a str, PositionRecordError> {
    let bad = |m: String| PositionRecordError::Key(format!("{what}: {m}"));
    let len = match key {
        [a, b, ..] => i16::from_be_bytes([*a, *b]),
        _ => return Err(bad("shorter than its length".into())),
    };
    let len = usize::try_from(len).map_err(|_| bad(format!("negative length {len}")))?;
    let bytes = key
        .get(2..2 + len)
        .ok_or_else(|| bad(format!("length {len} past the end")))?;
    *key = &key[2 + len..];
    std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))
}

/// Key of a position record: site, topic (each i16 length + UTF-8) and partition (i32),
/// big-endian.
pub fn position_key(site: &str, tp: &TopicPartition) -> Result<Vec<u8>, PositionRecordError> {
    let mut k = Vec::with_capacity(8 + site.len() + tp.topic.len());
    put_str(&mut k, "site alias", site)?;
    put_str(&mut k, "topic", &tp.topic)?;
    k.extend_from_slice(&tp.partition.to_be_bytes());
    Ok(k)
}

/// Value of a position record: version (i16 = 0) and the next source offset (i64).
pub fn position_value(next_offset: i64) -> [u8; 10] {
    let mut v = [0u8; 10];
    v[2..].copy_from_slice(&next_offset.to_be_bytes());
    v
}

/// Decodes a position record into its site and position.
pub fn decode_position(
    key: &[u8],
    value: &[u8],
) -> Result<(String, Position), PositionRecordError> {
    let mut rest = key;
    let site = take_str(&mut rest, "site")?.to_owned();
    let topic = take_str(&mut rest, "topic")?.to_owned();
    let partition = match rest {
        [a, b, c, d] => i32::from_be_bytes([*a, *b, *c, *d]),
        _ => {
            return Err(PositionRecordError::Key(format!(
                "{} bytes after the topic, expected 4 (partition)",
                rest.len()
            )));
        }
    };
    if value.len() != 10 {
        return Err(PositionRecordError::Value(format!(
            "{} bytes, expected 10",
            value.len()
        )));
    }
    let version = i16::from_be_bytes([value[0], value[1]]);
    if version != 0 {
        return Err(PositionRecordError::Value(format!(
            "unknown version {version}"
        )));
    }
    let mut o = [0u8; 8];
    o.copy_from_slice(&value[2..]);
    Ok((
        site,
        Position {
            tp: TopicPartition { topic, partition },
            next_offset: i64::from_be_bytes(o),
        },
    ))
}

/// What a hub tells the other hubs of its group: where agents reach it and which shards it
/// owns (on the coordination cluster) since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubAdvert {
    /// The hub's id.
    pub hub_id: String,
    /// `host:port` addresses agents can connect to; empty when it cannot be redirected to.
    pub addresses: Vec<String>,
    /// Shards it owns.
    pub shards: BTreeSet<Shard>,
    /// Wall clock (epoch ms) when written; adverts older than a few session timeouts are
    /// ignored.
    pub updated_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_fnv1a_and_stable() {
        // FNV-1a 32 reference values ("" and "a"), so the stored layout can never drift.
        assert_eq!(shard_of("", u32::MAX), 0x811c_9dc5);
        assert_eq!(shard_of("a", u32::MAX), 0xe40c_292c);
        assert_eq!(shard_of("plant-7", 64), shard_of("plant-7", 64));
        assert!((0..1000).all(|i| shard_of(&format!("site-{i}"), 64) < 64));
        let used: BTreeSet<_> = (0..1000)
            .map(|i| shard_of(&format!("site-{i}"), 64))
            .collect();
        assert_eq!(used.len(), 64, "1000 sites cover every one of 64 shards");
    }

    #[test]
    fn internal_topics_are_internal_and_valid() {
        for t in [
            shards_topic("edge-replicator"),
            positions_topic("edge-replicator"),
            offset_index_topic("edge-replicator"),
            hubs_topic("edge-replicator"),
        ] {
            assert!(er_protocol::is_internal_topic(&t), "{t}");
            er_protocol::validate_topic_name(&t).unwrap();
        }
    }

    #[test]
    fn position_records_round_trip_and_reject_garbage() {
        let tp = TopicPartition::new("orders", 7);
        let k = position_key("plant-7", &tp).unwrap();
        assert_eq!(k, b"\x00\x07plant-7\x00\x06orders\x00\x00\x00\x07");
        let (site, p) = decode_position(&k, &position_value(1234)).unwrap();
        assert_eq!(
            (site.as_str(), p.tp, p.next_offset),
            ("plant-7", tp.clone(), 1234)
        );
        assert!(matches!(
            decode_position(&k[..k.len() - 1], &position_value(1)),
            Err(PositionRecordError::Key(_))
        ));
        assert!(matches!(
            decode_position(&k[..3], &position_value(1)),
            Err(PositionRecordError::Key(_))
        ));
        let mut bad = position_value(1);
        bad[1] = 1;
        assert!(
            decode_position(&k, &bad)
                .unwrap_err()
                .to_string()
                .contains("version 1")
        );
        assert!(decode_position(&k, &bad[..9]).is_err());
        let long = "x".repeat(40_000);
        assert_eq!(
            position_key("s", &TopicPartition::new(long, 0)),
            Err(PositionRecordError::NameTooLong {
                what: "topic",
                len: 40_000
            }),
            "a long name is refused, never wrapped into a negative length"
        );
    }
}
