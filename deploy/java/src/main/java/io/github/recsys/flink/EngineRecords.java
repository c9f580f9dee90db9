package io.github.recsys.flink;

import org.apache.flink.api.common.typeinfo.BasicTypeInfo;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.types.Row;

/**
 * The one record type between the job's Java parts and its micro-batch Python operators.
 *
 * <p>(key, kind, ts, ingest_ms, payload): the routing key (user or item id), the record kind
 * (state_schemas/records.py), event time in ms, wall-clock time the record entered the job
 * (latency metric; 0 when not applicable), and the payload bytes (null for a Kafka tombstone
 * on output).
 */
public final class EngineRecords {
    public static final byte[] EMPTY = new byte[0];

    public static final TypeInformation<Row> TYPE = new RowTypeInfo(
            new TypeInformation<?>[] {
                BasicTypeInfo.STRING_TYPE_INFO, BasicTypeInfo.INT_TYPE_INFO,
                BasicTypeInfo.LONG_TYPE_INFO, BasicTypeInfo.LONG_TYPE_INFO,
                PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO},
            new String[] {"key", "kind", "ts", "ingest_ms", "payload"});

    /** The key type: a Row of the key string, as PyFlink's own key_by produces (savepoints). */
    public static final TypeInformation<Row> KEY_TYPE = new RowTypeInfo(
            new TypeInformation<?>[] {BasicTypeInfo.STRING_TYPE_INFO}, new String[] {"f0"});

    private EngineRecords() {}

    public static Row of(String key, int kind, long ts, long ingest, byte[] payload) {
        return Row.of(key, kind, ts, ingest, payload);
    }

    public static String key(Row r) {
        return (String) r.getField(0);
    }

    public static int kind(Row r) {
        return (Integer) r.getField(1);
    }

    public static long ts(Row r) {
        return (Long) r.getField(2);
    }

    public static long ingest(Row r) {
        return (Long) r.getField(3);
    }

    public static byte[] payload(Row r) {
        byte[] p = (byte[]) r.getField(4);
        return p == null ? EMPTY : p;
    }

    public static TypeInformation<Row> type() {
        return TYPE;
    }

    public static TypeInformation<Row> keyType() {
        return KEY_TYPE;
    }
}
