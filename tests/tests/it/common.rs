//! Small helpers shared by several test modules of this binary.

use er_protocol::TopicPartition;

/// `TopicPartition::new`, short for tables of partitions.
pub fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

/// Runs blocking `f` (a JVM, a synchronous rdkafka call) off the test's runtime. Panics if `f`
/// panicked.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}
