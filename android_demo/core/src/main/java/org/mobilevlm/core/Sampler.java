package org.mobilevlm.core;

import java.util.Arrays;
import java.util.stream.IntStream;

/**
 * Chooses tokens one at a time (mirrors {@code mobilevlm.generation.sampling.Sampler}, operation
 * for operation): repetition penalty over every text token seen, then temperature, top-k and
 * top-p, each in float32 as numpy computes them; the softmax in float64 with numpy's pairwise sum;
 * the token drawn by inverse CDF from one uniform number of the {@link RandomSource}. Temperature
 * 0 is greedy (the first maximum) and draws nothing.
 */
public final class Sampler {
    private final GenerationConfig config;
    private final RandomSource random;
    private final boolean[] seen;

    public Sampler(GenerationConfig config, int vocabSize, int[] contextIds, RandomSource random) {
        this.config = config;
        this.random = random;
        this.seen = new boolean[vocabSize];
        for (int id : contextIds) {
            if (id >= 0 && id < vocabSize) seen[id] = true;
        }
    }

    /** The next token for {@code logits} (vocab,) of the next position. */
    public int sample(float[] logits) {
        float[] scores = applyRepetitionPenalty(logits, seen, (float) config.repetitionPenalty);
        int token;
        if (config.greedy()) {
            token = argmax(scores);
        } else {
            float t = (float) config.temperature;
            float max = Float.NEGATIVE_INFINITY;
            for (float v : scores) max = Math.max(max, v);
            // shifted first: a tiny temperature sends the rest to -inf, not the best to inf
            float[] scaled = new float[scores.length];
            for (int k = 0; k < scaled.length; k++) scaled[k] = (scores[k] - max) / t;
            scaled = topP(topK(scaled, config.topK), config.topP);
            double[] cdf = softmax(scaled);
            for (int k = 1; k < cdf.length; k++) cdf[k] += cdf[k - 1];
            double x = random.nextDouble() * cdf[cdf.length - 1];
            token = Math.min(searchRight(cdf, x), cdf.length - 1);
        }
        seen[token] = true;
        return token;
    }

    /** Positive logits of seen ids divided by the penalty, negative ones multiplied. */
    static float[] applyRepetitionPenalty(float[] logits, boolean[] seen, float penalty) {
        boolean any = false;
        for (boolean s : seen) any |= s;
        if (penalty == 1.0f || !any) return logits;
        float[] out = logits.clone();
        for (int k = 0; k < out.length && k < seen.length; k++) {
            if (seen[k]) out[k] = out[k] < 0 ? out[k] * penalty : out[k] / penalty;
        }
        return out;
    }

    static int argmax(float[] v) {
        int best = 0;
        for (int k = 1; k < v.length; k++) {
            if (v[k] > v[best] || (Float.isNaN(v[k]) && !Float.isNaN(v[best]))) best = k;
        }
        return best;
    }

    /** The {@code k} largest logits and ties with the k-th kept; the rest -inf. */
    static float[] topK(float[] logits, int k) {
        if (k <= 0 || k >= logits.length) return logits;
        float[] sorted = logits.clone();
        Arrays.sort(sorted);
        float kth = sorted[sorted.length - k];
        float[] out = new float[logits.length];
        for (int i = 0; i < out.length; i++) {
            out[i] = logits[i] < kth ? Float.NEGATIVE_INFINITY : logits[i];
        }
        return out;
    }

    /** The smallest set of most likely tokens whose probability reaches {@code p} kept. */
    static float[] topP(float[] logits, double p) {
        if (p >= 1.0) return logits;
        Integer[] boxed = IntStream.range(0, logits.length).boxed().toArray(Integer[]::new);
        // stable and ascending, with numpy's < (Double.compare would put -0.0 before 0.0)
        Arrays.sort(boxed, (a, b) -> logits[a] < logits[b] ? -1 : logits[a] > logits[b] ? 1 : 0);
        float[] ordered = new float[logits.length];
        for (int k = 0; k < ordered.length; k++) ordered[k] = logits[boxed[k]];
        double[] probs = softmax(ordered);
        float[] out = logits.clone();
        double cumulative = 0;
        for (int k = 0; k < probs.length - 1; k++) { // the most likely token always stays
            cumulative += probs[k];
            if (cumulative <= 1.0 - p) out[boxed[k]] = Float.NEGATIVE_INFINITY;
        }
        return out;
    }

    /** float64 softmax: exp(x - max) over numpy's pairwise sum of them. */
    static double[] softmax(float[] logits) {
        float max = Float.NEGATIVE_INFINITY;
        for (float v : logits) max = Math.max(max, v);
        double[] e = new double[logits.length];
        for (int k = 0; k < e.length; k++) e[k] = Math.exp((double) logits[k] - (double) max);
        double sum = pairwiseSum(e, 0, e.length);
        for (int k = 0; k < e.length; k++) e[k] /= sum;
        return e;
    }

    /** numpy's summation order for a contiguous float64 array (8 accumulators per block of at
     * most 128, blocks halved at multiples of 8), so the normalizer is bit for bit numpy's. */
    static double pairwiseSum(double[] a, int from, int n) {
        if (n < 8) {
            double res = 0.0;
            for (int i = 0; i < n; i++) res += a[from + i];
            return res;
        }
        if (n <= 128) {
            double[] r = new double[8];
            for (int j = 0; j < 8; j++) r[j] = a[from + j];
            int i = 8;
            for (; i < n - (n % 8); i += 8) {
                for (int j = 0; j < 8; j++) r[j] += a[from + i + j];
            }
            double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for (; i < n; i++) res += a[from + i];
            return res;
        }
        int n2 = n / 2;
        n2 -= n2 % 8;
        return pairwiseSum(a, from, n2) + pairwiseSum(a, from + n2, n - n2);
    }

    /** numpy's {@code searchsorted(side="right")}: the count of entries <= x. */
    static int searchRight(double[] sorted, double x) {
        int lo = 0;
        int hi = sorted.length;
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (sorted[mid] <= x) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }
}
