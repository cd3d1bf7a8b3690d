package org.mobilevlm.app;

import ai.onnxruntime.NodeInfo;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.TensorInfo;
import ai.onnxruntime.ValueInfo;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.mobilevlm.core.Bundle;
import org.mobilevlm.core.BundleError;
import org.mobilevlm.core.Engine;
import org.mobilevlm.core.MobileVLMError;
import org.mobilevlm.core.ModelInfo;

/**
 * The core's {@link Engine} over ONNX Runtime: a bundle's vision graph, its token embedding
 * table and its decoder graph with the KV cache, opened on the accelerator the settings name
 * (the Android counterpart of runtime/ort/model.py's OnnxVLM).
 */
final class OrtEngine implements Engine {
    /** How to load: the accelerator, the decoder precision (null: fastest), threads, context. */
    static final class Options {
        ExecutionProviders.Provider provider = ExecutionProviders.Provider.CPU;
        String precision; // null: the fastest the bundle has
        int threads; // 0: ONNX Runtime's default
        int context = 1024; // KV cache positions (a phone's memory: see the README)
        String nativeLibraryDir; // where the QNN AAR's libQnnHtp.so was extracted
    }

    /** A run stopped by {@link #interrupt}: an encode or a prefill, between its kernels. */
    static final class Interrupted extends RuntimeException {
        Interrupted(Throwable cause) {
            super("stopped", cause);
        }
    }

    private final BundleSelection selection;
    private final ModelInfo model;
    private final VisionSession vision;
    private final EmbeddingTable table;
    private final DecoderSession decoder;
    private final long cacheBytes;
    private volatile boolean interrupted;

    private OrtEngine(BundleSelection selection, ModelInfo model, VisionSession vision,
            EmbeddingTable table, DecoderSession decoder, long cacheBytes) {
        this.selection = selection;
        this.model = model;
        this.vision = vision;
        this.table = table;
        this.decoder = decoder;
        this.cacheBytes = cacheBytes;
    }

    /**
     * Selects, verifies (size always, sha256 once per process) and opens the bundle's
     * artefacts. Errors are the core's {@link MobileVLMError}s naming the file, or an
     * {@link OrtException} when ONNX Runtime cannot run a graph even on the CPU.
     */
    static OrtEngine load(Bundle bundle, Options options) throws OrtException, IOException {
        BundleSelection selection = BundleSelection.choose(bundle, options.precision,
                options.provider);
        bundle.verify(selection.artefacts(), Bundle.Verify.AUTO);
        OrtEnvironment env = OrtEnvironment.getEnvironment();
        Path root = bundle.root;
        ModelInfo model = bundle.model;
        int capacity = Math.min(options.context, model.maxPositionEmbeddings);
        VisionSession vision = null;
        EmbeddingTable table = null;
        DecoderSession decoder = null;
        try {
            OpenSession decoderSession = ExecutionProviders.open(env,
                    decoderAttempts(root.resolve(selection.decoder.path()), options.provider),
                    options.threads);
            int[] geometry;
            try {
                geometry = cacheGeometry(decoderSession);
            } catch (OrtException | RuntimeException e) {
                closeQuietly(decoderSession);
                throw e;
            }
            // from here the DecoderSession owns the session (it closes it if it fails)
            decoder = new DecoderSession(env, decoderSession, geometry[0], geometry[1],
                    geometry[2], model.hiddenSize, model.vocabSize, capacity);
            long cacheBytes = DecoderSession.cacheBytes(geometry[0], geometry[1], geometry[2],
                    capacity);
            table = new EmbeddingTable(root.resolve(selection.embeddings.path()),
                    model.vocabSize, model.hiddenSize);
            OpenSession visionSession = ExecutionProviders.open(env,
                    visionAttempts(root, selection, options), options.threads);
            try {
                vision = new VisionSession(env, visionSession);
            } catch (OrtException | RuntimeException e) {
                closeQuietly(visionSession);
                throw e;
            }
            return new OrtEngine(selection, model, vision, table, decoder, cacheBytes);
        } catch (OrtException | IOException | RuntimeException e) {
            closeQuietly(vision);
            closeQuietly(table);
            closeQuietly(decoder);
            throw e;
        }
    }

    /** The decoder never goes to the NPU (it takes none of it); other accelerators are offered
     * it, and the CPU runs what they do not take. */
    private static List<ExecutionProviders.Attempt> decoderAttempts(Path graph,
            ExecutionProviders.Provider provider) {
        List<ExecutionProviders.Attempt> attempts = new ArrayList<>();
        String file = graph.getFileName().toString();
        if (provider == ExecutionProviders.Provider.XNNPACK
                || provider == ExecutionProviders.Provider.NNAPI) {
            attempts.add(new ExecutionProviders.Attempt(graph, provider, ExecutionProviders.none(),
                    false, provider + " with CPU fallback (" + file + ")"));
        }
        attempts.add(new ExecutionProviders.Attempt(graph, ExecutionProviders.Provider.CPU,
                ExecutionProviders.none(), false, "CPU (" + file + ")"));
        return attempts;
    }

    /**
     * The vision graph's ways to open, best first. Behind QNN: the EPContext model with the
     * whole graph on the NPU (it loads only on the HTP architecture it was compiled for), the
     * QDQ graph compiled at load with the whole graph on the NPU, the QDQ graph with what the
     * NPU refuses on the CPU, and last the CPU graph. Behind another accelerator: its graph
     * there, then the CPU graph. Each QNN session is made for the SoC the EPContext model names.
     */
    private static List<ExecutionProviders.Attempt> visionAttempts(Path root,
            BundleSelection selection, Options options) {
        List<ExecutionProviders.Attempt> attempts = new ArrayList<>();
        Path graph = root.resolve(selection.vision.path());
        String file = graph.getFileName().toString();
        ExecutionProviders.Provider provider = options.provider;
        if (provider == ExecutionProviders.Provider.QNN) {
            Map<String, String> qnn = ExecutionProviders.qnnOptions(options.nativeLibraryDir,
                    BundleSelection.compiledFor(selection.visionContext));
            if (selection.visionContext != null) {
                Path context = root.resolve(selection.visionContext.path());
                attempts.add(new ExecutionProviders.Attempt(context, provider, qnn, true,
                        "QNN, whole graph (" + context.getFileName() + ", precompiled)"));
            }
            attempts.add(new ExecutionProviders.Attempt(graph, provider, qnn, true,
                    "QNN, whole graph (" + file + ", compiled at load)"));
            attempts.add(new ExecutionProviders.Attempt(graph, provider, qnn, false,
                    "QNN with CPU fallback (" + file + ")"));
        } else if (provider != ExecutionProviders.Provider.CPU) {
            attempts.add(new ExecutionProviders.Attempt(graph, provider, ExecutionProviders.none(),
                    false, provider + " with CPU fallback (" + file + ")"));
        }
        Path cpu = root.resolve(selection.cpuVision.path());
        attempts.add(new ExecutionProviders.Attempt(cpu, ExecutionProviders.Provider.CPU,
                ExecutionProviders.none(), false, "CPU (" + cpu.getFileName() + ")"));
        return attempts;
    }

    /**
     * (layers, kv_heads, head_dim) read from the decoder graph itself: one past_key_N input per
     * layer, each (batch, kv_heads, capacity, head_dim) with the two middle sizes fixed by the
     * export. The graph is the contract the cache must fit.
     */
    private static int[] cacheGeometry(OpenSession decoder) throws OrtException {
        Map<String, NodeInfo> inputs = decoder.session.getInputInfo();
        int layers = 0;
        while (inputs.containsKey("past_key_" + layers)) layers++;
        ValueInfo info = inputs.get("past_key_0").getInfo();
        long[] shape = info instanceof TensorInfo ? ((TensorInfo) info).getShape() : new long[0];
        if (layers == 0 || shape.length != 4 || shape[1] < 1 || shape[3] < 1) {
            throw new BundleError(MobileVLMError.at(decoder.model,
                    "not a decoder graph with a (batch, kv_heads, capacity, head_dim) KV cache"));
        }
        return new int[] {layers, (int) shape[1], (int) shape[3]};
    }

    /** What runs where, for the status line. */
    String describe() {
        StringBuilder out = new StringBuilder();
        out.append(String.format(Locale.ROOT, "%s decoder on %s; vision on %s; KV cache %d"
                + " positions (%.0f MiB)", selection.precision, decoder.provider(),
                vision.provider(), decoder.capacity(), cacheBytes / 1048576.0));
        for (String note : decoder.notes()) out.append("\n").append(note);
        for (String note : vision.notes()) out.append("\n").append(note);
        return out.toString();
    }

    /** Stops an image encode or a prefill in progress, and any started before {@link #resume}. */
    void interrupt() {
        interrupted = true;
        try {
            vision.interrupt(true);
            decoder.interrupt(true);
        } catch (OrtException e) {
            // the runs then end at their next token, through the core's CancelToken
        }
    }

    /** Lets runs go again after {@link #interrupt}. */
    void resume() {
        interrupted = false;
        try {
            vision.interrupt(false);
            decoder.interrupt(false);
        } catch (OrtException e) {
            throw new IllegalStateException("cannot reset ONNX Runtime's run options", e);
        }
    }

    @Override
    public int hiddenSize() {
        return model.hiddenSize;
    }

    @Override
    public int vocabSize() {
        return model.vocabSize;
    }

    @Override
    public int contextLength() {
        return decoder.capacity();
    }

    @Override
    public float[] encodeImage(float[] pixels, int size) {
        try {
            return vision.encode(pixels, size);
        } catch (OrtException e) {
            throw failure("the vision graph", e);
        }
    }

    @Override
    public float[] embedTokens(int[] ids) {
        try {
            return table.rows(ids);
        } catch (IOException e) {
            throw new BundleError(MobileVLMError.at(selection.embeddings.path(),
                    "cannot be read (" + e.getMessage() + ")"));
        }
    }

    @Override
    public float[] prefill(float[] embeddings, int rows) {
        try {
            return decoder.forward(embeddings, rows);
        } catch (OrtException e) {
            throw failure("the decoder graph", e);
        }
    }

    @Override
    public void truncate(int length) {
        decoder.truncate(length);
    }

    @Override
    public int cachedLength() {
        return decoder.length();
    }

    private RuntimeException failure(String what, OrtException e) {
        if (interrupted) return new Interrupted(e);
        return new IllegalStateException("ONNX Runtime failed running " + what + ": "
                + ExecutionProviders.firstLine(e.getMessage()), e);
    }

    @Override
    public void close() {
        closeQuietly(vision);
        closeQuietly(table);
        closeQuietly(decoder);
    }

    private static void closeQuietly(AutoCloseable closeable) {
        if (closeable == null) return;
        try {
            closeable.close();
        } catch (Exception e) {
            // closing native sessions: nothing left to do about a failure
        }
    }
}
