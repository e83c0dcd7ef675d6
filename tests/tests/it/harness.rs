//! Self-tests of the Kafka harness on real brokers (`er_tests::kafka`, `er_tests::client`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use er_tests::client::{self, Isolation, NewRecord, Timestamp, Until};
use er_tests::kafka::{self, KafkaNode};
use er_tests::unique_name;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn shared_gives_two_distinct_working_clusters() {
    let k = kafka::shared();
    assert_ne!(k.edge, k.central);
    let (edge_id, central_id) = (
        client::cluster_id(&k.edge).await.unwrap(),
        client::cluster_id(&k.central).await.unwrap(),
    );
    assert_ne!(
        edge_id, central_id,
        "distinct clusters have distinct cluster ids"
    );
    let topic = unique_name("harness-distinct");
    client::create_topic(&k.edge, &topic, 2, &[]).await.unwrap();
    assert!(client::list_topics(&k.edge).await.unwrap().contains(&topic));
    assert!(
        !client::list_topics(&k.central)
            .await
            .unwrap()
            .contains(&topic)
    );
    client::create_topic(&k.central, &topic, 1, &[("cleanup.policy", "compact")])
        .await
        .unwrap();
    assert_eq!(
        client::partition_ids(&k.edge, &topic).await.unwrap(),
        vec![0, 1]
    );
    assert_eq!(
        client::partition_ids(&k.central, &topic).await.unwrap(),
        vec![0]
    );
    // Creating it again fails.
    assert!(client::create_topic(&k.edge, &topic, 2, &[]).await.is_err());
}

#[test]
fn unique_names_are_unique_and_legal() {
    let names: HashSet<String> = (0..1000).map(|_| unique_name("t")).collect();
    assert_eq!(names.len(), 1000);
    for n in &names {
        assert!(
            n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "{n}"
        );
    }
}

/// Record `i` of the round-trip test: keys and values cycle through null / empty / bytes, headers
/// include a repeated key, a null value and an empty value.
fn sample(base_ts: i64, i: usize) -> NewRecord {
    let key = match i % 3 {
        0 => None,
        1 => Some(Vec::new()),
        _ => Some(format!("key-{i}").into_bytes()),
    };
    let value = match i % 5 {
        0 => None,
        1 => Some(Vec::new()),
        _ => Some(format!("value-{i}-{}", "x".repeat(i % 50)).into_bytes()),
    };
    NewRecord {
        key,
        value,
        partition: Some((i % 3) as i32),
        timestamp: Some(base_ts + i as i64),
        ..Default::default()
    }
    .header("rep", Some(b"first"))
    .header("null", None)
    .header("rep", Some(b"second"))
    .header("empty", Some(b""))
    .header("n", Some(i.to_string().as_bytes()))
}

#[tokio::test]
async fn thousand_records_round_trip_with_headers_null_and_empty() {
    let k = kafka::shared();
    let topic = unique_name("harness-roundtrip");
    client::create_topic(&k.edge, &topic, 3, &[]).await.unwrap();
    // Recent timestamps: a record older than the topic's retention (7 days) is deleted by the
    // broker's next retention check, which may come before the read.
    let base_ts = client::now_ms() - 60_000;
    let records: Vec<NewRecord> = (0..1000).map(|i| sample(base_ts, i)).collect();
    let started = Instant::now();
    let offsets = client::produce(&k.edge, &topic, &records).await.unwrap();
    eprintln!("produced 1000 records in {:?}", started.elapsed());
    assert_eq!(offsets.len(), 1000);
    let by_pos: HashMap<(i32, i64), usize> =
        offsets.iter().enumerate().map(|(i, &po)| (po, i)).collect();
    assert_eq!(
        by_pos.len(),
        1000,
        "distinct (partition, offset) per record"
    );

    let got = client::consume_all(&k.edge, &topic, 1000, T).await.unwrap();
    assert_eq!(got.len(), 1000);
    let ends = client::end_offsets(&k.edge, &topic).await.unwrap();
    assert_eq!(ends.iter().map(|&(_, e)| e).sum::<i64>(), 1000);

    let mut mismatches = Vec::new();
    for r in &got {
        let i = by_pos[&(r.partition, r.offset)];
        let want = &records[i];
        assert_eq!(r.topic, topic);
        assert_eq!(r.partition, i as i32 % 3);
        assert_eq!(r.timestamp, Timestamp::CreateTime(base_ts + i as i64));
        if r.key != want.key {
            mismatches.push(format!("record {i}: key {:?} != {:?}", r.key, want.key));
        }
        if r.value != want.value {
            mismatches.push(format!(
                "record {i}: value {:?} != {:?}",
                r.value, want.value
            ));
        }
        if r.headers != want.headers {
            mismatches.push(format!(
                "record {i}: headers {:?} != {:?}",
                r.headers, want.headers
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
    // Spelled out: rdkafka keeps null and empty apart, end to end through a real broker.
    let r0 = got
        .iter()
        .find(|r| by_pos[&(r.partition, r.offset)] == 0)
        .unwrap();
    assert_eq!((r0.key.clone(), r0.value.clone()), (None, None));
    let r1 = got
        .iter()
        .find(|r| by_pos[&(r.partition, r.offset)] == 1)
        .unwrap();
    assert_eq!(
        (r1.key.clone(), r1.value.clone()),
        (Some(vec![]), Some(vec![]))
    );
    assert_eq!(r1.headers[1], ("null".to_string(), None));
    assert_eq!(r1.headers[3], ("empty".to_string(), Some(vec![])));
}

#[tokio::test]
async fn transactions_commit_visible_abort_invisible() {
    let k = kafka::shared();
    let topic = unique_name("harness-tx");
    client::create_topic(&k.central, &topic, 2, &[])
        .await
        .unwrap();
    let batch = |tag: &str, n: usize| -> Vec<NewRecord> {
        (0..n)
            .map(|i| NewRecord::new(format!("k{i}"), format!("{tag}-{i}")))
            .collect()
    };
    client::produce_transactional(&k.central, &topic, &batch("committed1", 10), true)
        .await
        .unwrap();
    client::produce_transactional(&k.central, &topic, &batch("aborted", 7), false)
        .await
        .unwrap();
    client::produce_transactional(&k.central, &topic, &batch("committed2", 5), true)
        .await
        .unwrap();

    let committed = client::consume_to_end(&k.central, &topic, T).await.unwrap();
    let values: Vec<String> = committed
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(values.len(), 15, "{values:?}");
    assert!(
        values.iter().all(|v| v.starts_with("committed")),
        "{values:?}"
    );

    let all = client::consume(
        &k.central,
        &topic,
        Isolation::ReadUncommitted,
        Until::End,
        T,
    )
    .await
    .unwrap();
    assert_eq!(
        all.len(),
        22,
        "read_uncommitted also sees the aborted records"
    );
    // 3 transactions x 2 partitions => control markers take offsets too.
    let ends: i64 = client::end_offsets(&k.central, &topic)
        .await
        .unwrap()
        .iter()
        .map(|&(_, e)| e)
        .sum();
    assert!(ends > 22, "end offsets {ends} include transaction markers");
}

#[tokio::test]
async fn restart_keeps_data_and_ports() {
    let started = Instant::now();
    let mut node = KafkaNode::start("harness-restart").unwrap();
    eprintln!("KafkaNode::start took {:?}", started.elapsed());
    let bootstrap = node.bootstrap().to_string();
    let dir = node.dir().to_path_buf();
    let topic = unique_name("harness-restart");
    client::create_topic(&bootstrap, &topic, 1, &[])
        .await
        .unwrap();
    let records: Vec<NewRecord> = (0..100)
        .map(|i| NewRecord::new(format!("k{i}"), format!("v{i}")))
        .collect();
    client::produce(&bootstrap, &topic, &records).await.unwrap();

    let t = Instant::now();
    node.restart().unwrap();
    eprintln!("graceful restart took {:?}", t.elapsed());
    assert_eq!(node.bootstrap(), bootstrap);
    let got = client::consume_all(&bootstrap, &topic, 100, T)
        .await
        .unwrap();
    assert_eq!(got.len(), 100);

    // Crash (SIGKILL) and come back: acknowledged data survives (page cache).
    client::produce(&bootstrap, &topic, &records).await.unwrap();
    node.kill();
    assert!(!node.is_running());
    let t = Instant::now();
    node.restart().unwrap();
    eprintln!("restart after kill took {:?}", t.elapsed());
    let got = client::consume_all(&bootstrap, &topic, 200, T)
        .await
        .unwrap();
    assert_eq!(got.len(), 200);
    assert_eq!(got[150].value.as_deref(), Some(&b"v50"[..]));

    drop(node);
    assert!(!dir.exists(), "drop removes the data dir");
}

#[test]
fn start_failure_reports_broker_log() {
    let opts = kafka::NodeOptions {
        extra_config: vec![("log.segment.bytes".into(), "not-a-number".into())],
        start_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let err = format!(
        "{:#}",
        KafkaNode::start_with("harness-bad", opts).unwrap_err()
    );
    assert!(
        err.contains("harness-bad") && err.contains("last lines"),
        "{err}"
    );
    eprintln!("{err}");
}
