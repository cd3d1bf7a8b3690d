package org.mobilevlm.app;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.mobilevlm.core.Bundle;
import org.mobilevlm.core.BundleError;

/**
 * Which of a bundle's artefacts the app runs, for a precision and an accelerator: the rules of
 * runtime/select.py. A precision names the decoder graph; the embedding table and the vision
 * graph follow from it and from the accelerator: behind QNN, the bundle's NPU form of the
 * vision graph (static QDQ, with its EPContext model precompiled for one SoC when exported);
 * behind another accelerator, the QDQ int8 graph; on the CPU, fp32.
 */
final class BundleSelection {
    static final List<String> PRECISION_PREFERENCE = Arrays.asList("int4", "int8", "fp32");
    static final List<String> NPU_VISION_PRECISIONS = Arrays.asList("w8a8", "w8a16");
    static final String ONNX = "onnx";
    static final String EPCONTEXT = "epcontext";
    /** The static QDQ int8 graph is the accelerators' form; the CPU keeps fp32 (faster there). */
    static final Map<String, String> VISION_ON_ACCELERATOR = new LinkedHashMap<>();

    static {
        VISION_ON_ACCELERATOR.put("fp32", "fp32");
        VISION_ON_ACCELERATOR.put("fp16", "fp16");
        VISION_ON_ACCELERATOR.put("int8", "int8");
        VISION_ON_ACCELERATOR.put("int4", "int8");
    }

    final String precision;
    final Bundle.Artefact decoder;
    final Bundle.Artefact embeddings;
    /** The vision graph for the accelerator. */
    final Bundle.Artefact vision;
    /** Its precompiled NPU form (QNN's EPContext model), or null. */
    final Bundle.Artefact visionContext;
    /** The graph to fall back to on the CPU when the accelerator does not open: fp32 if any. */
    final Bundle.Artefact cpuVision;

    private BundleSelection(String precision, Bundle.Artefact decoder, Bundle.Artefact embeddings,
            Bundle.Artefact vision, Bundle.Artefact visionContext, Bundle.Artefact cpuVision) {
        this.precision = precision;
        this.decoder = decoder;
        this.embeddings = embeddings;
        this.vision = vision;
        this.visionContext = visionContext;
        this.cpuVision = cpuVision;
    }

    /** Every artefact the app opens, for {@link Bundle#verify}. */
    List<Bundle.Artefact> artefacts() {
        List<Bundle.Artefact> out = new ArrayList<>();
        for (Bundle.Artefact a : new Bundle.Artefact[] {vision, embeddings, decoder, visionContext,
                cpuVision}) {
            if (a != null && !out.contains(a)) out.add(a);
        }
        return out;
    }

    /** The precisions the bundle has a decoder graph for. */
    static List<String> precisions(Bundle bundle) {
        List<String> out = new ArrayList<>();
        for (Bundle.Artefact a : bundle.of("decoder")) out.add(a.precision);
        return out;
    }

    /**
     * The artefacts for {@code precision} (null: the fastest exported) behind
     * {@code accelerator} (CPU: none).
     */
    static BundleSelection choose(Bundle bundle, String precision,
            ExecutionProviders.Provider accelerator) {
        List<String> available = precisions(bundle);
        if (precision == null) {
            for (String p : PRECISION_PREFERENCE) {
                if (available.contains(p)) {
                    precision = p;
                    break;
                }
            }
            if (precision == null) {
                throw new BundleError("the bundle has no ONNX decoder graph (it holds GGUF files,"
                        + " which this app does not run: export with --formats onnx)");
            }
        }
        Bundle.Artefact decoder = find(bundle, "decoder", precision, null);
        if (decoder == null) {
            throw new BundleError("the bundle has no " + precision + " decoder (exported: "
                    + (available.isEmpty() ? "none" : String.join(", ", available)) + ")");
        }
        Bundle.Artefact embeddings =
                find(bundle, "embeddings", precision.equals("fp32") ? "fp32" : "fp16", null);
        if (embeddings == null && !bundle.of("embeddings").isEmpty()) {
            embeddings = bundle.of("embeddings").get(0);
        }
        if (embeddings == null) throw new BundleError("the bundle lacks an embedding table");

        ExecutionProviders.Provider onto =
                accelerator == ExecutionProviders.Provider.CPU ? null : accelerator;
        Bundle.Artefact cpu = find(bundle, "vision", "fp32", ONNX);
        Bundle.Artefact vision = null;
        if (onto == ExecutionProviders.Provider.QNN) vision = npuVision(bundle);
        if (vision == null) {
            String wanted = onto == null ? "fp32" : VISION_ON_ACCELERATOR.getOrDefault(precision, "int8");
            vision = find(bundle, "vision", wanted, ONNX);
            if (vision == null) vision = cpu;
        }
        if (vision == null) {
            // a bundle for the NPU may ship only its QNN graph (docs/npu.md): run that anywhere
            vision = npuVision(bundle);
        }
        if (vision == null) throw new BundleError("the bundle lacks a vision graph");
        Bundle.Artefact context = onto == ExecutionProviders.Provider.QNN
                ? find(bundle, "vision", vision.precision, EPCONTEXT) : null;
        return new BundleSelection(precision, decoder, embeddings, vision, context,
                cpu != null ? cpu : vision);
    }

    /** The vision graph exported for QNN's HTP ({@code export --npu qnn}), if any. */
    static Bundle.Artefact npuVision(Bundle bundle) {
        for (String p : NPU_VISION_PRECISIONS) {
            Bundle.Artefact a = find(bundle, "vision", p, ONNX);
            if (a != null) return a;
        }
        return null;
    }

    /** The artefact of {@code component} at {@code precision} in {@code format} (null: any). */
    static Bundle.Artefact find(Bundle bundle, String component, String precision, String format) {
        for (Bundle.Artefact a : bundle.of(component)) {
            if (a.precision.equals(precision) && (format == null || a.format.equals(format))) {
                return a;
            }
        }
        return null;
    }

    /** Provider options naming the SoC an EPContext artefact was compiled for (or none). */
    static Map<String, String> compiledFor(Bundle.Artefact context) {
        Map<String, String> out = new LinkedHashMap<>();
        if (context == null) return out;
        for (String key : new String[] {"soc_model", "htp_arch"}) {
            Object value = context.details.get(key);
            if (value != null) out.put(key, String.valueOf(value));
        }
        return out;
    }
}
