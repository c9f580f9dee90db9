package io.github.recsys.flink;

import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.types.Row;

/**
 * Keys an engine record by its key field, as {@code Row(key)}: the same key type and hash as
 * PyFlink's {@code key_by} (KeyByKeySelector), so savepoints of earlier releases, whose keyed
 * operators were keyed that way, restore into this job.
 */
public class RecordKeySelector implements KeySelector<Row, Row> {
    private static final long serialVersionUID = 1L;

    @Override
    public Row getKey(Row record) {
        return Row.of(record.getField(0));
    }
}
