package org.mobilevlm.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.BeforeClass;
import org.junit.Test;
import org.mobilevlm.core.desktop.ImageIoDecoder;

/**
 * The decode loop replays the built-in model's recorded generation to Python's tokens, text and
 * streamed pieces: greedy over three turns (each reusing the cached prefix), a seeded sampled run
 * over two turns with SeededRandom's draws (which Python's sampler was given), and a text-only
 * conversation; plus cancellation, a full context and an overflowing prompt.
 */
public class GenerationTest {
    private static Map<String, Object> generation;
    private static Bundle bundle;
    private static Tokenizer tokenizer;
    private static RawImage image;

    @BeforeClass
    public static void load() throws Exception {
        generation = Golden.map("generation.json");
        bundle = Bundle.open(Golden.bundle());
        tokenizer = Golden.tokenizer();
        Path file = Path.of((String) generation.get("image"));
        image = new ImageIoDecoder().decode(Files.readAllBytes(file), file.toString());
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> run(String name) {
        for (Object r : (List<?>) generation.get("runs")) {
            if (((Map<?, ?>) r).get("name").equals(name)) return (Map<String, Object>) r;
        }
        throw new AssertionError("no recorded run " + name);
    }

    @SuppressWarnings("unchecked")
    static List<Map<String, Object>> turns(Map<String, Object> run) {
        return (List<Map<String, Object>>) run.get("turns");
    }

    private void replay(String name) {
        Map<String, Object> run = run(name);
        ReplayEngine engine = new ReplayEngine(generation, turns(run));
        Conversation chat = new Conversation(bundle.model, tokenizer, engine);
        GenerationConfig config = SamplerTest.config((Map<?, ?>) run.get("settings"));
        long seed = (Long) generation.get("seed");
        config = config.withSampling(config.temperature, config.topK, config.topP, seed);
        boolean first = true;
        for (Map<String, Object> turn : turns(run)) {
            List<String> pieces = new ArrayList<>();
            List<Double> draws = new ArrayList<>();
            SeededRandom seeded = new SeededRandom(seed);
            RandomSource recording = () -> {
                double d = seeded.nextDouble();
                draws.add(d);
                return d;
            };
            RawImage given = first && (Boolean) run.get("with_image") ? image : null;
            Answer answer = chat.ask(given, (String) turn.get("question"), config, pieces::add, null, recording);
            first = false;
            String what = name + ": " + turn.get("question");
            assertArrayEquals(what, Golden.ints(turn.get("tokens")), answer.tokens);
            assertEquals(what, turn.get("text"), answer.text);
            assertEquals(what, turn.get("pieces"), pieces);
            assertEquals(what, turn.get("stop_reason"), answer.stats.stopReason);
            assertEquals(what, turn.get("cached_tokens"), (long) answer.stats.cachedTokens);
            assertEquals(what, turn.get("image_tokens"), (long) answer.stats.imageTokens);
            assertEquals(what, turn.get("prompt_tokens"), (long) answer.stats.promptTokens);
            List<?> recorded = (List<?>) turn.get("draws");
            assertEquals(what, recorded.size(), draws.size());
            for (int k = 0; k < draws.size(); k++) {
                assertEquals(what, Golden.number(recorded.get(k)), draws.get(k), 0.0);
            }
        }
        assertEquals(name + ": every recorded step served", engine.steps(), engine.served);
        assertEquals(name + ": the image encoded once", (Boolean) run.get("with_image") ? 1 : 0, engine.imagesEncoded);
    }

    @Test
    public void greedyTurnsGivePythonsTokensAndText() {
        replay("greedy");
    }

    @Test
    public void seededSampledTurnsGivePythonsTokensFromTheSameDraws() {
        replay("sampled");
    }

    @Test
    public void aTextOnlyConversationGivesPythonsAnswers() {
        replay("text_only");
    }

    @Test
    public void aCancelStopsAfterTheCurrentToken() {
        Map<String, Object> run = run("greedy");
        ReplayEngine engine = new ReplayEngine(generation, turns(run));
        Conversation chat = new Conversation(bundle.model, tokenizer, engine);
        CancelToken cancel = new CancelToken();
        GenerationConfig config = GenerationConfig.defaults();
        Answer answer = chat.ask(image, "What color is the circle?", config, piece -> cancel.cancel(), cancel);
        assertEquals("cancelled", answer.stats.stopReason);
        assertEquals(1, answer.tokens.length);
        CancelToken before = new CancelToken();
        before.cancel();
        Answer none = chat.ask(null, "What shape is blue?", config, null, before);
        assertEquals(0, none.tokens.length);
        assertEquals("cancelled", none.stats.stopReason);
    }

    @Test
    public void aFullContextEndsTheAnswer() {
        Map<String, Object> run = run("greedy");
        List<Map<String, Object>> turns = turns(run);
        ReplayEngine engine = new ReplayEngine(generation, turns);
        Conversation chat = new Conversation(bundle.model, tokenizer, engine);
        GenerationConfig config = GenerationConfig.defaults();
        chat.ask(image, (String) turns.get(0).get("question"), config, null, null);
        chat.ask(null, (String) turns.get(1).get("question"), config, null, null);
        Map<String, Object> last = turns.get(2); // a long answer
        int prompt = (int) ((Long) last.get("image_tokens") + (Long) last.get("prompt_tokens"));
        engine.context = prompt + 2; // the first token from the prefill, two decode steps
        Answer answer = chat.ask(null, (String) last.get("question"), config, null, null);
        assertEquals("context_full", answer.stats.stopReason);
        int[] expected = java.util.Arrays.copyOf(Golden.ints(last.get("tokens")), 3);
        assertArrayEquals(expected, answer.tokens);
    }

    @Test
    public void aPromptLongerThanTheContextIsRefused() {
        Map<String, Object> run = run("greedy");
        ReplayEngine engine = new ReplayEngine(generation, turns(run));
        engine.context = 20;
        Conversation chat = new Conversation(bundle.model, tokenizer, engine);
        ContextOverflowError e = assertThrows(ContextOverflowError.class,
                () -> chat.ask(image, "What color is the circle?", GenerationConfig.defaults(), null, null));
        Map<String, Object> turn = turns(run).get(0);
        long need = (Long) turn.get("image_tokens") + (Long) turn.get("prompt_tokens");
        assertEquals("the prompt needs " + need + " positions (" + turn.get("image_tokens") + " image + "
                + turn.get("prompt_tokens") + " text); the context holds 20", e.getMessage());
    }

    @Test
    public void statsAddUp() {
        Map<String, Object> run = run("greedy");
        ReplayEngine engine = new ReplayEngine(generation, turns(run));
        Conversation chat = new Conversation(bundle.model, tokenizer, engine);
        Answer a = chat.ask(image, "What color is the circle?", GenerationConfig.defaults(), null, null);
        GenerationStats s = a.stats;
        assertTrue(s.imageEncodeMs > 0);
        assertTrue(s.timeToFirstTokenMs() >= s.prefillMs);
        assertTrue(s.totalMs >= s.timeToFirstTokenMs());
        assertEquals(a.tokens.length, s.generatedTokens);
        assertTrue(s.decodeTokensPerS() >= 0);
        assertTrue(s.toString().contains("tokens/s"));
    }
}
