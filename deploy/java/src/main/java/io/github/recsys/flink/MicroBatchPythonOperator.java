package io.github.recsys.flink;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.state.BroadcastState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.StateTtlConfig;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.BasicTypeInfo;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.Gauge;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.runtime.state.VoidNamespace;
import org.apache.flink.runtime.state.VoidNamespaceSerializer;
import org.apache.flink.streaming.api.operators.BoundedMultiInput;
import org.apache.flink.streaming.api.operators.InternalTimer;
import org.apache.flink.streaming.api.operators.InternalTimerService;
import org.apache.flink.streaming.api.operators.Triggerable;
import org.apache.flink.streaming.api.operators.TwoInputStreamOperator;
import org.apache.flink.streaming.api.operators.python.embedded.AbstractEmbeddedPythonFunctionOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;
import org.apache.flink.util.OutputTag;

import java.time.Duration;

/**
 * A keyed, two-input operator that calls a Python function once per micro-batch of records.
 *
 * <p>PyFlink's own operators call Python once per record, and every keyed-state access or metric
 * update from Python crosses back into Java. This operator buffers records (from its keyed first
 * input and its broadcast second input) and hands a whole batch to Python in one call, together
 * with the keyed state of every key in the batch; Python returns the new states, the output
 * records, timers to register and metric deltas, and Java applies them. It runs Python in the
 * same embedded (thread mode) interpreter as PyFlink's own operators, set up by PyFlink's
 * environment manager.
 *
 * <p>Exactly-once: the buffer lives in operator memory and is flushed before every checkpoint
 * barrier is forwarded ({@link #prepareSnapshotPreBarrier}), at end of input and before a
 * watermark moves on, so a checkpoint never holds a source offset past a record whose effects
 * are not in state yet. This is the scheme of Flink SQL's mini-batch operators
 * (MapBundleOperator). A batch is also flushed when it holds {@code maxBatchRecords} records or
 * when its oldest record has waited {@code maxBatchDelayMs}.
 *
 * <p>Records, in and out, are {@link EngineRecords} rows: (key, kind, ts, ingest_ms, payload).
 * The Python side is an object with {@code open(...)} and {@code process_batch(...)}; see
 * {@code flink_jobs/batch_host.py} for the exact protocol.
 */
public class MicroBatchPythonOperator extends AbstractEmbeddedPythonFunctionOperator<Row>
        implements TwoInputStreamOperator<Row, Row, Row>, Triggerable<Row, VoidNamespace>,
                BoundedMultiInput {

    private static final long serialVersionUID = 1L;

    /** Why a batch is flushed; Python may persist replicated state only at checkpoints. */
    public static final int FLUSH_SIZE = 0;
    public static final int FLUSH_DELAY = 1;
    public static final int FLUSH_CHECKPOINT = 2;
    public static final int FLUSH_WATERMARK = 3;
    public static final int FLUSH_END = 4;

    /** Record kind of a fired keyed timer handed to Python (ts = the timer's time). */
    public static final int KIND_TIMER = -1;

    private static final int HEADER_LONGS = 5;

    private final byte[] pythonFunction;
    private final String[] stateNames;
    private final long stateTtlMs;
    private final String sharedStateName;
    private final String[] legacySharedStateNames;
    private final int maxBatchRecords;
    private final long maxBatchDelayMs;
    private final OutputTag<Row>[] sideOutputs;

    private transient ValueState<byte[]>[] keyedStates;
    private transient BroadcastState<String, byte[]> sharedState;
    private transient Map<String, Map<String, byte[]>> legacyShared;
    private transient InternalTimerService<VoidNamespace> timers;

    private transient List<Row> bufKeys;   // null for broadcast records
    private transient List<byte[]> bufPayloads;
    private transient long[] bufHeader;    // kind, ts, ingest per record
    private transient int bufSize;
    private transient boolean flushScheduled;
    private transient long currentWatermark;

    private transient Map<String, Counter> counters;
    private transient Map<String, double[]> gauges;
    private transient Counter pythonCalls;
    private transient Counter batchedRecords;

    @SafeVarargs
    public MicroBatchPythonOperator(
            Configuration config,
            byte[] pythonFunction,
            String[] stateNames,
            long stateTtlMs,
            String sharedStateName,
            String[] legacySharedStateNames,
            int maxBatchRecords,
            long maxBatchDelayMs,
            OutputTag<Row>... sideOutputs) {
        super(config);
        this.pythonFunction = pythonFunction;
        this.stateNames = stateNames;
        this.stateTtlMs = stateTtlMs;
        this.sharedStateName = sharedStateName;
        this.legacySharedStateNames = legacySharedStateNames;
        this.maxBatchRecords = Math.max(1, maxBatchRecords);
        this.maxBatchDelayMs = Math.max(0, maxBatchDelayMs);
        this.sideOutputs = sideOutputs;
    }

    private static MapStateDescriptor<String, byte[]> sharedDescriptor(String name) {
        return new MapStateDescriptor<>(
                name, BasicTypeInfo.STRING_TYPE_INFO,
                PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
    }

    @Override
    public void initializeState(StateInitializationContext context) throws Exception {
        super.initializeState(context);
        sharedState = context.getOperatorStateStore().getBroadcastState(sharedDescriptor(sharedStateName));
        legacyShared = new LinkedHashMap<>();
        for (String name : legacySharedStateNames) {
            BroadcastState<String, byte[]> old =
                    context.getOperatorStateStore().getBroadcastState(sharedDescriptor(name));
            Map<String, byte[]> copy = new LinkedHashMap<>();
            for (Map.Entry<String, byte[]> e : old.entries()) {
                copy.put(e.getKey(), e.getValue());
            }
            legacyShared.put(name, copy);
            old.clear(); // migrated by Python into the shared state at the first checkpoint
        }
    }

    @Override
    @SuppressWarnings("unchecked")
    public void open() throws Exception {
        keyedStates = new ValueState[stateNames.length];
        for (int i = 0; i < stateNames.length; i++) {
            ValueStateDescriptor<byte[]> descriptor = new ValueStateDescriptor<>(
                    stateNames[i], PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
            if (stateTtlMs > 0) {
                descriptor.enableTimeToLive(StateTtlConfig.newBuilder(Duration.ofMillis(stateTtlMs))
                        .setUpdateType(StateTtlConfig.UpdateType.OnCreateAndWrite)
                        .setStateVisibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
                        .build());
            }
            keyedStates[i] = getPartitionedState(descriptor);
        }
        timers = getInternalTimerService("micro-batch-timers", VoidNamespaceSerializer.INSTANCE, this);
        bufKeys = new ArrayList<>();
        bufPayloads = new ArrayList<>();
        bufHeader = new long[3 * 1024];
        bufSize = 0;
        currentWatermark = Long.MIN_VALUE;
        counters = new HashMap<>();
        gauges = new HashMap<>();
        MetricGroup group = getMetricGroup();
        pythonCalls = group.counter("micro_batch_python_calls");
        batchedRecords = group.counter("micro_batch_records");
        super.open(); // creates the interpreter, then calls openPythonInterpreter()
    }

    @Override
    public void openPythonInterpreter() {
        interpreter.set("_recsys_payload", pythonFunction);
        interpreter.exec("import pickle as _recsys_pickle\n"
                + "_recsys_fn = _recsys_pickle.loads(_recsys_payload)\n"
                + "del _recsys_payload");
        List<String> keys = new ArrayList<>();
        List<byte[]> values = new ArrayList<>();
        try {
            for (Map.Entry<String, byte[]> e : sharedState.entries()) {
                keys.add(e.getKey());
                values.add(e.getValue());
            }
        } catch (Exception e) {
            throw new RuntimeException("cannot read the operator's shared state", e);
        }
        List<Object> legacy = new ArrayList<>();
        for (Map.Entry<String, Map<String, byte[]>> e : legacyShared.entrySet()) {
            for (Map.Entry<String, byte[]> entry : e.getValue().entrySet()) {
                legacy.add(e.getKey());
                legacy.add(entry.getKey());
                legacy.add(entry.getValue());
            }
        }
        legacyShared = null;
        Object result = interpreter.invokeMethod("_recsys_fn", "open",
                getRuntimeContext().getTaskInfo().getIndexOfThisSubtask(),
                getRuntimeContext().getTaskInfo().getNumberOfParallelSubtasks(),
                getRuntimeContext().getTaskInfo().getMaxNumberOfParallelSubtasks(),
                keys.toArray(new String[0]), values.toArray(new Object[0]), legacy.toArray());
        applyResult(result, null);
    }

    // ------------------------------------------------------------------------------ input

    @Override
    public void processElement1(StreamRecord<Row> element) throws Exception {
        buffer((Row) getCurrentKey(), element.getValue());
    }

    @Override
    public void processElement2(StreamRecord<Row> element) throws Exception {
        buffer(null, element.getValue());
    }

    @Override
    public void onProcessingTime(InternalTimer<Row, VoidNamespace> timer) throws Exception {
        bufferRaw(timer.getKey(), KIND_TIMER, timer.getTimestamp(), 0L, EngineRecords.EMPTY);
    }

    @Override
    public void onEventTime(InternalTimer<Row, VoidNamespace> timer) {
        // never registered
    }

    private void buffer(Row key, Row record) throws Exception {
        bufferRaw(key, EngineRecords.kind(record), EngineRecords.ts(record),
                EngineRecords.ingest(record), EngineRecords.payload(record));
    }

    private void bufferRaw(Row key, int kind, long ts, long ingest, byte[] payload) throws Exception {
        if (3 * (bufSize + 1) > bufHeader.length) {
            long[] grown = new long[bufHeader.length * 2];
            System.arraycopy(bufHeader, 0, grown, 0, 3 * bufSize);
            bufHeader = grown;
        }
        bufKeys.add(key);
        bufPayloads.add(payload);
        bufHeader[3 * bufSize] = kind;
        bufHeader[3 * bufSize + 1] = ts;
        bufHeader[3 * bufSize + 2] = ingest;
        bufSize++;
        if (bufSize >= maxBatchRecords) {
            flush(FLUSH_SIZE);
        } else if (!flushScheduled) {
            flushScheduled = true;
            long due = getProcessingTimeService().getCurrentProcessingTime() + maxBatchDelayMs;
            getProcessingTimeService().registerTimer(due, t -> {
                flushScheduled = false;
                flush(FLUSH_DELAY);
            });
        }
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        flush(FLUSH_WATERMARK);
        currentWatermark = mark.getTimestamp();
        super.processWatermark(mark);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        flush(FLUSH_CHECKPOINT);
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void endInput(int inputId) throws Exception {
        flush(FLUSH_END);
    }

    @Override
    protected void invokeFinishBundle() throws Exception {
        if (bufSize > 0) {
            flush(FLUSH_DELAY);
        }
    }

    // ------------------------------------------------------------------------------ flush

    private void flush(int reason) throws Exception {
        if (bufSize == 0 && reason != FLUSH_CHECKPOINT && reason != FLUSH_END) {
            return;
        }
        int n = bufSize;
        LinkedHashMap<Row, Integer> keyIndex = new LinkedHashMap<>();
        ByteBuffer header = ByteBuffer.allocate(8 * HEADER_LONGS * n).order(ByteOrder.LITTLE_ENDIAN);
        int payloadBytes = 0;
        for (int i = 0; i < n; i++) {
            payloadBytes += bufPayloads.get(i).length;
        }
        byte[] payload = new byte[payloadBytes];
        int at = 0;
        for (int i = 0; i < n; i++) {
            Row key = bufKeys.get(i);
            long index = -1;
            if (key != null) {
                Integer k = keyIndex.get(key);
                if (k == null) {
                    k = keyIndex.size();
                    keyIndex.put(key, k);
                }
                index = k;
            }
            byte[] p = bufPayloads.get(i);
            System.arraycopy(p, 0, payload, at, p.length);
            at += p.length;
            header.putLong(bufHeader[3 * i]);
            header.putLong(index);
            header.putLong(bufHeader[3 * i + 1]);
            header.putLong(bufHeader[3 * i + 2]);
            header.putLong(p.length);
        }
        bufKeys.clear();
        bufPayloads.clear();
        bufSize = 0;

        Row[] keyRows = keyIndex.keySet().toArray(new Row[0]);
        String[] keys = new String[keyRows.length];
        int ns = keyedStates.length;
        Object[] states = new Object[keyRows.length * ns];
        for (int k = 0; k < keyRows.length; k++) {
            keys[k] = (String) keyRows[k].getField(0);
            setCurrentKey(keyRows[k]);
            for (int s = 0; s < ns; s++) {
                states[k * ns + s] = keyedStates[s].value();
            }
        }
        pythonCalls.inc();
        batchedRecords.inc(n);
        Object result = interpreter.invokeMethod("_recsys_fn", "process_batch",
                keys, states, header.array(), payload, reason,
                getProcessingTimeService().getCurrentProcessingTime(), currentWatermark);
        applyResult(result, keyRows);
    }

    /**
     * Applies Python's answer: a tuple (state updates, outputs, timers, shared puts, metrics).
     * See flink_jobs/batch_host.py for the layout of each part.
     */
    private void applyResult(Object result, Row[] keyRows) {
        Object[] parts = (Object[]) result;
        try {
            // 1. keyed state: triples of key (batch key index, or a key string of this
            //    subtask), state index, value (byte[], or null = clear)
            Object[] updates = (Object[]) parts[0];
            for (int i = 0; i + 2 < updates.length; i += 3) {
                setCurrentKey(keyOf(updates[i], keyRows));
                ValueState<byte[]> state = keyedStates[((Number) updates[i + 1]).intValue()];
                byte[] value = (byte[]) updates[i + 2];
                if (value == null) {
                    state.clear();
                } else {
                    state.update(value);
                }
            }
            // 2. outputs: groups of (tag, kind, keys[], blob, lengths as int32 LE, -1 = null)
            Object[] outputs = (Object[]) parts[1];
            for (Object g : outputs) {
                emitGroup((Object[]) g);
            }
            // 3. keyed processing-time timers: pairs of key (as above), time
            Object[] timerList = (Object[]) parts[2];
            for (int i = 0; i + 1 < timerList.length; i += 2) {
                setCurrentKey(keyOf(timerList[i], keyRows));
                timers.registerProcessingTimeTimer(VoidNamespace.INSTANCE,
                        ((Number) timerList[i + 1]).longValue());
            }
            // 4. shared (replicated) state: alternating key, value (null = remove)
            Object[] shared = (Object[]) parts[3];
            for (int i = 0; i + 1 < shared.length; i += 2) {
                String key = (String) shared[i];
                byte[] value = (byte[]) shared[i + 1];
                if (value == null) {
                    sharedState.remove(key);
                } else {
                    sharedState.put(key, value);
                }
            }
            // 5. metrics: alternating group path ("k=v,k=v" or ""), name, kind (0 inc, 1 set), value
            Object[] metrics = (Object[]) parts[4];
            for (int i = 0; i + 3 < metrics.length; i += 4) {
                applyMetric((String) metrics[i], (String) metrics[i + 1],
                        ((Number) metrics[i + 2]).intValue(), ((Number) metrics[i + 3]).doubleValue());
            }
        } catch (RuntimeException e) {
            throw e;
        } catch (Exception e) {
            throw new RuntimeException("cannot apply the Python batch result", e);
        }
    }

    private static Row keyOf(Object ref, Row[] keyRows) {
        if (ref instanceof String) {
            return Row.of(ref);
        }
        return keyRows[((Number) ref).intValue()];
    }

    private void emitGroup(Object[] group) {
        int tag = ((Number) group[0]).intValue();
        int kind = ((Number) group[1]).intValue();
        Object[] keys = (Object[]) group[2];
        byte[] blob = (byte[]) group[3];
        ByteBuffer lengths = ByteBuffer.wrap((byte[]) group[4]).order(ByteOrder.LITTLE_ENDIAN);
        int at = 0;
        for (Object key : keys) {
            int len = lengths.getInt();
            byte[] value = null;
            if (len >= 0) {
                value = new byte[len];
                System.arraycopy(blob, at, value, 0, len);
                at += len;
            }
            Row row = EngineRecords.of((String) key, kind, 0L, 0L, value);
            if (tag == 0) {
                output.collect(new StreamRecord<>(row));
            } else {
                output.collect(sideOutputs[tag - 1], new StreamRecord<>(row));
            }
        }
    }

    private void applyMetric(String path, String name, int kind, double value) {
        String id = path + "\u0000" + name;
        if (kind == 0) {
            Counter c = counters.get(id);
            if (c == null) {
                c = group(path).counter(name);
                counters.put(id, c);
            }
            c.inc((long) value);
        } else {
            double[] holder = gauges.get(id);
            if (holder == null) {
                double[] h = new double[1];
                group(path).gauge(name, (Gauge<Double>) () -> h[0]);
                gauges.put(id, h);
                holder = h;
            }
            holder[0] = value;
        }
    }

    private MetricGroup group(String path) {
        MetricGroup g = getMetricGroup();
        if (path.isEmpty()) {
            return g;
        }
        for (String part : path.split(",")) {
            int eq = part.indexOf('=');
            g = g.addGroup(part.substring(0, eq), part.substring(eq + 1));
        }
        return g;
    }

    @Override
    public void close() throws Exception {
        try {
            if (interpreter != null) {
                interpreter.invokeMethod("_recsys_fn", "close");
            }
        } finally {
            super.close();
        }
    }

    static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }
}
