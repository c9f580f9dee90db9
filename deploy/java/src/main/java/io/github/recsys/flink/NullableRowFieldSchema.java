package io.github.recsys.flink;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.types.Row;

/**
 * One byte[] field of a Row as a Kafka key or value, with a null field kept null.
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
        if (!(field instanceof byte[])) {
            throw new IllegalArgumentException(
                    "field " + fieldIndex + " must be byte[], got " + field.getClass().getName());
        }
        return (byte[]) field;
    }
}
