package org.mobilevlm.core;

/** Python's string whitespace ({@code str.isspace}, {@code str.strip}), which Java's differs from
 * (Java's {@code strip} keeps U+00A0 and U+2007, Python's removes them; Python adds 0x1c-0x1f). */
final class PyText {
    private PyText() {}

    static boolean isSpace(int c) {
        return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0
                || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029
                || c == 0x202f || c == 0x205f || c == 0x3000;
    }

    static String strip(String s) {
        int start = 0;
        int end = s.length();
        while (start < end && isSpace(s.charAt(start))) start++;
        while (end > start && isSpace(s.charAt(end - 1))) end--;
        return s.substring(start, end);
    }
}
