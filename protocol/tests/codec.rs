//! Frame codec: round trips, malformed input, incremental decoding, property tests.

use bytes::{Bytes, BytesMut};
use er_protocol::*;
use proptest::prelude::*;

fn tp(t: &str, p: i32) -> TopicPartition {
    TopicPartition::new(t, p)
}

fn sample_batch() -> Batch {
    let mut b = BatchBuilder::new(tp("orders", 2), 4);
    b.push(&RecordRef {
        offset: 10,
        timestamp: 1_700_000_000_000,
        timestamp_type: TimestampType::CreateTime,
        key: Some(b"k"),
        value: Some(b"v"),
        headers: &[("h", Some(b"x"))],
        topic: None,
        partition: None,
    });
    b.finish(7, Codec::Zstd, 3).unwrap()
}

fn all_frames() -> Vec<Frame> {
    vec![
        Frame::Hello {
            min_version: 1,
            max_version: 3,
            agent_version: "0.1.0".into(),
            site_claim: "edge1".into(),
        },
        Frame::Welcome {
            version: 1,
            site: "edge1".into(),
            hub_id: "hub-a".into(),
            positions: vec![
                Position {
                    tp: tp("orders", 0),
                    next_offset: 42,
                },
                Position {
                    tp: tp("ünïcode", 3),
                    next_offset: 0,
                },
            ],
            max_batch_bytes: 1 << 20,
            heartbeat_target: "central".into(),
        },
        Frame::Welcome {
            version: 1,
            site: String::new(),
            hub_id: String::new(),
            positions: vec![],
            max_batch_bytes: 0,
            heartbeat_target: String::new(),
        },
        Frame::Batch(sample_batch()),
        Frame::DownlinkBatch(sample_batch()),
        Frame::Ack {
            seq: u64::MAX,
            tp: tp("orders", 2),
            next_offset: 11,
        },
        Frame::Stopped {
            seq: 4,
            tp: tp("orders", 1),
            offset: 7,
            reason: "record of 2097152 bytes is larger than the 1048488 bytes".into(),
        },
        Frame::Ping {
            nonce: 1,
            sent_at_micros: 2,
        },
        Frame::Pong {
            nonce: 3,
            sent_at_micros: 4,
        },
        Frame::Error {
            code: ErrorCode::BadBatch,
            message: "bad".into(),
        },
        Frame::Error {
            code: ErrorCode::Unknown(999),
            message: String::new(),
        },
        Frame::GoAway {
            reason: "shutdown".into(),
        },
        Frame::GroupOffsets {
            groups: vec![
                GroupOffsets {
                    group: "billing".into(),
                    offsets: vec![
                        Position {
                            tp: tp("orders", 0),
                            next_offset: 17,
                        },
                        Position {
                            tp: tp("orders", 1),
                            next_offset: 0,
                        },
                    ],
                },
                GroupOffsets {
                    group: String::new(),
                    offsets: vec![],
                },
            ],
        },
        Frame::GroupOffsets { groups: vec![] },
        Frame::TopicMetadata {
            topics: vec![
                TopicMetadata {
                    topic: "orders".into(),
                    partitions: 12,
                    configs: vec![
                        ("cleanup.policy".into(), "compact".into()),
                        ("retention.ms".into(), "604800000".into()),
                        ("note".into(), String::new()),
                    ],
                },
                // At the caps exactly.
                TopicMetadata {
                    topic: "t".into(),
                    partitions: i32::MAX,
                    configs: (0..MAX_TOPIC_CONFIGS)
                        .map(|i| {
                            (
                                format!("{i:n>width$}", width = MAX_CONFIG_NAME_BYTES),
                                "v".repeat(MAX_CONFIG_VALUE_BYTES),
                            )
                        })
                        .collect(),
                },
            ],
        },
        Frame::TopicMetadata { topics: vec![] },
        Frame::TopicAcls {
            acls: vec![
                TopicAcl {
                    topic: "orders".into(),
                    principal: "User:alice".into(),
                    host: "*".into(),
                    operation: 3,
                    permission: 3,
                },
                // At the caps exactly.
                TopicAcl {
                    topic: "t".into(),
                    principal: "p".repeat(MAX_ACL_PRINCIPAL_BYTES),
                    host: "h".repeat(MAX_ACL_HOST_BYTES),
                    operation: 12,
                    permission: 2,
                },
            ],
        },
        Frame::TopicAcls { acls: vec![] },
        Frame::SiteReport(SiteReport {
            lag_records: Some(1_234),
            retention_gap_records: 7,
            plugin_errors: u64::MAX,
            route_stops: 0,
        }),
        Frame::SiteReport(SiteReport::default()),
        Frame::DownlinkOffer {
            topics: vec![TopicMetadata {
                topic: "central.commands".into(),
                partitions: 3,
                configs: vec![("cleanup.policy".into(), "compact".into())],
            }],
        },
        Frame::DownlinkOffer { topics: vec![] },
        Frame::DownlinkStart {
            positions: vec![Position {
                tp: tp("central.commands", 2),
                next_offset: 17,
            }],
        },
        Frame::DownlinkStart { positions: vec![] },
        Frame::PluginOffer(PluginOffer {
            name: "filter-v2_x.y".into(),
            version: 7,
            sha256: [9; 32],
            signature: Bytes::from_static(&[1; 64]),
            wasm: Bytes::from_static(b"\0asm\x0d\0\x01\0"),
        }),
        Frame::PluginReport {
            platform: PluginPlatform {
                target: "aarch64-linux".into(),
                compiler: false,
            },
            runs: vec![PluginRun {
                name: "filter".into(),
                version: 3,
                records_in: 1_000,
                errors: 2,
                dropped: u64::MAX,
            }],
        },
        Frame::PluginReport {
            platform: PluginPlatform::default(),
            runs: vec![],
        },
        Frame::DownlinkAck {
            tp: tp("central.commands", 0),
            next_offset: i64::MAX,
        },
        Frame::Redirect {
            addresses: vec!["hub-2.example.com:4433".into(), "[2001:db8::7]:4433".into()],
            reason: "site plant-7 belongs to shard 12, owned by hub-2".into(),
        },
        // At the caps exactly.
        Frame::Redirect {
            addresses: (0..MAX_REDIRECT_ADDRESSES)
                .map(|i| format!("{i:x>width$}", width = MAX_REDIRECT_ADDRESS_BYTES))
                .collect(),
            reason: "r".repeat(MAX_REDIRECT_REASON_BYTES),
        },
    ]
}

fn encode(f: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(f, &mut out);
    out
}

#[test]
fn every_frame_round_trips() {
    for f in all_frames() {
        let bytes = encode(&f);
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4, "{}", f.kind());
        assert_eq!(decode_frame(&bytes[4..]).unwrap(), f, "{}", f.kind());
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        dec.push(&bytes);
        assert_eq!(dec.next_frame().unwrap(), Some(f));
        assert_eq!(dec.next_frame().unwrap(), None);
        assert_eq!(dec.buffered_len(), 0);
    }
}

#[test]
fn decoder_fed_byte_by_byte_yields_all_frames_in_order() {
    let frames = all_frames();
    let mut stream = BytesMut::new();
    for f in &frames {
        encode_frame(f, &mut stream);
    }
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    let mut got = Vec::new();
    for b in stream.iter() {
        dec.push(&[*b]);
        while let Some(f) = dec.next_frame().unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, frames);
    assert_eq!(dec.buffered_len(), 0);
}

#[test]
fn batch_prefix_plus_payload_equals_full_encoding() {
    let batch = sample_batch();
    let mut prefix = BytesMut::new();
    encode_batch_prefix(&batch, &mut prefix);
    prefix.extend_from_slice(&batch.payload);
    assert_eq!(prefix, encode(&Frame::Batch(batch)));
}

#[test]
fn oversized_length_is_rejected_from_the_prefix_alone() {
    let mut dec = FrameDecoder::new(1024);
    dec.push(&1025u32.to_be_bytes());
    assert_eq!(
        dec.next_frame(),
        Err(DecodeError::FrameTooLarge {
            len: 1025,
            max: 1024
        })
    );
    assert_eq!(dec.buffered_len(), 4);
}

#[test]
fn try_encode_refuses_long_strings_and_large_frames() {
    let mut out = BytesMut::new();
    let f = Frame::GoAway {
        reason: "x".repeat(70_000),
    };
    assert!(matches!(
        try_encode_frame(&f, &mut out, DEFAULT_MAX_FRAME_BYTES),
        Err(EncodeError::StringTooLong {
            field: "reason",
            len: 70_000,
            ..
        })
    ));
    assert!(out.is_empty());
    let f = Frame::GoAway {
        reason: "x".repeat(100),
    };
    assert!(matches!(
        try_encode_frame(&f, &mut out, 50),
        Err(EncodeError::FrameTooLarge { .. })
    ));
    assert!(out.is_empty());
    assert_eq!(try_encode_frame(&f, &mut out, 1000), Ok(4 + 1 + 2 + 100));
}

#[test]
fn try_encode_refuses_redirects_over_the_caps() {
    let ok = || Frame::Redirect {
        addresses: vec!["h:1".into()],
        reason: String::new(),
    };
    let cases = [
        (
            Frame::Redirect {
                addresses: vec!["h:1".into(); MAX_REDIRECT_ADDRESSES + 1],
                reason: String::new(),
            },
            "addresses",
            MAX_REDIRECT_ADDRESSES + 1,
        ),
        (
            Frame::Redirect {
                addresses: vec!["h:1".into(), "x".repeat(MAX_REDIRECT_ADDRESS_BYTES + 1)],
                reason: String::new(),
            },
            "addresses[]",
            MAX_REDIRECT_ADDRESS_BYTES + 1,
        ),
        (
            Frame::Redirect {
                addresses: vec!["h:1".into()],
                reason: "x".repeat(MAX_REDIRECT_REASON_BYTES + 1),
            },
            "reason",
            MAX_REDIRECT_REASON_BYTES + 1,
        ),
    ];
    for (f, field, len) in cases {
        let mut out = BytesMut::new();
        let e = try_encode_frame(&f, &mut out, DEFAULT_MAX_FRAME_BYTES).unwrap_err();
        assert_eq!(
            e,
            EncodeError::OverLimit {
                frame: "Redirect",
                field,
                len,
                max: match field {
                    "addresses" => MAX_REDIRECT_ADDRESSES,
                    "addresses[]" => MAX_REDIRECT_ADDRESS_BYTES,
                    _ => MAX_REDIRECT_REASON_BYTES,
                },
            },
            "{field}"
        );
        assert!(e.to_string().contains(field), "{e}");
        assert!(out.is_empty(), "{field}: nothing written");
        // The infallible encoder cuts to the caps, so the decoder still accepts its output.
        let bytes = encode(&f);
        let Frame::Redirect { addresses, reason } = decode_frame(&bytes[4..]).unwrap() else {
            panic!("not a Redirect")
        };
        assert!(addresses.len() <= MAX_REDIRECT_ADDRESSES, "{field}");
        assert!(
            addresses
                .iter()
                .all(|a| a.len() <= MAX_REDIRECT_ADDRESS_BYTES),
            "{field}"
        );
        assert!(reason.len() <= MAX_REDIRECT_REASON_BYTES, "{field}");
    }
    let mut out = BytesMut::new();
    assert_eq!(
        try_encode_frame(&ok(), &mut out, DEFAULT_MAX_FRAME_BYTES),
        Ok(4 + 1 + 2 + 2 + 3 + 2)
    );
}

#[test]
fn encode_frame_truncates_overlong_text_at_a_char_boundary() {
    let f = Frame::GoAway {
        reason: "é".repeat(40_000),
    };
    let bytes = encode(&f);
    let Frame::GoAway { reason } = decode_frame(&bytes[4..]).unwrap() else {
        panic!("not GoAway")
    };
    assert_eq!(reason.len(), 65_534);
}

/// Body bytes (type byte first) for a Batch frame with the given header fields.
fn batch_body(partition: i32, partition_count: i32, first: i64, next: i64, codec: u8) -> Vec<u8> {
    let mut v = vec![3u8];
    v.extend(1u64.to_be_bytes());
    v.extend(1u16.to_be_bytes());
    v.push(b't');
    v.extend(partition.to_be_bytes());
    v.extend(partition_count.to_be_bytes());
    v.extend(first.to_be_bytes());
    v.extend(next.to_be_bytes());
    v.extend(0u32.to_be_bytes());
    v.push(codec);
    v.extend(0u32.to_be_bytes());
    v
}

#[test]
fn malformed_frames_give_the_documented_error() {
    let ack = |partition: i32, next: i64| {
        let mut v = vec![4u8];
        v.extend(1u64.to_be_bytes());
        v.extend(1u16.to_be_bytes());
        v.push(b't');
        v.extend(partition.to_be_bytes());
        v.extend(next.to_be_bytes());
        v
    };
    let mut trailing_ping = vec![5u8];
    trailing_ping.extend([0u8; 17]);
    let mut bad_utf8 = vec![8u8, 0, 2, 0xff, 0xfe];
    let mut welcome_huge_count = vec![2u8, 0, 1, 0, 0, 0, 0];
    welcome_huge_count.extend(u32::MAX.to_be_bytes());
    // Redirect bodies: count u16, then (len u16, bytes) per address, then the reason.
    let redirect = |count: u16, addresses: &[&[u8]], reason: &[u8]| {
        let mut v = vec![10u8];
        v.extend(count.to_be_bytes());
        for a in addresses {
            v.extend((a.len() as u16).to_be_bytes());
            v.extend(*a);
        }
        v.extend((reason.len() as u16).to_be_bytes());
        v.extend(reason);
        v
    };
    let long_address = vec![b'a'; MAX_REDIRECT_ADDRESS_BYTES + 1];
    let long_reason = vec![b'r'; MAX_REDIRECT_REASON_BYTES + 1];
    // A length prefix above the cap is refused before the bytes are looked at.
    let mut address_len_over_cap = redirect(1, &[], b"");
    address_len_over_cap.truncate(3);
    address_len_over_cap.extend(60_000u16.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, DecodeError)> = vec![
        ("empty body", vec![], DecodeError::EmptyFrame),
        (
            "unknown type",
            vec![0x42],
            DecodeError::UnknownFrameType { frame_type: 0x42 },
        ),
        (
            "truncated ping",
            vec![5u8, 0, 0, 0],
            DecodeError::Truncated {
                frame: "Ping",
                field: "nonce",
            },
        ),
        (
            "trailing bytes",
            trailing_ping,
            DecodeError::TrailingBytes {
                frame: "Ping",
                count: 1,
            },
        ),
        (
            "invalid utf-8",
            std::mem::take(&mut bad_utf8),
            DecodeError::InvalidUtf8 {
                frame: "GoAway",
                field: "reason",
            },
        ),
        (
            "string longer than body",
            vec![8u8, 0, 5, b'a'],
            DecodeError::Truncated {
                frame: "GoAway",
                field: "reason",
            },
        ),
        (
            "negative partition",
            ack(-1, 0),
            DecodeError::Negative {
                frame: "Ack",
                field: "partition",
                value: -1,
            },
        ),
        (
            "site report lag below -1 (unknown)",
            {
                let mut v = vec![11u8];
                v.extend((-2i64).to_be_bytes());
                v.extend([0u8; 24]);
                v
            },
            DecodeError::Negative {
                frame: "SiteReport",
                field: "lag_records",
                value: -2,
            },
        ),
        (
            "negative offset",
            ack(0, -5),
            DecodeError::Negative {
                frame: "Ack",
                field: "next_offset",
                value: -5,
            },
        ),
        (
            "next below first",
            batch_body(0, 1, 10, 9, 0),
            DecodeError::OffsetsReversed {
                frame: "Batch",
                first_offset: 10,
                next_offset: 9,
            },
        ),
        (
            "partition beyond count",
            batch_body(3, 3, 0, 0, 0),
            DecodeError::PartitionOutOfRange {
                partition: 3,
                partition_count: 3,
            },
        ),
        (
            "unknown codec",
            batch_body(0, 1, 0, 0, 9),
            DecodeError::UnknownCodec { codec: 9 },
        ),
        (
            "welcome count beyond body",
            welcome_huge_count,
            DecodeError::Truncated {
                frame: "Welcome",
                field: "positions.topic",
            },
        ),
        (
            "redirect with too many addresses",
            redirect(
                MAX_REDIRECT_ADDRESSES as u16 + 1,
                &[b"h:1".as_slice(); MAX_REDIRECT_ADDRESSES + 1],
                b"",
            ),
            DecodeError::OverLimit {
                frame: "Redirect",
                field: "addresses.count",
                len: MAX_REDIRECT_ADDRESSES + 1,
                max: MAX_REDIRECT_ADDRESSES,
            },
        ),
        (
            "redirect count u16::MAX",
            redirect(u16::MAX, &[], b""),
            DecodeError::OverLimit {
                frame: "Redirect",
                field: "addresses.count",
                len: u16::MAX as usize,
                max: MAX_REDIRECT_ADDRESSES,
            },
        ),
        (
            "redirect address over the cap",
            redirect(2, &[b"h:1", &long_address], b""),
            DecodeError::OverLimit {
                frame: "Redirect",
                field: "addresses",
                len: MAX_REDIRECT_ADDRESS_BYTES + 1,
                max: MAX_REDIRECT_ADDRESS_BYTES,
            },
        ),
        (
            "redirect address length prefix over the cap, body missing",
            address_len_over_cap,
            DecodeError::OverLimit {
                frame: "Redirect",
                field: "addresses",
                len: 60_000,
                max: MAX_REDIRECT_ADDRESS_BYTES,
            },
        ),
        (
            "redirect reason over the cap",
            redirect(1, &[b"h:1"], &long_reason),
            DecodeError::OverLimit {
                frame: "Redirect",
                field: "reason",
                len: MAX_REDIRECT_REASON_BYTES + 1,
                max: MAX_REDIRECT_REASON_BYTES,
            },
        ),
        (
            "redirect count beyond body",
            redirect(3, &[b"h:1"], b""),
            DecodeError::Truncated {
                frame: "Redirect",
                field: "addresses",
            },
        ),
        (
            "redirect without reason",
            redirect(1, &[b"h:1"], b"")[..8].to_vec(),
            DecodeError::Truncated {
                frame: "Redirect",
                field: "reason",
            },
        ),
        (
            "redirect address not utf-8",
            redirect(1, &[&[0xff, 0xfe]], b""),
            DecodeError::InvalidUtf8 {
                frame: "Redirect",
                field: "addresses",
            },
        ),
    ];
    for (name, body, want) in cases {
        assert_eq!(decode_frame(&body), Err(want.clone()), "{name}");
        // Same through the stream decoder.
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        dec.push(&(body.len() as u32).to_be_bytes());
        dec.push(&body);
        assert_eq!(dec.next_frame(), Err(want), "{name} via FrameDecoder");
    }
}

#[test]
fn error_messages_name_the_field_and_value() {
    let e = decode_frame(&batch_body(0, 1, 10, 9, 0)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Batch frame: next_offset 9 is below first_offset 10"
    );
}

fn arb_string() -> impl Strategy<Value = String> {
    proptest::string::string_regex(".{0,20}").unwrap()
}

fn arb_tp() -> impl Strategy<Value = TopicPartition> {
    (arb_string(), 0..i32::MAX).prop_map(|(t, p)| TopicPartition::new(t, p))
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), arb_string(), arb_string()).prop_map(|(a, b, c, d)| {
            Frame::Hello {
                min_version: a,
                max_version: b,
                agent_version: c,
                site_claim: d,
            }
        }),
        (
            any::<u16>(),
            arb_string(),
            arb_string(),
            proptest::collection::vec((arb_tp(), 0..i64::MAX), 0..5),
            any::<u32>(),
            arb_string()
        )
            .prop_map(
                |(version, site, hub_id, ps, max_batch_bytes, heartbeat_target)| Frame::Welcome {
                    version,
                    site,
                    hub_id,
                    positions: ps
                        .into_iter()
                        .map(|(tp, next_offset)| Position { tp, next_offset })
                        .collect(),
                    max_batch_bytes,
                    heartbeat_target,
                }
            ),
        (
            any::<u64>(),
            arb_tp(),
            0..1000i32,
            0..i64::MAX / 2,
            0..1000i64,
            any::<u32>(),
            any::<bool>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(seq, tp, extra, first, span, rc, z, ul, payload)| {
                let partition_count = tp.partition.saturating_add(1).saturating_add(extra);
                Frame::Batch(Batch {
                    header: BatchHeader {
                        seq,
                        tp,
                        partition_count,
                        first_offset: first,
                        next_offset: first + span,
                        record_count: rc,
                        codec: if z { Codec::Zstd } else { Codec::None },
                        uncompressed_len: ul,
                    },
                    payload: Bytes::from(payload),
                })
            }),
        (arb_tp(), 0..i64::MAX)
            .prop_map(|(tp, next_offset)| Frame::DownlinkAck { tp, next_offset }),
        proptest::collection::vec((arb_tp(), 0..i64::MAX), 0..5).prop_map(|ps| {
            Frame::DownlinkStart {
                positions: ps
                    .into_iter()
                    .map(|(tp, next_offset)| Position { tp, next_offset })
                    .collect(),
            }
        }),
        (any::<u64>(), arb_tp(), 0..i64::MAX).prop_map(|(seq, tp, next_offset)| Frame::Ack {
            seq,
            tp,
            next_offset
        }),
        (any::<u64>(), arb_tp(), 0..i64::MAX, arb_string()).prop_map(
            |(seq, tp, offset, reason)| Frame::Stopped {
                seq,
                tp,
                offset,
                reason,
            }
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(nonce, sent_at_micros)| Frame::Ping {
            nonce,
            sent_at_micros
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(nonce, sent_at_micros)| Frame::Pong {
            nonce,
            sent_at_micros
        }),
        (1..7u16, arb_string()).prop_map(|(c, message)| Frame::Error {
            code: ErrorCode::from_u16(c),
            message
        }),
        arb_string().prop_map(|reason| Frame::GoAway { reason }),
        (
            proptest::option::of(0..i64::MAX),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(lag_records, retention_gap_records, plugin_errors, route_stops)| {
                    Frame::SiteReport(SiteReport {
                        lag_records,
                        retention_gap_records,
                        plugin_errors,
                        route_stops,
                    })
                }
            ),
        proptest::collection::vec(
            (
                arb_string(),
                proptest::collection::vec((arb_tp(), 0..i64::MAX), 0..4)
            ),
            0..4
        )
        .prop_map(|gs| Frame::GroupOffsets {
            groups: gs
                .into_iter()
                .map(|(group, ps)| GroupOffsets {
                    group,
                    offsets: ps
                        .into_iter()
                        .map(|(tp, next_offset)| Position { tp, next_offset })
                        .collect(),
                })
                .collect(),
        }),
        proptest::collection::vec(
            (
                arb_string(),
                1..i32::MAX,
                proptest::collection::vec(
                    (
                        proptest::string::string_regex(".{1,40}").unwrap(),
                        arb_string()
                    ),
                    0..4
                )
            ),
            0..4
        )
        .prop_map(|ts| Frame::TopicMetadata {
            topics: ts
                .into_iter()
                .map(|(topic, partitions, configs)| TopicMetadata {
                    topic,
                    partitions,
                    configs: configs
                        .into_iter()
                        .map(|(n, v)| (n, v.chars().take(MAX_CONFIG_VALUE_BYTES / 4).collect()))
                        .collect(),
                })
                .collect(),
        }),
        proptest::collection::vec(
            (
                arb_string(),
                proptest::string::string_regex(".{1,40}").unwrap(),
                proptest::string::string_regex(".{1,40}").unwrap(),
                2u8..=12,
                2u8..=3
            ),
            0..4
        )
        .prop_map(|acls| Frame::TopicAcls {
            acls: acls
                .into_iter()
                .map(|(topic, principal, host, operation, permission)| TopicAcl {
                    topic,
                    principal,
                    host,
                    operation,
                    permission,
                })
                .collect(),
        }),
        (
            proptest::collection::vec(
                proptest::string::string_regex(".{1,40}").unwrap(),
                1..=MAX_REDIRECT_ADDRESSES
            ),
            arb_string()
        )
            .prop_map(|(addresses, reason)| Frame::Redirect { addresses, reason }),
    ]
}

fn drain(dec: &mut FrameDecoder) {
    // Stop at the first error, as a driver would; never panic.
    while let Ok(Some(_)) = dec.next_frame() {}
}

proptest! {
    #[test]
    fn arbitrary_frames_round_trip(f in arb_frame()) {
        let bytes = encode(&f);
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        dec.push(&bytes);
        prop_assert_eq!(dec.next_frame().unwrap(), Some(f));
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut dec = FrameDecoder::new(256);
        dec.push(&data);
        drain(&mut dec);
        let _ = decode_frame(&data);
    }

    #[test]
    fn mutated_frames_never_panic(
        f in arb_frame(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode(&f).to_vec();
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        dec.push(&bytes);
        drain(&mut dec);
        if bytes.len() > 4
            && let Ok(Frame::Batch(b)) = decode_frame(&bytes[4..])
        {
            let _ = b.decode_records(1 << 16);
        }
    }
}

#[test]
fn display_and_error_codes() {
    assert_eq!(tp("orders", 3).to_string(), "orders/3");
    assert_eq!(Channel::Partition(tp("o", 1)).to_string(), "partition o/1");
    for v in 0..10u16 {
        assert_eq!(ErrorCode::from_u16(v).to_u16(), v);
    }
    assert_eq!(ErrorCode::from_u16(3), ErrorCode::VersionMismatch);
    assert_eq!(ErrorCode::from_u16(0), ErrorCode::Unknown(0));
    assert_eq!(
        Frame::GoAway {
            reason: String::new()
        }
        .kind(),
        "GoAway"
    );
}

#[test]
fn topic_metadata_is_capped_from_its_length_prefixes() {
    let body = |t: TopicMetadata| {
        let mut buf = BytesMut::new();
        encode_frame(&Frame::TopicMetadata { topics: vec![t] }, &mut buf);
        buf[4..].to_vec()
    };
    let topic = |partitions, configs: Vec<(String, String)>| TopicMetadata {
        topic: "orders".into(),
        partitions,
        configs,
    };
    // The encoder cuts what it cannot send, so craft over-cap frames by hand.
    let mut too_many = body(topic(1, vec![]));
    let n = too_many.len();
    too_many[n - 2..].copy_from_slice(&((MAX_TOPIC_CONFIGS as u16) + 1).to_be_bytes());
    let mut long_value = body(topic(1, vec![("retention.ms".into(), "1".into())]));
    let n = long_value.len();
    long_value.truncate(n - 3);
    long_value.extend_from_slice(&((MAX_CONFIG_VALUE_BYTES as u16) + 1).to_be_bytes());
    long_value.extend(std::iter::repeat_n(b'9', MAX_CONFIG_VALUE_BYTES + 1));
    for (bytes, field) in [
        (too_many, "topics.configs.count"),
        (long_value, "topics.configs.value"),
    ] {
        let e = decode_frame(&bytes).unwrap_err();
        assert!(
            matches!(e, DecodeError::OverLimit { frame: "TopicMetadata", field: f, .. } if f == field),
            "{field}: {e:?}"
        );
    }
    for (t, field) in [
        (topic(0, vec![]), "topics.partitions"),
        (topic(-3, vec![]), "topics.partitions"),
        (
            topic(1, vec![(String::new(), "x".into())]),
            "topics.configs.name",
        ),
    ] {
        let e = decode_frame(&body(t)).unwrap_err();
        assert!(
            matches!(e, DecodeError::InvalidField { frame: "TopicMetadata", field: f, .. } if f == field),
            "{field}: {e:?}"
        );
        assert!(e.to_string().contains(field), "{e}");
    }
    // try_encode refuses what the decoder would.
    let mut out = BytesMut::new();
    let e = try_encode_frame(
        &Frame::TopicMetadata {
            topics: vec![topic(0, vec![])],
        },
        &mut out,
        DEFAULT_MAX_FRAME_BYTES,
    )
    .unwrap_err();
    assert!(e.to_string().contains("partitions"), "{e}");
    assert!(out.is_empty());
}

#[test]
fn hello_strings_are_capped_from_their_length_prefix() {
    let hello = |agent_version: String, site_claim: String| {
        let mut buf = BytesMut::new();
        encode_frame(
            &Frame::Hello {
                min_version: 2,
                max_version: 2,
                agent_version,
                site_claim,
            },
            &mut buf,
        );
        buf[4..].to_vec()
    };
    let max = er_protocol::MAX_HELLO_FIELD_BYTES;
    let at_cap = hello("v".repeat(max), "s".repeat(max));
    assert!(decode_frame(&at_cap).is_ok(), "{max} bytes are allowed");
    for (body, field) in [
        (hello("v".repeat(max + 1), "shop-1".into()), "agent_version"),
        (
            hello("edge-agent/1".into(), "s".repeat(65_535)),
            "site_claim",
        ),
    ] {
        let e = decode_frame(&body).unwrap_err();
        assert!(
            matches!(e, DecodeError::OverLimit { frame: "Hello", field: f, max: m, .. } if f == field && m == max),
            "{field}: {e:?}"
        );
        assert!(e.to_string().contains(field), "{e}");
    }
}

#[test]
fn topic_acls_with_unknown_codes_or_empty_names_are_refused_naming_the_field() {
    let frame = |principal: &str, host: &str, operation: u8, permission: u8| {
        let mut b = vec![14u8];
        b.extend_from_slice(&1u32.to_be_bytes());
        for s in ["t", principal, host] {
            b.extend_from_slice(&(s.len() as u16).to_be_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b.extend_from_slice(&[operation, permission]);
        decode_frame_bytes(Bytes::from(b))
    };
    assert!(matches!(
        frame("User:a", "*", 3, 3),
        Ok(Frame::TopicAcls { acls }) if acls.len() == 1
    ));
    for (got, field) in [
        (frame("User:a", "*", 1, 3), "acls.operation"),
        (frame("User:a", "*", 13, 3), "acls.operation"),
        (frame("User:a", "*", 3, 1), "acls.permission"),
        (frame("", "*", 3, 3), "acls.principal"),
        (frame("User:a", "", 3, 3), "acls.host"),
    ] {
        assert!(
            matches!(&got, Err(DecodeError::InvalidField { frame: "TopicAcls", field: f, .. }) if *f == field),
            "{field}: {got:?}"
        );
    }
    let long = "p".repeat(MAX_ACL_PRINCIPAL_BYTES + 1);
    assert!(matches!(
        frame(&long, "*", 3, 3),
        Err(DecodeError::OverLimit {
            field: "acls.principal",
            ..
        })
    ));
}

#[test]
fn plugin_names_name_files_safely() {
    for bad in ["", "../x", ".hidden", "a/b", "a b", "é"] {
        let frame = Frame::PluginReport {
            platform: PluginPlatform::default(),
            runs: vec![PluginRun {
                name: bad.into(),
                version: 1,
                records_in: 0,
                errors: 0,
                dropped: 0,
            }],
        };
        let mut out = BytesMut::new();
        assert!(
            try_encode_frame(&frame, &mut out, DEFAULT_MAX_FRAME_BYTES).is_err(),
            "{bad:?} encoded"
        );
        encode_frame(&frame, &mut out);
        let got = decode_frame(&out[4..]);
        assert!(
            matches!(
                got,
                Err(DecodeError::InvalidField {
                    field: "runs.name",
                    ..
                })
            ),
            "{bad:?}: {got:?}"
        );
    }
}
