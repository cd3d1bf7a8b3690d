package org.mobilevlm.core;

import java.util.ArrayList;
import java.util.List;

/**
 * GPT-2's byte-level pre-tokenization: the text split by GPT-2's pattern, then each piece's UTF-8
 * bytes written as printable characters (byte b -> one char of a fixed 256-entry table), which is
 * the alphabet of a byte-level BPE vocabulary; and back again for decoding.
 *
 * <p>The pattern {@code 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+}
 * is matched by hand over code points with the classes the {@code tokenizers} library's regex
 * engine uses (Unicode letters, numbers and White_Space), not with java.util.regex, whose
 * {@code \s} is ASCII-only.
 */
final class ByteLevel {
    static final char[] BYTE_TO_CHAR = new char[256];
    static final int[] CHAR_TO_BYTE = new int[512];

    static {
        java.util.Arrays.fill(CHAR_TO_BYTE, -1);
        int extra = 0;
        for (int b = 0; b < 256; b++) {
            boolean printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
            char c = printable ? (char) b : (char) (256 + extra++);
            BYTE_TO_CHAR[b] = c;
            CHAR_TO_BYTE[c] = b;
        }
    }

    private ByteLevel() {}

    /** The piece's UTF-8 bytes as byte-level characters. */
    static String encodeBytes(String piece) {
        byte[] bytes = piece.getBytes(java.nio.charset.StandardCharsets.UTF_8);
        char[] out = new char[bytes.length];
        for (int k = 0; k < bytes.length; k++) {
            out[k] = BYTE_TO_CHAR[bytes[k] & 0xff];
        }
        return new String(out);
    }

    /** Appends a token's bytes: its characters mapped back, or its own UTF-8 when one of them is
     * not a byte-level character (an added token such as a non-ASCII special word). */
    static void decodeToken(String token, java.io.ByteArrayOutputStream out) {
        for (int k = 0; k < token.length(); k++) {
            char c = token.charAt(k);
            if (c >= CHAR_TO_BYTE.length || CHAR_TO_BYTE[c] < 0) {
                out.writeBytes(token.getBytes(java.nio.charset.StandardCharsets.UTF_8));
                return;
            }
        }
        for (int k = 0; k < token.length(); k++) {
            out.write(CHAR_TO_BYTE[token.charAt(k)]);
        }
    }

    static boolean isLetter(int c) {
        switch (Character.getType(c)) {
            case Character.UPPERCASE_LETTER:
            case Character.LOWERCASE_LETTER:
            case Character.TITLECASE_LETTER:
            case Character.MODIFIER_LETTER:
            case Character.OTHER_LETTER:
                return true;
            default:
                return false;
        }
    }

    static boolean isNumber(int c) {
        switch (Character.getType(c)) {
            case Character.DECIMAL_DIGIT_NUMBER:
            case Character.LETTER_NUMBER:
            case Character.OTHER_NUMBER:
                return true;
            default:
                return false;
        }
    }

    /** Unicode's White_Space property (what the regex engine's {@code \s} matches). */
    static boolean isSpace(int c) {
        return (c >= 0x09 && c <= 0x0d) || c == 0x85 || c == 0x2028 || c == 0x2029
                || Character.getType(c) == Character.SPACE_SEPARATOR;
    }

    private static boolean isOther(int c) {
        return !isSpace(c) && !isLetter(c) && !isNumber(c);
    }

    private static final String[] CONTRACTIONS = {"s", "t", "re", "ve", "m", "ll", "d"};

    /** {@code text} cut into GPT-2 pattern matches (they cover it: every character matches). */
    static List<String> split(String text) {
        int[] cps = text.codePoints().toArray();
        List<String> out = new ArrayList<>();
        int i = 0;
        while (i < cps.length) {
            int end = match(cps, i);
            out.add(new String(cps, i, end - i));
            i = end;
        }
        return out;
    }

    /** End of the pattern's match at {@code i}, alternatives tried in order. */
    private static int match(int[] s, int i) {
        int n = s.length;
        if (s[i] == '\'') {
            for (String c : CONTRACTIONS) {
                if (startsWith(s, i + 1, c)) {
                    return i + 1 + c.length();
                }
            }
        }
        int j = s[i] == ' ' && i + 1 < n ? i + 1 : i; // the optional leading space
        if (isLetter(s[j])) return run(s, j, 0);
        if (isNumber(s[j])) return run(s, j, 1);
        if (isOther(s[j])) return run(s, j, 2);
        // whitespace: \s+(?!\S) gives the run less its last character when a non-space follows
        int end = i;
        while (end < n && isSpace(s[end])) end++;
        if (end == n || end - i == 1) return end;
        return end - 1;
    }

    private static boolean startsWith(int[] s, int at, String word) {
        if (at + word.length() > s.length) return false;
        for (int k = 0; k < word.length(); k++) {
            if (s[at + k] != word.charAt(k)) return false;
        }
        return true;
    }

    private static int run(int[] s, int j, int kind) {
        int k = j;
        while (k < s.length && (kind == 0 ? isLetter(s[k]) : kind == 1 ? isNumber(s[k]) : isOther(s[k]))) {
            k++;
        }
        return k;
    }
}
