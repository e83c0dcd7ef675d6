//! Record encoding inside batches: builder, codecs, validation of malformed payloads.

use bytes::Bytes;
use er_protocol::*;

fn tp() -> TopicPartition {
    TopicPartition::new("sensors", 1)
}

fn rec<'a>(offset: i64, headers: &'a [(&'a str, Option<&'a [u8]>)]) -> RecordRef<'a> {
    RecordRef {
        offset,
        timestamp: -5,
        timestamp_type: TimestampType::LogAppendTime,
        key: None,
        value: Some(b""),
        headers,
        topic: None,
        partition: None,
    }
}

#[test]
fn records_round_trip_with_both_codecs_keeping_null_and_empty_distinct() {
    let headers: &[(&str, Option<&[u8]>)] = &[("a", Some(b"1")), ("a", None), ("", Some(b""))];
    let records = [
        RecordRef {
            offset: 100,
            timestamp: 1_700_000_000_123,
            timestamp_type: TimestampType::CreateTime,
            key: Some(b"key"),
            value: None,
            headers,
            topic: Some("renamed"),
            partition: Some(7),
        },
        // Two output records sharing one source offset (a plugin split a record).
        rec(100, &[]),
        RecordRef {
            offset: 105,
            timestamp: i64::MIN,
            timestamp_type: TimestampType::NotAvailable,
            key: Some(b""),
            value: Some(&[0u8; 3000]),
            headers: &[],
            topic: None,
            partition: Some(0),
        },
    ];
    for codec in [Codec::None, Codec::Zstd] {
        let mut b = BatchBuilder::new(tp(), 3);
        for r in &records {
            b.push(r);
        }
        assert_eq!(b.len(), 3);
        let encoded = b.encoded_bytes();
        b.set_next_offset(200);
        let batch = b.finish(4, codec, 3).unwrap();
        let h = &batch.header;
        assert_eq!(
            (
                h.seq,
                h.first_offset,
                h.next_offset,
                h.record_count,
                h.codec
            ),
            (4, 100, 200, 3, codec)
        );
        assert_eq!(h.uncompressed_len as usize, encoded);
        if codec == Codec::Zstd {
            assert!(batch.payload.len() < encoded, "3000 zero bytes compress");
        }
        let decoded = batch.decode_records(1 << 20).unwrap();
        assert_eq!(decoded.len(), 3);
        let views: Vec<RecordView<'_>> = decoded.iter().map(Result::unwrap).collect();
        for (v, r) in views.iter().zip(&records) {
            assert_eq!(v.offset, r.offset);
            assert_eq!(v.timestamp, r.timestamp);
            assert_eq!(v.timestamp_type, r.timestamp_type);
            assert_eq!(v.key, r.key);
            assert_eq!(v.value, r.value);
            assert_eq!(v.headers.to_vec(), r.headers.to_vec());
            assert_eq!(v.topic, r.topic);
            assert_eq!(v.partition, r.partition);
        }
    }
}

#[test]
fn empty_batch_moves_the_position_only() {
    let mut b = BatchBuilder::new(tp(), 3);
    assert!(b.is_empty());
    b.set_next_offset(77);
    let batch = b.finish(0, Codec::None, 0).unwrap();
    assert_eq!(
        (
            batch.header.first_offset,
            batch.header.next_offset,
            batch.header.record_count
        ),
        (77, 77, 0)
    );
    assert_eq!(batch.decode_records(0).unwrap().len(), 0);
    let b = BatchBuilder::new(tp(), 3);
    assert_eq!(
        b.finish(0, Codec::None, 0),
        Err(EncodeError::EmptyBatchWithoutPosition { next_offset: None })
    );
}

#[test]
fn next_offset_defaults_to_last_plus_one() {
    let mut b = BatchBuilder::new(tp(), 3);
    b.push(&rec(5, &[]));
    b.push(&rec(9, &[]));
    let batch = b.finish(0, Codec::None, 0).unwrap();
    assert_eq!(
        (batch.header.first_offset, batch.header.next_offset),
        (5, 10)
    );
}

#[test]
fn builder_reports_bad_records_at_finish() {
    let cases: Vec<(&str, Vec<RecordRef<'static>>, Option<i64>, EncodeError)> = vec![
        (
            "negative offset",
            vec![rec(-1, &[])],
            None,
            EncodeError::NegativeOffset {
                index: 0,
                offset: -1,
            },
        ),
        (
            "decreasing offset",
            vec![rec(5, &[]), rec(4, &[])],
            None,
            EncodeError::OffsetDecreasing {
                index: 1,
                offset: 4,
                previous: 5,
            },
        ),
        (
            "negative partition",
            vec![RecordRef {
                partition: Some(-2),
                ..rec(1, &[])
            }],
            None,
            EncodeError::NegativePartition {
                index: 0,
                partition: -2,
            },
        ),
        (
            "next_offset too small",
            vec![rec(5, &[])],
            Some(5),
            EncodeError::NextOffsetTooSmall {
                next_offset: 5,
                last_offset: 5,
            },
        ),
    ];
    for (name, records, next, want) in cases {
        let mut b = BatchBuilder::new(tp(), 3);
        for r in &records {
            b.push(r);
        }
        if let Some(n) = next {
            b.set_next_offset(n);
        }
        assert_eq!(b.finish(0, Codec::None, 0), Err(want), "{name}");
    }
    assert_eq!(
        BatchBuilder::new(TopicPartition::new("t", 3), 3).finish(0, Codec::None, 0),
        Err(EncodeError::InvalidPartition {
            partition: 3,
            partition_count: 3
        })
    );
}

#[test]
fn builder_is_reusable_across_batches() {
    let mut b = BatchBuilder::new(tp(), 3);
    let mut next = 0;
    for seq in 0..5u64 {
        for _ in 0..10 {
            b.push(&rec(next, &[]));
            next += 1;
        }
        let batch = b.finish_and_reset(seq, Codec::Zstd, 1).unwrap();
        assert_eq!(batch.header.first_offset, next - 10);
        assert_eq!(batch.decode_records(1 << 20).unwrap().len(), 10);
        assert!(b.is_empty());
    }
    b.reset(TopicPartition::new("other", 0), 1);
    b.push(&rec(3, &[]));
    let batch = b.finish(0, Codec::None, 0).unwrap();
    assert_eq!(batch.header.tp, TopicPartition::new("other", 0));
}

#[test]
fn push_with_headers_from_an_iterator() {
    let owned = [
        ("k".to_string(), Some(b"v".to_vec())),
        ("n".to_string(), None),
    ];
    let mut b = BatchBuilder::new(tp(), 3);
    b.push_with_headers(
        &rec(0, &[]),
        owned.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
    );
    let batch = b.finish(0, Codec::None, 0).unwrap();
    let d = batch.decode_records(1024).unwrap();
    let r = d.iter().next().unwrap().unwrap();
    assert_eq!(
        r.headers.to_vec(),
        vec![("k", Some(&b"v"[..])), ("n", None)]
    );
}

fn raw_batch(first: i64, next: i64, count: u32, payload: &[u8]) -> Batch {
    Batch {
        header: BatchHeader {
            seq: 0,
            tp: tp(),
            partition_count: 3,
            first_offset: first,
            next_offset: next,
            record_count: count,
            codec: Codec::None,
            uncompressed_len: payload.len() as u32,
        },
        payload: Bytes::copy_from_slice(payload),
    }
}

#[test]
fn malformed_record_payloads_give_the_documented_error() {
    // Minimal valid record: flags 0, delta 0, ts 0, 0 headers.
    let ok = [0u8, 0, 0, 0];
    let cases: Vec<(&str, Batch, DecodeError)> = vec![
        (
            "fewer records than declared",
            raw_batch(0, 10, 2, &ok),
            DecodeError::RecordCountMismatch {
                declared: 2,
                actual: 1,
            },
        ),
        (
            "trailing bytes",
            raw_batch(0, 10, 1, &[0, 0, 0, 0, 9]),
            DecodeError::RecordTrailingBytes {
                count: 1,
                records: 1,
            },
        ),
        (
            "offset beyond next_offset",
            raw_batch(0, 10, 1, &[0, 10, 0, 0]),
            DecodeError::RecordOffsetOutOfRange {
                index: 0,
                offset: 10,
                first_offset: 0,
                next_offset: 10,
            },
        ),
        (
            "reserved flag bits",
            raw_batch(0, 10, 1, &[0x80, 0, 0, 0]),
            DecodeError::InvalidRecordFlags {
                index: 0,
                flags: 0x80,
            },
        ),
        (
            "timestamp type 3",
            raw_batch(0, 10, 1, &[0b1100, 0, 0, 0]),
            DecodeError::InvalidRecordFlags {
                index: 0,
                flags: 0b1100,
            },
        ),
        (
            "key longer than payload",
            raw_batch(0, 10, 1, &[1, 0, 0, 50]),
            DecodeError::RecordTruncated {
                index: 0,
                field: "key",
            },
        ),
        (
            "varint overflow",
            raw_batch(
                0,
                10,
                1,
                &[
                    0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
                ],
            ),
            DecodeError::BadVarint {
                index: 0,
                field: "offset_delta",
            },
        ),
        (
            "header key not utf-8",
            raw_batch(0, 10, 1, &[0, 0, 0, 1, 1, 0xff, 0]),
            DecodeError::RecordInvalidUtf8 {
                index: 0,
                field: "header_key",
            },
        ),
        (
            "header present flag 2",
            raw_batch(0, 10, 1, &[0, 0, 0, 1, 0, 2]),
            DecodeError::InvalidHeaderFlag { index: 0, value: 2 },
        ),
        (
            "partition override too big",
            raw_batch(0, 10, 1, &[0x20, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x08]),
            DecodeError::PartitionOverrideOutOfRange {
                index: 0,
                value: 1 << 31,
            },
        ),
        (
            "uncompressed too large",
            Batch {
                header: BatchHeader {
                    uncompressed_len: 5000,
                    ..raw_batch(0, 10, 0, &[]).header
                },
                payload: Bytes::new(),
            },
            DecodeError::UncompressedTooLarge {
                uncompressed_len: 5000,
                max: 4096,
            },
        ),
        (
            "declared length differs",
            Batch {
                header: BatchHeader {
                    uncompressed_len: 8,
                    ..raw_batch(0, 10, 1, &ok).header
                },
                payload: Bytes::copy_from_slice(&ok),
            },
            DecodeError::UncompressedLenMismatch {
                declared: 8,
                actual: 4,
            },
        ),
    ];
    for (name, batch, want) in cases {
        assert_eq!(batch.decode_records(4096).unwrap_err(), want, "{name}");
    }
    // Decreasing offsets: record 1 at delta 3, record 2 at delta 2.
    let b = raw_batch(0, 10, 2, &[0, 3, 0, 0, 0, 2, 0, 0]);
    assert_eq!(
        b.decode_records(4096).unwrap_err(),
        DecodeError::RecordOffsetDecreasing {
            index: 1,
            offset: 2,
            previous: 3
        }
    );
    // Garbage zstd.
    let mut z = raw_batch(0, 10, 1, &ok);
    z.header.codec = Codec::Zstd;
    assert!(matches!(
        z.decode_records(4096),
        Err(DecodeError::Decompress { .. })
    ));
}

#[test]
fn zstd_bomb_is_refused_without_inflating_past_the_declared_length() {
    let mut b = BatchBuilder::new(tp(), 3);
    let zeros = vec![0u8; 1 << 20];
    b.push(&RecordRef {
        value: Some(&zeros),
        ..rec(0, &[])
    });
    let mut batch = b.finish(0, Codec::Zstd, 3).unwrap();
    // Lie about the size: decompression must fail rather than grow beyond it.
    batch.header.uncompressed_len = 1000;
    assert!(matches!(
        batch.decode_records(1 << 21),
        Err(DecodeError::Decompress { .. })
    ));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    type OwnedHeader = (String, Option<Vec<u8>>);
    type OwnedRecord = (
        i64,
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<OwnedHeader>,
        Option<String>,
        Option<i32>,
    );

    fn arb_record() -> impl Strategy<Value = OwnedRecord> {
        (
            0..5i64,
            any::<i64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::collection::vec(
                (
                    ".{0,8}",
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
                ),
                0..4,
            ),
            proptest::option::of("[a-z.]{1,12}"),
            proptest::option::of(0..i32::MAX),
        )
    }

    fn build(records: &[OwnedRecord], codec: Codec) -> Batch {
        let mut b = BatchBuilder::new(tp(), 3);
        let mut offset = 1000;
        for (gap, ts, k, v, hs, t, p) in records {
            offset += gap;
            b.push_with_headers(
                &RecordRef {
                    offset,
                    timestamp: *ts,
                    timestamp_type: TimestampType::CreateTime,
                    key: k.as_deref(),
                    value: v.as_deref(),
                    headers: &[],
                    topic: t.as_deref(),
                    partition: *p,
                },
                hs.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
            );
        }
        b.set_next_offset(offset + 1);
        b.finish(0, codec, 1).unwrap()
    }

    proptest! {
        #[test]
        fn arbitrary_records_round_trip(
            records in proptest::collection::vec(arb_record(), 0..20),
            zstd in any::<bool>(),
        ) {
            let codec = if zstd { Codec::Zstd } else { Codec::None };
            let batch = build(&records, codec);
            let decoded = batch.decode_records(u32::MAX).unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (view, (_, ts, k, v, hs, t, p)) in decoded.iter().zip(&records) {
                let view = view.unwrap();
                prop_assert_eq!(view.timestamp, *ts);
                prop_assert_eq!(view.key, k.as_deref());
                prop_assert_eq!(view.value, v.as_deref());
                let want: Vec<_> = hs.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                prop_assert_eq!(view.headers.to_vec(), want);
                prop_assert_eq!(view.topic, t.as_deref());
                prop_assert_eq!(view.partition, *p);
            }
        }

        #[test]
        fn mutated_record_payloads_never_panic(
            records in proptest::collection::vec(arb_record(), 1..10),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
            count_delta in -2i64..3,
        ) {
            let batch = build(&records, Codec::None);
            let mut payload = batch.payload.to_vec();
            for (i, v) in flips {
                let i = i.index(payload.len());
                payload[i] = v;
            }
            payload.truncate(cut.index(payload.len() + 1));
            let mut header = batch.header.clone();
            header.uncompressed_len = payload.len() as u32;
            header.record_count = (i64::from(header.record_count) + count_delta).max(0) as u32;
            let mutated = Batch { header, payload: Bytes::from(payload) };
            if let Ok(d) = mutated.decode_records(u32::MAX) {
                for r in d.iter() {
                    let r = r.unwrap();
                    prop_assert!(r.offset >= mutated.header.first_offset);
                    prop_assert!(r.offset < mutated.header.next_offset);
                    let _ = r.headers.to_vec();
                }
            }
        }
    }
}

/// A record larger than the builder's limit (the hub's batch limit, set by the agent) is sent
/// as a stub in its place: same offset, timestamp, key and destination, no value, one header
/// saying why; records around it are kept whole, and a record only looking like a stub (a
/// value, or more headers) is not one.
#[test]
fn a_record_over_the_limit_becomes_a_poison_stub_in_its_place() {
    let big = vec![7u8; 10_000];
    let mut b = BatchBuilder::new(tp(), 2).with_max_record_bytes(1_000);
    b.push(&rec(10, &[]));
    b.push(&RecordRef {
        offset: 11,
        timestamp: 42,
        timestamp_type: TimestampType::CreateTime,
        key: Some(b"k11"),
        value: Some(&big),
        headers: &[("h", Some(b"v"))],
        topic: Some("renamed"),
        partition: Some(1),
    });
    b.push(&rec(12, &[]));
    // Looks like a stub but carries a value: an ordinary record.
    b.push(&RecordRef {
        value: Some(b"x"),
        ..rec(13, &[(POISON_REASON_HEADER, Some(b"no"))])
    });
    let batch = b.finish(0, Codec::Zstd, 3).expect("encodes");
    assert_eq!(batch.header.record_count, 4);
    assert_eq!(batch.header.first_offset, 10);
    let decoded = batch.decode_records(1 << 20).expect("decodes");
    let recs: Vec<RecordView<'_>> = decoded.iter().map(|r| r.expect("record")).collect();
    assert_eq!(recs[0].poison_reason(), None);
    let stub = &recs[1];
    assert_eq!(stub.offset, 11);
    assert_eq!(stub.timestamp, 42);
    assert_eq!(stub.key, Some(&b"k11"[..]));
    assert_eq!(stub.value, None);
    assert_eq!(stub.topic, Some("renamed"));
    assert_eq!(stub.partition, Some(1));
    let reason = String::from_utf8_lossy(stub.poison_reason().expect("a stub"));
    assert!(
        reason.contains("1000 bytes") && reason.contains("max_batch_bytes"),
        "{reason}"
    );
    assert_eq!(recs[2].offset, 12);
    assert_eq!(recs[2].poison_reason(), None);
    assert_eq!(recs[3].poison_reason(), None);

    // The first record of a batch too, and the key is dropped when it alone is too large.
    let huge_key = vec![1u8; POISON_KEY_MAX_BYTES + 1];
    let mut b = BatchBuilder::new(tp(), 2).with_max_record_bytes(1_000);
    b.push(&RecordRef {
        key: Some(&huge_key),
        ..rec(5, &[])
    });
    let batch = b.finish(0, Codec::None, 0).expect("encodes");
    assert_eq!(batch.header.first_offset, 5);
    let decoded = batch.decode_records(1 << 20).expect("decodes");
    let only = decoded.iter().next().expect("one").expect("record");
    assert_eq!((only.offset, only.key), (5, None));
    assert!(only.poison_reason().is_some());
}

#[test]
fn a_batch_compression_does_not_shrink_goes_raw_and_the_next_ones_skip_trying() {
    use er_protocol::records::{JUDGE_COMPRESSION_BYTES, SKIP_AFTER_NO_GAIN};
    // Incompressible values (a xorshift stream), then compressible ones.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = || {
        (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
    };
    let zeros = vec![0u8; 8192];
    assert!(zeros.len() >= JUDGE_COMPRESSION_BYTES);
    let mut b = BatchBuilder::new(tp(), 2);
    let mut offset = 0;
    let mut batch = |b: &mut BatchBuilder, value: &[u8]| {
        b.push(&RecordRef {
            value: Some(value),
            ..rec(offset, &[])
        });
        offset += 1;
        let batch = b.finish_and_reset(offset as u64, Codec::Zstd, 3).unwrap();
        let got = batch.decode_records(1 << 20).unwrap();
        let first = got.iter().next().unwrap().unwrap();
        assert_eq!(first.value, Some(value), "round trip");
        batch.header.codec
    };
    assert_eq!(batch(&mut b, &zeros), Codec::Zstd, "compressible: zstd");
    assert_eq!(batch(&mut b, &noise()), Codec::None, "no gain: raw");
    for i in 0..SKIP_AFTER_NO_GAIN {
        assert_eq!(
            batch(&mut b, &zeros),
            Codec::None,
            "batch {i} after it skips trying"
        );
    }
    assert_eq!(batch(&mut b, &zeros), Codec::Zstd, "then tries again");
    // A small batch that does not shrink goes raw without making the next ones skip.
    assert_eq!(batch(&mut b, b"tiny"), Codec::None);
    assert_eq!(batch(&mut b, &zeros), Codec::Zstd);
}
