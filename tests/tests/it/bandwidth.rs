//! Narrow links on real Apache Kafka: `hub.max_bytes_per_sec` caps what crosses the link
//! (measured by the link-fault proxy, QUIC overhead included), and route priorities let alarms
//! overtake a bulk backlog that saturates it. Every record still arrives exactly once, in order.

use std::time::{Duration, Instant};

use er_tests::client::{self, NewRecord};
use er_tests::delivery::{self, SeqIn};
use er_tests::kafka::shared;
use er_tests::prom;
use er_tests::rig::Rig;
use er_tests::unique_name;

/// The rate limit of both tests, bytes per second.
const LIMIT: u64 = 200_000;
/// `batching.max_bytes`, which is also the rate limiter's burst.
const BATCH_BYTES: u64 = 64 * 1024;
/// Value size of the bulk records: random bytes, so zstd cannot shrink them.
const VALUE_BYTES: usize = 1_000;

/// `count` records keyed by their sequence number, values of incompressible bytes.
fn incompressible(count: usize, partitions: i32) -> Vec<NewRecord> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..count)
        .map(|i| {
            let value: Vec<u8> = (0..VALUE_BYTES / 8)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect();
            NewRecord::new(i.to_string(), value).partition((i % partitions as usize) as i32)
        })
        .collect()
}

/// `hub.max_bytes_per_sec = LIMIT`, for an agent setup's `hub_extra`.
fn rate_limit() -> String {
    format!("max_bytes_per_sec = {LIMIT}\n")
}

/// The high watermark of partition 0 of `topic` on the central cluster (0 until it exists). It
/// counts transaction markers too, so it is never below the number of records.
async fn central_end(topic: &str) -> i64 {
    client::end_offsets(shared().central(), topic)
        .await
        .ok()
        .and_then(|ends| ends.first().map(|e| e.1))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_link_carries_no_more_than_the_rate_limit() -> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("bw");
    let site = unique_name("site");
    let topic = format!("{prefix}-bulk");
    const TOTAL: usize = 2_000;
    const PARTITIONS: i32 = 2;
    client::create_topic(k.edge(), &topic, PARTITIONS, &[]).await?;
    client::produce(k.edge(), &topic, &incompressible(TOTAL, PARTITIONS)).await?;

    let mut rig = Rig::builder().site(&site).start()?;
    let link = rig.start_proxy(&site)?.control();
    let mut setup = rig.agent_setup(&site, &format!("{prefix}-.*"));
    let metrics_port = prom::free_tcp_port();
    setup.hub_extra = rate_limit();
    setup.extra = format!(
        "max_bytes = {BATCH_BYTES}\n{}",
        prom::metrics_section(metrics_port)
    );
    let started = Instant::now();
    rig.start_agent_via_proxy(&setup)?;

    // Bytes the proxy forwarded toward the hub (QUIC packets: batches, frame and packet
    // headers, heartbeats, pings, acks), sampled until every record is committed centrally.
    let remote = format!("{site}.{topic}");
    let mut samples = vec![(started, 0u64)];
    let deadline = started + Duration::from_secs(120);
    let got = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        samples.push((Instant::now(), link.stats().to_server.forwarded_bytes));
        let committed: i64 = match client::end_offsets(k.central(), &remote).await {
            Ok(ends) => ends.iter().map(|e| e.1).sum(),
            Err(_) => 0,
        };
        // The high watermarks count one transaction marker per commit besides the records.
        if committed >= TOTAL as i64 {
            let got = client::consume_to_end(k.central(), &remote, Duration::from_secs(60)).await?;
            if got.len() >= TOTAL {
                break got;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not replicated in time\n{}",
            rig.logs()
        );
    };
    // The agent's figures as of the last sample, before the settle period adds heartbeats.
    let m = prom::parse(&prom::scrape(metrics_port)?);
    // The link's count after the scrape: every batch the scrape counted has crossed it by then
    // (the last sample may precede the last batches: the loop ends on end offsets, which count
    // transaction markers too, then reads the topic).
    let (after, wire_after) = (Instant::now(), link.stats().to_server.forwarded_bytes);
    // Once more after a settle period: a duplicate committed just after the last record counts.
    tokio::time::sleep(client::SETTLE).await;
    let got = client::consume_to_end(k.central(), &remote, Duration::from_secs(60))
        .await
        .unwrap_or(got);
    delivery::assert_exactly_once_in_order(
        &remote,
        &delivery::seqs_by_partition(&got, SeqIn::Key)?,
        &delivery::round_robin(TOTAL, PARTITIONS),
        &rig.logs(),
    );

    let payload = (TOTAL * VALUE_BYTES) as u64;
    let (elapsed, wire) = (after - started, wire_after);
    assert!(
        wire >= payload,
        "the values cannot be compressed: {wire} bytes on the wire for {payload} of values"
    );
    // Over every span between two samples the link carried at most the limit plus the burst,
    // with 10% for QUIC's own bytes and a batch of slack for the handshake and sampling.
    let mut worst = 0.0f64;
    for (i, &(t0, b0)) in samples.iter().enumerate() {
        for &(t1, b1) in &samples[i + 1..] {
            let span = (t1 - t0).as_secs_f64();
            let bound = 1.1 * LIMIT as f64 * span + 3.0 * BATCH_BYTES as f64;
            let carried = (b1 - b0) as f64;
            worst = worst.max(carried / bound);
            assert!(
                carried <= bound,
                "{carried} bytes in {span:.1} s at a limit of {LIMIT} B/s\n{}",
                rig.logs()
            );
        }
    }
    // The agent reports the limit, the batch bytes under it and the time batches waited for it
    // (most of the transfer: the backlog was ready long before the limit let it go).
    let metric = |name: &str| prom::value(&m, name, &[]).unwrap_or(f64::NAN);
    assert_eq!(metric("er_agent_rate_limit_bytes_per_second"), LIMIT as f64);
    let batch_bytes = metric("er_agent_bytes_sent_total");
    assert!(
        batch_bytes >= payload as f64 && batch_bytes <= wire as f64,
        "{batch_bytes} batch bytes for {payload} bytes of values, {wire} on the wire"
    );
    let waited = metric("er_agent_rate_limit_wait_seconds_total");
    assert!(
        waited >= (payload as f64 / LIMIT as f64) / 2.0 && waited <= elapsed.as_secs_f64(),
        "batches waited {waited} s for the rate limit in a {:.1} s transfer",
        elapsed.as_secs_f64()
    );
    // And the limit is a cap, not a crawl: generously, at least a quarter of it on average.
    let rate = wire as f64 / elapsed.as_secs_f64();
    assert!(
        rate >= LIMIT as f64 / 4.0,
        "{rate:.0} B/s on average at a limit of {LIMIT} B/s\n{}",
        rig.logs()
    );
    println!(
        "rate limit {LIMIT} B/s: {wire} bytes on the wire ({batch_bytes} of batches) in {:.1} s \
         ({rate:.0} B/s including startup), worst span at {:.0}% of its bound, batches waited \
         {waited:.1} s for tokens",
        elapsed.as_secs_f64(),
        worst * 100.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alarms_overtake_a_bulk_backlog_on_a_narrow_link() -> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("prio");
    let site = unique_name("site");
    let bulk = format!("{prefix}-bulk");
    let alarms = format!("{prefix}-alarms");
    // 4 MB at 200 kB/s: about 20 s of backlog.
    const BULK: usize = 4_000;
    const ALARMS: usize = 5;
    client::create_topic(k.edge(), &bulk, 1, &[]).await?;
    client::create_topic(k.edge(), &alarms, 1, &[]).await?;
    client::produce(k.edge(), &bulk, &incompressible(BULK, 1)).await?;

    let rig = Rig::builder()
        .agent_with(&site, &format!("{prefix}-.*"), |a| {
            a.hub_extra = rate_limit();
            a.extra = format!(
                "max_bytes = {BATCH_BYTES}\n\n[heartbeats]\ninterval_ms = 500\n\n\
                 [[routes]]\nname = \"alarms-first\"\ntopics = [{alarms:?}]\npriority = 10\n"
            );
        })
        .start()?;

    // The backlog is flowing and saturates the limit...
    let remote_bulk = format!("{site}.{bulk}");
    let remote_alarms = format!("{site}.{alarms}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while central_end(&remote_bulk).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the backlog never started\n{}",
            rig.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...when alarms are raised at the edge.
    let raised = client::now_ms();
    let recs: Vec<NewRecord> = (0..ALARMS)
        .map(|i| NewRecord::new(i.to_string(), format!("alarm {i}")))
        .collect();
    client::produce(k.edge(), &alarms, &recs).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client::partition_ids(k.central(), &remote_alarms)
        .await
        .is_err()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = client::consume_all(k.central(), &remote_alarms, ALARMS, Duration::from_secs(60))
        .await
        .unwrap_or_default();
    assert_eq!(got.len(), ALARMS, "alarms replicated\n{}", rig.logs());
    // Heartbeats ride above every route, so they keep flowing through the saturated link too.
    let hb_topic = format!("{site}.heartbeats");
    let hb_deadline = Instant::now() + Duration::from_secs(10);
    let beats = loop {
        let beats = client::consume_to_end(k.central(), &hb_topic, Duration::from_secs(10))
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|r| {
                er_protocol::Heartbeat::decode(
                    r.key.as_deref().unwrap_or_default(),
                    r.value.as_deref().unwrap_or_default(),
                )
                .ok()
            })
            // The edge cluster is shared by every test: only this site's heartbeats count.
            .filter(|h| h.source_cluster_alias == site && h.timestamp >= raised)
            .count();
        if beats >= 3 || Instant::now() > hb_deadline {
            break beats;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Only now look at the backlog: every alarm and those heartbeats were committed centrally
    // while part of the bulk records, produced long before them, still waited at the edge.
    let bulk_end = central_end(&remote_bulk).await;
    assert!(
        bulk_end < BULK as i64,
        "the alarms waited for the whole backlog (central high watermark {bulk_end}, for {BULK} \
         bulk records)\n{}",
        rig.logs()
    );
    assert!(
        beats >= 3,
        "{beats} heartbeats crossed the saturated link\n{}",
        rig.logs()
    );
    println!(
        "alarms and {beats} heartbeats replicated with at least {} of {BULK} bulk records still \
         behind",
        BULK as i64 - bulk_end
    );

    // Priorities reorder partitions, never records: everything arrives once, in order.
    let got =
        client::consume_all(k.central(), &remote_bulk, BULK, Duration::from_secs(120)).await?;
    delivery::assert_exactly_once_in_order(
        &remote_bulk,
        &delivery::seqs_by_partition(&got, SeqIn::Key)?,
        &delivery::round_robin(BULK, 1),
        &rig.logs(),
    );
    let got = client::consume_to_end(k.central(), &remote_alarms, Duration::from_secs(30)).await?;
    delivery::assert_exactly_once_in_order(
        &remote_alarms,
        &delivery::seqs_by_partition(&got, SeqIn::Key)?,
        &delivery::round_robin(ALARMS, 1),
        &rig.logs(),
    );
    Ok(())
}
