package org.mobilevlm.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * An {@link Engine} that serves the logits the Python runtime computed, recorded by
 * make_golden.py with what its KV cache held at each step. It keeps its own view of the cache
 * from the rows it is given (a token row is marked with its id; an image row must be one of the
 * recorded image embeddings), so the decode loop must put the image at the recorded positions,
 * reuse the recorded prefix and step through the recorded tokens to be served anything.
 */
final class ReplayEngine implements Engine {
    private static final float MARK = -12345.5f;

    private final int hidden;
    private final int vocab;
    int context;
    private final float[] imageEmbeds;
    private final float[] expectedPixels;
    private final Npy.Array logits;
    private final List<List<Object>> contents = new ArrayList<>();
    private final List<Integer> rows = new ArrayList<>();
    private final List<Object> cache = new ArrayList<>();
    /** Recorded steps served, in order. */
    int served;
    int imagesEncoded;

    ReplayEngine(Map<String, Object> generation, List<Map<String, Object>> turns) {
        this.hidden = ((Long) generation.get("hidden_size")).intValue();
        this.context = ((Long) generation.get("context")).intValue();
        this.imageEmbeds = Golden.npy("image_embeds.npy").data;
        this.expectedPixels = Golden.npy("image_pixels.npy").data;
        this.logits = Golden.npy("generation_logits.npy");
        this.vocab = logits.shape[1];
        int[] canonical = canonicalRows();
        for (Map<String, Object> turn : turns) {
            for (Object s : (List<?>) turn.get("steps")) {
                Map<?, ?> step = (Map<?, ?>) s;
                List<Object> content = new ArrayList<>();
                for (Object item : (List<?>) step.get("content")) {
                    content.add(item instanceof Long ? (Object) ((Long) item).intValue()
                            : "image:" + canonical[Integer.parseInt(((String) item).substring(6))]);
                }
                contents.add(content);
                rows.add(((Long) step.get("row")).intValue());
            }
        }
    }

    /** Image rows by their first identical row: the labels of LDPv2's cells repeat words. */
    private int[] canonicalRows() {
        int n = imageEmbeds.length / hidden;
        int[] canonical = new int[n];
        for (int i = 0; i < n; i++) {
            canonical[i] = i;
            for (int j = 0; j < i; j++) {
                if (java.util.Arrays.equals(imageEmbeds, i * hidden, (i + 1) * hidden, imageEmbeds, j * hidden, (j + 1) * hidden)) {
                    canonical[i] = j;
                    break;
                }
            }
        }
        return canonical;
    }

    int steps() {
        return contents.size();
    }

    @Override
    public int hiddenSize() {
        return hidden;
    }

    @Override
    public int vocabSize() {
        return vocab;
    }

    @Override
    public int contextLength() {
        return context;
    }

    @Override
    public float[] encodeImage(float[] pixels, int size) {
        assertEquals(expectedPixels.length, pixels.length);
        for (int k = 0; k < pixels.length; k++) {
            if (Math.abs(pixels[k] - expectedPixels[k]) > 1e-5) fail("pixel " + k + " differs from Python's");
        }
        imagesEncoded++;
        return imageEmbeds.clone();
    }

    @Override
    public float[] embedTokens(int[] ids) {
        float[] out = new float[ids.length * hidden];
        for (int k = 0; k < ids.length; k++) {
            out[k * hidden] = MARK;
            out[k * hidden + 1] = ids[k];
        }
        return out;
    }

    @Override
    public float[] prefill(float[] embeddings, int count) {
        assertEquals(count * hidden, embeddings.length);
        for (int r = 0; r < count; r++) {
            cache.add(item(embeddings, r * hidden));
        }
        assertTrue("the context overflowed", cache.size() <= context);
        if (served < contents.size() && contents.get(served).equals(cache)) {
            int row = rows.get(served++);
            float[] out = new float[vocab];
            System.arraycopy(logits.data, row * vocab, out, 0, vocab);
            return out;
        }
        if (served < contents.size() && contents.get(served).size() == cache.size()) {
            List<Object> want = contents.get(served);
            int k = 0;
            while (want.get(k).equals(cache.get(k))) k++;
            fail("step " + served + ": cached position " + k + " holds " + cache.get(k) + ", Python's held "
                    + want.get(k) + " (" + want.subList(0, Math.min(want.size(), k + 5)) + ")");
        }
        return new float[vocab]; // an intermediate segment of a prompt: its logits go unused
    }

    private Object item(float[] e, int at) {
        if (e[at] == MARK) return (int) e[at + 1];
        int images = imageEmbeds.length / hidden;
        for (int i = 0; i < images; i++) {
            boolean same = true;
            for (int k = 0; k < hidden && same; k++) same = e[at + k] == imageEmbeds[i * hidden + k];
            if (same) return "image:" + i;
        }
        fail("a row that is neither a token's nor an image embedding");
        return null;
    }

    @Override
    public void truncate(int length) {
        assertTrue(length <= cache.size());
        while (cache.size() > length) cache.remove(cache.size() - 1);
    }

    @Override
    public int cachedLength() {
        return cache.size();
    }
}
