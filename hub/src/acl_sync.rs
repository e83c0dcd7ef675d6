//! MM2-style ACL sync, hub side: which of the edge ACL bindings a site reports become bindings
//! on its remote topics (`[acl_sync]`).
//!
//! MM2 copies every literal topic binding but ALLOW WRITE, turning ALLOW ALL into READ, and
//! trusts its source cluster. A site is not trusted that far, so the hub keeps only what lets
//! someone read the site's own data: ALLOW READ and ALLOW DESCRIBE (ALL counts as READ), for
//! principals `acl_sync.principals` matches, on remote topics of the site's own namespace
//! (never under the identity policy, where remote topics are shared). DENY is never created: a
//! site could otherwise deny the hub's own principal a topic, and the hub's transactions,
//! shared by many sites, would fail for all of them. Everything else is refused and counted.

use std::collections::BTreeSet;

use er_kafka_admin::{AclOperation, AclPermission, PatternType, TopicAcl};

use crate::config::Validated;

/// Kafka's `AclOperation` codes the hub grants from (`AclOperation.code()`).
const ALL: u8 = 2;
const READ: u8 = 3;
const DESCRIBE: u8 = 8;
/// Kafka's `AclPermissionType.code()` of ALLOW.
const ALLOW: u8 = 3;

/// A binding to create on a central cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    /// Index of the central cluster the edge topic routes to.
    pub cluster: usize,
    /// The binding, on the remote topic's name (literal).
    pub acl: TopicAcl,
}

/// What the hub makes of one report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Bindings to create, each once, at most `acl_sync.max_per_site`.
    pub grants: Vec<Grant>,
    /// Bindings refused by the rules above.
    pub refused: usize,
    /// Bindings dropped over `acl_sync.max_per_site`.
    pub over_limit: usize,
}

/// Sorts a site's reported bindings into grants and refusals. Pure.
pub fn admit(config: &Validated, site: &str, reported: &[er_protocol::TopicAcl]) -> Admitted {
    let mut out = Admitted::default();
    if matches!(config.policy, er_protocol::ReplicationPolicy::Identity) {
        out.refused = reported.len();
        return out;
    }
    let mut grants = BTreeSet::new();
    for a in reported {
        let Some(grant) = grant(config, site, a) else {
            out.refused += 1;
            continue;
        };
        if grants.len() >= config.raw.acl_sync.max_per_site && !grants.contains(&grant) {
            out.over_limit += 1;
            continue;
        }
        grants.insert(grant);
    }
    out.grants = grants.into_iter().collect();
    out
}

fn grant(config: &Validated, site: &str, a: &er_protocol::TopicAcl) -> Option<Grant> {
    let operation = match (a.permission, a.operation) {
        (ALLOW, ALL | READ) => AclOperation::Read,
        (ALLOW, DESCRIBE) => AclOperation::Describe,
        _ => return None,
    };
    if !config.acl_principals.is_match(&a.principal) {
        return None;
    }
    let remote =
        crate::sink::remote_topic(&config.policy, &config.identity_allow, site, &a.topic).ok()?;
    Some(Grant {
        cluster: config.cluster_for(site, &a.topic),
        acl: TopicAcl {
            topic: remote,
            pattern: PatternType::Literal,
            principal: a.principal.clone(),
            host: a.host.clone(),
            operation,
            permission: AclPermission::Allow,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Validated {
        let dir = crate::config::example_dir();
        let path = dir.path().join("hub.toml");
        let text = std::fs::read_to_string(&path).unwrap() + extra;
        crate::config::parse(&path, &text).unwrap()
    }

    fn acl(topic: &str, principal: &str, operation: u8, permission: u8) -> er_protocol::TopicAcl {
        er_protocol::TopicAcl {
            topic: topic.into(),
            principal: principal.into(),
            host: "*".into(),
            operation,
            permission,
        }
    }

    #[test]
    fn only_allow_read_and_describe_of_listed_principals_on_the_sites_own_topics() {
        let v = config("\n[acl_sync]\nenabled = true\nprincipals = \"User:(alice|bob|carol)\"\n");
        let got = admit(
            &v,
            "plant-7",
            &[
                acl("orders", "User:alice", READ, ALLOW),
                acl("orders", "User:carol", ALL, ALLOW),
                acl("orders", "User:bob", DESCRIBE, ALLOW),
                acl("alarms", "User:alice", READ, ALLOW),
                // Refused: WRITE, DENY, ALTER, another principal, an internal topic, a name
                // no remote topic can take.
                acl("orders", "User:bob", 4, ALLOW),
                acl("orders", "User:bob", READ, 2),
                acl("orders", "User:bob", 7, ALLOW),
                acl("orders", "User:mallory", READ, ALLOW),
                acl("__consumer_offsets", "User:alice", READ, ALLOW),
                acl("bad/name", "User:alice", READ, ALLOW),
            ],
        );
        let grants: Vec<(usize, &str, &str, AclOperation)> = got
            .grants
            .iter()
            .map(|g| {
                (
                    g.cluster,
                    g.acl.topic.as_str(),
                    g.acl.principal.as_str(),
                    g.acl.operation,
                )
            })
            .collect();
        assert_eq!(
            grants,
            [
                (0, "plant-7.orders", "User:alice", AclOperation::Read),
                (0, "plant-7.orders", "User:bob", AclOperation::Describe),
                (0, "plant-7.orders", "User:carol", AclOperation::Read),
                (1, "plant-7.alarms", "User:alice", AclOperation::Read),
            ]
        );
        assert!(
            got.grants
                .iter()
                .all(|g| g.acl.pattern == PatternType::Literal
                    && g.acl.permission == AclPermission::Allow
                    && g.acl.host == "*")
        );
        assert_eq!((got.refused, got.over_limit), (6, 0));
    }

    #[test]
    fn a_site_gets_at_most_its_share_and_duplicates_count_once() {
        let v = config("\n[acl_sync]\nenabled = true\nmax_per_site = 2\n");
        let got = admit(
            &v,
            "plant-7",
            &[
                acl("a", "User:x", READ, ALLOW),
                acl("a", "User:x", ALL, ALLOW),
                acl("b", "User:x", READ, ALLOW),
                acl("c", "User:x", READ, ALLOW),
            ],
        );
        assert_eq!(got.grants.len(), 2);
        assert_eq!((got.refused, got.over_limit), (0, 1));
    }

    #[test]
    fn nothing_under_the_identity_policy_and_principals_are_validated() {
        let dir = crate::config::example_dir();
        let path = dir.path().join("hub.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("policy = \"default\"", "policy = \"identity\"")
            .replace(
                "# [[replication.identity_allow]]\n# sites = \"plant-[0-9]+\"\n# topics",
                "[[replication.identity_allow]]\nsites = \"plant-[0-9]+\"\ntopics",
            )
            + "\n[acl_sync]\nenabled = true\n";
        let v = crate::config::parse(&path, &text).unwrap();
        let got = admit(
            &v,
            "plant-7",
            &[acl("plant-7-alarms", "User:x", READ, ALLOW)],
        );
        assert_eq!((got.grants.len(), got.refused), (0, 1));

        let text =
            std::fs::read_to_string(&path).unwrap() + "\n[acl_sync]\nprincipals = \"User:(\"\n";
        let e = crate::config::parse(&path, &text).unwrap_err().to_string();
        drop(dir);
        assert!(e.contains("acl_sync.principals"), "{e}");
    }
}
