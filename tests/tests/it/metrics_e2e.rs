//! Prometheus metrics of the real `hub` and `edge-agent` binaries on real Apache Kafka: replicate
//! known records, scrape both `/metrics` endpoints over plain HTTP and check the series a user
//! would graph.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use er_tests::client::{self, NewRecord};
use er_tests::kafka::shared;
use er_tests::prom::{free_tcp_port, metrics_section, parse, scrape, value};
use er_tests::rig::Rig;
use er_tests::unique_name;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_endpoints_report_what_was_replicated() -> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("met");
    let site = unique_name("site");
    let topic = format!("{prefix}-orders");
    const TOTAL: usize = 3_000;
    const PARTITIONS: i32 = 3;
    client::create_topic(k.edge(), &topic, PARTITIONS, &[]).await?;
    let base_ts = client::now_ms() - 60_000;
    // The edge `heartbeats` topic of a shared broker holds every earlier agent's heartbeats, and
    // this agent replicates them too: on brokers up for close to an hour some are that old.
    let hour_ago = client::now_ms() - 3_300_000;
    let old_heartbeats = client::consume_to_end(k.edge(), "heartbeats", Duration::from_secs(30))
        .await
        .unwrap_or_default()
        .iter()
        .any(|r| r.timestamp.to_millis().is_some_and(|t| t < hour_ago));
    let recs: Vec<NewRecord> = (0..TOTAL)
        .map(|i| {
            NewRecord::new(format!("k{i}"), format!("order {i}"))
                .partition((i % PARTITIONS as usize) as i32)
                .timestamp(base_ts + i as i64)
        })
        .collect();
    client::produce(k.edge(), &topic, &recs).await?;

    let hub_metrics = free_tcp_port();
    let agent_metrics = free_tcp_port();
    let mut rig = Rig::builder()
        .site(&site)
        .hub(|h| h.extra.push_str(&metrics_section(hub_metrics)))
        .start()?;
    let mut agent_setup = rig.agent_setup(&site, &format!("{prefix}-.*"));
    agent_setup.extra.push_str(&metrics_section(agent_metrics));
    // The in-flight gauge, sampled from before the agent starts until everything is checked: the
    // first batches wait for the hub to create their destination topic and every heartbeat batch
    // waits for a transaction, so a gauge that follows sends and acks is seen above 0.
    let sampling = Arc::new(AtomicBool::new(true));
    let inflight_max = tokio::task::spawn_blocking({
        let sampling = sampling.clone();
        move || {
            let mut max: Option<f64> = None;
            while sampling.load(Ordering::Relaxed) {
                if let Some(v) = scrape(agent_metrics)
                    .ok()
                    .and_then(|text| value(&parse(&text), "er_agent_inflight_bytes", &[]))
                {
                    max = Some(max.map_or(v, |m| m.max(v)));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            max
        }
    });
    rig.start_agent(&agent_setup)?;

    let remote = format!("{site}.{topic}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while client::partition_ids(k.central(), &remote).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{remote} never appeared\n{}",
            rig.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let got = client::consume_all(k.central(), &remote, TOTAL, Duration::from_secs(120)).await?;
    assert_eq!(got.len(), TOTAL, "replicated\n{}", rig.logs());

    // Counters trail the data a little (acks, heartbeats, the 5 s lag and index refresh): poll
    // until every expectation holds, then report what is still off.
    let version = env!("CARGO_PKG_VERSION");
    let site_l = [("site", site.as_str())];
    let deadline = Instant::now() + Duration::from_secs(60);
    let (a, h) = loop {
        let a = parse(&scrape(agent_metrics)?);
        let h = parse(&scrape(hub_metrics)?);
        let lag_zero = (0..PARTITIONS).all(|p| {
            value(
                &a,
                "er_agent_replication_lag_records",
                &[("topic", &topic), ("partition", &p.to_string())],
            ) == Some(0.0)
        });
        let ready = lag_zero
            && value(&h, "er_hub_replication_lag_seconds", &site_l).is_some()
            && value(&h, "er_hub_checkpoints_written_total", &site_l).is_some()
            && value(
                &h,
                "er_hub_offset_index_entries",
                &[("site", &site), ("cluster", "central")],
            )
            .is_some_and(|v| v > 0.0)
            && value(&a, "er_agent_heartbeats_sent_total", &[]).is_some_and(|v| v > 0.0)
            // The first RTT sample comes with the first ping's answer, which a fast run can
            // outpace.
            && value(&a, "er_agent_rtt_seconds", &[]).is_some();
        if ready || Instant::now() > deadline {
            break (a, h);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let dump = || {
        format!(
            "agent:\n{}\nhub:\n{}\n{}",
            scrape(agent_metrics).unwrap_or_default(),
            scrape(hub_metrics).unwrap_or_default(),
            rig.logs()
        )
    };

    // Agent.
    assert_eq!(
        value(&a, "er_build_info", &[("version", version)]),
        Some(1.0),
        "{}",
        dump()
    );
    assert_eq!(
        value(&a, "er_agent_records_sent_total", &[("topic", &topic)]),
        Some(TOTAL as f64),
        "records sent == produced\n{}",
        dump()
    );
    assert!(
        value(&a, "er_agent_records_read_total", &[]).is_some_and(|v| v >= TOTAL as f64),
        "{}",
        dump()
    );
    assert_eq!(value(&a, "er_agent_link_up", &[]), Some(1.0), "{}", dump());
    assert_eq!(
        value(&a, "er_agent_connects_total", &[]),
        Some(1.0),
        "{}",
        dump()
    );
    let sent = value(&a, "er_agent_batches_sent_total", &[]).unwrap_or(0.0);
    let acked = value(&a, "er_agent_batches_acked_total", &[]).unwrap_or(0.0);
    assert!(sent >= 1.0 && acked >= 1.0 && acked <= sent, "{}", dump());
    assert!(
        value(&a, "er_agent_bytes_sent_total", &[]).is_some_and(|v| v > 0.0),
        "{}",
        dump()
    );
    assert!(
        value(&a, "er_agent_rtt_seconds", &[]).is_some_and(|v| v > 0.0 && v < 5.0),
        "{}",
        dump()
    );
    // In flight: compressed bytes sent and not yet acknowledged. It rose while batches waited
    // for their commit, never above what was sent at all, and once everything is acknowledged it
    // is back at 0 (heartbeat batches keep coming, each acked within a transaction, so poll).
    let deadline = Instant::now() + Duration::from_secs(10);
    let settled = loop {
        let now = value(
            &parse(&scrape(agent_metrics)?),
            "er_agent_inflight_bytes",
            &[],
        );
        if now == Some(0.0) || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    sampling.store(false, Ordering::Relaxed);
    let inflight_max = inflight_max.await?;
    let bytes_sent = value(
        &parse(&scrape(agent_metrics)?),
        "er_agent_bytes_sent_total",
        &[],
    )
    .unwrap_or(0.0);
    eprintln!("in-flight bytes peaked at {inflight_max:?} of {bytes_sent} bytes sent");
    assert!(
        inflight_max.is_some_and(|m| m > 0.0 && m <= bytes_sent),
        "in-flight bytes peaked at {inflight_max:?}: want above 0 and at most the {bytes_sent} \
         bytes sent\n{}",
        dump()
    );
    assert_eq!(
        settled,
        Some(0.0),
        "nothing in flight once everything is acknowledged\n{}",
        dump()
    );
    assert!(
        value(&a, "er_agent_heartbeats_sent_total", &[]).is_some_and(|v| v > 0.0),
        "{}",
        dump()
    );
    for p in 0..PARTITIONS {
        assert_eq!(
            value(
                &a,
                "er_agent_replication_lag_records",
                &[("topic", &topic), ("partition", &p.to_string())]
            ),
            Some(0.0),
            "partition {p} fully replicated\n{}",
            dump()
        );
    }

    // Hub.
    assert_eq!(
        value(&h, "er_build_info", &[("version", version)]),
        Some(1.0),
        "{}",
        dump()
    );
    assert_eq!(
        value(&h, "er_hub_sites_connected", &[]),
        Some(1.0),
        "{}",
        dump()
    );
    assert_eq!(
        value(&h, "er_hub_sessions_total", &[]),
        Some(1.0),
        "{}",
        dump()
    );
    // The site's records plus its heartbeats.
    assert!(
        value(&h, "er_hub_records_written_total", &site_l).is_some_and(|v| v >= TOTAL as f64),
        "{}",
        dump()
    );
    assert!(
        value(&h, "er_hub_bytes_received_total", &site_l).is_some_and(|v| v > 0.0),
        "{}",
        dump()
    );
    assert!(
        value(&h, "er_hub_batches_committed_total", &site_l).is_some_and(|v| v >= 1.0),
        "{}",
        dump()
    );
    assert!(
        value(&h, "er_hub_transaction_seconds_count", &[]).is_some_and(|v| v >= 1.0),
        "transaction histogram\n{}",
        dump()
    );
    assert!(
        value(&h, "er_hub_transaction_seconds_bucket", &[("le", "+Inf")]).is_some(),
        "a histogram, not a summary\n{}",
        dump()
    );
    // One latency observation per committed batch; the records were produced moments ago,
    // so every one is under an hour old and none is negative (unless heartbeats of an hour ago
    // came along: then only this one check is left out, and said so).
    let central = [("cluster", "central")];
    let latencies = value(&h, "er_hub_replication_latency_seconds_count", &central);
    assert!(
        latencies.is_some_and(|v| v >= 1.0),
        "latency histogram\n{}",
        dump()
    );
    let under_an_hour = value(
        &h,
        "er_hub_replication_latency_seconds_bucket",
        &[("cluster", "central"), ("le", "3600")],
    );
    if old_heartbeats {
        eprintln!(
            "the edge heartbeats topic holds heartbeats over 55 minutes old (brokers up that long): \
             not checking that every batch is under an hour old ({under_an_hour:?} of {latencies:?})"
        );
    } else {
        assert_eq!(under_an_hour, latencies, "{}", dump());
    }
    // The records carry timestamps a minute back (`base_ts`, the last of them TOTAL ms later), so
    // every batch of them waited at least 60 s minus TOTAL ms: at least one batch lies above the
    // 30 s bucket and the sum holds at least that much. (Batches of the edge's `heartbeats` topic
    // may be old too: it holds every earlier agent's heartbeats on the shared broker.) A latency
    // measured from the wrong end (the send, the fetch) is a few milliseconds and fails both on
    // fresh brokers.
    let under_30s = value(
        &h,
        "er_hub_replication_latency_seconds_bucket",
        &[("cluster", "central"), ("le", "30")],
    );
    let min_age = 60.0 - TOTAL as f64 / 1000.0;
    let sum = value(&h, "er_hub_replication_latency_seconds_sum", &central);
    assert!(
        latencies
            .zip(under_30s)
            .is_some_and(|(all, under)| all > under)
            && sum.is_some_and(|s| s >= min_age),
        "latency: {latencies:?} batches, {under_30s:?} under 30 s, sum {sum:?}: want a batch of \
         minute-old records, at least {min_age} s\n{}",
        dump()
    );
    assert_eq!(
        value(&h, "er_hub_transactions_failed_total", &site_l),
        Some(0.0),
        "{}",
        dump()
    );
    let lag = value(&h, "er_hub_replication_lag_seconds", &site_l);
    assert!(
        lag.is_some_and(|l| (0.0..30.0).contains(&l)),
        "replication lag from heartbeats: {lag:?}\n{}",
        dump()
    );
    assert!(
        value(
            &h,
            "er_hub_offset_index_entries",
            &[("site", &site), ("cluster", "central")]
        )
        .is_some_and(|v| v > 0.0),
        "{}",
        dump()
    );

    // The fleet status line carries the worst lag and the records written.
    rig.hub
        .wait_for_log("lag_seconds=", Duration::from_secs(60))?;
    let status = rig
        .hub
        .log_text()
        .lines()
        .find(|l| l.contains("fleet status") && l.contains("lag_seconds="))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        status.contains("lag_seconds=") && status.contains("records="),
        "{status}"
    );
    Ok(())
}
