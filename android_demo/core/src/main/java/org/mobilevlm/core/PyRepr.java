package org.mobilevlm.core;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.util.Iterator;
import java.util.List;
import java.util.Map;

/**
 * Python's {@code repr} and {@code str} of parsed JSON values, for error messages that quote a
 * bad value exactly as the Python runtime's do ({@code got 'abc'}, {@code got [1, 2]}).
 */
final class PyRepr {
    private PyRepr() {}

    /** {@code repr(value)} cut to {@code limit} characters, as Python's {@code {value!r:.N}}. */
    static String repr(Object value, int limit) {
        String r = repr(value);
        return r.codePointCount(0, r.length()) <= limit
                ? r
                : r.substring(0, r.offsetByCodePoints(0, limit));
    }

    /** Python's {@code type(value).__name__} of a parsed JSON value. */
    static String typeName(Object value) {
        if (value == null) return "NoneType";
        if (value instanceof String) return "str";
        if (value instanceof Boolean) return "bool";
        if (value instanceof Long || value instanceof BigInteger) return "int";
        if (value instanceof Double) return "float";
        if (value instanceof List) return "list";
        if (value instanceof Map) return "dict";
        return value.getClass().getSimpleName();
    }

    /** {@code str(value)}: a string is itself, everything else its repr. */
    static String str(Object value) {
        return value instanceof String ? (String) value : repr(value);
    }

    static String repr(Object value) {
        if (value == null) return "None";
        if (value instanceof Boolean) return (Boolean) value ? "True" : "False";
        if (value instanceof String) return reprString((String) value);
        if (value instanceof Double) return reprFloat((Double) value);
        if (value instanceof List) {
            StringBuilder b = new StringBuilder("[");
            for (Iterator<?> it = ((List<?>) value).iterator(); it.hasNext(); ) {
                b.append(repr(it.next())).append(it.hasNext() ? ", " : "");
            }
            return b.append(']').toString();
        }
        if (value instanceof Map) {
            StringBuilder b = new StringBuilder("{");
            for (Iterator<? extends Map.Entry<?, ?>> it = ((Map<?, ?>) value).entrySet().iterator();
                    it.hasNext(); ) {
                Map.Entry<?, ?> e = it.next();
                b.append(repr(e.getKey())).append(": ").append(repr(e.getValue()));
                b.append(it.hasNext() ? ", " : "");
            }
            return b.append('}').toString();
        }
        return value.toString();
    }

    /** Python's shortest round-trip float repr ({@code 1.0}, {@code 1e-05}, {@code 1e+16}). */
    static String reprFloat(double d) {
        if (Double.isNaN(d)) return "nan";
        if (Double.isInfinite(d)) return d > 0 ? "inf" : "-inf";
        if (d == 0) return (1 / d < 0) ? "-0.0" : "0.0";
        BigDecimal shortest = new BigDecimal(Double.toString(Math.abs(d))).stripTrailingZeros();
        String digits = shortest.unscaledValue().toString();
        int exponent = digits.length() - 1 - shortest.scale(); // of the first digit
        String sign = d < 0 ? "-" : "";
        if (exponent < -4 || exponent >= 16) {
            String mantissa = digits.length() == 1 ? digits : digits.charAt(0) + "." + digits.substring(1);
            return sign + mantissa + "e" + (exponent < 0 ? "-" : "+")
                    + String.format("%02d", Math.abs(exponent));
        }
        String plain = shortest.toPlainString();
        return sign + (plain.contains(".") ? plain : plain + ".0");
    }

    static String reprString(String s) {
        char quote = s.indexOf('\'') >= 0 && s.indexOf('"') < 0 ? '"' : '\'';
        StringBuilder b = new StringBuilder().append(quote);
        for (int k = 0; k < s.length(); ) {
            int c = s.codePointAt(k);
            k += Character.charCount(c);
            if (c == quote || c == '\\') {
                b.append('\\').appendCodePoint(c);
            } else if (c == '\n') {
                b.append("\\n");
            } else if (c == '\r') {
                b.append("\\r");
            } else if (c == '\t') {
                b.append("\\t");
            } else if (printable(c)) {
                b.appendCodePoint(c);
            } else if (c < 0x100) {
                b.append(String.format("\\x%02x", c));
            } else if (c < 0x10000) {
                b.append(String.format("\\u%04x", c));
            } else {
                b.append(String.format("\\U%08x", c));
            }
        }
        return b.append(quote).toString();
    }

    /** Python's {@code str.isprintable} for one character. */
    private static boolean printable(int c) {
        if (c == ' ') return true;
        switch (Character.getType(c)) {
            case Character.CONTROL:
            case Character.FORMAT:
            case Character.SURROGATE:
            case Character.PRIVATE_USE:
            case Character.UNASSIGNED:
            case Character.LINE_SEPARATOR:
            case Character.PARAGRAPH_SEPARATOR:
            case Character.SPACE_SEPARATOR:
                return false;
            default:
                return true;
        }
    }
}
