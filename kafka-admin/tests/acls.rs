//! ACLs and incremental config alters against real Kafka: a SASL/PLAIN broker with Kafka's
//! `StandardAuthorizer` (users admin and alice), and a plaintext broker without an authorizer.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use er_kafka_admin::{
    AclOperation, AclPermission, ConfigOp, PatternType, TopicAcl, create_topic_acls,
    describe_topic_acls, incremental_alter_topic_configs,
};
use er_tests::kafka::{KafkaNode, NodeOptions};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const ADMIN: (&str, &str) = ("admin", "admin-secret");
const ALICE: (&str, &str) = ("alice", "alice-secret");
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a change of ACLs may take to reach the broker's authorizer (KRaft: through the
/// metadata log).
const PROPAGATION: Duration = Duration::from_secs(20);

fn secured_node(name: &str) -> Result<KafkaNode> {
    KafkaNode::start_with(
        name,
        NodeOptions {
            sasl_users: [ADMIN, ALICE]
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            ..NodeOptions::default()
        },
    )
}

/// Client settings for `node`, logged in as `user` on a secured node.
fn config(node: &KafkaNode, user: Option<(&str, &str)>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", node.bootstrap());
    if let Some((name, password)) = user {
        for (k, v) in KafkaNode::sasl_client_properties(name, password) {
            c.set(k, v);
        }
    }
    c
}

fn admin(
    node: &KafkaNode,
    user: Option<(&str, &str)>,
) -> Result<AdminClient<DefaultClientContext>> {
    config(node, user).create().context("creating admin client")
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

/// Creates `topic` (1 partition) with `configs`.
fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    configs: &[(&str, &str)],
) -> Result<()> {
    let new = NewTopic {
        name: topic,
        num_partitions: 1,
        replication: TopicReplication::Fixed(1),
        config: configs.to_vec(),
    };
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    for r in block_on(admin.create_topics([&new], &opts))?.context("CreateTopics")? {
        r.map_err(|(t, code)| anyhow::anyhow!("creating {t}: {code}"))?;
    }
    Ok(())
}

/// The configs set on `topic` itself, by name.
fn topic_configs(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<BTreeSet<(String, String)>> {
    let opts = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let res = block_on(
        admin.describe_configs([&rdkafka::admin::ResourceSpecifier::Topic(topic)], &opts),
    )?
    .context("DescribeConfigs")?;
    let c = res
        .into_iter()
        .next()
        .context("no DescribeConfigs result")?
        .map_err(|code| anyhow::anyhow!("describing {topic}: {code}"))?;
    Ok(c.entries
        .into_iter()
        .filter(|e| e.source == rdkafka::admin::ConfigSource::DynamicTopic)
        .filter_map(|e| Some((e.name, e.value?)))
        .collect())
}

/// Retries `check` until it succeeds or `PROPAGATION` passes; the last error otherwise.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: still failing after {PROPAGATION:?}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn acl(
    topic: &str,
    pattern: PatternType,
    principal: &str,
    host: &str,
    operation: AclOperation,
    permission: AclPermission,
) -> TopicAcl {
    TopicAcl {
        topic: topic.into(),
        pattern,
        principal: principal.into(),
        host: host.into(),
        operation,
        permission,
    }
}

#[test]
fn created_acls_are_described_as_they_were_made() -> Result<()> {
    let node = secured_node("acl-describe")?;
    let admin = admin(&node, Some(ADMIN))?;
    let topic = er_tests::unique_name("orders");
    create_topic(&admin, &topic, &[])?;
    let wanted = vec![
        acl(
            &topic,
            PatternType::Literal,
            "User:alice",
            "*",
            AclOperation::Read,
            AclPermission::Allow,
        ),
        acl(
            "orders-",
            PatternType::Prefixed,
            "User:alice",
            "127.0.0.1",
            AclOperation::Describe,
            AclPermission::Allow,
        ),
        acl(
            &topic,
            PatternType::Literal,
            "User:bob",
            "*",
            AclOperation::Write,
            AclPermission::Deny,
        ),
    ];
    // A filter-only pattern type between valid bindings: refused alone, the others still made
    // and every result in its binding's place.
    let mut sent = wanted.clone();
    sent.insert(
        1,
        acl(
            &topic,
            PatternType::Match,
            "User:alice",
            "*",
            AclOperation::Read,
            AclPermission::Allow,
        ),
    );
    let results = create_topic_acls(&admin, &sent, TIMEOUT)?;
    assert_eq!(results.len(), 4, "{results:?}");
    assert!(results[0].is_ok(), "{results:?}");
    let refused = results[1].as_ref().expect_err("MATCH is for filters only");
    assert!(
        refused.contains("Invalid resource pattern type"),
        "{refused}"
    );
    assert!(results[2].is_ok() && results[3].is_ok(), "{results:?}");

    let want: BTreeSet<TopicAcl> = wanted.iter().cloned().collect();
    eventually("describing the ACLs made", || {
        let got: BTreeSet<TopicAcl> = describe_topic_acls(&admin, TIMEOUT)?.into_iter().collect();
        if got != want {
            bail!("described {got:#?}\nwanted {want:#?}");
        }
        Ok(())
    })?;

    // Creating what exists is not an error (the hub re-syncs the same ACLs periodically).
    let again = create_topic_acls(&admin, &wanted, TIMEOUT)?;
    assert!(again.iter().all(Result::is_ok), "{again:?}");
    let got: BTreeSet<TopicAcl> = describe_topic_acls(&admin, TIMEOUT)?.into_iter().collect();
    assert_eq!(got, want);
    Ok(())
}

#[test]
fn a_user_without_cluster_describe_is_told_it_is_not_authorized() -> Result<()> {
    let node = secured_node("acl-unauthorized")?;
    let admin = admin(&node, Some(ADMIN))?;
    let topic = er_tests::unique_name("orders");
    create_topic(&admin, &topic, &[])?;
    let made = create_topic_acls(
        &admin,
        &[acl(
            &topic,
            PatternType::Literal,
            "User:alice",
            "*",
            AclOperation::Read,
            AclPermission::Allow,
        )],
        TIMEOUT,
    )?;
    assert!(made.iter().all(Result::is_ok), "{made:?}");

    let alice = admin_as_alice(&node)?;
    let e = describe_topic_acls(&alice, TIMEOUT).expect_err("alice may not describe ACLs");
    assert_eq!(
        e.code(),
        Some(RDKafkaErrorCode::ClusterAuthorizationFailed),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with("describing ACLs: ") && text.contains("CLUSTER_AUTHORIZATION_FAILED"),
        "{text}"
    );
    assert!(!e.is_security_disabled());
    Ok(())
}

fn admin_as_alice(node: &KafkaNode) -> Result<AdminClient<DefaultClientContext>> {
    admin(node, Some(ALICE))
}

#[test]
fn alice_reads_the_topic_once_her_read_acl_exists() -> Result<()> {
    let node = secured_node("acl-read")?;
    let admin = admin(&node, Some(ADMIN))?;
    let topic = er_tests::unique_name("orders");
    create_topic(&admin, &topic, &[])?;
    let producer: ThreadedProducer<DefaultProducerContext> = config(&node, Some(ADMIN))
        .create()
        .context("creating producer")?;
    producer
        .send(BaseRecord::to(&topic).key("k").payload("for alice"))
        .map_err(|(e, _)| e)?;
    producer.flush(TIMEOUT)?;

    // The partition assigned, nothing committed: no group request, so READ on the topic is
    // all alice needs (librdkafka wants a group.id all the same).
    let alice: BaseConsumer = config(&node, Some(ALICE))
        .set("group.id", er_tests::unique_name("alice"))
        .set("enable.auto.commit", "false")
        .create()
        .context("creating alice's consumer")?;
    let seen = |consumer: &BaseConsumer| -> Result<bool> {
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let t = md.topics().iter().find(|t| t.name() == topic);
        Ok(t.is_some_and(|t| t.error().is_none() && !t.partitions().is_empty()))
    };
    assert!(
        !seen(&alice)?,
        "alice sees {topic} before any ACL lets her (is the authorizer on?)"
    );

    let made = create_topic_acls(
        &admin,
        &[acl(
            &topic,
            PatternType::Literal,
            "User:alice",
            "*",
            AclOperation::Read,
            AclPermission::Allow,
        )],
        TIMEOUT,
    )?;
    assert!(made.iter().all(Result::is_ok), "{made:?}");

    eventually("alice seeing the topic", || {
        if seen(&alice)? {
            Ok(())
        } else {
            bail!("alice does not see {topic}")
        }
    })?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
    alice.assign(&tpl)?;
    let deadline = Instant::now() + PROPAGATION;
    let payload = loop {
        match alice.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => break m.payload().map(<[u8]>::to_vec),
            Some(Err(e)) if Instant::now() >= deadline => bail!("alice cannot read: {e}"),
            None if Instant::now() >= deadline => bail!("alice read nothing"),
            _ => {}
        }
    };
    assert_eq!(payload.as_deref(), Some(&b"for alice"[..]));
    Ok(())
}

#[test]
fn a_cluster_without_authorizer_says_security_is_disabled() -> Result<()> {
    let node = KafkaNode::start("acl-plaintext")?;
    let admin = admin(&node, None)?;
    let e = describe_topic_acls(&admin, TIMEOUT).expect_err("no authorizer, no ACLs");
    assert!(e.is_security_disabled(), "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with("describing ACLs: ") && text.contains("(SECURITY_DISABLED)"),
        "{text}"
    );

    let made = create_topic_acls(
        &admin,
        &[acl(
            "orders",
            PatternType::Literal,
            "User:alice",
            "*",
            AclOperation::Read,
            AclPermission::Allow,
        )],
        TIMEOUT,
    )?;
    let refused = made[0].as_ref().expect_err("no authorizer to hold the ACL");
    assert!(refused.contains("SECURITY_DISABLED"), "{refused}");
    Ok(())
}

#[test]
fn incremental_alter_changes_only_the_named_configs() -> Result<()> {
    let node = KafkaNode::start("incremental-alter")?;
    let admin = admin(&node, None)?;
    let topic = er_tests::unique_name("orders");
    create_topic(&admin, &topic, &[("max.message.bytes", "2000000")])?;
    let missing = er_tests::unique_name("missing");
    let pairs = |v: &[(&str, &str)]| -> BTreeSet<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };

    let results = incremental_alter_topic_configs(
        &admin,
        &[
            (
                topic.clone(),
                vec![ConfigOp::Set("retention.ms".into(), "3600000".into())],
            ),
            (
                missing.clone(),
                vec![ConfigOp::Set("retention.ms".into(), "3600000".into())],
            ),
        ],
        TIMEOUT,
    )?;
    let of = |name: &str| {
        results
            .iter()
            .find(|(t, _)| t == name)
            .map(|(_, r)| r.clone())
    };
    assert_eq!(of(&topic), Some(Ok(())), "{results:?}");
    let refused = of(&missing)
        .context("a result for the missing topic")?
        .expect_err("the topic does not exist");
    assert!(refused.contains("UNKNOWN_TOPIC_OR_PART"), "{refused}");
    // The controller applies the change; the broker answering DescribeConfigs learns it
    // through the metadata log, a moment later.
    let configs_become = |want: BTreeSet<(String, String)>| {
        eventually("reading the topic's configs back", || {
            let got = topic_configs(&admin, &topic)?;
            if got != want {
                bail!("configs {got:?}, wanted {want:?}");
            }
            Ok(())
        })
    };
    configs_become(pairs(&[
        ("max.message.bytes", "2000000"),
        ("retention.ms", "3600000"),
    ]))?;

    let results = incremental_alter_topic_configs(
        &admin,
        &[(topic.clone(), vec![ConfigOp::Delete("retention.ms".into())])],
        TIMEOUT,
    )?;
    assert_eq!(results, vec![(topic.clone(), Ok(()))]);
    configs_become(pairs(&[("max.message.bytes", "2000000")]))?;
    Ok(())
}
