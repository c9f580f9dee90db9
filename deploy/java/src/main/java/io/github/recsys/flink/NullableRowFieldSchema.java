package io.github.recsys.flink;

import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.types.Row;

/**
 * One field of a Row as a Kafka key or value: byte[] as is, a String as UTF-8, null kept null.
 *
 * <p>Flink's RowFieldExtractorSchema writes an empty array for a null field; a compacted topic
 * needs a real tombstone (null value) to delete a key, e.g. when a user asks to be forgotten.
 */
public class NullableRowFieldSchema implements SerializationSchema<Row> {
    private static final long serialVersionUID = 1L;
    private final int fieldIndex;

    public NullableRowFieldSchema(int fieldIndex) {
        this.fieldIndex = fieldIndex;
    }

    @Override
    public byte[] serialize(Row row) {
        if (row == null) {
            return null;
        }
        Object field = row.getField(fieldIndex);
        if (field == null) {
            return null;
        }
        if (field instanceof byte[]) {
            return (byte[]) field;
        }
        if (field instanceof String) {
            return ((String) field).getBytes(StandardCharsets.UTF_8);
        }
        throw new IllegalArgumentException(
                "field " + fieldIndex + " must be byte[] or String, got " + field.getClass().getName());
    }
}
