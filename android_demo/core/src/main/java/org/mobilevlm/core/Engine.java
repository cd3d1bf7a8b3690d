package org.mobilevlm.core;

/** The model behind the decode loop: one implementation per runtime (ONNX Runtime on Android; a replay of recorded logits in the tests). */
public interface Engine extends AutoCloseable {
    int hiddenSize();
    int vocabSize();
    /** Positions the KV cache holds. */
    int contextLength();
    /** (numImageTokens * hiddenSize) row-major image embeddings of a channel-first (3, size, size) pixel tensor. */
    float[] encodeImage(float[] pixels, int size);
    /** (ids.length * hiddenSize) row-major token embeddings. */
    float[] embedTokens(int[] ids);
    /** Appends `rows` input-embedding rows at the end of the KV cache; returns the logits (vocabSize) of the last row. */
    float[] prefill(float[] embeddings, int rows);
    /** Keeps the first `length` cached positions (0 empties the cache). */
    void truncate(int length);
    /** Positions the KV cache holds now. */
    int cachedLength();
    @Override default void close() {}
}
