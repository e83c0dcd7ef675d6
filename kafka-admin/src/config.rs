//! Changes to a topic's configs for Kafka's IncrementalAlterConfigs (KIP-339).

/// One change of an incremental alter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    /// Set the config on the topic.
    Set(String, String),
    /// Remove the topic's own value (back to the broker's default).
    Delete(String),
}
