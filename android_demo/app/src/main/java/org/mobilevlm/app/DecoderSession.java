package org.mobilevlm.app;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.mobilevlm.core.BundleError;
import org.mobilevlm.core.ContextOverflowError;
import org.mobilevlm.core.MobileVLMError;

/**
 * The LLM decoder graph with its KV cache, as runtime/ort/decoder.py and kv_cache.py run it.
 *
 * <p>Made once at load: per layer one direct buffer for the keys and one for the values,
 * (1, kv_heads, capacity, head_dim) float32, each wrapped in an {@link OnnxTensor} that is
 * passed both as the {@code past_key_N} input and as the pinned {@code present_key_N}
 * output; GroupQueryAttention then writes the new positions into the same memory, so a step
 * copies and allocates no cache. The logits output, the two length scalars and a one-token
 * input are pinned the same way. A decode step writes the token's embedding and the lengths
 * into those buffers and runs. A prefill of several rows wraps its own input once.
 */
final class DecoderSession implements AutoCloseable {
    // names fixed by mobilevlm.export.onnx_decoder (the bundle contract)
    static final String INPUT_EMBEDS = "inputs_embeds";
    static final String SEQLENS_K = "seqlens_k";
    static final String TOTAL_SEQUENCE_LENGTH = "total_sequence_length";
    static final String LOGITS = "logits";

    private final OrtEnvironment env;
    private final OpenSession opened;
    private final int hidden;
    private final int vocab;
    private final int capacity;
    private int length; // positions filled; attention reads only these

    private final FloatBuffer tokenData;
    private final OnnxTensor token;
    private final IntBuffer seqlensData;
    private final IntBuffer totalData;
    private final FloatBuffer logitsData;
    private final List<OnnxTensor> owned = new ArrayList<>();
    private final Map<String, OnnxTensor> inputs = new HashMap<>();
    private final Map<String, OnnxTensor> outputs = new HashMap<>();
    private final OrtSession.RunOptions runOptions;

    DecoderSession(OrtEnvironment env, OpenSession opened, int layers, int kvHeads, int headDim,
            int hidden, int vocab, int capacity) throws OrtException {
        this.env = env;
        this.opened = opened;
        this.hidden = hidden;
        this.vocab = vocab;
        this.capacity = capacity;
        Set<String> names = opened.session.getInputNames();
        for (String needed : new String[] {INPUT_EMBEDS, SEQLENS_K, TOTAL_SEQUENCE_LENGTH,
                "past_key_0"}) {
            if (!names.contains(needed)) {
                opened.close(); // as on any failure below: the session is ours once passed in
                throw new BundleError(MobileVLMError.at(opened.model,
                        "not a decoder graph (inputs " + names + ")"));
            }
        }
        runOptions = new OrtSession.RunOptions();
        try {
            tokenData = floats(hidden);
            token = own(OnnxTensor.createTensor(env, tokenData, new long[] {1, 1, hidden}));
            seqlensData = ints(1);
            totalData = ints(1);
            inputs.put(SEQLENS_K, own(OnnxTensor.createTensor(env, seqlensData, new long[] {1})));
            inputs.put(TOTAL_SEQUENCE_LENGTH,
                    own(OnnxTensor.createTensor(env, totalData, new long[0]))); // a scalar
            logitsData = floats(vocab);
            outputs.put(LOGITS, own(OnnxTensor.createTensor(env, logitsData,
                    new long[] {1, 1, vocab})));
            long[] shape = {1, kvHeads, capacity, headDim};
            int values = kvHeads * capacity * headDim;
            for (int layer = 0; layer < layers; layer++) {
                // present_* bound to the past_* buffer: the cache is updated in place
                OnnxTensor keys = own(OnnxTensor.createTensor(env, floats(values), shape));
                OnnxTensor vals = own(OnnxTensor.createTensor(env, floats(values), shape));
                inputs.put("past_key_" + layer, keys);
                inputs.put("past_value_" + layer, vals);
                outputs.put("present_key_" + layer, keys);
                outputs.put("present_value_" + layer, vals);
            }
        } catch (OrtException | RuntimeException e) {
            close();
            throw e;
        }
    }

    /** KV cache bytes: what the cache holds at any length (it is allocated to capacity). */
    static long cacheBytes(int layers, int kvHeads, int headDim, int capacity) {
        return 2L * layers * kvHeads * headDim * capacity * Float.BYTES;
    }

    int capacity() {
        return capacity;
    }

    int length() {
        return length;
    }

    /** Keeps the first {@code keep} positions (the rest are overwritten by the next run). */
    void truncate(int keep) {
        if (keep < 0) throw new IllegalArgumentException("cannot keep " + keep + " positions");
        length = Math.min(keep, length);
    }

    /**
     * Appends {@code rows} input-embedding rows ({@code embeddings}: rows * hidden, row-major)
     * to the cache; the logits (vocab) of the last of them.
     */
    float[] forward(float[] embeddings, int rows) throws OrtException {
        if (rows < 1 || embeddings.length != rows * hidden) {
            throw new IllegalArgumentException(
                    rows + " rows of " + hidden + " do not make " + embeddings.length + " values");
        }
        if (rows > capacity - length) {
            throw new ContextOverflowError(rows + " more positions do not fit: " + length
                    + " of the context's " + capacity + " are used");
        }
        if (rows == 1) { // a decode step: written straight into the pinned input buffer
            tokenData.clear();
            tokenData.put(embeddings);
            return run(token, 1);
        }
        FloatBuffer data = floats(rows * hidden);
        data.put(embeddings);
        data.rewind();
        try (OnnxTensor prompt = OnnxTensor.createTensor(env, data, new long[] {1, rows, hidden})) {
            return run(prompt, rows);
        }
    }

    private float[] run(OnnxTensor input, int rows) throws OrtException {
        int total = length + rows;
        seqlensData.put(0, total - 1); // tokens in the cache after this call, minus one
        totalData.put(0, total);
        inputs.put(INPUT_EMBEDS, input);
        try {
            // the pinned outputs hold the results: the Result owns none of them
            opened.session.run(inputs, Collections.<String>emptySet(), outputs, runOptions).close();
            length = total;
        } finally {
            inputs.put(INPUT_EMBEDS, token);
        }
        float[] logits = new float[vocab];
        logitsData.rewind();
        logitsData.get(logits);
        return logits;
    }

    /** Makes a run in progress (or the next one) stop with an {@link OrtException}. */
    void interrupt(boolean stop) throws OrtException {
        runOptions.setTerminate(stop);
    }

    String provider() {
        return opened.description;
    }

    List<String> notes() {
        return opened.notes;
    }

    private OnnxTensor own(OnnxTensor tensor) {
        owned.add(tensor);
        return tensor;
    }

    static FloatBuffer floats(int count) {
        return ByteBuffer.allocateDirect(count * Float.BYTES).order(ByteOrder.nativeOrder())
                .asFloatBuffer();
    }

    static IntBuffer ints(int count) {
        return ByteBuffer.allocateDirect(count * Integer.BYTES).order(ByteOrder.nativeOrder())
                .asIntBuffer();
    }

    @Override
    public void close() throws OrtException {
        for (OnnxTensor tensor : owned) tensor.close();
        owned.clear();
        if (runOptions != null) runOptions.close();
        opened.close();
    }
}
