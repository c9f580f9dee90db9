package io.github.recsys.flink;

import org.apache.flink.api.common.serialization.AbstractDeserializationSchema;

/**
 * Raw record values as bytes, with a Kafka tombstone (null value) turned into an empty array.
 *
 * <p>Flink's ByteArraySchema returns null for a tombstone, and a null result is silently dropped
 * by the source; the job's edge must instead see it and send it to the dead-letter topic, so that
 * every record that was sent is either processed or dead-lettered.
 */
public class NullSafeByteArraySchema extends AbstractDeserializationSchema<byte[]> {
    private static final long serialVersionUID = 1L;
    private static final byte[] EMPTY = new byte[0];

    @Override
    public byte[] deserialize(byte[] message) {
        return message == null ? EMPTY : message;
    }
}
