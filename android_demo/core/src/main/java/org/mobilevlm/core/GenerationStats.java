package org.mobilevlm.core;

/**
 * Counts and wall-clock times (milliseconds) of one answer (mirrors {@code
 * mobilevlm.generation.result.GenerationStats}, with its derived figures).
 */
public final class GenerationStats {
    public int imageTokens;
    /** Text tokens of the prompt. */
    public int promptTokens;
    public int generatedTokens;
    /** Prompt positions reused from the KV cache (not prefilled again). */
    public int cachedTokens;
    /** Preprocessing + vision encoder + projector (0 when the embeddings were cached). */
    public double imageEncodeMs;
    /** The LLM over the image embeddings and the prompt's new positions. */
    public double prefillMs;
    /** Every token after the first. */
    public double decodeMs;
    public double totalMs;
    /** eos, stop_string, max_new_tokens, context_full or cancelled, as the Python side names them. */
    public String stopReason = "max_new_tokens";

    public int prefillTokens() {
        return imageTokens + promptTokens;
    }

    public double timeToFirstTokenMs() {
        return imageEncodeMs + prefillMs;
    }

    public double prefillTokensPerS() {
        int ran = prefillTokens() - cachedTokens;
        return prefillMs > 0 ? 1000.0 * ran / prefillMs : 0.0;
    }

    /** The first token comes out of the prefill; the decode loop makes the rest. */
    public double decodeTokensPerS() {
        int steps = Math.max(generatedTokens - 1, 0);
        return decodeMs > 0 ? 1000.0 * steps / decodeMs : 0.0;
    }

    @Override
    public String toString() {
        return String.format(java.util.Locale.ROOT,
                "encode %.1f ms, first token %.1f ms, %.1f tokens/s (%d image + %d prompt tokens, "
                        + "%d cached, %d generated, %s)",
                imageEncodeMs, timeToFirstTokenMs(), decodeTokensPerS(), imageTokens, promptTokens,
                cachedTokens, generatedTokens, stopReason);
    }
}
