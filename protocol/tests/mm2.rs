//! MM2 record formats against hand-written byte vectors, and replication-policy naming.

use er_protocol::*;

#[test]
fn heartbeat_bytes_match_mm2() {
    let hb = Heartbeat {
        source_cluster_alias: "edge1".into(),
        target_cluster_alias: "central".into(),
        timestamp: 0x0102_0304_0506_0708,
    };
    let key = [
        0x00, 0x05, b'e', b'd', b'g', b'e', b'1', 0x00, 0x07, b'c', b'e', b'n', b't', b'r', b'a',
        b'l',
    ];
    let value = [0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08];
    assert_eq!(hb.encode_key().unwrap(), key);
    assert_eq!(hb.encode_value(), value);
    assert_eq!(Heartbeat::decode(&key, &value).unwrap(), hb);
}

#[test]
fn checkpoint_bytes_match_mm2() {
    let cp = Checkpoint {
        consumer_group_id: "g".into(),
        topic_partition: TopicPartition::new("edge1.t", 2),
        upstream_offset: 100,
        downstream_offset: 42,
        metadata: "m".into(),
    };
    let key = [
        0x00, 0x01, b'g', 0x00, 0x07, b'e', b'd', b'g', b'e', b'1', b'.', b't', 0x00, 0x00, 0x00,
        0x02,
    ];
    let value = [
        0x00, 0x00, // version
        0, 0, 0, 0, 0, 0, 0, 100, // upstreamOffset
        0, 0, 0, 0, 0, 0, 0, 42, // offset
        0x00, 0x01, b'm', // metadata
    ];
    assert_eq!(cp.encode_key().unwrap(), key);
    assert_eq!(cp.encode_value().unwrap(), value);
    assert_eq!(Checkpoint::decode(&key, &value).unwrap(), cp);
}

#[test]
fn offset_sync_bytes_match_mm2() {
    let os = OffsetSync {
        topic_partition: TopicPartition::new("t", 1),
        upstream_offset: 7,
        downstream_offset: -1,
    };
    let key = [0x00, 0x01, b't', 0x00, 0x00, 0x00, 0x01];
    let value = [
        0, 0, 0, 0, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    assert_eq!(os.encode_key().unwrap(), key);
    assert_eq!(os.encode_value(), value);
    assert_eq!(OffsetSync::decode(&key, &value).unwrap(), os);
}

#[test]
fn malformed_mm2_records_are_refused() {
    let hb_key = [0x00, 0x01, b'a', 0x00, 0x01, b'b'];
    let hb_value = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let cases: Vec<(&str, Result<(), Mm2Error>, Mm2Error)> = vec![
        (
            "version 1",
            Heartbeat::decode(&hb_key, &[0, 1, 0, 0, 0, 0, 0, 0, 0, 1]).map(drop),
            Mm2Error::UnsupportedVersion {
                record: "Heartbeat",
                version: 1,
            },
        ),
        (
            "truncated value",
            Heartbeat::decode(&hb_key, &hb_value[..9]).map(drop),
            Mm2Error::Truncated {
                record: "Heartbeat",
                part: "value",
                field: "timestamp",
            },
        ),
        (
            "trailing key byte",
            Heartbeat::decode(&[0x00, 0x01, b'a', 0x00, 0x01, b'b', 0], &hb_value).map(drop),
            Mm2Error::TrailingBytes {
                record: "Heartbeat",
                part: "key",
                count: 1,
            },
        ),
        (
            "negative string length",
            Heartbeat::decode(&[0xff, 0xff], &hb_value).map(drop),
            Mm2Error::NegativeStringLength {
                record: "Heartbeat",
                part: "key",
                field: "sourceClusterAlias",
                len: -1,
            },
        ),
        (
            "string beyond input",
            OffsetSync::decode(&[0x00, 0x09, b't'], &[0; 16]).map(drop),
            Mm2Error::Truncated {
                record: "OffsetSync",
                part: "key",
                field: "topic",
            },
        ),
        (
            "offset sync trailing value",
            OffsetSync::decode(&[0x00, 0x01, b't', 0, 0, 0, 0], &[0; 17]).map(drop),
            Mm2Error::TrailingBytes {
                record: "OffsetSync",
                part: "value",
                count: 1,
            },
        ),
        (
            "checkpoint version 2",
            Checkpoint::decode(&[0, 1, b'g', 0, 1, b't', 0, 0, 0, 0], &[0, 2]).map(drop),
            Mm2Error::UnsupportedVersion {
                record: "Checkpoint",
                version: 2,
            },
        ),
        (
            "invalid utf-8",
            OffsetSync::decode(&[0x00, 0x01, 0xff, 0, 0, 0, 0], &[0; 16]).map(drop),
            Mm2Error::InvalidUtf8 {
                record: "OffsetSync",
                part: "key",
                field: "topic",
            },
        ),
    ];
    for (name, got, want) in cases {
        assert_eq!(got, Err(want), "{name}");
    }
    let long = Checkpoint {
        consumer_group_id: "g".repeat(40_000),
        topic_partition: TopicPartition::new("t", 0),
        upstream_offset: 0,
        downstream_offset: 0,
        metadata: String::new(),
    };
    assert!(matches!(
        long.encode_key(),
        Err(Mm2Error::StringTooLong { field: "group", .. })
    ));
}

#[test]
fn topic_names_follow_mm2() {
    assert_eq!(HEARTBEATS_TOPIC, "heartbeats");
    assert_eq!(checkpoints_topic("edge1"), "edge1.checkpoints.internal");
    assert_eq!(
        offset_syncs_topic("edge1"),
        "mm2-offset-syncs.edge1.internal"
    );
}

#[test]
fn default_policy_prefixes_and_parses_sources() {
    let p = ReplicationPolicy::default();
    assert_eq!(p.remote_topic("edge1", "orders"), "edge1.orders");
    assert_eq!(p.remote_topic("edge1", "heartbeats"), "edge1.heartbeats");
    assert_eq!(p.topic_source("edge1.orders").as_deref(), Some("edge1"));
    assert_eq!(p.topic_source("a.b.orders").as_deref(), Some("a"));
    assert_eq!(p.topic_source("orders"), None);
    assert_eq!(p.upstream_topic("a.b.orders").as_deref(), Some("b.orders"));
    let dash = ReplicationPolicy::Default {
        separator: "--".into(),
    };
    assert_eq!(dash.remote_topic("e", "t"), "e--t");
    assert_eq!(dash.topic_source("e--t").as_deref(), Some("e"));
    assert!(dash.validate().is_ok());
    assert!(
        ReplicationPolicy::Default {
            separator: String::new()
        }
        .validate()
        .is_err()
    );
    assert!(
        ReplicationPolicy::Default {
            separator: "/".into()
        }
        .validate()
        .is_err()
    );
}

#[test]
fn identity_policy_keeps_names_but_prefixes_heartbeats() {
    let p = ReplicationPolicy::Identity;
    assert_eq!(p.remote_topic("edge1", "orders"), "orders");
    assert_eq!(p.remote_topic("edge1", "heartbeats"), "edge1.heartbeats");
    assert_eq!(p.topic_source("edge1.orders"), None);
    assert_eq!(p.topic_source("edge1.heartbeats").as_deref(), Some("edge1"));
}

#[test]
fn cycles_are_detected_along_the_source_chain() {
    let p = ReplicationPolicy::default();
    assert!(p.is_cycle("central.orders", "central"));
    assert!(p.is_cycle("edge1.central.orders", "central"));
    assert!(!p.is_cycle("edge1.orders", "central"));
    assert!(!p.is_cycle("orders", "central"));
    assert!(p.is_cycle("central.heartbeats", "central"));
    assert!(!ReplicationPolicy::Identity.is_cycle("central.orders", "central"));
}

#[test]
fn internal_topics_are_recognised() {
    for t in [
        "__consumer_offsets",
        "__transaction_state",
        ".hidden",
        "edge1.checkpoints.internal",
        "mm2-offset-syncs.edge1.internal",
        "mm2-configs.edge1.internal",
        "connect-offsets-internal",
    ] {
        assert!(is_internal_topic(t), "{t}");
    }
    for t in [
        "orders",
        "heartbeats",
        "edge1.heartbeats",
        "internal",
        "mm2",
    ] {
        assert!(!is_internal_topic(t), "{t}");
    }
}

#[test]
fn topic_name_validation() {
    for ok in ["a", "orders.v1", "A-b_c.9", &"x".repeat(249)] {
        assert_eq!(validate_topic_name(ok), Ok(()), "{ok}");
    }
    let cases: Vec<(String, PolicyError)> = vec![
        (
            String::new(),
            PolicyError::TopicNameLength {
                name: String::new(),
                len: 0,
            },
        ),
        (
            "x".repeat(250),
            PolicyError::TopicNameLength {
                name: "x".repeat(250),
                len: 250,
            },
        ),
        (".".into(), PolicyError::TopicNameDots { name: ".".into() }),
        (
            "..".into(),
            PolicyError::TopicNameDots { name: "..".into() },
        ),
        (
            "a/b".into(),
            PolicyError::TopicNameChar {
                name: "a/b".into(),
                ch: '/',
            },
        ),
        (
            "é".into(),
            PolicyError::TopicNameChar {
                name: "é".into(),
                ch: 'é',
            },
        ),
    ];
    for (name, want) in cases {
        assert_eq!(validate_topic_name(&name), Err(want));
    }
}

#[test]
fn site_alias_validation_keeps_separators_out() {
    for ok in ["edge1", "Shop_42", "cell-tower-9", &"a".repeat(64)] {
        assert_eq!(validate_site_alias(ok), Ok(()), "{ok}");
    }
    assert_eq!(
        validate_site_alias("edge.1"),
        Err(PolicyError::SiteAliasChar {
            alias: "edge.1".into(),
            ch: '.'
        })
    );
    assert!(matches!(
        validate_site_alias(""),
        Err(PolicyError::SiteAliasLength { len: 0, .. })
    ));
    assert!(matches!(
        validate_site_alias(&"a".repeat(65)),
        Err(PolicyError::SiteAliasLength { len: 65, .. })
    ));
    assert!(validate_site_alias("a b").is_err());
}
