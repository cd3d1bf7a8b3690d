package org.mobilevlm.app;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OnnxValue;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.nio.FloatBuffer;
import java.util.Collections;
import java.util.List;
import java.util.Optional;
import org.mobilevlm.core.BundleError;
import org.mobilevlm.core.MobileVLMError;

/**
 * The vision encoder with its projector (runtime/ort/vision.py): a (1, 3, S, S) float32
 * pixel tensor in, (1, num_image_tokens, hidden) image embeddings out. The session is the
 * first of the bundle's forms that opened (the NPU's EPContext model, its QDQ graph, the CPU
 * graph: see {@link OrtEngine}).
 */
final class VisionSession implements AutoCloseable {
    // names fixed by mobilevlm.export.onnx_vision (the bundle contract)
    static final String PIXEL_VALUES = "pixel_values";
    static final String IMAGE_EMBEDS = "image_embeds";

    private final OrtEnvironment env;
    private final OpenSession opened;
    private final OrtSession.RunOptions runOptions;

    VisionSession(OrtEnvironment env, OpenSession opened) throws OrtException {
        if (!opened.session.getInputNames().contains(PIXEL_VALUES)) {
            throw new BundleError(MobileVLMError.at(opened.model,
                    "not a vision graph (inputs " + opened.session.getInputNames() + ")"));
        }
        this.env = env;
        this.opened = opened;
        this.runOptions = new OrtSession.RunOptions();
    }

    /** (3, size, size) channel-first pixels -> (tokens * hidden) row-major embeddings. */
    float[] encode(float[] pixels, int size) throws OrtException {
        if (pixels.length != 3 * size * size) {
            throw new IllegalArgumentException(pixels.length + " values are not a (3, " + size
                    + ", " + size + ") pixel tensor");
        }
        FloatBuffer data = DecoderSession.floats(pixels.length);
        data.put(pixels);
        data.rewind();
        try (OnnxTensor input = OnnxTensor.createTensor(env, data, new long[] {1, 3, size, size});
                OrtSession.Result result = opened.session.run(
                        Collections.singletonMap(PIXEL_VALUES, input),
                        Collections.singleton(IMAGE_EMBEDS), runOptions)) {
            Optional<OnnxValue> value = result.get(IMAGE_EMBEDS);
            if (!value.isPresent() || !(value.get() instanceof OnnxTensor)) {
                throw new IllegalStateException("the vision graph gave no " + IMAGE_EMBEDS);
            }
            FloatBuffer out = ((OnnxTensor) value.get()).getFloatBuffer();
            float[] embeddings = new float[out.remaining()];
            out.get(embeddings);
            return embeddings;
        }
    }

    /** Makes an encode in progress (or the next one) stop with an {@link OrtException}. */
    void interrupt(boolean stop) throws OrtException {
        runOptions.setTerminate(stop);
    }

    String provider() {
        return opened.description;
    }

    List<String> notes() {
        return opened.notes;
    }

    @Override
    public void close() throws OrtException {
        runOptions.close();
        opened.close();
    }
}
