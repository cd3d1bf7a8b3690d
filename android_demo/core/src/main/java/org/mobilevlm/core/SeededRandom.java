package org.mobilevlm.core;

/**
 * A seeded {@link RandomSource}: SplitMix64 (Steele, Lea and Flood, 2014), each double the top 53
 * bits of one output. Chosen because it is a few lines that any language reproduces bit for bit:
 * the golden files' Python script computes the same stream to record a seeded run.
 */
public final class SeededRandom implements RandomSource {
    private long state;

    public SeededRandom(long seed) {
        this.state = seed;
    }

    /** The next 64 random bits. */
    public long nextLong() {
        long z = (state += 0x9E3779B97F4A7C15L);
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    @Override
    public double nextDouble() {
        return (nextLong() >>> 11) * 0x1.0p-53;
    }
}
