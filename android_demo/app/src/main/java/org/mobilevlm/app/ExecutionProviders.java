package org.mobilevlm.app;

import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtProvider;
import ai.onnxruntime.OrtSession;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.EnumSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Execution providers by name, with the CPU as the fallback: the Android side of
 * runtime/ort/providers.py. The settings name one accelerator; a graph is opened on it
 * (ONNX Runtime places the nodes it cannot take on the CPU provider, which is always
 * there), and if the session cannot be made at all, on the CPU alone, with the reason kept
 * so that the screen says what runs where.
 */
final class ExecutionProviders {
    /** What the settings offer, in the order they are shown. */
    enum Provider {
        CPU(OrtProvider.CPU),
        XNNPACK(OrtProvider.XNNPACK),
        NNAPI(OrtProvider.NNAPI),
        QNN(OrtProvider.QNN);

        final OrtProvider ort;

        Provider(OrtProvider ort) {
            this.ort = ort;
        }
    }

    // session entries, as in the Python runtime
    static final String DISABLE_CPU_FALLBACK = "session.disable_cpu_ep_fallback";
    static final String QNN_HTP_LIBRARY = "libQnnHtp.so";

    private ExecutionProviders() {}

    /** The providers this ONNX Runtime build has (the plain AAR lacks QNN, the QNN one has it). */
    static EnumSet<Provider> available() {
        EnumSet<OrtProvider> built = OrtEnvironment.getAvailableProviders();
        EnumSet<Provider> out = EnumSet.of(Provider.CPU);
        for (Provider p : Provider.values()) {
            if (built.contains(p.ort)) out.add(p);
        }
        return out;
    }

    /**
     * QNN's provider options for the HTP (the NPU): its backend library, the fastest clock
     * (what a one-shot image encode wants), and the SoC an EPContext model was compiled for
     * ({@code soc_model}, {@code htp_arch}; empty map: none).
     */
    static Map<String, String> qnnOptions(String nativeLibraryDir, Map<String, String> compiledFor) {
        Map<String, String> options = new LinkedHashMap<>();
        Path bundled = nativeLibraryDir == null ? null : Paths.get(nativeLibraryDir, QNN_HTP_LIBRARY);
        boolean extracted = bundled != null && bundled.toFile().isFile();
        options.put("backend_path", extracted ? bundled.toString() : QNN_HTP_LIBRARY);
        options.put("htp_performance_mode", "burst");
        options.putAll(compiledFor);
        return options;
    }

    /** One way to open a graph: the model file, on a provider, the NPU required or not. */
    static final class Attempt {
        final Path model;
        final Provider provider;
        final Map<String, String> providerOptions;
        final boolean wholeGraph; // the provider must take every node (no CPU fallback)
        final String label; // what the screen says when this attempt is the one that opened

        Attempt(Path model, Provider provider, Map<String, String> options, boolean wholeGraph,
                String label) {
            this.model = model;
            this.provider = provider;
            this.providerOptions = options;
            this.wholeGraph = wholeGraph;
            this.label = label;
        }
    }

    /**
     * The first of {@code attempts} that opens. The reasons the earlier ones did not are kept
     * in {@link OpenSession#notes}; if none opens, the last error is thrown.
     */
    static OpenSession open(OrtEnvironment env, List<Attempt> attempts, int threads)
            throws OrtException {
        List<String> notes = new ArrayList<>();
        OrtException last = null;
        for (Attempt attempt : attempts) {
            OrtSession.SessionOptions options = options(attempt, threads);
            try {
                OrtSession session = env.createSession(attempt.model.toString(), options);
                return new OpenSession(session, attempt.model, options, attempt.label, notes);
            } catch (OrtException e) {
                options.close();
                last = e;
                notes.add(attempt.label + " did not load: " + firstLine(e.getMessage()));
            }
        }
        if (last == null) throw new IllegalArgumentException("no way to open the graph");
        throw last;
    }

    /** Session options as create_session makes them: every graph optimization, the threads. */
    private static OrtSession.SessionOptions options(Attempt attempt, int threads)
            throws OrtException {
        OrtSession.SessionOptions options = new OrtSession.SessionOptions();
        try {
            options.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT);
            if (threads > 0) options.setIntraOpNumThreads(threads);
            if (attempt.wholeGraph && attempt.provider != Provider.CPU) {
                options.addConfigEntry(DISABLE_CPU_FALLBACK, "1");
            }
            switch (attempt.provider) {
                case XNNPACK:
                    options.addXnnpack(attempt.providerOptions);
                    break;
                case NNAPI:
                    options.addNnapi();
                    break;
                case QNN:
                    options.addQnn(attempt.providerOptions);
                    break;
                case CPU:
                default:
                    break; // ONNX Runtime's own CPU provider, always present
            }
            return options;
        } catch (OrtException | RuntimeException e) {
            options.close();
            throw e;
        }
    }

    static String firstLine(String message) {
        if (message == null) return "(no message)";
        int end = message.indexOf('\n');
        return end < 0 ? message : message.substring(0, end);
    }

    static Map<String, String> none() {
        return Collections.emptyMap();
    }
}
