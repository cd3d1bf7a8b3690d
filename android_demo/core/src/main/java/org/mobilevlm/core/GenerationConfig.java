package org.mobilevlm.core;

import java.util.List;

/**
 * How an answer is generated (mirrors {@code mobilevlm.generation.sampling.GenerationConfig}):
 * temperature 0 is greedy; top-k 0 and top-p 1 disable those filters; a repetition penalty of 1
 * disables it. {@code seed} null draws a fresh seed. Immutable; the {@code with*} methods copy.
 */
public final class GenerationConfig {
    public final int maxNewTokens;
    public final double temperature;
    public final int topK;
    public final double topP;
    public final double repetitionPenalty;
    public final Long seed;
    /** In addition to the template's own. */
    public final List<String> stopStrings;
    /** Benchmarks: EOS and stop tokens never sampled, no stop string ends the answer. */
    public final boolean ignoreEos;

    public GenerationConfig(int maxNewTokens, double temperature, int topK, double topP,
            double repetitionPenalty, Long seed, List<String> stopStrings, boolean ignoreEos) {
        this.maxNewTokens = maxNewTokens;
        this.temperature = temperature;
        this.topK = topK;
        this.topP = topP;
        this.repetitionPenalty = repetitionPenalty;
        this.seed = seed;
        this.stopStrings = List.copyOf(stopStrings);
        this.ignoreEos = ignoreEos;
        check("temperature", temperature);
        check("top_p", topP);
        check("repetition_penalty", repetitionPenalty);
        for (String s : stopStrings) {
            if (s.isEmpty()) throw new OptionsError("stop strings must be non-empty strings");
        }
        if (maxNewTokens < 0) throw new OptionsError("max_new_tokens must be >= 0, got " + maxNewTokens);
        if (temperature < 0) throw new OptionsError("temperature must be >= 0, got " + PyRepr.reprFloat(temperature));
        if (topK < 0) throw new OptionsError("top_k must be >= 0, got " + topK);
        if (!(topP > 0 && topP <= 1)) throw new OptionsError("top_p must be in (0, 1], got " + PyRepr.reprFloat(topP));
        if (repetitionPenalty <= 0) {
            throw new OptionsError("repetition_penalty must be > 0, got " + PyRepr.reprFloat(repetitionPenalty));
        }
    }

    private static void check(String name, double value) {
        if (Double.isNaN(value) || Double.isInfinite(value)) {
            throw new OptionsError(name + " must be finite, got " + PyRepr.reprFloat(value));
        }
    }

    /** The Python defaults (DEFAULT_MAX_NEW_TOKENS): 128 new tokens, greedy. */
    public static GenerationConfig defaults() {
        return new GenerationConfig(128, 0.0, 0, 1.0, 1.0, null, List.of(), false);
    }

    public boolean greedy() {
        return temperature == 0.0;
    }

    public GenerationConfig withMaxNewTokens(int n) {
        return new GenerationConfig(n, temperature, topK, topP, repetitionPenalty, seed, stopStrings, ignoreEos);
    }

    /** Sampling settings (a seed null: fresh each answer). */
    public GenerationConfig withSampling(double temperature, int topK, double topP, Long seed) {
        return new GenerationConfig(maxNewTokens, temperature, topK, topP, repetitionPenalty, seed, stopStrings, ignoreEos);
    }

    public GenerationConfig withRepetitionPenalty(double penalty) {
        return new GenerationConfig(maxNewTokens, temperature, topK, topP, penalty, seed, stopStrings, ignoreEos);
    }

    public GenerationConfig withStopStrings(List<String> stops) {
        return new GenerationConfig(maxNewTokens, temperature, topK, topP, repetitionPenalty, seed, stops, ignoreEos);
    }

    public GenerationConfig withIgnoreEos(boolean ignore) {
        return new GenerationConfig(maxNewTokens, temperature, topK, topP, repetitionPenalty, seed, stopStrings, ignore);
    }
}
