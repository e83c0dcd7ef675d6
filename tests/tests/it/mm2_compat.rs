//! MirrorMaker 2 compatibility, judged by Apache Kafka's own classes (`er_tests::oracle`).
//!
//! * Our heartbeat, checkpoint and offset-sync encodings (`er_protocol::mm2`) decode in Kafka's
//!   deserializers to the same fields, and Kafka re-encodes those fields to exactly our bytes.
//! * What each side does with unknown versions and malformed records, asserted as it is (Kafka's
//!   decoders are more lenient than ours; see the individual tests).
//! * On a real broker, `RemoteClusterUtils.translateOffsets` returns exactly the checkpoints we
//!   wrote to `<site>.checkpoints.internal`.
//!
//! The decoding tests need no broker: one JVM decodes every record of a test.

use std::collections::BTreeMap;
use std::time::Duration;

use er_protocol::policy::{ReplicationPolicy, checkpoints_topic, validate_site_alias};
use er_protocol::{Checkpoint, Heartbeat, Mm2Error, OffsetSync, TopicPartition};
use er_tests::client::{self, NewRecord};
use er_tests::oracle::{self, Jvm, Kind};
use er_tests::{kafka, unique_name};
use serde_json::{Value, json};

use crate::common::{blocking, tp};

/// Longest string Kafka's STRING type (int16 length) holds.
const MAX_STRING: usize = i16::MAX as usize;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn heartbeats() -> Vec<Heartbeat> {
    let hb = |s: &str, t: &str, timestamp| Heartbeat {
        source_cluster_alias: s.to_owned(),
        target_cluster_alias: t.to_owned(),
        timestamp,
    };
    vec![
        hb("site-a", "central", 1_717_000_000_000),
        hb("", "", 0),
        hb("zürich-站点-🚀", "zentral\u{0}\t\"\\/", -1),
        hb(&"a".repeat(MAX_STRING), "b", i64::MIN),
        hb("x", &"é".repeat(MAX_STRING / 2), i64::MAX),
    ]
}

fn checkpoints() -> Vec<Checkpoint> {
    let cp = |group: &str, tp: TopicPartition, upstream, downstream, metadata: &str| Checkpoint {
        consumer_group_id: group.to_owned(),
        topic_partition: tp,
        upstream_offset: upstream,
        downstream_offset: downstream,
        metadata: metadata.to_owned(),
    };
    vec![
        cp("g", tp("site-a.orders", 0), 0, 0, ""),
        cp("", tp("", i32::MIN), -1, i64::MIN, ""),
        cp(
            &"g".repeat(MAX_STRING),
            tp(&"t".repeat(249), i32::MAX),
            i64::MAX,
            1 << 40,
            &"m".repeat(MAX_STRING),
        ),
        cp(
            "grüppe-組-🎉",
            tp("site-a.orders", 7),
            123_456_789,
            123_456_000,
            "commit ✓ \n\t\"quoted\" \\ \u{0} end",
        ),
        // Multi-byte characters right up to the int16 length limit (32766 bytes).
        cp("g", tp("t", 1), 5, 5, &"é".repeat(MAX_STRING / 2)),
    ]
}

fn offset_syncs() -> Vec<OffsetSync> {
    let os = |tp: TopicPartition, upstream, downstream| OffsetSync {
        topic_partition: tp,
        upstream_offset: upstream,
        downstream_offset: downstream,
    };
    vec![
        os(tp("orders", 0), 0, 0),
        os(tp("", -1), -1, i64::MIN),
        os(tp(&"t".repeat(MAX_STRING), i32::MAX), i64::MAX, i64::MAX),
        os(tp("日本語-topic", 3), 10, 7),
    ]
}

fn heartbeat_fields(h: &Heartbeat) -> Value {
    json!({
        "sourceClusterAlias": h.source_cluster_alias,
        "targetClusterAlias": h.target_cluster_alias,
        "timestamp": h.timestamp,
    })
}

fn checkpoint_fields(c: &Checkpoint) -> Value {
    json!({
        "consumerGroupId": c.consumer_group_id,
        "topic": c.topic_partition.topic,
        "partition": c.topic_partition.partition,
        "upstreamOffset": c.upstream_offset,
        "downstreamOffset": c.downstream_offset,
        "metadata": c.metadata,
    })
}

fn offset_sync_fields(s: &OffsetSync) -> Value {
    json!({
        "topic": s.topic_partition.topic,
        "partition": s.topic_partition.partition,
        "upstreamOffset": s.upstream_offset,
        "downstreamOffset": s.downstream_offset,
    })
}

/// The decoded fields without Kafka's re-encoding (`kafkaKey`, `kafkaValue`) or read position.
fn decoded_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in [
            "kafkaKey",
            "kafkaValue",
            "recordPartition",
            "recordOffset",
            "ok",
        ] {
            o.remove(k);
        }
    }
    v
}

fn short(s: &str) -> String {
    if s.len() <= 120 {
        s.to_owned()
    } else {
        format!(
            "{}... ({} bytes)",
            &s[..s.floor_char_boundary(120)],
            s.len()
        )
    }
}

/// One case for the oracle: our encoding, the fields it must decode to, a label.
struct Case {
    label: String,
    kind: Kind,
    key: Vec<u8>,
    value: Vec<u8>,
    fields: Value,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (i, h) in heartbeats().iter().enumerate() {
        let (key, value) = (h.encode_key().unwrap(), h.encode_value());
        assert_eq!(Heartbeat::decode(&key, &value).as_ref(), Ok(h));
        out.push(Case {
            label: format!("heartbeat #{i}"),
            kind: Kind::Heartbeat,
            key,
            value,
            fields: heartbeat_fields(h),
        });
    }
    for (i, c) in checkpoints().iter().enumerate() {
        let (key, value) = (c.encode_key().unwrap(), c.encode_value().unwrap());
        assert_eq!(Checkpoint::decode(&key, &value).as_ref(), Ok(c));
        out.push(Case {
            label: format!("checkpoint #{i}"),
            kind: Kind::Checkpoint,
            key,
            value,
            fields: checkpoint_fields(c),
        });
    }
    for (i, s) in offset_syncs().iter().enumerate() {
        let (key, value) = (s.encode_key().unwrap(), s.encode_value());
        assert_eq!(OffsetSync::decode(&key, &value).as_ref(), Ok(s));
        out.push(Case {
            label: format!("offset sync #{i}"),
            kind: Kind::OffsetSync,
            key,
            value,
            fields: offset_sync_fields(s),
        });
    }
    out
}

fn batch(jvm: Jvm, records: Vec<(Kind, Vec<u8>, Vec<u8>)>) -> Vec<Result<Value, String>> {
    let n = records.len();
    let out = jvm.decode_batch(&records).expect("running the MM2 oracle");
    assert_eq!(out.len(), n);
    out
}

/// Builds the oracle (scripts/setup.sh runs exactly this test to pre-build it) and checks it runs
/// the Kafka release of the test brokers.
#[test]
fn oracle_builds_with_the_harness_kafka_version() {
    assert_eq!(oracle::kafka_version(), kafka::kafka_version());
    let v = Jvm::PRODUCTION.version().expect("running the MM2 oracle");
    assert_eq!(v["kafka"], kafka::kafka_version(), "{v}");
    assert_eq!(v["assertions"], false, "{v}");
    let v = Jvm::ASSERTIONS
        .version()
        .expect("running the MM2 oracle with -ea");
    assert_eq!(v["assertions"], true, "{v}");
}

#[test]
fn kafka_decodes_our_records_to_the_same_fields_and_bytes() {
    let cases = cases();
    let decoded = batch(
        Jvm::PRODUCTION,
        cases
            .iter()
            .map(|c| (c.kind, c.key.clone(), c.value.clone()))
            .collect(),
    );
    for (case, got) in cases.iter().zip(decoded) {
        let got = got.unwrap_or_else(|e| panic!("{}: Kafka refused our record: {e}", case.label));
        assert_eq!(
            decoded_fields(&got),
            case.fields,
            "{}: Kafka decoded other fields",
            case.label
        );
        assert_eq!(
            got["kafkaKey"],
            hex(&case.key),
            "{}: Kafka encodes the key differently",
            case.label
        );
        assert_eq!(
            got["kafkaValue"],
            hex(&case.value),
            "{}: Kafka encodes the value differently",
            case.label
        );
    }
}

#[test]
fn single_record_decoders_match() {
    let h = &heartbeats()[2];
    let got = oracle::decode_heartbeat(&h.encode_key().unwrap(), &h.encode_value()).unwrap();
    assert_eq!(decoded_fields(&got), heartbeat_fields(h));

    let c = &checkpoints()[3];
    let (key, value) = (c.encode_key().unwrap(), c.encode_value().unwrap());
    let got = oracle::decode_checkpoint(&key, &value).unwrap();
    assert_eq!(decoded_fields(&got), checkpoint_fields(c));
    let err = oracle::decode_checkpoint(&key, &value[..value.len() - 1]).unwrap_err();
    assert!(
        format!("{err:#}").contains("SchemaException"),
        "Kafka's exception is the error: {err:#}"
    );

    let s = &offset_syncs()[3];
    let got = oracle::decode_offset_sync(&s.encode_key().unwrap(), &s.encode_value()).unwrap();
    assert_eq!(decoded_fields(&got), offset_sync_fields(s));
}

/// Our decoders reject a value version other than 0. Kafka's only check is `assert version == 0`
/// in `valueSchema(short)`: without `-ea` (how MirrorMaker 2 runs) it decodes the rest as version
/// 0 and would rewrite it as version 0; with `-ea` it throws `java.lang.AssertionError`.
#[test]
fn unknown_versions_rejected_by_us_and_by_kafka_only_with_assertions() {
    struct VersionCase {
        label: String,
        kind: Kind,
        key: Vec<u8>,
        v0: Vec<u8>,
        patched: Vec<u8>,
        version: i16,
        ours: Result<(), Mm2Error>,
        fields: Value,
    }
    let mut cases = Vec::new();
    for version in [1i16, 2, -1, i16::MAX] {
        let h = &heartbeats()[0];
        let (key, v0) = (h.encode_key().unwrap(), h.encode_value());
        let mut patched = v0.clone();
        patched[..2].copy_from_slice(&version.to_be_bytes());
        cases.push(VersionCase {
            label: format!("heartbeat version {version}"),
            kind: Kind::Heartbeat,
            ours: Heartbeat::decode(&key, &patched).map(drop),
            key,
            v0,
            patched,
            version,
            fields: heartbeat_fields(h),
        });
        let c = &checkpoints()[3];
        let (key, v0) = (c.encode_key().unwrap(), c.encode_value().unwrap());
        let mut patched = v0.clone();
        patched[..2].copy_from_slice(&version.to_be_bytes());
        cases.push(VersionCase {
            label: format!("checkpoint version {version}"),
            kind: Kind::Checkpoint,
            ours: Checkpoint::decode(&key, &patched).map(drop),
            key,
            v0,
            patched,
            version,
            fields: checkpoint_fields(c),
        });
    }
    let records: Vec<_> = cases
        .iter()
        .map(|c| (c.kind, c.key.clone(), c.patched.clone()))
        .collect();
    let production = batch(Jvm::PRODUCTION, records.clone());
    let with_assertions = batch(Jvm::ASSERTIONS, records);
    for ((case, prod), ea) in cases.iter().zip(production).zip(with_assertions) {
        let record = if case.kind == Kind::Heartbeat {
            "Heartbeat"
        } else {
            "Checkpoint"
        };
        assert_eq!(
            case.ours,
            Err(Mm2Error::UnsupportedVersion {
                record,
                version: case.version
            }),
            "{}: our decoder",
            case.label
        );
        let prod = prod.unwrap_or_else(|e| {
            panic!(
                "{}: Kafka without -ea was expected to accept it: {e}",
                case.label
            )
        });
        assert_eq!(decoded_fields(&prod), case.fields, "{}", case.label);
        assert_eq!(
            prod["kafkaValue"],
            hex(&case.v0),
            "{}: Kafka rewrites it as version 0",
            case.label
        );
        let err = ea.expect_err(&format!("{}: Kafka with -ea must refuse it", case.label));
        assert!(
            err.starts_with("java.lang.AssertionError"),
            "{}: {err}",
            case.label
        );
    }
}

/// Malformed records: what our decoders and Kafka's (without `-ea`) do, as it is. Kafka's
/// `Schema.read` fails (SchemaException) only when a field cannot be read; it ignores trailing
/// bytes and decodes invalid UTF-8 with replacement characters, where we refuse both.
#[test]
fn malformed_records_truth_table() {
    let hb = &heartbeats()[0];
    let (hk, hv) = (hb.encode_key().unwrap(), hb.encode_value());
    let cp = &checkpoints()[0];
    let (ck, cv) = (cp.encode_key().unwrap(), cp.encode_value().unwrap());
    let os = &offset_syncs()[0];
    let (ok, ov) = (os.encode_key().unwrap(), os.encode_value());
    let cat = |a: &[u8], b: &[u8]| [a, b].concat();
    // Checkpoint value with metadata length -1 (Kafka's null STRING).
    let null_metadata = cat(&cv[..cv.len() - 2], &(-1i16).to_be_bytes());
    // Checkpoint key whose group is the invalid UTF-8 byte 0xff.
    let bad_utf8_key = cat(&[0, 1, 0xff], &ck[3..]);

    // Both refuse: a field cannot be read.
    let both_refuse = [
        (
            "heartbeat: empty value",
            (Kind::Heartbeat, hk.clone(), vec![]),
        ),
        (
            "heartbeat: value cut short",
            (Kind::Heartbeat, hk.clone(), hv[..9].to_vec()),
        ),
        (
            "heartbeat: key cut short",
            (Kind::Heartbeat, hk[..hk.len() - 1].to_vec(), hv.clone()),
        ),
        (
            "checkpoint: value cut short",
            (Kind::Checkpoint, ck.clone(), cv[..cv.len() - 1].to_vec()),
        ),
        (
            "checkpoint: no partition in key",
            (Kind::Checkpoint, ck[..ck.len() - 4].to_vec(), cv.clone()),
        ),
        (
            "checkpoint: metadata length -1",
            (Kind::Checkpoint, ck.clone(), null_metadata),
        ),
        (
            "offset sync: value cut short",
            (Kind::OffsetSync, ok.clone(), ov[..15].to_vec()),
        ),
    ];
    // We refuse, Kafka decodes them.
    let only_we_refuse = [
        (
            "heartbeat: trailing value byte",
            (Kind::Heartbeat, hk.clone(), cat(&hv, &[0])),
        ),
        (
            "heartbeat: trailing key bytes",
            (Kind::Heartbeat, cat(&hk, &[0, 0]), hv.clone()),
        ),
        (
            "checkpoint: trailing value byte",
            (Kind::Checkpoint, ck.clone(), cat(&cv, &[7])),
        ),
        (
            "checkpoint: invalid UTF-8 group",
            (Kind::Checkpoint, bad_utf8_key, cv.clone()),
        ),
        (
            "offset sync: trailing value byte",
            (Kind::OffsetSync, ok.clone(), cat(&ov, &[0])),
        ),
        (
            "offset sync: versioned value",
            (Kind::OffsetSync, ok.clone(), cat(&[0, 0], &ov)),
        ),
    ];
    let table: Vec<_> = both_refuse
        .into_iter()
        .map(|(label, rec)| (label, rec, true))
        .chain(
            only_we_refuse
                .into_iter()
                .map(|(label, rec)| (label, rec, false)),
        )
        .collect();
    let kafka = batch(
        Jvm::PRODUCTION,
        table.iter().map(|(_, rec, _)| rec.clone()).collect(),
    );
    for ((label, (kind, key, value), kafka_refuses), got) in table.iter().zip(kafka) {
        let ours = match kind {
            Kind::Heartbeat => Heartbeat::decode(key, value).map(drop),
            Kind::Checkpoint => Checkpoint::decode(key, value).map(drop),
            Kind::OffsetSync => OffsetSync::decode(key, value).map(drop),
        };
        assert!(ours.is_err(), "{label}: we accepted it");
        assert_eq!(
            got.is_err(),
            *kafka_refuses,
            "{label}: Kafka gave {}",
            short(&format!("{got:?}"))
        );
        if let Err(e) = got {
            assert!(
                e.starts_with("org.apache.kafka.common.protocol.types.SchemaException"),
                "{label}: {e}"
            );
        }
    }
}

fn checkpoint_record(c: &Checkpoint) -> NewRecord {
    NewRecord::new(c.encode_key().unwrap(), c.encode_value().unwrap()).partition(0)
}

/// A fresh site alias and its `<site>.checkpoints.internal` (1 partition, compacted) on central.
async fn checkpoints_topic_for_new_site(prefix: &str) -> (String, String) {
    let site = unique_name(prefix);
    validate_site_alias(&site).unwrap();
    let topic = checkpoints_topic(&site);
    client::create_topic(
        kafka::shared().central(),
        &topic,
        1,
        &[("cleanup.policy", "compact")],
    )
    .await
    .unwrap();
    (site, topic)
}

#[tokio::test]
async fn translate_offsets_returns_exactly_our_checkpoints() {
    let central = kafka::shared().central().to_owned();
    let (site, topic) = checkpoints_topic_for_new_site("mm2site").await;
    let policy = ReplicationPolicy::default();
    let orders = policy.remote_topic(&site, "orders");
    let payments = policy.remote_topic(&site, "payments-eu");
    let group = "billing-étape-1";
    let cp = |group: &str, tp: TopicPartition, up: i64, down: i64, md: &str| Checkpoint {
        consumer_group_id: group.to_owned(),
        topic_partition: tp,
        upstream_offset: up,
        downstream_offset: down,
        metadata: md.to_owned(),
    };
    let written = [
        cp(group, tp(&orders, 0), 10, 7, ""),
        cp(group, tp(&orders, 1), 5, 5, "m"),
        cp("other-group", tp(&orders, 0), 1000, 999, ""),
        cp(group, tp(&payments, 2), 1 << 41, 1 << 40, "ünïcode ✓"),
        cp(group, tp(&orders, 3), 0, 0, ""),
        // A later checkpoint of the same partition supersedes the first.
        cp(group, tp(&orders, 0), 20, 15, "latest"),
    ];
    let mut records: Vec<NewRecord> = written.iter().map(checkpoint_record).collect();
    // A record MirrorClient cannot decode (value cut short): skipped, as Kafka logs and skips.
    let broken = cp(group, tp(&orders, 9), 1, 1, "");
    let mut broken_record = checkpoint_record(&broken);
    broken_record.value.as_mut().unwrap().truncate(10);
    records.insert(2, broken_record);
    client::produce(&central, &topic, &records).await.unwrap();

    let (c, s) = (central.clone(), site.clone());
    let (mine, mut all) = blocking(move || {
        let groups = [group, "other-group", "no-such-group"];
        (
            oracle::translate_offsets(&c, &s, group).unwrap(),
            oracle::translate_groups(&c, &s, &groups, Duration::from_secs(30), &[]).unwrap(),
        )
    })
    .await;
    let expected: BTreeMap<(String, i32), i64> = [
        ((orders.clone(), 0), 15),
        ((orders.clone(), 1), 5),
        ((orders.clone(), 3), 0),
        ((payments.clone(), 2), 1 << 40),
    ]
    .into_iter()
    .collect();
    assert_eq!(mine, expected);
    let offsets = |m: &oracle::Translation| {
        m.iter()
            .map(|(tp, t)| (tp.clone(), t.offset))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(offsets(&all[group]), expected);
    assert_eq!(
        offsets(&all["other-group"]),
        [((orders.clone(), 0), 999)].into_iter().collect()
    );
    assert!(all["no-such-group"].is_empty(), "{all:?}");
    let metadata: BTreeMap<_, _> = all
        .remove(group)
        .unwrap()
        .into_iter()
        .map(|(tp, t)| (tp, (t.offset, t.metadata)))
        .collect();
    assert_eq!(metadata[&(orders.clone(), 0)], (15, "latest".to_owned()));
    assert_eq!(metadata[&(orders.clone(), 1)], (5, "m".to_owned()));
    assert_eq!(
        metadata[&(payments.clone(), 2)],
        (1 << 40, "ünïcode ✓".to_owned())
    );

    // Kafka's consumer reads back every record, in order, decoding each as we encoded it.
    let (c, t) = (central.clone(), topic.clone());
    let read = blocking(move || oracle::read_checkpoints(&c, &t).unwrap()).await;
    assert_eq!(read.len(), records.len(), "{read:?}");
    let mut expected = written.iter();
    for (i, line) in read.iter().enumerate() {
        assert_eq!(line["recordPartition"], 0, "{line}");
        assert_eq!(line["recordOffset"], i as i64, "{line}");
        if i == 2 {
            assert_eq!(line["ok"], false, "the broken record: {line}");
            continue;
        }
        assert_eq!(line["ok"], true, "{line}");
        let want = expected.next().unwrap();
        assert_eq!(decoded_fields(line), checkpoint_fields(want), "record {i}");
        assert_eq!(
            line["kafkaKey"],
            hex(&want.encode_key().unwrap()),
            "record {i}"
        );
        assert_eq!(
            line["kafkaValue"],
            hex(&want.encode_value().unwrap()),
            "record {i}"
        );
    }
}

/// Kafka turns a checkpoint into `new OffsetAndMetadata(downstreamOffset, metadata)`, which throws
/// on a negative offset, and MirrorClient only skips `SchemaException`s: one such checkpoint makes
/// `translateOffsets` fail for its whole group. So we must never write one (e.g. -1 for "none").
#[tokio::test]
async fn translate_offsets_fails_on_a_negative_downstream_offset() {
    let central = kafka::shared().central().to_owned();
    let (site, topic) = checkpoints_topic_for_new_site("mm2neg").await;
    let orders = ReplicationPolicy::default().remote_topic(&site, "orders");
    let cp = |group: &str, partition, down| Checkpoint {
        consumer_group_id: group.to_owned(),
        topic_partition: tp(&orders, partition),
        upstream_offset: 3,
        downstream_offset: down,
        metadata: String::new(),
    };
    let records =
        [cp("bad", 0, 5), cp("bad", 1, -1), cp("good", 0, 2)].map(|c| checkpoint_record(&c));
    client::produce(&central, &topic, &records).await.unwrap();
    let (bad, good) = blocking(move || {
        (
            oracle::translate_offsets(&central, &site, "bad"),
            oracle::translate_offsets(&central, &site, "good"),
        )
    })
    .await;
    let err = format!("{:#}", bad.unwrap_err());
    assert!(err.contains("Invalid negative offset"), "{err}");
    assert_eq!(
        good.unwrap(),
        [((orders, 0), 2)].into_iter().collect::<BTreeMap<_, _>>()
    );
}
