package org.mobilevlm.core;

import java.io.ByteArrayOutputStream;

/**
 * UTF-8 decoding that replaces each invalid sequence with one U+FFFD, by the "maximal subpart"
 * rule that Rust's {@code String::from_utf8_lossy} (and so the {@code tokenizers} library's
 * decode) follows: a streamed answer holds back exactly where the Python side does.
 */
public final class Utf8 {
    private Utf8() {}

    public static String decodeLossy(byte[] b, int length) {
        StringBuilder out = new StringBuilder(length);
        int i = 0;
        while (i < length) {
            int lead = b[i] & 0xff;
            if (lead < 0x80) {
                out.append((char) lead);
                i++;
                continue;
            }
            int need;
            int lo = 0x80;
            int hi = 0xbf;
            if (lead >= 0xc2 && lead <= 0xdf) {
                need = 1;
            } else if (lead >= 0xe0 && lead <= 0xef) {
                need = 2;
                if (lead == 0xe0) lo = 0xa0;
                if (lead == 0xed) hi = 0x9f;
            } else if (lead >= 0xf0 && lead <= 0xf4) {
                need = 3;
                if (lead == 0xf0) lo = 0x90;
                if (lead == 0xf4) hi = 0x8f;
            } else {
                out.append('\ufffd');
                i++;
                continue;
            }
            int cp = lead & (0x3f >> need);
            int k = 1;
            for (; k <= need; k++) {
                if (i + k >= length) break;
                int c = b[i + k] & 0xff;
                int min = k == 1 ? lo : 0x80;
                int max = k == 1 ? hi : 0xbf;
                if (c < min || c > max) break;
                cp = (cp << 6) | (c & 0x3f);
            }
            if (k <= need) {
                out.append('\ufffd');
                i += k; // the valid prefix is one replacement; resume at the byte that broke it
                continue;
            }
            out.appendCodePoint(cp);
            i += need + 1;
        }
        return out.toString();
    }

    public static String decodeLossy(ByteArrayOutputStream bytes) {
        return decodeLossy(bytes.toByteArray(), bytes.size());
    }
}
