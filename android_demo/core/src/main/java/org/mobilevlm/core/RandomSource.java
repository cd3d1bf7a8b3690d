package org.mobilevlm.core;

/**
 * Where the sampler takes its uniform numbers from: {@link SeededRandom} in the app, a replay of
 * recorded draws in the tests (the Java side cannot reproduce numpy's PCG64, so the sampling rule
 * is proven given the same draws).
 */
public interface RandomSource {
    /** A uniform double in [0, 1). */
    double nextDouble();
}
