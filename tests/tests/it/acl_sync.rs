//! MirrorMaker-2-style ACL sync end to end, on SASL/PLAIN brokers with Kafka's
//! `StandardAuthorizer`: an edge topic's LITERAL bindings (ALLOW WRITE excepted, ALLOW ALL as
//! READ) become ALLOW READ / DESCRIBE grants on its remote topic `<site>.<topic>` on central;
//! DENY, WRITE and PREFIXED bindings and those of unreplicated topics never reach central, and
//! the grants let exactly their principals read the replicated records.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use er_kafka_admin::{
    AclOperation, AclPermission, PatternType, TopicAcl, create_topic_acls, describe_topic_acls,
};
use er_tests::kafka::{KafkaNode, NodeOptions};
use er_tests::replicator::{Proc, logs, toml_pairs};
use er_tests::rig::Rig;
use er_tests::{client, unique_name};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::time::{Instant, sleep, timeout, timeout_at};

use crate::common::blocking;

/// A SASL/PLAIN login: user name and password.
type User = (&'static str, &'static str);

const ADMIN: User = ("admin", "admin-secret");
const ALICE: User = ("alice", "alice-secret");
const BOB: User = ("bob", "bob-secret");
const CAROL: User = ("carol", "carol-secret");
const DAVE: User = ("dave", "dave-secret");

/// Admin round trips (create topics, describe and create ACLs).
const TIMEOUT: Duration = Duration::from_secs(30);
/// The agent's `topics.metadata_interval_ms`: how often it reports the edge's ACLs again.
const METADATA_INTERVAL: Duration = Duration::from_millis(1_000);
/// How long the first sync may take: agent discovery, the hub's CreateAcls, KRaft propagation.
const SYNC_DEADLINE: Duration = Duration::from_secs(60);
/// How long a reader may take to see the replicated records (or be refused).
const READ_DEADLINE: Duration = Duration::from_secs(30);
/// How long a reader without a grant is given to read anything (alice reads in well under it).
const REFUSAL_WAIT: Duration = Duration::from_secs(5);

/// A single-node broker where every user in this file can log in; admin is the super user.
fn secured_node(name: &str) -> Result<KafkaNode> {
    KafkaNode::start_with(
        name,
        NodeOptions {
            sasl_users: [ADMIN, ALICE, BOB, CAROL, DAVE]
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            ..NodeOptions::default()
        },
    )
}

/// The librdkafka properties that log `user` in.
fn login((user, password): User) -> Vec<(String, String)> {
    KafkaNode::sasl_client_properties(user, password)
}

/// Client settings for `node`, logged in as `user`.
fn config(node: &KafkaNode, user: User) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", node.bootstrap());
    for (k, v) in login(user) {
        c.set(k, v);
    }
    c
}

fn admin(node: &KafkaNode) -> Result<Arc<AdminClient<DefaultClientContext>>> {
    Ok(Arc::new(
        config(node, ADMIN)
            .create()
            .context("creating admin client")?,
    ))
}

/// A binding for every host, as ACL sync makes them.
fn acl(
    topic: &str,
    pattern: PatternType,
    principal: &str,
    operation: AclOperation,
    permission: AclPermission,
) -> TopicAcl {
    TopicAcl {
        topic: topic.into(),
        pattern,
        principal: principal.into(),
        host: "*".into(),
        operation,
        permission,
    }
}

/// Creates one-partition `topics`.
async fn create_topics(admin: &AdminClient<DefaultClientContext>, topics: &[&str]) -> Result<()> {
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| NewTopic::new(name, 1, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    for r in admin.create_topics(&new, &opts).await? {
        r.map_err(|(t, code)| anyhow!("creating {t}: {code}"))?;
    }
    Ok(())
}

/// Produces `values` (keyless) to `topic` as admin.
async fn produce(node: &KafkaNode, topic: &str, values: &[String]) -> Result<()> {
    let producer: FutureProducer = config(node, ADMIN).create().context("creating producer")?;
    for v in values {
        producer
            .send(FutureRecord::<(), _>::to(topic).payload(v), TIMEOUT)
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("producing to {topic}"))?;
    }
    Ok(())
}

/// Creates `acls`, each of which must succeed.
async fn grant(admin: &Arc<AdminClient<DefaultClientContext>>, acls: Vec<TopicAcl>) -> Result<()> {
    let admin = Arc::clone(admin);
    let results = blocking(move || create_topic_acls(&admin, &acls, TIMEOUT)).await?;
    if results.iter().any(Result::is_err) {
        bail!("creating ACLs: {results:?}");
    }
    Ok(())
}

/// The cluster's topic ACLs on names containing `needle`.
async fn acls_naming(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    needle: &str,
) -> Result<BTreeSet<TopicAcl>> {
    let admin = Arc::clone(admin);
    let all = blocking(move || describe_topic_acls(&admin, TIMEOUT)).await?;
    Ok(all
        .into_iter()
        .filter(|a| a.topic.contains(needle))
        .collect())
}

/// Waits until the ACLs on exactly `topic` are `want`; on timeout fails with what is there.
async fn wait_for_acls(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
    want: &BTreeSet<TopicAcl>,
    procs: &[&Proc],
) -> Result<()> {
    let deadline = Instant::now() + SYNC_DEADLINE;
    loop {
        let got: BTreeSet<TopicAcl> = acls_naming(admin, topic)
            .await?
            .into_iter()
            .filter(|a| a.topic == topic)
            .collect();
        if got == *want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "ACLs on {topic} after {SYNC_DEADLINE:?}:\n{}\nwanted:\n{}\n{}",
                lines(&got),
                lines(want),
                logs(procs)
            );
        }
        sleep(Duration::from_millis(500)).await;
    }
}

/// One binding a line, as `kafka-acls` lists them.
fn lines(acls: &BTreeSet<TopicAcl>) -> String {
    if acls.is_empty() {
        return "  (none)".into();
    }
    acls.iter()
        .map(|a| format!("  {a}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A read_committed consumer of `topic`'s partition 0 from the beginning, logged in as `user`:
/// assigned, nothing committed, so READ on the topic is all it needs.
fn reader(node: &KafkaNode, user: User, topic: &str) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = config(node, user)
        .set("group.id", unique_name(user.0))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("creating consumer")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// The values `user` reads from `topic` once it read `n` and nothing more came for
/// [`client::SETTLE`] (so a duplicate shows as a value too many). Errors are retried until the
/// deadline: the grant may reach the broker's authorizer, and the records the topic, a moment
/// later.
async fn read_values(node: &KafkaNode, user: User, topic: &str, n: usize) -> Result<Vec<String>> {
    let consumer = reader(node, user, topic)?;
    let deadline = Instant::now() + READ_DEADLINE;
    let mut values = Vec::new();
    let mut last_error = None;
    while values.len() < n {
        match timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => values.push(String::from_utf8_lossy(m.payload().unwrap_or(b"")).into()),
            Ok(Err(e)) => last_error = Some(e),
            Err(_) => bail!(
                "{} read {values:?} of {topic} within {READ_DEADLINE:?}, wanted {n} records; \
                 last error: {last_error:?}",
                user.0
            ),
        }
    }
    while let Ok(next) = timeout(client::SETTLE, consumer.recv()).await {
        if let Ok(m) = next {
            values.push(String::from_utf8_lossy(m.payload().unwrap_or(b"")).into());
        }
    }
    Ok(values)
}

/// The error the broker answers `user`'s metadata request for `topic` with, if any.
async fn metadata_error(
    node: &KafkaNode,
    user: User,
    topic: &str,
) -> Result<Option<RDKafkaErrorCode>> {
    let client: BaseConsumer = config(node, user).create().context("creating client")?;
    let topic = topic.to_owned();
    blocking(move || {
        let md = client.fetch_metadata(Some(&topic), TIMEOUT)?;
        let t = md.topics().iter().find(|t| t.name() == topic);
        Ok(t.context("no metadata for the topic")?
            .error()
            .map(Into::into))
    })
    .await
}

/// How many records `user` reads from `topic` within `wait` (errors are not records).
async fn records_read_within(
    node: &KafkaNode,
    user: User,
    topic: &str,
    wait: Duration,
) -> Result<usize> {
    let consumer = reader(node, user, topic)?;
    let deadline = Instant::now() + wait;
    let mut n = 0;
    while let Ok(next) = timeout_at(deadline, consumer.recv()).await {
        n += usize::from(next.is_ok());
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_topic_read_acls_are_mirrored_onto_remote_topics() -> Result<()> {
    // Both JVMs at once: half the wait on two cores.
    let (edge, central) = std::thread::scope(|s| {
        let edge = s.spawn(|| secured_node("acl-sync-edge"));
        let central = secured_node("acl-sync-central");
        (
            edge.join().expect("starting the edge node panicked"),
            central,
        )
    });
    let (edge, central) = (edge?, central?);
    let (edge_admin, central_admin) = (admin(&edge)?, admin(&central)?);

    // T is replicated, U is not; PREFIX covers both.
    let base = unique_name("aclsync");
    let (t, u, prefix) = (format!("{base}-t"), format!("{base}-u"), format!("{base}-"));
    create_topics(&edge_admin, &[&t, &u]).await?;
    let values: Vec<String> = (0..5).map(|i| format!("record-{i}")).collect();
    produce(&edge, &t, &values).await?;

    let site = unique_name("site");
    let remote = format!("{site}.{t}");
    use AclOperation::{All, Describe, Read, Write};
    use AclPermission::{Allow, Deny};
    use PatternType::{Literal, Prefixed};
    // Each edge binding with the operation its central grant on `remote` must have (None:
    // none at all), and why.
    let cases = [
        (
            acl(&t, Literal, "User:alice", Read, Allow),
            Some(Read),
            "a literal read grant",
        ),
        (
            acl(&t, Literal, "User:bob", Write, Allow),
            None,
            "MM2 never syncs WRITE",
        ),
        (
            acl(&t, Literal, "User:carol", All, Allow),
            Some(Read),
            "ALL is synced as READ",
        ),
        (
            acl(&t, Literal, "User:dave", Read, Deny),
            None,
            "a site may not lock anyone out",
        ),
        (
            acl(&prefix, Prefixed, "User:alice", Read, Allow),
            None,
            "not literal",
        ),
        (
            acl(&u, Literal, "User:bob", Read, Allow),
            None,
            "U is not replicated",
        ),
        (
            acl(&t, Literal, "User:bob", Describe, Allow),
            Some(Describe),
            "a describe grant",
        ),
    ];
    grant(
        &edge_admin,
        cases.iter().map(|(a, _, _)| a.clone()).collect(),
    )
    .await?;
    let want: BTreeSet<TopicAcl> = cases
        .iter()
        .filter_map(|(a, op, _)| Some(acl(&remote, Literal, &a.principal, (*op)?, Allow)))
        .collect();

    let rig = Rig::builder()
        .edge(edge.bootstrap())
        .central(central.bootstrap())
        .hub(|h| {
            h.cluster_properties.insert("central".into(), login(ADMIN));
            h.extra.push_str("\n[acl_sync]\nenabled = true\n");
        })
        .agent_with(&site, &t, |a| {
            a.topics_extra = format!(
                "metadata_interval_ms = {}\nsync_acls = true\n",
                METADATA_INTERVAL.as_millis()
            );
            let properties = toml_pairs(&login(ADMIN), "\n");
            a.extra
                .push_str(&format!("\n[kafka.properties]\n{properties}\n"));
        })
        .start()?;

    wait_for_acls(&central_admin, &remote, &want, &rig.procs()).await?;
    // Later reports add nothing; nothing lands on U's, the prefix's or any other name either.
    sleep(METADATA_INTERVAL * 3 + Duration::from_millis(500)).await;
    let ours = acls_naming(&central_admin, &base).await?;
    assert!(
        ours == want,
        "central ACLs on names containing {base}:\n{}\nwanted:\n{}\ncases: {:#?}",
        lines(&ours),
        lines(&want),
        cases
            .iter()
            .map(|(a, op, why)| format!("{a} -> {op:?}: {why}"))
            .collect::<Vec<_>>()
    );

    let read = read_values(&central, ALICE, &remote, values.len()).await?;
    assert_eq!(read, values, "alice reads what the edge holds");
    // librdkafka reports no error for an assigned partition it may not fetch: dave reads
    // nothing, and the broker's metadata answer says why.
    assert_eq!(
        records_read_within(&central, DAVE, &remote, REFUSAL_WAIT).await?,
        0,
        "dave reads {remote}"
    );
    assert_eq!(
        metadata_error(&central, DAVE, &remote).await?,
        Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        "dave asking for {remote}"
    );
    Ok(())
}
