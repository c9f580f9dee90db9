package io.github.recsys.flink;

import org.apache.flink.api.common.eventtime.SerializableTimestampAssigner;
import org.apache.flink.types.Row;

/** Event time of an engine record: its ts field (set by {@link InputRecordDeserializer}). */
public class RecordTimestampAssigner implements SerializableTimestampAssigner<Row> {
    private static final long serialVersionUID = 1L;

    @Override
    public long extractTimestamp(Row record, long recordTimestamp) {
        return EngineRecords.ts(record);
    }
}
