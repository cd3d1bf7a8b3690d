package org.mobilevlm.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;

import java.util.List;
import java.util.Map;
import org.junit.Test;

/** Given the same uniform draws (SplitMix64, which the golden script computes too), the Java
 * sampler picks Python's tokens under every filter; and SeededRandom is that stream bit for bit. */
public class SamplerTest {
    static GenerationConfig config(Map<?, ?> s) {
        GenerationConfig c = GenerationConfig.defaults();
        return new GenerationConfig(s.containsKey("max_new_tokens") ? ((Long) s.get("max_new_tokens")).intValue() : c.maxNewTokens,
                s.containsKey("temperature") ? Golden.number(s.get("temperature")) : c.temperature,
                s.containsKey("top_k") ? ((Long) s.get("top_k")).intValue() : c.topK,
                s.containsKey("top_p") ? Golden.number(s.get("top_p")) : c.topP,
                s.containsKey("repetition_penalty") ? Golden.number(s.get("repetition_penalty")) : c.repetitionPenalty,
                null, List.of(), false);
    }

    @Test
    public void tokensAndDrawsMatchPythonForEveryCase() {
        Npy.Array logits = Golden.npy("sampler_logits.npy");
        int width = logits.shape[1];
        for (Map<String, Object> e : Golden.list("sampler.json")) {
            int vocab = ((Long) e.get("vocab")).intValue();
            SeededRandom random = new SeededRandom((Long) e.get("seed"));
            double[] draws = new double[((List<?>) e.get("draws")).size()];
            RandomSource recording = new RandomSource() {
                int n;

                @Override
                public double nextDouble() {
                    double d = random.nextDouble();
                    draws[n++] = d;
                    return d;
                }
            };
            Sampler sampler = new Sampler(config((Map<?, ?>) e.get("settings")), vocab, Golden.ints(e.get("context")), recording);
            int[] expected = Golden.ints(e.get("tokens"));
            int first = ((Long) e.get("first_row")).intValue();
            int[] got = new int[expected.length];
            for (int step = 0; step < expected.length; step++) {
                float[] row = new float[vocab];
                System.arraycopy(logits.data, (first + step) * width, row, 0, vocab);
                got[step] = sampler.sample(row);
            }
            String name = e.get("settings").toString() + " vocab " + vocab;
            assertArrayEquals(name, expected, got);
            double[] recorded = ((List<?>) e.get("draws")).stream().mapToDouble(Golden::number).toArray();
            assertArrayEquals(name, recorded, draws, 0.0);
        }
    }

    @Test
    public void pairwiseSumIsNumpysOrder() {
        double[] a = new double[1000];
        for (int k = 0; k < a.length; k++) a[k] = 1.0 / (k + 1);
        double sequential = 0;
        for (double v : a) sequential += v;
        assertEquals(sequential, Sampler.pairwiseSum(a, 0, a.length), 1e-12);
    }

    @Test
    public void badSettingsAreOptionsErrors() {
        GenerationConfig d = GenerationConfig.defaults();
        assertEquals("top_p must be in (0, 1], got 0.0",
                org.junit.Assert.assertThrows(OptionsError.class, () -> d.withSampling(1.0, 0, 0.0, null)).getMessage());
        assertEquals("temperature must be >= 0, got -1.0",
                org.junit.Assert.assertThrows(OptionsError.class, () -> d.withSampling(-1, 0, 1.0, null)).getMessage());
    }
}
