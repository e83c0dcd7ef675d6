package org.apache.kafka.connect.mirror;

/**
 * Part of the edge-replicator MM2 oracle, not of Apache Kafka: it lives in Kafka's package only to
 * reach the package-private serializers ({@code recordKey()} / {@code recordValue()}) that
 * MirrorMaker 2 itself uses to write heartbeats, checkpoints and offset syncs, so the oracle can
 * compare Kafka's bytes with ours. The Kafka jars are neither sealed nor JPMS modules.
 */
public final class OracleAccess {
    private OracleAccess() {}

    /** Kafka's key bytes for a heartbeat (as MirrorHeartbeatTask writes them). */
    public static byte[] key(Heartbeat h) {
        return h.recordKey();
    }

    /** Kafka's value bytes for a heartbeat (current version). */
    public static byte[] value(Heartbeat h) {
        return h.recordValue();
    }

    /** Kafka's key bytes for a checkpoint (as MirrorCheckpointTask writes them). */
    public static byte[] key(Checkpoint c) {
        return c.recordKey();
    }

    /** Kafka's value bytes for a checkpoint (current version). */
    public static byte[] value(Checkpoint c) {
        return c.recordValue();
    }

    /** Kafka's key bytes for an offset sync (as OffsetSyncWriter writes them). */
    public static byte[] key(OffsetSync s) {
        return s.recordKey();
    }

    /** Kafka's value bytes for an offset sync. */
    public static byte[] value(OffsetSync s) {
        return s.recordValue();
    }
}
