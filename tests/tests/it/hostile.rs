//! A hostile agent: real QUIC, a valid site certificate, crafted frames. Each attack is refused
//! or held to its budget, the hub's memory stays bounded (RSS measured), and a well-behaved
//! site on the same hub keeps flowing and loses nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use er_net::wire::FrameReader;
use er_protocol::{Frame, PROTOCOL_VERSION, encode_frame};
use er_tests::client;
use er_tests::delivery::{self, SeqIn};
use er_tests::kafka::shared;
use er_tests::proxied::produce;
use er_tests::replicator::Pki;
use er_tests::rig::Rig;
use er_tests::unique_name;

/// Small budgets, so that what an attack could pile up without them (tens of MiB) stands far
/// above what they allow (a few MiB) in the hub's RSS.
const LIMITS: &str = "[limits]
max_batch_bytes = 1048576
connection_inbound_bytes = 2097152
site_inbound_bytes = 3145728
inbound_bytes = 67108864
max_connections_per_site = 2
hello_timeout_ms = 8000
";

/// Close codes of the hub (`er_hub::server::close_code`).
const PROTOCOL: u64 = 1;
const TOO_MANY_CONNECTIONS: u64 = 8;

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

fn frame_bytes(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(frame, &mut out);
    out.to_vec()
}

/// A QUIC client holding `site`'s certificate.
fn endpoint(pki: &Pki, site: &str) -> anyhow::Result<(quinn::Endpoint, quinn::ClientConfig)> {
    let tls = er_net::TlsFiles {
        ca_cert: pki.file("ca.pem"),
        cert: pki.file(&format!("{site}.pem")),
        key: pki.file(&format!("{site}.key")),
    };
    Ok(er_net::client_endpoint(
        "127.0.0.1:0".parse()?,
        &tls,
        &er_net::TransportTuning::default(),
    )?)
}

async fn connect(
    ep: &(quinn::Endpoint, quinn::ClientConfig),
    hub: SocketAddr,
) -> anyhow::Result<quinn::Connection> {
    Ok(ep.0.connect_with(ep.1.clone(), hub, "localhost")?.await?)
}

/// Says hello on a new control stream and waits for the welcome; returns the control stream.
async fn hello(
    conn: &quinn::Connection,
    site: &str,
) -> anyhow::Result<(quinn::SendStream, FrameReader)> {
    let (mut send, recv) = conn.open_bi().await?;
    let hello = Frame::Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        agent_version: "hostile/0".into(),
        site_claim: site.into(),
    };
    send.write_all(&frame_bytes(&hello)).await?;
    let mut reader = FrameReader::new(recv, 16 * 1024 * 1024);
    let first = tokio::time::timeout(Duration::from_secs(60), reader.next()).await??;
    anyhow::ensure!(
        matches!(first, Some(Frame::Welcome { .. })),
        "expected a welcome, got {first:?}"
    );
    Ok((send, reader))
}

/// How the hub closed a connection: its application close code.
async fn close_code(conn: &quinn::Connection, within: Duration) -> anyhow::Result<u64> {
    match tokio::time::timeout(within, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => Ok(c.error_code.into_inner()),
        Ok(other) => anyhow::bail!("closed otherwise: {other}"),
        Err(_) => anyhow::bail!("still open after {within:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_sites_are_held_to_their_budgets_and_a_good_site_keeps_flowing()
-> anyhow::Result<()> {
    let k = shared();
    const TOTAL: usize = 4_000;
    let good = unique_name("good");
    let bad = unique_name("bad");
    let mute = unique_name("mute");
    let mut rig = Rig::builder()
        .site(&good)
        .site(&bad)
        .site(&mute)
        .hub(|h| h.extra = LIMITS.into())
        .start()?;
    let hub_addr: SocketAddr = format!("127.0.0.1:{}", rig.hub_setup().port).parse()?;
    let topic = format!("{good}-events");
    client::create_topic(k.edge(), &topic, 2, &[]).await?;
    let mut a = rig.agent_setup(&good, &topic);
    a.max_records = 200;
    rig.start_agent(&a)?;
    let remote = format!("{good}.{topic}");
    produce(k.edge(), &topic, 0, TOTAL / 2, 2).await?;
    client::wait_for_count(k.central(), &remote, TOTAL / 2, Duration::from_secs(60)).await;
    let pid = rig
        .hub
        .pid()
        .ok_or_else(|| anyhow::anyhow!("hub not running"))?;
    let baseline = rss(pid)?;

    // 1. Connections that never say hello: a site holds at most
    //    limits.max_connections_per_site of them, and each is closed after
    //    limits.hello_timeout_ms.
    let mute_ep = endpoint(rig.pki(), &mute)?;
    let started = Instant::now();
    let mute1 = connect(&mute_ep, hub_addr).await?;
    let mute2 = connect(&mute_ep, hub_addr).await?;
    let mute3 = connect(&mute_ep, hub_addr).await?;
    // The client's handshake ends before the hub has admitted it, so the hub may take the
    // three in any order: exactly one is refused, the other two are closed at the deadline.
    let mut codes = Vec::new();
    for conn in [&mute1, &mute2, &mute3] {
        codes.push(close_code(conn, Duration::from_secs(30)).await?);
    }
    codes.sort_unstable();
    assert_eq!(
        codes,
        [PROTOCOL, PROTOCOL, TOO_MANY_CONNECTIONS],
        "a site over limits.max_connections_per_site is refused; a connection without hello is a protocol violation"
    );
    // The deadline is long enough that the three connections surely overlap on a loaded
    // machine (else the third would find a slot freed by the deadline), short enough to wait.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "closed after {:?}, the deadline is 8 s",
        started.elapsed()
    );

    // 2. One connection of the bad site opens 64 partition streams, each announcing an almost
    //    full frame (1 MiB) and sending all of it but the last byte, then holds: 64 MiB
    //    offered, of which the hub may hold the connection's 2 MiB read plus its 2 MiB QUIC
    //    window.
    let bad_ep = endpoint(rig.pki(), &bad)?;
    let conn = connect(&bad_ep, hub_addr).await?;
    let _ctl = hello(&conn, &bad).await?;
    let mut writers = Vec::new();
    for _ in 0..64 {
        let conn = conn.clone();
        writers.push(tokio::spawn(async move {
            let (mut send, _recv) = conn.open_bi().await?;
            let len: u32 = 1024 * 1024;
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.resize(4 + len as usize - 1, 7);
            send.write_all(&bytes).await?;
            // Hold the stream open with the frame incomplete.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            anyhow::Ok(())
        }));
    }

    // The good site keeps flowing while the attack holds, and the hub's memory stays put.
    produce(k.edge(), &topic, TOTAL / 2, TOTAL, 2).await?;
    let mut peak = baseline;
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        peak = peak.max(rss(pid)?);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = client::wait_for_count(k.central(), &remote, TOTAL, Duration::from_secs(60)).await;
    delivery::assert_exactly_once_in_order(
        &remote,
        &delivery::seqs_by_partition(&got, SeqIn::Value)?,
        &delivery::round_robin(TOTAL, 2),
        &rig.logs(),
    );
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "hub RSS {} MiB before the attack, peak {} MiB during it (+{} MiB; 64 MiB offered)",
        baseline >> 20,
        peak >> 20,
        growth >> 20
    );
    assert!(
        growth < 24 << 20,
        "the hub's RSS grew by {} MiB under an attack its budgets cap at about 7 MiB\n{}",
        growth >> 20,
        rig.logs()
    );
    assert!(
        conn.close_reason().is_none(),
        "a site waiting at its budget is slowed, not disconnected: {:?}",
        conn.close_reason()
    );
    for w in writers {
        w.abort();
    }
    Ok(())
}

/// Topics whose central names can never exist: one collides with an existing topic (Kafka
/// treats `.` and `_` alike), one is over Kafka's 249 bytes once prefixed with the site. Their
/// records go to the site's dead-letter topic, whole, with their source coordinates and a
/// reason naming both colliding topics (or the length); nothing reaches the existing topic; the
/// site's third topic flows exactly once meanwhile, and the session never ends over it (no
/// reconnect loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unwritable_central_names_go_to_the_dead_letters_and_the_site_flows_on()
-> anyhow::Result<()> {
    let k = shared();
    let site = unique_name("coll");
    let mut rig = Rig::builder().site(&site).start()?;
    let colliding = format!("{site}-in.x");
    // 249 bytes at the edge (Kafka's limit), so `<site>.<name>` is too long centrally.
    let long = format!("{site}-in-{}", "l".repeat(249 - site.len() - 4));
    let good = format!("{site}-in-good");
    for t in [&colliding, &long, &good] {
        client::create_topic(k.edge(), t, 1, &[]).await?;
    }
    // Another tenant's topic, in the way of `<site>.<site>-in.x`.
    let existing = format!("{site}.{site}-in_x");
    client::create_topic(k.central(), &existing, 1, &[]).await?;
    rig.start_agent(&rig.agent_setup(&site, &format!("{site}-in.*")))?;
    for t in [&colliding, &long, &good] {
        produce(k.edge(), t, 0, 10, 1).await?;
    }

    let remote_good = format!("{site}.{good}");
    let got = client::wait_for_count(k.central(), &remote_good, 10, Duration::from_secs(90)).await;
    let seqs = delivery::seqs_by_partition(&got, SeqIn::Value)?;
    delivery::assert_exactly_once_in_order(
        &remote_good,
        &seqs,
        &delivery::round_robin(10, 1),
        &rig.logs(),
    );
    let dead_topic = format!("er-dead-letter.{site}.internal");
    let dead = client::wait_for_count(k.central(), &dead_topic, 20, Duration::from_secs(60)).await;
    assert_eq!(
        dead.len(),
        20,
        "every record of both topics once\n{}",
        rig.logs()
    );
    let header = |r: &client::Record, name: &str| r.header_text(name).unwrap_or_default();
    for (source, destination, reason) in [
        (&colliding, format!("{site}.{colliding}"), existing.as_str()),
        (&long, format!("{site}.{long}"), "must be 1..=249"),
    ] {
        let letters: Vec<&client::Record> = dead
            .iter()
            .filter(|r| header(r, "er.source.topic") == *source)
            .collect();
        let offsets: Vec<String> = letters
            .iter()
            .map(|r| header(r, "er.source.offset"))
            .collect();
        let values: Vec<String> = letters
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect();
        assert_eq!(
            offsets,
            (0..10).map(|i| i.to_string()).collect::<Vec<_>>(),
            "{source}: every source offset once, in order"
        );
        assert_eq!(
            values,
            (0..10).map(|i| i.to_string()).collect::<Vec<_>>(),
            "{source}: the values are kept"
        );
        for r in letters {
            assert_eq!(header(r, "er.source.partition"), "0");
            assert_eq!(header(r, "er.destination.topic"), destination);
            let why = header(r, "er.reason");
            assert!(
                why.contains(reason),
                "{source}: the reason names {reason:?}: {why}"
            );
        }
    }
    let topics = client::list_topics(k.central()).await?;
    assert!(!topics.contains(&format!("{site}.{colliding}")));
    let marks = client::end_offsets(k.central(), &existing).await?;
    assert!(
        marks.iter().all(|(_, end)| *end == 0),
        "nothing was written to the existing topic: {marks:?}"
    );
    assert_eq!(
        rig.hub.log_text().matches("welcoming site").count(),
        1,
        "the session never ended over the unwritable topics\n{}",
        rig.logs()
    );
    Ok(())
}

/// Sends `frame` on a new partition stream (or the control stream) of a fresh welcomed
/// connection of `site` and returns the reason the hub closed the connection with.
async fn refused_reason(
    ep: &(quinn::Endpoint, quinn::ClientConfig),
    hub: SocketAddr,
    site: &str,
    frame: Frame,
    on_control: bool,
) -> anyhow::Result<String> {
    let conn = connect(ep, hub).await?;
    let (mut ctl, _ctl_reader) = hello(&conn, site).await?;
    let bytes = frame_bytes(&frame);
    if on_control {
        ctl.write_all(&bytes).await?;
    } else {
        let (mut send, _recv) = conn.open_bi().await?;
        send.write_all(&bytes).await?;
        let _ = send.finish();
    }
    match tokio::time::timeout(Duration::from_secs(30), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            anyhow::ensure!(
                c.error_code.into_inner() == PROTOCOL,
                "closed with code {} ({:?}), not as a protocol violation",
                c.error_code,
                String::from_utf8_lossy(&c.reason)
            );
            Ok(String::from_utf8_lossy(&c.reason).into_owned())
        }
        Ok(other) => anyhow::bail!("closed otherwise: {other}"),
        Err(_) => anyhow::bail!("the hub kept the connection open after a crafted {frame:?}"),
    }
}

fn batch(
    topic: &str,
    partition: i32,
    partition_count: i32,
    records: u32,
    payload: Vec<u8>,
) -> Frame {
    Frame::Batch(er_protocol::Batch {
        header: er_protocol::BatchHeader {
            seq: 0,
            tp: er_protocol::TopicPartition::new(topic, partition),
            partition_count,
            first_offset: 0,
            next_offset: i64::from(records),
            record_count: records,
            codec: er_protocol::Codec::Zstd,
            uncompressed_len: 1 << 20,
        },
        payload: payload.into(),
    })
}

/// Crafted frames of a site with a valid certificate: each is refused (the connection closed
/// as a protocol violation naming what was wrong), nothing of it reaches Kafka, and a good site
/// on the same hub keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crafted_frames_are_refused_naming_the_limit_and_a_good_site_keeps_flowing()
-> anyhow::Result<()> {
    let k = shared();
    const TOTAL: usize = 2_000;
    let good = unique_name("good");
    let bad = unique_name("craft");
    let mut rig = Rig::builder()
        .site(&good)
        .site(&bad)
        .hub(|h| {
            h.extra = "[limits]\nmax_groups_per_site = 100\nmax_partitions_per_topic = 64\n".into();
        })
        .start()?;
    let hub_addr: SocketAddr = format!("127.0.0.1:{}", rig.hub_setup().port).parse()?;
    let topic = format!("{good}-events");
    client::create_topic(k.edge(), &topic, 2, &[]).await?;
    rig.start_agent(&rig.agent_setup(&good, &topic))?;
    let remote = format!("{good}.{topic}");
    produce(k.edge(), &topic, 0, TOTAL / 2, 2).await?;
    client::wait_for_count(k.central(), &remote, TOTAL / 2, Duration::from_secs(60)).await;
    let pid = rig
        .hub
        .pid()
        .ok_or_else(|| anyhow::anyhow!("hub not running"))?;
    let baseline = rss(pid)?;
    let mut peak = baseline;

    let ep = endpoint(rig.pki(), &bad)?;
    let craft_topic = format!("{bad}-t");
    // 1 KiB of zstd that inflates to zeros: not the records it claims.
    let zeros = zstd::encode_all(&vec![0u8; 1 << 20][..], 19)?;
    let cases: Vec<(&str, Frame, bool, &str)> = vec![
        (
            "a partition count beyond limits.max_partitions_per_topic (the hub would create them)",
            batch(&craft_topic, 0, 9_000, 1, Vec::new()),
            false,
            "max_partitions_per_topic",
        ),
        (
            "a partition outside the count it claims",
            batch(&craft_topic, 5, 2, 1, Vec::new()),
            false,
            "partition 5",
        ),
        (
            "8 M records declared in a small zstd payload",
            batch(&craft_topic, 0, 1, 8_000_000, zeros),
            false,
            "",
        ),
        (
            "an internal topic",
            batch("__consumer_offsets", 0, 1, 0, Vec::new()),
            false,
            "internal",
        ),
        (
            "a 40 KiB group name",
            Frame::GroupOffsets {
                groups: vec![er_protocol::GroupOffsets {
                    group: "g".repeat(40 * 1024),
                    offsets: Vec::new(),
                }],
            },
            true,
            "",
        ),
        (
            "more groups than limits.max_groups_per_site",
            Frame::GroupOffsets {
                groups: (0..101)
                    .map(|i| er_protocol::GroupOffsets {
                        group: format!("g{i}"),
                        offsets: Vec::new(),
                    })
                    .collect(),
            },
            true,
            "100",
        ),
    ];
    // Each attack a few times over: what a refusal leaves behind would add up.
    for (what, frame, on_control, names) in cases {
        for _ in 0..4 {
            let reason = refused_reason(&ep, hub_addr, &bad, frame.clone(), on_control)
                .await
                .map_err(|e| anyhow::anyhow!("{what}: {e}\n{}", rig.logs()))?;
            assert!(
                reason.contains(names),
                "{what}: the refusal names {names:?}: {reason}"
            );
            peak = peak.max(rss(pid)?);
        }
        eprintln!("{what}: refused 4 times; hub RSS peak {} MiB", peak >> 20);
    }
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "hub RSS {} MiB before the crafted frames, peak {} MiB (+{} MiB)",
        baseline >> 20,
        peak >> 20,
        growth >> 20
    );
    assert!(
        growth < 24 << 20,
        "the hub's RSS grew by {} MiB under refused frames (each under 2 MiB)\n{}",
        growth >> 20,
        rig.logs()
    );
    let topics = client::list_topics(k.central()).await?;
    assert!(
        !topics.iter().any(|t| t.contains(&bad)),
        "a crafted batch reached Kafka: {:?}",
        topics
            .iter()
            .filter(|t| t.contains(&bad))
            .collect::<Vec<_>>()
    );

    produce(k.edge(), &topic, TOTAL / 2, TOTAL, 2).await?;
    let got = client::wait_for_count(k.central(), &remote, TOTAL, Duration::from_secs(60)).await;
    delivery::assert_exactly_once_in_order(
        &remote,
        &delivery::seqs_by_partition(&got, SeqIn::Value)?,
        &delivery::round_robin(TOTAL, 2),
        &rig.logs(),
    );
    Ok(())
}

/// Under the identity policy every site writes one shared namespace, so a site writes only the
/// central topics `replication.identity_allow` lists for it: its own allowed topic arrives
/// under its own name; a topic listed only for another site, and a topic named like Kafka
/// Connect's state, never reach those central topics (their records go to the site's dead
/// letters, naming the setting); the other site's topic gets nothing from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_identity_policy_a_site_writes_only_its_allowlisted_topics() -> anyhow::Result<()>
{
    let k = shared();
    let site = unique_name("idn");
    let other = unique_name("idn-other");
    let mine = format!("{site}-mine");
    let theirs = format!("{other}-data");
    let mut rig = Rig::builder()
        .site(&site)
        .site(&other)
        .hub(|h| {
            h.extra = format!(
                "[replication]\npolicy = \"identity\"\n\n[[replication.identity_allow]]\nsites = {site:?}\ntopics = {:?}\n\n[[replication.identity_allow]]\nsites = {other:?}\ntopics = {:?}\n",
                format!("{site}-mine"),
                format!("{other}-data"),
            );
        })
        .start()?;
    // The site's edge has its own topic and one named like the other site's (protected names
    // such as `connect-offsets` take the same path; unit: `sink::tests`).
    for t in [&mine, &theirs] {
        client::create_topic(k.edge(), t, 1, &[]).await?;
    }
    client::create_topic(k.central(), &theirs, 1, &[]).await?;
    rig.start_agent(&rig.agent_setup(&site, &format!("({site}-mine|{other}-data)")))?;
    produce(k.edge(), &mine, 0, 10, 1).await?;
    produce(k.edge(), &theirs, 0, 10, 1).await?;

    let got = client::wait_for_count(k.central(), &mine, 10, Duration::from_secs(90)).await;
    delivery::assert_exactly_once_in_order(
        &mine,
        &delivery::seqs_by_partition(&got, SeqIn::Value)?,
        &delivery::round_robin(10, 1),
        &rig.logs(),
    );
    // MM2 heartbeats stay prefixed with the site under the identity policy: they need no
    // listing (found by this test: they went to the dead letters).
    let beats = client::wait_for_count(
        k.central(),
        &format!("{site}.heartbeats"),
        1,
        Duration::from_secs(30),
    )
    .await;
    assert!(!beats.is_empty(), "no heartbeats centrally\n{}", rig.logs());
    let dead_topic = format!("er-dead-letter.{site}.internal");
    let dead = client::wait_for_count(k.central(), &dead_topic, 10, Duration::from_secs(60)).await;
    assert_eq!(
        dead.len(),
        10,
        "the other site's topic, to the dead letters\n{}",
        rig.logs()
    );
    for r in &dead {
        let h = |name: &str| r.header_text(name).unwrap_or_default();
        assert_eq!(h("er.source.topic"), theirs);
        assert_eq!(h("er.destination.topic"), theirs);
        assert!(
            h("er.reason").contains("replication.identity_allow"),
            "the reason names the setting: {}",
            h("er.reason")
        );
    }
    let marks = client::end_offsets(k.central(), &theirs).await?;
    assert!(
        marks.iter().all(|(_, end)| *end == 0),
        "the site wrote into another site's topic: {marks:?}"
    );
    Ok(())
}

/// A batch may route each record to a topic of its own (plugins rename): those count towards
/// `limits.max_topics_per_site` like source topics. Records routed beyond it, or to names Kafka
/// does not take, go to the site's dead letters (the topic is never created), the batch is
/// acked, and the session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_routed_to_more_topics_than_the_site_may_write_go_to_the_dead_letters()
-> anyhow::Result<()> {
    let k = shared();
    let site = unique_name("spray");
    let rig = Rig::builder()
        .site(&site)
        .hub(|h| h.extra = "[limits]\nmax_topics_per_site = 3\n".into())
        .start()?;
    let hub_addr: SocketAddr = format!("127.0.0.1:{}", rig.hub_setup().port).parse()?;
    let ep = endpoint(rig.pki(), &site)?;
    let conn = connect(&ep, hub_addr).await?;
    let (_ctl, _ctl_reader) = hello(&conn, &site).await?;

    // Source topic s, records routed to r0..r5 and to an invalid name: s, r0 and r1 make three.
    let source = er_protocol::TopicPartition::new("s", 0);
    let mut builder = er_protocol::BatchBuilder::new(source.clone(), 1);
    let routed: Vec<String> = (0..6)
        .map(|i| format!("r{i}"))
        .chain(["bad name!".to_owned()])
        .collect();
    for (offset, topic) in (0..).zip(
        ["s"]
            .iter()
            .copied()
            .chain(routed.iter().map(String::as_str)),
    ) {
        let value = offset.to_string();
        builder.push(&er_protocol::RecordRef {
            offset,
            // Now, not an early epoch: a 1970 timestamp breaches the topic's retention, and
            // the broker's next retention check (every 5 minutes) deletes the record.
            timestamp: client::now_ms(),
            timestamp_type: er_protocol::TimestampType::CreateTime,
            key: None,
            value: Some(value.as_bytes()),
            headers: &[],
            topic: (topic != "s").then_some(topic),
            partition: None,
        });
    }
    builder.set_next_offset(routed.len() as i64 + 1);
    let frame = Frame::Batch(builder.finish_and_reset(0, er_protocol::Codec::Zstd, 3)?);
    let (mut send, recv) = conn.open_bi().await?;
    send.write_all(&frame_bytes(&frame)).await?;
    let mut reader = FrameReader::new(recv, 1 << 20);
    let answer = tokio::time::timeout(Duration::from_secs(60), reader.next())
        .await
        .map_err(|_| anyhow::anyhow!("no answer\n{}", rig.logs()))??;
    anyhow::ensure!(
        matches!(answer, Some(Frame::Ack { next_offset: 8, .. })),
        "the batch is acked whole: {answer:?}\n{}",
        rig.logs()
    );

    let topics = client::list_topics(k.central()).await?;
    let mine: std::collections::BTreeSet<&str> = topics
        .iter()
        .filter_map(|t| t.strip_prefix(&format!("{site}.")))
        .collect();
    assert_eq!(
        mine,
        ["r0", "r1", "s"].into_iter().collect(),
        "three topics at most for the site"
    );
    for t in ["s", "r0", "r1"] {
        let got = client::wait_for_count(
            k.central(),
            &format!("{site}.{t}"),
            1,
            Duration::from_secs(30),
        )
        .await;
        if got.len() != 1 {
            // Never written, or written and gone (a low watermark above 0: deleted)?
            let marks = client::watermarks(k.central(), &format!("{site}.{t}")).await;
            panic!(
                "{t} got {} records, not its one; watermarks {marks:?}\n{}",
                got.len(),
                rig.logs()
            );
        }
    }
    let dead_topic = format!("er-dead-letter.{site}.internal");
    let dead = client::wait_for_count(k.central(), &dead_topic, 5, Duration::from_secs(30)).await;
    let offsets: Vec<String> = dead
        .iter()
        .map(|r| r.header_text("er.source.offset").unwrap_or_default())
        .collect();
    assert_eq!(
        offsets,
        ["3", "4", "5", "6", "7"],
        "every refused record once"
    );
    for r in &dead[..4] {
        let why = r.header_text("er.reason").unwrap_or_default();
        assert!(why.contains("max_topics_per_site"), "{why}");
    }
    let why = dead[4].header_text("er.reason").unwrap_or_default();
    assert!(
        why.contains("bad name!") && why.contains("not one Kafka takes"),
        "{why}"
    );
    assert_eq!(dead[4].header_text("er.source.topic").as_deref(), Some("s"));
    Ok(())
}
