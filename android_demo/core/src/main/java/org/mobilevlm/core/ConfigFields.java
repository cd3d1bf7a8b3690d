package org.mobilevlm.core;

import java.math.BigInteger;
import java.util.List;
import java.util.Map;

/**
 * Typed reads of a config object's fields with the Python side's messages ({@code
 * LLMConfig.vocab_size must be int, got 'x'}): {@code mobilevlm.config} checks each known field
 * against its annotation, so a manifest either runtime refuses, both refuse alike.
 */
final class ConfigFields {
    private final String owner;
    private final Map<String, Object> data;

    ConfigFields(String owner, Map<String, Object> data) {
        this.owner = owner;
        this.data = data;
    }

    /** {@code data} as an object, or ConfigError "{owner} must be an object, not {type}". */
    @SuppressWarnings("unchecked")
    static ConfigFields of(String owner, Object data) {
        if (!(data instanceof Map)) {
            throw new ConfigError(owner + " must be an object, not " + PyRepr.typeName(data));
        }
        return new ConfigFields(owner, (Map<String, Object>) data);
    }

    boolean has(String field) {
        return data.containsKey(field);
    }

    Object raw(String field) {
        return data.get(field);
    }

    private ConfigError wrong(String name, String kind, Object value) {
        return new ConfigError(name + " must be " + kind + ", got " + PyRepr.repr(value, 40));
    }

    static boolean isInt(Object v) {
        return v instanceof Long || v instanceof BigInteger;
    }

    /** An int field (absent: {@code fallback}); {@code nullable} allows JSON null. */
    Long integer(String field, Long fallback, boolean nullable) {
        if (!data.containsKey(field)) return fallback;
        Object v = data.get(field);
        if (v == null && nullable) return null;
        if (!isInt(v)) throw wrong(owner + "." + field, "int", v);
        if (v instanceof BigInteger) throw new ConfigError(owner + ": " + field + " is too large");
        return (Long) v;
    }

    Double number(String field, Double fallback) {
        if (!data.containsKey(field)) return fallback;
        return checkedFloat(owner + "." + field, data.get(field));
    }

    private Double checkedFloat(String name, Object v) {
        if (isInt(v)) return ((Number) v).doubleValue();
        if (!(v instanceof Double) || ((Double) v).isNaN() || ((Double) v).isInfinite()) {
            throw wrong(name, "float", v);
        }
        return (Double) v;
    }

    String string(String field, String fallback) {
        if (!data.containsKey(field)) return fallback;
        Object v = data.get(field);
        if (!(v instanceof String)) throw wrong(owner + "." + field, "str", v);
        return (String) v;
    }

    void bool(String field) {
        if (data.containsKey(field) && !(data.get(field) instanceof Boolean)) {
            throw wrong(owner + "." + field, "bool", data.get(field));
        }
    }

    /** A fixed-length list of floats (Python's {@code tuple[float, float, float]}). */
    double[] floats(String field, double[] fallback) {
        if (!data.containsKey(field)) return fallback;
        Object v = data.get(field);
        String name = owner + "." + field;
        if (!(v instanceof List)) {
            throw new ConfigError(name + " must be a list, not " + PyRepr.typeName(v));
        }
        List<?> list = (List<?>) v;
        if (list.size() != fallback.length) {
            throw new ConfigError(
                    name + " must have " + fallback.length + " entries, got " + list.size());
        }
        double[] out = new double[list.size()];
        for (int k = 0; k < out.length; k++) {
            out[k] = checkedFloat(name + "[" + k + "]", list.get(k));
        }
        return out;
    }
}
