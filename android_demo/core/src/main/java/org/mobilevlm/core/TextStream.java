package org.mobilevlm.core;

import java.util.ArrayList;
import java.util.List;

/**
 * Generated token ids to text increments, cut at stop strings (mirrors {@code
 * mobilevlm.generation.streaming.TextStream}): text is released only when it is final, so an
 * incomplete UTF-8 character at the end (decoded as U+FFFD) and any tail that could still grow
 * into a stop string are held back, and a listener never sees text the answer does not hold.
 *
 * <p>Positions are counted in code points, as Python's are, so a stop string's prefix is never
 * half a surrogate pair.
 */
public final class TextStream {
    private final Tokenizer tokenizer;
    private final List<int[]> stops = new ArrayList<>();
    private final List<Integer> ids = new ArrayList<>();
    private int[] text = new int[0]; // the answer so far (code points), final up to `emitted`
    private int emitted;
    private boolean stopped;

    public TextStream(Tokenizer tokenizer, List<String> stopStrings) {
        this.tokenizer = tokenizer;
        for (String s : stopStrings) {
            if (!s.isEmpty()) stops.add(s.codePoints().toArray());
        }
    }

    /** True once a stop string has appeared; the text ends before it. */
    public boolean stopped() {
        return stopped;
    }

    /** The answer so far. */
    public String text() {
        return new String(text, 0, text.length);
    }

    /** Adds one generated token; returns the newly final text (may be empty). */
    public String push(int tokenId) {
        if (stopped) return "";
        ids.add(tokenId);
        text = tokenizer.decode(ids.stream().mapToInt(Integer::intValue).toArray()).codePoints().toArray();
        int cut = firstStop();
        if (cut >= 0) {
            text = java.util.Arrays.copyOf(text, cut);
            stopped = true;
            return release(text.length);
        }
        if (text.length > 0 && text[text.length - 1] == 0xfffd) return "";
        return release(text.length - stopPrefixLength());
    }

    /** Releases whatever is held back once generation has ended. */
    public String finish() {
        return release(text.length);
    }

    private String release(int upto) {
        if (upto <= emitted) return "";
        String piece = new String(text, emitted, upto - emitted);
        emitted = upto;
        return piece;
    }

    private int firstStop() {
        int longest = 0;
        for (int[] s : stops) longest = Math.max(longest, s.length);
        int start = Math.max(0, emitted - longest); // only the unreleased tail can hold a new one
        int best = -1;
        for (int[] s : stops) {
            int at = find(s, start);
            if (at >= 0 && (best < 0 || at < best)) best = at;
        }
        return best;
    }

    private int find(int[] s, int from) {
        for (int i = from; i + s.length <= text.length; i++) {
            if (regionMatches(i, s, s.length)) return i;
        }
        return -1;
    }

    private boolean regionMatches(int at, int[] s, int n) {
        for (int k = 0; k < n; k++) {
            if (text[at + k] != s[k]) return false;
        }
        return true;
    }

    /** Length of the longest suffix of the text that begins some stop string. */
    private int stopPrefixLength() {
        int best = 0;
        for (int[] s : stops) {
            for (int n = Math.min(s.length - 1, text.length); n > best; n--) {
                if (regionMatches(text.length - n, s, n)) {
                    best = n;
                    break;
                }
            }
        }
        return best;
    }
}
