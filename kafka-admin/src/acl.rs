//! ACL bindings on topics as plain data, named as Kafka names them (`READ`, `PREFIXED`, `ALLOW`).

use std::fmt;
use std::str::FromStr;

/// What an ACL lets a principal do (Kafka's `AclOperation`).
///
/// `Any` only appears in filters and `Unknown` only in answers (an operation newer than
/// librdkafka); neither can be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AclOperation {
    /// Matches any operation (filters only).
    Any,
    /// Every operation.
    All,
    /// Fetch from a topic, join a group.
    Read,
    /// Produce to a topic.
    Write,
    /// Create a topic.
    Create,
    /// Delete a topic or its records.
    Delete,
    /// Alter a topic (e.g. add partitions).
    Alter,
    /// Read a topic's metadata and offsets.
    Describe,
    /// Inter-broker requests (clusters only).
    ClusterAction,
    /// Read configs.
    DescribeConfigs,
    /// Change configs.
    AlterConfigs,
    /// Idempotent produce (clusters only).
    IdempotentWrite,
    /// An operation librdkafka does not know.
    Unknown,
}

/// Whether an ACL allows or denies its operation (Kafka's `AclPermissionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AclPermission {
    /// The operation is allowed.
    Allow,
    /// The operation is denied (wins over any allow).
    Deny,
}

/// How an ACL's resource name matches topic names (Kafka's `PatternType`).
///
/// Bindings are `Literal` or `Prefixed`; `Match` and `Any` only appear in filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PatternType {
    /// The name is one topic's name, or `*` for every topic.
    Literal,
    /// The name is a prefix of the topics it covers.
    Prefixed,
    /// Every binding that applies to the name (filters only).
    Match,
    /// Any pattern type (filters only).
    Any,
}

/// One ACL binding on a TOPIC resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicAcl {
    /// Topic name, prefix or `*`, read as `pattern` says.
    pub topic: String,
    /// How `topic` matches topic names.
    pub pattern: PatternType,
    /// Who it applies to, e.g. `User:alice`.
    pub principal: String,
    /// Client host it applies to, `*` for every host.
    pub host: String,
    /// What it lets (or forbids) the principal do.
    pub operation: AclOperation,
    /// Allow or deny.
    pub permission: AclPermission,
}

impl fmt::Display for TopicAcl {
    /// As Kafka's `kafka-acls` tool lists ACLs, e.g.
    /// `(principal=User:alice, host=*, operation=READ, permissionType=ALLOW) on TOPIC:LITERAL:orders`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "(principal={}, host={}, operation={}, permissionType={}) on TOPIC:{}:{}",
            self.principal, self.host, self.operation, self.permission, self.pattern, self.topic
        )
    }
}

/// A name that is not one of Kafka's names for the kind of value asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?} (expected one of {expected})")]
pub struct UnknownName {
    /// What was being parsed, e.g. `ACL operation`.
    pub kind: &'static str,
    /// The text given.
    pub value: String,
    /// The accepted names, comma-separated.
    pub expected: String,
}

/// Kafka's name of each variant, in one table per type so `Display` and `FromStr` agree.
trait Named: Sized + Copy + PartialEq + 'static {
    const KIND: &'static str;
    const NAMES: &'static [(Self, &'static str)];

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(v, _)| *v == self)
            .map(|(_, n)| *n)
            .expect("every variant is in NAMES")
    }

    /// Case-insensitive, `_` and `-` ignored: `READ`, `read`, `ClusterAction` and
    /// `cluster-action` all parse, as Kafka's own tools accept them.
    fn parse(s: &str) -> Result<Self, UnknownName> {
        let fold = |t: &str| -> String {
            t.chars()
                .filter(|c| *c != '_' && *c != '-')
                .map(|c| c.to_ascii_uppercase())
                .collect()
        };
        let want = fold(s.trim());
        Self::NAMES
            .iter()
            .find(|(_, n)| fold(n) == want)
            .map(|(v, _)| *v)
            .ok_or_else(|| UnknownName {
                kind: Self::KIND,
                value: s.to_owned(),
                expected: Self::NAMES
                    .iter()
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl AclOperation {
    /// Kafka's wire code (`AclOperation.code()`): 0 UNKNOWN, 1 ANY, 2 ALL, 3 READ, 4 WRITE,
    /// 5 CREATE, 6 DELETE, 7 ALTER, 8 DESCRIBE, 9 CLUSTER_ACTION, 10 DESCRIBE_CONFIGS,
    /// 11 ALTER_CONFIGS, 12 IDEMPOTENT_WRITE.
    pub fn code(self) -> u8 {
        match self {
            AclOperation::Unknown => 0,
            AclOperation::Any => 1,
            AclOperation::All => 2,
            AclOperation::Read => 3,
            AclOperation::Write => 4,
            AclOperation::Create => 5,
            AclOperation::Delete => 6,
            AclOperation::Alter => 7,
            AclOperation::Describe => 8,
            AclOperation::ClusterAction => 9,
            AclOperation::DescribeConfigs => 10,
            AclOperation::AlterConfigs => 11,
            AclOperation::IdempotentWrite => 12,
        }
    }
}

impl AclPermission {
    /// Kafka's wire code (`AclPermissionType.code()`): 2 DENY, 3 ALLOW.
    pub fn code(self) -> u8 {
        match self {
            AclPermission::Deny => 2,
            AclPermission::Allow => 3,
        }
    }
}

impl Named for AclOperation {
    const KIND: &'static str = "ACL operation";
    const NAMES: &'static [(Self, &'static str)] = &[
        (AclOperation::Any, "ANY"),
        (AclOperation::All, "ALL"),
        (AclOperation::Read, "READ"),
        (AclOperation::Write, "WRITE"),
        (AclOperation::Create, "CREATE"),
        (AclOperation::Delete, "DELETE"),
        (AclOperation::Alter, "ALTER"),
        (AclOperation::Describe, "DESCRIBE"),
        (AclOperation::ClusterAction, "CLUSTER_ACTION"),
        (AclOperation::DescribeConfigs, "DESCRIBE_CONFIGS"),
        (AclOperation::AlterConfigs, "ALTER_CONFIGS"),
        (AclOperation::IdempotentWrite, "IDEMPOTENT_WRITE"),
        (AclOperation::Unknown, "UNKNOWN"),
    ];
}

impl Named for AclPermission {
    const KIND: &'static str = "ACL permission";
    const NAMES: &'static [(Self, &'static str)] = &[
        (AclPermission::Allow, "ALLOW"),
        (AclPermission::Deny, "DENY"),
    ];
}

impl Named for PatternType {
    const KIND: &'static str = "resource pattern type";
    const NAMES: &'static [(Self, &'static str)] = &[
        (PatternType::Literal, "LITERAL"),
        (PatternType::Prefixed, "PREFIXED"),
        (PatternType::Match, "MATCH"),
        (PatternType::Any, "ANY"),
    ];
}

macro_rules! display_and_parse {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $t {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                Self::parse(s)
            }
        }
    )*};
}

display_and_parse!(AclOperation, AclPermission, PatternType);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant once, so a variant added later without a name fails here.
    const OPERATIONS: [AclOperation; 13] = [
        AclOperation::Any,
        AclOperation::All,
        AclOperation::Read,
        AclOperation::Write,
        AclOperation::Create,
        AclOperation::Delete,
        AclOperation::Alter,
        AclOperation::Describe,
        AclOperation::ClusterAction,
        AclOperation::DescribeConfigs,
        AclOperation::AlterConfigs,
        AclOperation::IdempotentWrite,
        AclOperation::Unknown,
    ];

    #[test]
    fn names_are_kafkas() {
        let cases: &[(&dyn fmt::Display, &str)] = &[
            (&AclOperation::Read, "READ"),
            (&AclOperation::All, "ALL"),
            (&AclOperation::ClusterAction, "CLUSTER_ACTION"),
            (&AclOperation::DescribeConfigs, "DESCRIBE_CONFIGS"),
            (&AclOperation::IdempotentWrite, "IDEMPOTENT_WRITE"),
            (&AclPermission::Allow, "ALLOW"),
            (&AclPermission::Deny, "DENY"),
            (&PatternType::Literal, "LITERAL"),
            (&PatternType::Prefixed, "PREFIXED"),
            (&PatternType::Match, "MATCH"),
            (&PatternType::Any, "ANY"),
        ];
        for (value, name) in cases {
            assert_eq!(value.to_string(), *name);
        }
    }

    #[test]
    fn every_name_parses_back() {
        for op in OPERATIONS {
            assert_eq!(op.to_string().parse::<AclOperation>(), Ok(op));
        }
        for p in [AclPermission::Allow, AclPermission::Deny] {
            assert_eq!(p.to_string().parse::<AclPermission>(), Ok(p));
        }
        for p in [
            PatternType::Literal,
            PatternType::Prefixed,
            PatternType::Match,
            PatternType::Any,
        ] {
            assert_eq!(p.to_string().parse::<PatternType>(), Ok(p));
        }
        assert_eq!(AclOperation::NAMES.len(), OPERATIONS.len());
    }

    #[test]
    fn spellings_of_kafkas_tools_parse() {
        let cases = [
            ("read", AclOperation::Read),
            ("ClusterAction", AclOperation::ClusterAction),
            ("cluster-action", AclOperation::ClusterAction),
            (" describe_configs ", AclOperation::DescribeConfigs),
            ("IdempotentWrite", AclOperation::IdempotentWrite),
        ];
        for (text, op) in cases {
            assert_eq!(text.parse::<AclOperation>(), Ok(op), "{text:?}");
        }
        assert_eq!("allow".parse::<AclPermission>(), Ok(AclPermission::Allow));
        assert_eq!("Prefixed".parse::<PatternType>(), Ok(PatternType::Prefixed));
    }

    #[test]
    fn an_unknown_name_says_what_was_expected() {
        let e = "REED".parse::<AclOperation>().unwrap_err();
        assert_eq!(e.value, "REED");
        let text = e.to_string();
        assert!(
            text.starts_with("unknown ACL operation \"REED\" (expected one of ANY, ALL, READ,"),
            "{text}"
        );
        let e = "MAYBE".parse::<AclPermission>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown ACL permission \"MAYBE\" (expected one of ALLOW, DENY)"
        );
        assert!("".parse::<PatternType>().is_err());
    }

    #[test]
    fn a_binding_displays_as_kafka_acls_lists_it() {
        let acl = TopicAcl {
            topic: "orders".into(),
            pattern: PatternType::Literal,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: AclOperation::Read,
            permission: AclPermission::Allow,
        };
        assert_eq!(
            acl.to_string(),
            "(principal=User:alice, host=*, operation=READ, permissionType=ALLOW) on TOPIC:LITERAL:orders"
        );
    }
}
