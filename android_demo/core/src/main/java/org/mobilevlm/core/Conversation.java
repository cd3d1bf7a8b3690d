package org.mobilevlm.core;

import java.nio.ByteBuffer;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * Turns over one image, on one {@link Engine} (mirrors {@code mobilevlm.runtime.pipeline.
 * Conversation}): the bundle's tokenizer, template and preprocessing, the sampler and the KV cache
 * kept between turns. The conversation keeps its token ids (the earlier prompts, the answers as
 * generated, then the template's text for the new turn), so the engine prefills only the new turn
 * and the image is encoded once.
 *
 * <pre>{@code
 * Conversation chat = Conversation.open(Bundle.open(dir), engine);
 * Answer a = chat.ask(image, "What color is the circle?", GenerationConfig.defaults(), System.out::print, null);
 * Answer b = chat.ask(null, "And the square?", GenerationConfig.defaults(), System.out::print, null);
 * }</pre>
 */
public final class Conversation implements AutoCloseable {
    private final ModelInfo model;
    private final Tokenizer tokenizer;
    private final PromptTemplate template;
    private final Preprocessor preprocessor;
    private final Engine engine;
    private final PrefixCache cache;
    private String system;

    private final List<Turn> turns = new ArrayList<>();
    private final List<Answer> answers = new ArrayList<>();
    private int[] ids = new int[0];
    private boolean withImage;
    private Object imageIdentity;
    private byte[] imageKey;
    private float[] imageEmbeds;

    public Conversation(ModelInfo model, Tokenizer tokenizer, Engine engine) {
        this.model = model;
        this.tokenizer = tokenizer;
        this.template = PromptTemplate.get(model.template);
        this.preprocessor = new Preprocessor(model.preprocess);
        this.engine = engine;
        this.cache = new PrefixCache(engine);
        this.system = model.systemPrompt;
    }

    /** A conversation over a bundle: its tokenizer read, its model's template and preprocessing. */
    public static Conversation open(Bundle bundle, Engine engine) {
        return new Conversation(bundle.model, Tokenizer.fromFile(bundle.tokenizerPath()), engine);
    }

    public Tokenizer tokenizer() {
        return tokenizer;
    }

    public List<Turn> turns() {
        return List.copyOf(turns);
    }

    public List<Answer> answers() {
        return List.copyOf(answers);
    }

    /** The system message (null: the model's, else the template's); starts over. */
    public void setSystem(String system) {
        this.system = system;
        reset();
    }

    /** Forget the turns (the KV cache keeps what a new prompt can reuse). */
    public void reset() {
        turns.clear();
        answers.clear();
        ids = new int[0];
    }

    /** The next turn with a seeded generator ({@code config.seed}, else a fresh seed). */
    public Answer ask(RawImage image, String question, GenerationConfig config, TokenListener listener,
            CancelToken cancel) {
        long seed = config.seed != null ? config.seed : new SecureRandom().nextLong();
        return ask(image, question, config, listener, cancel, new SeededRandom(seed));
    }

    /**
     * Answer {@code question} in the light of the earlier turns. {@code image}: a new image starts
     * the conversation over about it; null (or the same image again) goes on with the current one;
     * null on the first turn is a text-only conversation.
     */
    public Answer ask(RawImage image, String question, GenerationConfig config, TokenListener listener,
            CancelToken cancel, RandomSource random) {
        double encodeMs = 0.0;
        if (image != null && image != imageIdentity) {
            long t0 = System.nanoTime();
            float[] pixels = preprocessor.pixels(image);
            byte[] key = key(pixels);
            if (!withImage || !Arrays.equals(key, imageKey)) { // another image: start over
                imageEmbeds = engine.encodeImage(pixels, preprocessor.config.imageSize);
                imageKey = key;
                encodeMs = DecodeLoop.msSince(t0);
                reset();
                withImage = true;
            }
            imageIdentity = image; // only once encoded: an encode that threw is retried
        }
        int[] input = inputIds(question);
        Answer answer = DecodeLoop.run(engine, cache, tokenizer, model, template, input,
                withImage ? imageEmbeds : null, encodeMs, config, random, listener, cancel);
        int[] answerIds = answer.tokens;
        if (answer.stats.stopReason.equals("eos")) { // the template writes the end itself
            answerIds = Arrays.copyOf(answerIds, answerIds.length - 1);
        }
        ids = concat(input, answerIds);
        turns.add(new Turn(question, PyText.strip(answer.text)));
        answers.add(answer);
        return answer;
    }

    /** Start a text-only conversation (no image). */
    public void forgetImage() {
        withImage = false;
        imageIdentity = null;
        imageKey = null;
        imageEmbeds = null;
        reset();
    }

    private int[] inputIds(String question) {
        List<Turn> all = new ArrayList<>(turns);
        all.add(new Turn(question));
        if (turns.isEmpty()) {
            return tokenizer.encodePrompt(template.render(all, system, withImage));
        }
        // the template's text between the last answer and the new answer
        String marker = "\0answer\0";
        all.set(all.size() - 2, new Turn(all.get(all.size() - 2).user, marker));
        String text = template.render(all, system, withImage);
        String tail = text.substring(text.indexOf(marker) + marker.length());
        return concat(ids, tokenizer.encode(tail, false));
    }

    private static int[] concat(int[] a, int[] b) {
        int[] out = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }

    private static byte[] key(float[] pixels) {
        ByteBuffer bytes = ByteBuffer.allocate(pixels.length * 4);
        bytes.asFloatBuffer().put(pixels);
        try {
            return java.security.MessageDigest.getInstance("SHA-256").digest(bytes.array());
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    @Override
    public void close() {
        engine.close();
    }
}
