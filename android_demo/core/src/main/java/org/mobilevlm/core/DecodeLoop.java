package org.mobilevlm.core;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

/**
 * The decode loop (mirrors {@code mobilevlm.generation.decode_loop.stream}): prompt ids with the
 * image embeddings at the placeholder -> prefill -> one token at a time from the sampler, until
 * EOS, a stop string, the token budget, a full context or a cancel; each final piece of text goes
 * to the listener as it is produced.
 */
final class DecodeLoop {
    private DecodeLoop() {}

    static double msSince(long startNanos) {
        return (System.nanoTime() - startNanos) / 1e6;
    }

    static Answer run(Engine engine, PrefixCache cache, Tokenizer tokenizer, ModelInfo model,
            PromptTemplate template, int[] inputIds, float[] imageEmbeds, double imageEncodeMs,
            GenerationConfig config, RandomSource random, TokenListener listener, CancelToken cancel) {
        long start = System.nanoTime() - (long) (imageEncodeMs * 1e6);
        GenerationStats stats = new GenerationStats();
        stats.imageEncodeMs = imageEncodeMs;
        List<Integer> text = new ArrayList<>();
        for (int id : inputIds) if (id != Tokenizer.IMAGE_TOKEN_ID) text.add(id);
        int[] textIds = text.stream().mapToInt(Integer::intValue).toArray();
        stats.promptTokens = textIds.length;
        if (imageEmbeds != null) stats.imageTokens = imageEmbeds.length / engine.hiddenSize();

        int context = engine.contextLength();
        if (stats.prefillTokens() >= context) {
            throw new ContextOverflowError("the prompt needs " + stats.prefillTokens()
                    + " positions (" + stats.imageTokens + " image + " + stats.promptTokens
                    + " text); the context holds " + context);
        }
        List<String> stopStrings = new ArrayList<>(template.stopStrings);
        stopStrings.addAll(config.stopStrings);
        Set<Integer> stops = new HashSet<>();
        for (int id : model.eosTokenIds) stops.add(id);
        for (String s : stopStrings) {
            Integer id = tokenizer.tokenToId(s);
            if (id != null) stops.add(id);
        }
        int[] banned = config.ignoreEos
                ? stops.stream().mapToInt(Integer::intValue).sorted().toArray() : new int[0];
        if (config.ignoreEos) {
            stops.clear();
            stopStrings.clear();
        }
        Sampler sampler = new Sampler(config, model.vocabSize, textIds, random);
        TextStream stream = new TextStream(tokenizer, stopStrings);

        long t0 = System.nanoTime();
        float[] logits = cache.prefill(inputIds, imageEmbeds);
        stats.prefillMs = msSince(t0);
        stats.cachedTokens = stats.prefillTokens() - cache.lastPrefill;

        List<Integer> generated = new ArrayList<>();
        int position = stats.prefillTokens();
        t0 = System.nanoTime();
        while (true) {
            if (generated.size() >= config.maxNewTokens) {
                stats.stopReason = "max_new_tokens";
                break;
            }
            if (position >= context) {
                stats.stopReason = "context_full";
                break;
            }
            if (cancel != null && cancel.isCancelled()) {
                stats.stopReason = "cancelled";
                break;
            }
            if (!generated.isEmpty()) { // the first token comes from the prefill's logits
                logits = cache.decode(generated.get(generated.size() - 1));
                position++;
            }
            if (banned.length > 0) {
                logits = logits.clone();
                for (int id : banned) if (id < logits.length) logits[id] = Float.NEGATIVE_INFINITY;
            }
            int token = sampler.sample(logits);
            generated.add(token);
            if (stops.contains(token)) {
                stats.stopReason = "eos";
                break;
            }
            String piece = stream.push(token);
            if (!piece.isEmpty() && listener != null) listener.onText(piece);
            if (stream.stopped()) {
                stats.stopReason = "stop_string";
                break;
            }
        }
        stats.decodeMs = generated.size() > 1 ? msSince(t0) : 0.0;
        String tail = stream.finish();
        if (!tail.isEmpty() && listener != null) listener.onText(tail);
        stats.generatedTokens = generated.size();
        stats.totalMs = msSince(start);
        return new Answer(stream.text(), generated.stream().mapToInt(Integer::intValue).toArray(), stats);
    }
}
