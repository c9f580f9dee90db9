package io.github.recsys.flink;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.text.Normalizer;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.Map;
import java.util.regex.Pattern;

import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Kafka records of the input topics as engine records, keyed and timestamped in Java.
 *
 * <p>The key (the user id, or the item id for the catalogue) and the event time are read from
 * the JSON value with a streaming scan of its top-level fields, so neither keying nor watermarks
 * need a Python operator. Nothing is validated here: a record whose key cannot be read (not JSON,
 * not an object, the field missing or not a string) gets the empty key, and the Python edge
 * dead-letters it with the reason. A field named twice keeps its last value, as in the Python
 * edge's parser; the edge still checks that the key a record was routed by is the one it parses. A tombstone becomes an empty payload,
 * so it reaches the edge (and the dead-letter topic) instead of being dropped by the source.
 *
 * <p>Event time is the {@code ts} field when it is plausible (not before {@code minTsMs}, not more
 * than {@code maxFutureSkewMs} ahead of the wall clock); otherwise the wall clock, so that one
 * absurd timestamp cannot drag the watermark. With pseudonymisation on, the key is replaced by
 * HMAC-SHA256 under the key in the TaskManager's environment variable {@code keyEnv} (or
 * {@code keyFile}), exactly as udfs/privacy.py computes it, so a raw user id never becomes a
 * Flink state key. Before that the key is normalised as the Python edge normalises ids
 * (zero-width characters removed, then NFKC), so "ｕ１" and "u1" are one user.
 */
public class InputRecordDeserializer implements KafkaRecordDeserializationSchema<Row> {
    private static final long serialVersionUID = 1L;
    private static final JsonFactory JSON = new JsonFactory();
    private static final Pattern ZERO_WIDTH =
            Pattern.compile("[\\u200B\\u200C\\u200D\\u2060\\uFEFF\\u00AD\\u180E]");

    private final Map<String, Integer> kindByTopic;
    private final Map<String, String> keyFieldByTopic;
    private final Map<String, Boolean> pseudonymizeByTopic;
    private final long minTsMs;
    private final long maxFutureSkewMs;
    private final String keyEnv;
    private final String keyFile;
    private final int hexChars;

    private transient Mac hmac;

    public InputRecordDeserializer(
            String[] topics, int[] kinds, String[] keyFields, boolean[] pseudonymize,
            long minTsMs, long maxFutureSkewMs, String keyEnv, String keyFile, int hexChars) {
        this.kindByTopic = new HashMap<>();
        this.keyFieldByTopic = new HashMap<>();
        this.pseudonymizeByTopic = new HashMap<>();
        for (int i = 0; i < topics.length; i++) {
            kindByTopic.put(topics[i], kinds[i]);
            keyFieldByTopic.put(topics[i], keyFields[i]);
            pseudonymizeByTopic.put(topics[i], pseudonymize[i]);
        }
        this.minTsMs = minTsMs;
        this.maxFutureSkewMs = maxFutureSkewMs;
        this.keyEnv = keyEnv;
        this.keyFile = keyFile;
        this.hexChars = hexChars;
    }

    @Override
    public void open(DeserializationSchema.InitializationContext context) throws Exception {
        if (pseudonymizeByTopic.containsValue(Boolean.TRUE)) {
            hmac = Mac.getInstance("HmacSHA256");
            hmac.init(new SecretKeySpec(loadKey(), "HmacSHA256"));
        }
    }

    private byte[] loadKey() throws IOException {
        String value = keyEnv.isEmpty() ? null : System.getenv(keyEnv);
        if ((value == null || value.isEmpty()) && !keyFile.isEmpty()) {
            value = Files.readString(Path.of(keyFile)).strip();
        }
        if (value == null || value.length() < 16) {
            throw new IllegalStateException("pseudonymisation is on but no key of at least 16 "
                    + "characters was found in $" + keyEnv + " or privacy.key_file on this TaskManager");
        }
        return value.getBytes(StandardCharsets.UTF_8);
    }

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Row> out) {
        String topic = record.topic();
        byte[] value = record.value() == null ? EngineRecords.EMPTY : record.value();
        long now = System.currentTimeMillis();
        String keyField = keyFieldByTopic.get(topic);
        String key = "";
        long ts = Long.MIN_VALUE;
        try (JsonParser p = JSON.createParser(value)) {
            if (p.nextToken() == JsonToken.START_OBJECT) {
                // Every top-level field is read: a name given twice keeps its last value, as the
                // Python edge's JSON parser does, so both agree on the key.
                while (p.nextToken() == JsonToken.FIELD_NAME) {
                    String name = p.currentName();
                    JsonToken t = p.nextToken();
                    if (name.equals(keyField)) {
                        key = t == JsonToken.VALUE_STRING ? normalizeId(p.getText()) : "";
                    } else if (name.equals("ts")) {
                        ts = t == JsonToken.VALUE_NUMBER_INT
                                && p.getNumberType() != JsonParser.NumberType.BIG_INTEGER
                                ? p.getLongValue() : Long.MIN_VALUE;
                    }
                    // An object or array value (also of the key or ts field, e.g. a duplicate
                    // {"ts": [], ..., "ts": 1}) is skipped whole, or its inner names would be
                    // read as top-level ones. (A no-op for scalars.)
                    p.skipChildren();
                }
            }
        } catch (Exception e) {
            // Not JSON (or too deep, or truncated): the Python edge dead-letters it.
            key = "";
        }
        if (ts < minTsMs || ts > now + maxFutureSkewMs) {
            ts = now;
        }
        if (!key.isEmpty() && hmac != null && pseudonymizeByTopic.get(topic)) {
            key = pseudonym(key);
        }
        out.collect(EngineRecords.of(key, kindByTopic.get(topic), ts, now, value));
    }

    /** Zero-width characters removed, then NFKC: what udfs/validation.py normalise_id does. */
    static String normalizeId(String id) {
        boolean ascii = true;
        for (int i = 0; i < id.length() && ascii; i++) {
            ascii = id.charAt(i) < 0x80;
        }
        if (ascii) {
            return id;
        }
        String visible = ZERO_WIDTH.matcher(id).replaceAll("");
        return Normalizer.normalize(visible, Normalizer.Form.NFKC);
    }

    private String pseudonym(String id) {
        byte[] digest = hmac.doFinal(id.getBytes(StandardCharsets.UTF_8));
        String hex = HexFormat.of().formatHex(digest);
        return hex.substring(0, Math.min(hexChars, hex.length()));
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return EngineRecords.TYPE;
    }
}
