package org.mobilevlm.core;

import java.util.List;
import java.util.Map;

/**
 * What the app needs of a bundle's model geometry (bundle.json's {@code model}): preprocessing,
 * the prompt template and system prompt, and the LLM's vocabulary, width, context and EOS ids.
 *
 * <p>Fields are checked as {@code mobilevlm.config.ModelConfig.from_dict} checks them, in its
 * order and with its messages, for the parts read here; the vision tower and projector are only
 * checked for their type (the app runs them as exported graphs and never reads their geometry).
 */
public final class ModelInfo {
    static final List<String> VISION_TYPES = List.of("clip_vit", "efficientnet_lite");
    static final List<String> PROJECTOR_TYPES = List.of("ldpnet", "ldpnetv2", "mlp2x_gelu", "linear");

    public final PreprocessConfig preprocess;
    public final String template;
    /** Null: the template's own system message. */
    public final String systemPrompt;
    public final int vocabSize;
    public final int hiddenSize;
    public final int maxPositionEmbeddings;
    /** Empty when the LLM declares none. */
    public final int[] eosTokenIds;

    ModelInfo(PreprocessConfig preprocess, String template, String systemPrompt, int vocabSize,
            int hiddenSize, int maxPositionEmbeddings, int[] eosTokenIds) {
        this.preprocess = preprocess;
        this.template = template;
        this.systemPrompt = systemPrompt;
        this.vocabSize = vocabSize;
        this.hiddenSize = hiddenSize;
        this.maxPositionEmbeddings = maxPositionEmbeddings;
        this.eosTokenIds = eosTokenIds;
    }

    /** A missing required key, as Python's KeyError names it ({@code 'vision'}). */
    static final class MissingKey extends RuntimeException {
        final String key;

        MissingKey(String key) {
            super(key);
            this.key = key;
        }
    }

    static Object required(Map<String, Object> data, String key) {
        if (!data.containsKey(key)) throw new MissingKey(key);
        return data.get(key);
    }

    @SuppressWarnings("unchecked")
    static ModelInfo fromJson(Object value) {
        if (!(value instanceof Map)) {
            throw new ConfigError(
                    "the model config must be an object, not " + PyRepr.typeName(value));
        }
        Map<String, Object> data = (Map<String, Object>) value;
        Object template = data.getOrDefault("template", "v1");
        Object system = data.get("system_prompt");
        if (!(template instanceof String) || !(system == null || system instanceof String)) {
            throw new ConfigError("the model's template and system_prompt must be strings");
        }
        checkVision(required(data, "vision"));
        checkProjector(required(data, "projector"));
        Object llm = required(data, "llm");
        ConfigFields f = ConfigFields.of("LLMConfig", llm);
        long vocab = f.integer("vocab_size", 32000L, false);
        long hidden = f.integer("hidden_size", 2048L, false);
        for (String name : new String[] {"intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads"}) {
            f.integer(name, 0L, false);
        }
        f.integer("head_dim", null, true);
        f.string("hidden_act", "silu");
        long context = f.integer("max_position_embeddings", 2048L, false);
        f.number("rms_norm_eps", 1e-6);
        f.number("rope_theta", 10000.0);
        for (String name : new String[] {"attention_bias", "mlp_bias", "tie_word_embeddings"}) {
            f.bool(name);
        }
        f.integer("bos_token_id", 1L, true);
        Long eos = f.integer("eos_token_id", 2L, true);
        f.integer("pad_token_id", null, true);
        PreprocessConfig preprocess = PreprocessConfig.fromJson(data.getOrDefault("preprocess", Map.of()));
        return new ModelInfo(preprocess, (String) template, (String) system, (int) vocab,
                (int) hidden, (int) context, eos == null ? new int[0] : new int[] {eos.intValue()});
    }

    private static void checkVision(Object vision) {
        if (!(vision instanceof Map)) {
            throw new ConfigError(
                    "the vision config must be an object, not " + PyRepr.typeName(vision));
        }
        Object kind = ((Map<?, ?>) vision).containsKey("type") ? ((Map<?, ?>) vision).get("type") : "clip_vit";
        if (!VISION_TYPES.contains(kind)) {
            throw new ConfigError("vision tower type " + PyRepr.repr(kind)
                    + " is not supported (expected one of " + String.join(", ", VISION_TYPES) + ")");
        }
    }

    private static void checkProjector(Object projector) {
        ConfigFields f = ConfigFields.of("ProjectorConfig", projector);
        String kind = f.string("type", "ldpnetv2");
        if (!PROJECTOR_TYPES.contains(kind)) {
            throw new ConfigError("projector type " + PyRepr.repr(kind)
                    + " is not supported (expected one of " + String.join(", ", PROJECTOR_TYPES) + ")");
        }
    }
}
