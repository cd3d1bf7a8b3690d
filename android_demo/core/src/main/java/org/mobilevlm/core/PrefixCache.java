package org.mobilevlm.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.List;

/**
 * Keeps track of what an {@link Engine}'s KV cache holds, so that a prompt beginning with it (the
 * last prompt and answer, as the next turn of a conversation does) prefills only its new
 * positions (mirrors {@code mobilevlm.generation.backend.CachingBackend}): one entry per cached
 * position, a token id or an image row named by a hash of the image's embeddings.
 */
final class PrefixCache {
    private final Engine engine;
    private final List<Object> history = new ArrayList<>();
    /** Positions the last prompt actually ran. */
    int lastPrefill;

    PrefixCache(Engine engine) {
        this.engine = engine;
    }

    /** Make the cache hold exactly this prompt ({@link Tokenizer#IMAGE_TOKEN_ID} marks where
     * {@code imageEmbeds} go); the logits of its last position. */
    float[] prefill(int[] ids, float[] imageEmbeds) {
        int hidden = engine.hiddenSize();
        int at = imageSlot(ids, imageEmbeds);
        List<Object> items = new ArrayList<>();
        for (int id : ids) items.add(id);
        int imageRows = 0;
        if (at >= 0) {
            imageRows = imageEmbeds.length / hidden;
            String key = sha1(imageEmbeds);
            items.remove(at);
            for (int r = imageRows - 1; r >= 0; r--) items.add(at, "image:" + key + ":" + r);
        }
        // the last position always runs: its logits are the answer's first token
        int keep = 0;
        int limit = Math.min(Math.min(history.size(), items.size() - 1), engine.cachedLength());
        while (keep < limit && history.get(keep).equals(items.get(keep))) keep++;
        engine.truncate(keep);
        while (history.size() > keep) history.remove(history.size() - 1);
        lastPrefill = items.size() - keep;
        int[][] segments = at < 0 ? new int[][] {{0, 0, items.size()}}
                : new int[][] {{0, 0, at}, {1, at, at + imageRows}, {0, at + imageRows, items.size()}};
        float[] logits = null;
        for (int[] seg : segments) {
            int begin = Math.max(keep, seg[1]);
            int end = seg[2];
            if (begin >= end) continue;
            if (seg[0] == 1) {
                float[] rows = java.util.Arrays.copyOfRange(
                        imageEmbeds, (begin - seg[1]) * hidden, (end - seg[1]) * hidden);
                logits = engine.prefill(rows, end - begin);
            } else {
                int[] run = new int[end - begin];
                for (int k = 0; k < run.length; k++) run[k] = (Integer) items.get(begin + k);
                logits = engine.prefill(engine.embedTokens(run), run.length);
            }
            history.addAll(items.subList(begin, end));
        }
        return logits;
    }

    /** Append one token; the logits of its position. */
    float[] decode(int token) {
        float[] logits = engine.prefill(engine.embedTokens(new int[] {token}), 1);
        history.add(token);
        return logits;
    }

    void reset() {
        engine.truncate(0);
        history.clear();
    }

    /** Index of the one image placeholder in {@code ids} (-1 when there is no image). */
    static int imageSlot(int[] ids, float[] imageEmbeds) {
        int count = 0;
        int at = -1;
        for (int k = 0; k < ids.length; k++) {
            if (ids[k] == Tokenizer.IMAGE_TOKEN_ID) {
                count++;
                if (at < 0) at = k;
            }
        }
        if (imageEmbeds == null) {
            if (count > 0) {
                throw new PromptError("the prompt has an image placeholder but no image was given");
            }
            return -1;
        }
        if (count != 1) {
            throw new PromptError("expected exactly one image placeholder, found " + count);
        }
        return at;
    }

    private static String sha1(float[] values) {
        ByteBuffer bytes = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        bytes.asFloatBuffer().put(values);
        try {
            StringBuilder hex = new StringBuilder();
            for (byte b : MessageDigest.getInstance("SHA-1").digest(bytes.array())) {
                hex.append(String.format("%02x", b & 0xff));
            }
            return hex.toString();
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
