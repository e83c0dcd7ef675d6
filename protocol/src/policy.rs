//! MM2-compatible topic naming: replication policies, internal-topic and cycle detection,
//! topic-name and site-alias validation.

/// Topic heartbeats are emitted to at the source (replicated as `<site>.heartbeats`).
pub const HEARTBEATS_TOPIC: &str = "heartbeats";

/// Longest legal Kafka topic name.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Longest accepted site alias.
pub const MAX_SITE_ALIAS_LEN: usize = 64;

/// Checkpoints topic on the target for a source site: `<site>.checkpoints.internal`.
pub fn checkpoints_topic(site: &str) -> String {
    format!("{site}.checkpoints.internal")
}

/// Offset-syncs topic for a source site: `mm2-offset-syncs.<site>.internal`.
pub fn offset_syncs_topic(site: &str) -> String {
    format!("mm2-offset-syncs.{site}.internal")
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Topic name empty or longer than 249 bytes.
    #[error("topic name {name:?} is {len} bytes long, must be 1..=249")]
    TopicNameLength {
        /// The name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// Topic name is "." or "..".
    #[error("topic name {name:?} is not allowed")]
    TopicNameDots {
        /// The name.
        name: String,
    },
    /// Topic name holds a character outside [a-zA-Z0-9._-].
    #[error("topic name {name:?} contains {ch:?}, only [a-zA-Z0-9._-] are legal")]
    TopicNameChar {
        /// The name.
        name: String,
        /// First illegal character.
        ch: char,
    },
    /// Site alias empty or longer than 64 bytes.
    #[error("site alias {alias:?} is {len} bytes long, must be 1..=64")]
    SiteAliasLength {
        /// The alias.
        alias: String,
        /// Its length in bytes.
        len: usize,
    },
    /// Site alias holds a character outside [A-Za-z0-9_-].
    #[error("site alias {alias:?} contains {ch:?}, only [A-Za-z0-9_-] are allowed")]
    SiteAliasChar {
        /// The alias.
        alias: String,
        /// First illegal character.
        ch: char,
    },
    /// Replication-policy separator empty or with characters illegal in topic names.
    #[error("replication separator {separator:?} must be non-empty and use only [a-zA-Z0-9._-]")]
    Separator {
        /// The separator.
        separator: String,
    },
}

/// Checks a Kafka topic name: 1..=249 bytes of [a-zA-Z0-9._-], not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), PolicyError> {
    if name.is_empty() || name.len() > MAX_TOPIC_NAME_LEN {
        return Err(PolicyError::TopicNameLength {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    if name == "." || name == ".." {
        return Err(PolicyError::TopicNameDots {
            name: name.to_owned(),
        });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(PolicyError::TopicNameChar {
            name: name.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// Checks a site alias: 1..=64 bytes of [A-Za-z0-9_-]. No dots, so an alias can never carry a
/// separator and reach into another site's namespace.
pub fn validate_site_alias(alias: &str) -> Result<(), PolicyError> {
    if alias.is_empty() || alias.len() > MAX_SITE_ALIAS_LEN {
        return Err(PolicyError::SiteAliasLength {
            alias: alias.to_owned(),
            len: alias.len(),
        });
    }
    if let Some(ch) = alias
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err(PolicyError::SiteAliasChar {
            alias: alias.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// Topics that belong to other systems sharing a cluster and that no replicated record may
/// land in, whatever a configuration says: Kafka Connect's and Schema Registry's state, and
/// MM2's heartbeats (written only by the heartbeat emitters). Internal names (see
/// [`is_internal_topic`]) are refused as well, wherever this list is.
pub const PROTECTED_TOPICS: &[&str] = &[
    "connect-configs",
    "connect-offsets",
    "connect-status",
    "_schemas",
    "heartbeats",
];

/// True for topics never replicated: Kafka's (`__*`, `.*`), Connect's and MM2's
/// (`*.internal`, `*-internal`, `mm2*.internal`) internal topics. With a custom separator, also
/// see [`ReplicationPolicy::is_internal_topic`].
pub fn is_internal_topic(topic: &str) -> bool {
    topic.starts_with("__")
        || topic.starts_with('.')
        || topic.ends_with(".internal")
        || topic.ends_with("-internal")
}

/// How source topics are named on the target, as MM2's ReplicationPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReplicationPolicy {
    /// MM2's DefaultReplicationPolicy: `<alias><separator><topic>`.
    Default {
        /// Separator between alias and topic (MM2 default ".").
        separator: String,
    },
    /// MM2's IdentityReplicationPolicy: names kept, except heartbeats (prefixed with ".").
    Identity,
}

impl Default for ReplicationPolicy {
    fn default() -> Self {
        ReplicationPolicy::Default {
            separator: ".".to_owned(),
        }
    }
}

impl ReplicationPolicy {
    /// Checks the separator (Default policy): non-empty, topic-legal characters only.
    pub fn validate(&self) -> Result<(), PolicyError> {
        match self {
            ReplicationPolicy::Default { separator }
                if separator.is_empty()
                    || !separator
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) =>
            {
                Err(PolicyError::Separator {
                    separator: separator.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    fn separator(&self) -> &str {
        match self {
            ReplicationPolicy::Default { separator } => separator,
            ReplicationPolicy::Identity => ".",
        }
    }

    /// True for topics never replicated under this policy, as MM2 >= 3.1 decides
    /// (`ReplicationPolicy.isInternalTopic` with `DefaultReplicationPolicy.isMM2InternalTopic`,
    /// KIP-690): every name [`is_internal_topic`] refuses, plus names ending in
    /// `<separator>internal`, the suffix of MM2's own topics under a custom separator
    /// (`<alias>_checkpoints_internal` with `_`).
    pub fn is_internal_topic(&self, topic: &str) -> bool {
        is_internal_topic(topic)
            || topic
                .strip_suffix("internal")
                .is_some_and(|rest| rest.ends_with(self.separator()))
    }

    /// Checkpoints topic of `alias` under this policy, as MM2 >= 3.1 names it:
    /// `<alias><sep>checkpoints<sep>internal` (`<alias>.checkpoints.internal` by default).
    pub fn checkpoints_topic(&self, alias: &str) -> String {
        let sep = self.separator();
        format!("{alias}{sep}checkpoints{sep}internal")
    }

    /// Offset-syncs topic of `alias` under this policy, as MM2 >= 3.1 names it:
    /// `mm2-offset-syncs<sep><alias><sep>internal`.
    pub fn offset_syncs_topic(&self, alias: &str) -> String {
        let sep = self.separator();
        format!("mm2-offset-syncs{sep}{alias}{sep}internal")
    }

    /// Name on the target of `topic` replicated from `source_alias`.
    pub fn remote_topic(&self, source_alias: &str, topic: &str) -> String {
        match self {
            ReplicationPolicy::Identity if !looks_like_heartbeat(topic) => topic.to_owned(),
            _ => format!("{source_alias}{}{topic}", self.separator()),
        }
    }

    /// Alias of the cluster `topic` was replicated from, if its name says so.
    pub fn topic_source(&self, topic: &str) -> Option<String> {
        if matches!(self, ReplicationPolicy::Identity) && !looks_like_heartbeat(topic) {
            return None;
        }
        let sep = self.separator();
        let (source, rest) = topic.split_once(sep)?;
        // Like Java's String.split, which drops a trailing empty part: "a." has no source.
        if source.is_empty() || rest.is_empty() {
            return None;
        }
        Some(source.to_owned())
    }

    /// Name of `topic` one hop upstream (without its source prefix), if it has a source.
    pub fn upstream_topic(&self, topic: &str) -> Option<String> {
        let source = self.topic_source(topic)?;
        Some(topic[source.len() + self.separator().len()..].to_owned())
    }

    /// True if `topic` already came through `target_alias`: replicating it there would loop
    /// (MM2's `MirrorSourceConnector.isCycle`).
    pub fn is_cycle(&self, topic: &str, target_alias: &str) -> bool {
        self.source_chain(topic).iter().any(|s| s == target_alias)
    }

    /// The aliases of the clusters `topic` came through according to its name, nearest first:
    /// `["b", "a"]` for `b.a.orders` under the default policy; empty for a topic that was not
    /// replicated (or whose policy keeps names, like [`ReplicationPolicy::Identity`]).
    pub fn source_chain(&self, topic: &str) -> Vec<String> {
        let mut chain = Vec::new();
        let mut current = topic.to_owned();
        while let Some(source) = self.topic_source(&current) {
            chain.push(source);
            match self.upstream_topic(&current) {
                // MM2 stops where the upstream name does not shrink (identity-like policies).
                Some(up) if up != current && up.len() < current.len() => current = up,
                _ => break,
            }
        }
        chain
    }
}

fn looks_like_heartbeat(topic: &str) -> bool {
    topic.ends_with(HEARTBEATS_TOPIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sep(s: &str) -> ReplicationPolicy {
        ReplicationPolicy::Default {
            separator: s.to_owned(),
        }
    }

    /// MM2 >= 3.1 (KIP-690, `replication.policy.internal.topic.separator.enabled` = true):
    /// its own topics take the custom separator, and `isInternalTopic` refuses any name ending
    /// in `<separator>internal` besides Kafka's and Connect's.
    #[test]
    fn internal_topics_follow_the_separator_as_mm2_3_1() {
        let under = sep("_");
        assert_eq!(
            under.checkpoints_topic("edge1"),
            "edge1_checkpoints_internal"
        );
        assert_eq!(
            under.offset_syncs_topic("edge1"),
            "mm2-offset-syncs_edge1_internal"
        );
        for t in [
            "edge1_checkpoints_internal",
            "mm2-offset-syncs_edge1_internal",
            "anything_internal",
            "edge1.checkpoints.internal",
            "connect-offsets-internal",
            "__consumer_offsets",
            ".hidden",
        ] {
            assert!(under.is_internal_topic(t), "{t}");
        }
        for t in ["orders", "internal", "orders_internals", "heartbeats"] {
            assert!(!under.is_internal_topic(t), "{t}");
        }
        let dot = ReplicationPolicy::default();
        assert_eq!(dot.checkpoints_topic("e"), checkpoints_topic("e"));
        assert_eq!(dot.offset_syncs_topic("e"), offset_syncs_topic("e"));
        assert!(!dot.is_internal_topic("orders_internal"));
        assert!(dot.is_internal_topic("orders.internal"));
        assert!(ReplicationPolicy::Identity.is_internal_topic("e.checkpoints.internal"));
    }

    #[test]
    fn the_source_chain_names_every_hop_nearest_first() {
        let p = ReplicationPolicy::default();
        assert_eq!(p.source_chain("b.a.orders"), ["b", "a"]);
        assert_eq!(p.source_chain("central.orders"), ["central"]);
        assert!(p.source_chain("orders").is_empty());
        assert_eq!(sep("_").source_chain("b_a_orders"), ["b", "a"]);
        assert!(sep("_").source_chain("b.a.orders").is_empty());
        assert!(
            ReplicationPolicy::Identity
                .source_chain("b.a.orders")
                .is_empty()
        );
        assert_eq!(
            ReplicationPolicy::Identity.source_chain("central.heartbeats"),
            ["central"]
        );
        assert!(p.is_cycle("edge1.central.orders", "central"));
        assert!(!p.is_cycle("edge1.orders", "central"));
    }
}
