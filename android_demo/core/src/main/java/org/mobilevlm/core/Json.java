package org.mobilevlm.core;

import java.math.BigInteger;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small strict JSON parser (the core may not depend on a library): objects become {@link
 * LinkedHashMap}s, arrays {@link ArrayList}s, strings {@link String}s, whole numbers {@link Long}
 * (or {@link BigInteger}), other numbers {@link Double}, and true/false/null themselves.
 *
 * <p>It accepts what Python's {@code json.loads} accepts (including its NaN and Infinity) and
 * nothing more, and its errors read as Python's do ({@code Expecting value: line 1 column 1 (char
 * 0)}), so a bad bundle.json gets the same message from both runtimes.
 */
public final class Json {
    /** A document that is not valid JSON; the message is Python's JSONDecodeError text. */
    public static final class ParseError extends Exception {
        ParseError(String message) {
            super(message);
        }
    }

    private final String s;
    private int i;

    private Json(String text) {
        this.s = text;
    }

    /** The value of a whole document (leading and trailing JSON whitespace allowed). */
    public static Object parse(String text) throws ParseError {
        Json p = new Json(text);
        if (text.startsWith("\ufeff")) {
            throw p.error("Unexpected UTF-8 BOM (decode using utf-8-sig)", 0);
        }
        p.skipWhitespace();
        Object value = p.value();
        p.skipWhitespace();
        if (p.i != text.length()) {
            throw p.error("Extra data", p.i);
        }
        return value;
    }

    private ParseError error(String what, int at) {
        int cp = s.codePointCount(0, at);
        int line = 1;
        int lastNewline = -1;
        for (int k = 0; k < at; k++) {
            if (s.charAt(k) == '\n') {
                line++;
                lastNewline = k;
            }
        }
        int column = lastNewline < 0 ? cp + 1 : s.codePointCount(lastNewline, at);
        return new ParseError(what + ": line " + line + " column " + column + " (char " + cp + ")");
    }

    private void skipWhitespace() {
        while (i < s.length()) {
            char c = s.charAt(i);
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
                return;
            }
            i++;
        }
    }

    private boolean literal(String word) {
        if (s.startsWith(word, i)) {
            i += word.length();
            return true;
        }
        return false;
    }

    private Object value() throws ParseError {
        if (i >= s.length()) {
            throw error("Expecting value", i);
        }
        char c = s.charAt(i);
        if (c == '"') {
            return string();
        } else if (c == '{') {
            return object();
        } else if (c == '[') {
            return array();
        } else if (literal("null")) {
            return null;
        } else if (literal("true")) {
            return Boolean.TRUE;
        } else if (literal("false")) {
            return Boolean.FALSE;
        } else if (literal("NaN")) {
            return Double.NaN;
        } else if (literal("Infinity")) {
            return Double.POSITIVE_INFINITY;
        } else if (literal("-Infinity")) {
            return Double.NEGATIVE_INFINITY;
        }
        return number();
    }

    private Object number() throws ParseError {
        int start = i;
        int k = i;
        if (k < s.length() && s.charAt(k) == '-') {
            k++;
        }
        if (k < s.length() && s.charAt(k) == '0') {
            k++;
        } else if (k < s.length() && s.charAt(k) >= '1' && s.charAt(k) <= '9') {
            k = digits(k);
        } else {
            throw error("Expecting value", start);
        }
        boolean whole = true;
        if (k + 1 < s.length() && s.charAt(k) == '.' && isDigit(s.charAt(k + 1))) {
            k = digits(k + 1);
            whole = false;
        }
        if (k < s.length() && (s.charAt(k) == 'e' || s.charAt(k) == 'E')) {
            int e = k + 1;
            if (e < s.length() && (s.charAt(e) == '+' || s.charAt(e) == '-')) {
                e++;
            }
            if (e < s.length() && isDigit(s.charAt(e))) {
                k = digits(e);
                whole = false;
            }
        }
        i = k;
        String text = s.substring(start, k);
        if (!whole) {
            return Double.parseDouble(text);
        }
        BigInteger big = new BigInteger(text);
        return big.bitLength() < 64 ? (Object) big.longValue() : big;
    }

    private static boolean isDigit(char c) {
        return c >= '0' && c <= '9';
    }

    private int digits(int k) {
        while (k < s.length() && isDigit(s.charAt(k))) {
            k++;
        }
        return k;
    }

    private String string() throws ParseError {
        int begin = i;
        i++; // the opening quote
        StringBuilder out = new StringBuilder();
        while (true) {
            if (i >= s.length()) {
                throw error("Unterminated string starting at", begin);
            }
            char c = s.charAt(i);
            if (c == '"') {
                i++;
                return out.toString();
            }
            if (c < 0x20) {
                throw error("Invalid control character at", i);
            }
            if (c != '\\') {
                out.append(c);
                i++;
                continue;
            }
            if (i + 1 >= s.length()) {
                throw error("Unterminated string starting at", begin);
            }
            char esc = s.charAt(i + 1);
            switch (esc) {
                case '"': out.append('"'); break;
                case '\\': out.append('\\'); break;
                case '/': out.append('/'); break;
                case 'b': out.append('\b'); break;
                case 'f': out.append('\f'); break;
                case 'n': out.append('\n'); break;
                case 'r': out.append('\r'); break;
                case 't': out.append('\t'); break;
                case 'u':
                    out.append((char) hex4(i + 1));
                    i += 6;
                    continue;
                default:
                    throw error("Invalid \\escape", i);
            }
            i += 2;
        }
    }

    private int hex4(int at) throws ParseError {
        if (at + 5 > s.length()) {
            throw error("Invalid \\uXXXX escape", at);
        }
        int v = 0;
        for (int k = at + 1; k < at + 5; k++) {
            int d = Character.digit(s.charAt(k), 16);
            if (d < 0 || s.charAt(k) > 'f') {
                throw error("Invalid \\uXXXX escape", at);
            }
            v = v * 16 + d;
        }
        return v;
    }

    private Map<String, Object> object() throws ParseError {
        Map<String, Object> map = new LinkedHashMap<>();
        i++;
        skipWhitespace();
        if (i < s.length() && s.charAt(i) == '}') {
            i++;
            return map;
        }
        while (true) {
            if (i >= s.length() || s.charAt(i) != '"') {
                throw error("Expecting property name enclosed in double quotes", i);
            }
            String key = string();
            skipWhitespace();
            if (i >= s.length() || s.charAt(i) != ':') {
                throw error("Expecting ':' delimiter", i);
            }
            i++;
            skipWhitespace();
            map.put(key, value());
            skipWhitespace();
            if (i < s.length() && s.charAt(i) == '}') {
                i++;
                return map;
            }
            if (i >= s.length() || s.charAt(i) != ',') {
                throw error("Expecting ',' delimiter", i);
            }
            i++;
            skipWhitespace();
        }
    }

    private List<Object> array() throws ParseError {
        List<Object> list = new ArrayList<>();
        i++;
        skipWhitespace();
        if (i < s.length() && s.charAt(i) == ']') {
            i++;
            return list;
        }
        while (true) {
            list.add(value());
            skipWhitespace();
            if (i < s.length() && s.charAt(i) == ']') {
                i++;
                return list;
            }
            if (i >= s.length() || s.charAt(i) != ',') {
                throw error("Expecting ',' delimiter", i);
            }
            i++;
            skipWhitespace();
        }
    }
}
