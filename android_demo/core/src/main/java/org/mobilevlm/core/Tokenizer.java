package org.mobilevlm.core;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.text.Normalizer;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * A byte-level BPE tokenizer read from a Hugging Face tokenizer.json, giving the ids the {@code
 * tokenizers} library gives (mirrors {@code mobilevlm.generation.tokenizer.Tokenizer}).
 *
 * <p>Encoding: added tokens cut out first, then the declared normalizer (none, or Unicode NFC /
 * NFKC / NFD / NFKD), the declared pre-tokenizers (a Sequence of Digits and ByteLevel, as SmolLM2
 * and GPT-2 style tokenizers have), BPE, and the post-processor's special tokens when asked for.
 * Anything else in the file is refused with a {@link TokenizerError}, never approximated.
 */
public final class Tokenizer {
    /** Marks the image's position in a token sequence (LLaVA's IMAGE_TOKEN_INDEX). */
    public static final int IMAGE_TOKEN_ID = -200;

    private final Bpe bpe;
    private final AddedTokens added;
    private final List<Step> preTokenizers;
    private final Normalizer.Form normalizer;
    /** Ids the post-processor puts before and after a single sequence. */
    private final int[] prefix;
    private final int[] suffix;
    private final String source;
    private final Integer bosTokenId;

    /** One pre-tokenization step over the pieces so far. */
    private interface Step {
        List<String> apply(String piece);
    }

    private Tokenizer(Bpe bpe, AddedTokens added, List<Step> preTokenizers, Normalizer.Form normalizer,
            int[] prefix, int[] suffix, String source) {
        this.bpe = bpe;
        this.added = added;
        this.preTokenizers = preTokenizers;
        this.normalizer = normalizer;
        this.prefix = prefix;
        this.suffix = suffix;
        this.source = source;
        int[] leading = encode("", true);
        this.bosTokenId = leading.length > 0 ? leading[0] : null;
    }

    public static Tokenizer fromFile(Path path) {
        if (!Files.isRegularFile(path)) {
            throw new TokenizerError(MobileVLMError.at(path, "no such tokenizer file"));
        }
        try {
            String text = new String(Files.readAllBytes(path), StandardCharsets.UTF_8);
            return fromJson(Json.parse(text), path.toString());
        } catch (IOException | Json.ParseError | TokenizerError | ClassCastException
                | NullPointerException e) {
            throw new TokenizerError(MobileVLMError.at(
                    path, "not a valid tokenizer.json (" + e.getMessage() + ")"));
        }
    }

    @SuppressWarnings("unchecked")
    static Tokenizer fromJson(Object json, String source) {
        Map<String, Object> root = (Map<String, Object>) json;
        Map<String, Object> model = (Map<String, Object>) root.get("model");
        if (!"BPE".equals(model.get("type"))) {
            throw new TokenizerError("model type " + PyRepr.repr(model.get("type"))
                    + " is not supported by the Java core (byte-level BPE only)");
        }
        if (model.get("dropout") != null || model.get("unk_token") != null
                || model.get("continuing_subword_prefix") != null
                || model.get("end_of_word_suffix") != null || Boolean.TRUE.equals(model.get("byte_fallback"))) {
            throw new TokenizerError("BPE options (dropout, unk_token, subword prefix/suffix, "
                    + "byte_fallback) are not supported by the Java core");
        }
        Map<String, Integer> vocab = new HashMap<>();
        for (Map.Entry<String, Object> e : ((Map<String, Object>) model.get("vocab")).entrySet()) {
            vocab.put(e.getKey(), (int) (long) (Long) e.getValue());
        }
        List<String[]> pairs = new ArrayList<>();
        for (Object m : (List<Object>) model.get("merges")) {
            if (m instanceof String) {
                String s = (String) m;
                int space = s.indexOf(' ');
                pairs.add(new String[] {s.substring(0, space), s.substring(space + 1)});
            } else {
                List<Object> l = (List<Object>) m;
                pairs.add(new String[] {(String) l.get(0), (String) l.get(1)});
            }
        }
        Bpe bpe = new Bpe(vocab, pairs, Boolean.TRUE.equals(model.get("ignore_merges")));
        AddedTokens added = new AddedTokens();
        for (Object o : (List<Object>) root.getOrDefault("added_tokens", List.of())) {
            Map<String, Object> t = (Map<String, Object>) o;
            added.add(new AddedTokens.Token((int) (long) (Long) t.get("id"), (String) t.get("content"),
                    flag(t, "special"), flag(t, "normalized"), flag(t, "lstrip"), flag(t, "rstrip"),
                    flag(t, "single_word")));
        }
        List<Step> steps = new ArrayList<>();
        boolean[] byteLevel = {false};
        preTokenizer(root.get("pre_tokenizer"), steps, byteLevel);
        if (!byteLevel[0]) {
            throw new TokenizerError("the Java core reads byte-level BPE tokenizers only "
                    + "(the pre-tokenizer has no ByteLevel step)");
        }
        Object decoder = root.get("decoder");
        if (!(decoder instanceof Map) || !"ByteLevel".equals(((Map<String, Object>) decoder).get("type"))) {
            throw new TokenizerError("decoder " + PyRepr.repr(decoder, 60)
                    + " is not supported by the Java core (ByteLevel only)");
        }
        List<Integer> before = new ArrayList<>();
        List<Integer> after = new ArrayList<>();
        postProcessor(root.get("post_processor"), before, after);
        return new Tokenizer(bpe, added, steps, normalizer(root.get("normalizer")),
                before.stream().mapToInt(Integer::intValue).toArray(),
                after.stream().mapToInt(Integer::intValue).toArray(), source);
    }

    private static boolean flag(Map<String, Object> t, String name) {
        return Boolean.TRUE.equals(t.get(name));
    }

    @SuppressWarnings("unchecked")
    private static Normalizer.Form normalizer(Object json) {
        if (json == null) return null;
        Object type = ((Map<String, Object>) json).get("type");
        for (Normalizer.Form form : Normalizer.Form.values()) {
            if (form.name().equals(type)) return form;
        }
        throw new TokenizerError("normalizer " + PyRepr.repr(type) + " is not supported by the Java core");
    }

    @SuppressWarnings("unchecked")
    private static void preTokenizer(Object json, List<Step> steps, boolean[] byteLevel) {
        if (json == null) return;
        Map<String, Object> p = (Map<String, Object>) json;
        Object type = p.get("type");
        if ("Sequence".equals(type)) {
            for (Object inner : (List<Object>) p.get("pretokenizers")) {
                preTokenizer(inner, steps, byteLevel);
            }
        } else if ("Digits".equals(type)) {
            boolean individual = flag(p, "individual_digits");
            steps.add(piece -> digits(piece, individual));
        } else if ("ByteLevel".equals(type)) {
            boolean prefixSpace = flag(p, "add_prefix_space");
            boolean regex = !Boolean.FALSE.equals(p.get("use_regex"));
            byteLevel[0] = true;
            steps.add(piece -> {
                String text = prefixSpace && !piece.startsWith(" ") ? " " + piece : piece;
                List<String> out = new ArrayList<>();
                for (String part : regex ? ByteLevel.split(text) : List.of(text)) {
                    out.add(ByteLevel.encodeBytes(part));
                }
                return out;
            });
        } else {
            throw new TokenizerError("pre-tokenizer " + PyRepr.repr(type) + " is not supported by the Java core");
        }
    }

    /** Numbers (Unicode categories N*) isolated: each alone, or each run together. */
    private static List<String> digits(String piece, boolean individual) {
        List<String> out = new ArrayList<>();
        int start = 0;
        int k = 0;
        while (k < piece.length()) {
            int cp = piece.codePointAt(k);
            int next = k + Character.charCount(cp);
            if (ByteLevel.isNumber(cp)) {
                if (k > start) out.add(piece.substring(start, k));
                int end = next;
                while (!individual && end < piece.length() && ByteLevel.isNumber(piece.codePointAt(end))) {
                    end += Character.charCount(piece.codePointAt(end));
                }
                out.add(piece.substring(k, end));
                start = k = end;
            } else {
                k = next;
            }
        }
        if (start < piece.length()) out.add(piece.substring(start));
        return out;
    }

    @SuppressWarnings("unchecked")
    private static void postProcessor(Object json, List<Integer> before, List<Integer> after) {
        if (json == null) return;
        Map<String, Object> p = (Map<String, Object>) json;
        Object type = p.get("type");
        if ("ByteLevel".equals(type)) return; // offsets only
        if (!"TemplateProcessing".equals(type)) {
            throw new TokenizerError("post-processor " + PyRepr.repr(type) + " is not supported by the Java core");
        }
        Map<String, Object> specials = (Map<String, Object>) p.get("special_tokens");
        List<Integer> target = before;
        for (Object item : (List<Object>) p.get("single")) {
            Map<String, Object> m = (Map<String, Object>) item;
            if (m.containsKey("Sequence")) {
                target = after;
                continue;
            }
            String id = (String) ((Map<String, Object>) m.get("SpecialToken")).get("id");
            for (Object t : (List<Object>) ((Map<String, Object>) specials.get(id)).get("ids")) {
                target.add((int) (long) (Long) t);
            }
        }
    }

    public String source() {
        return source;
    }

    /** The BOS id the post-processor puts first, or null when it adds none. */
    public Integer bosTokenId() {
        return bosTokenId;
    }

    /** The vocabulary with the added tokens ({@code get_vocab_size(with_added_tokens=True)}). */
    public int vocabSize() {
        int size = bpe.vocab.size();
        for (AddedTokens.Token t : added.tokens) {
            if (!bpe.vocab.containsKey(t.content)) size++;
        }
        return size;
    }

    /** The id of a token (an added token, or a vocabulary entry), or null. */
    public Integer tokenToId(String token) {
        AddedTokens.Token t = added.byContent.get(token);
        return t != null ? Integer.valueOf(t.id) : bpe.vocab.get(token);
    }

    /** Token ids of {@code text}; {@code addSpecialTokens} adds what the post-processor adds. */
    public int[] encode(String text, boolean addSpecialTokens) {
        checkUnicode(text);
        List<Integer> ids = new ArrayList<>();
        if (addSpecialTokens) for (int id : prefix) ids.add(id);
        for (AddedTokens.Piece raw : added.split(text, false)) {
            if (raw.id >= 0) {
                ids.add(raw.id);
                continue;
            }
            String normal = normalizer == null ? raw.text : Normalizer.normalize(raw.text, normalizer);
            for (AddedTokens.Piece piece : added.split(normal, true)) {
                if (piece.id >= 0) {
                    ids.add(piece.id);
                    continue;
                }
                List<String> words = List.of(piece.text);
                for (Step step : preTokenizers) {
                    List<String> next = new ArrayList<>();
                    for (String w : words) next.addAll(step.apply(w));
                    words = next;
                }
                for (String w : words) {
                    for (int id : bpe.tokenize(w)) ids.add(id);
                }
            }
        }
        if (addSpecialTokens) for (int id : suffix) ids.add(id);
        return ids.stream().mapToInt(Integer::intValue).toArray();
    }

    /** Ids of a rendered prompt, with {@link #IMAGE_TOKEN_ID} where {@code <image>} stood: each text
     * chunk tokenized on its own with the special tokens, one BOS kept in front (LLaVA's
     * {@code tokenizer_image_token}). */
    public int[] encodePrompt(String prompt) {
        checkUnicode(prompt);
        List<int[]> chunks = new ArrayList<>();
        int from = 0;
        while (true) {
            int at = prompt.indexOf(PromptTemplate.IMAGE_PLACEHOLDER, from);
            chunks.add(encode(prompt.substring(from, at < 0 ? prompt.length() : at), true));
            if (at < 0) break;
            from = at + PromptTemplate.IMAGE_PLACEHOLDER.length();
        }
        List<Integer> ids = new ArrayList<>();
        int offset = 0;
        if (bosTokenId != null && chunks.get(0).length > 0 && chunks.get(0)[0] == bosTokenId) {
            offset = 1;
            ids.add(bosTokenId);
        }
        for (int c = 0; c < chunks.size(); c++) {
            if (c > 0) ids.add(IMAGE_TOKEN_ID);
            int[] chunk = chunks.get(c);
            for (int k = Math.min(offset, chunk.length); k < chunk.length; k++) ids.add(chunk[k]);
        }
        return ids.stream().mapToInt(Integer::intValue).toArray();
    }

    /** A PromptError for text UTF-8 cannot hold (a lone surrogate), as Python's message. */
    static void checkUnicode(String text) {
        for (int k = 0, cp = 0; k < text.length(); cp++) {
            int c = text.codePointAt(k);
            if (Character.isSurrogate((char) c) && Character.charCount(c) == 1) {
                throw new PromptError("the text is not valid Unicode (surrogates not allowed at " + cp + ")");
            }
            k += Character.charCount(c);
        }
    }

    /** Text of {@code ids}: the byte-level decoding, each invalid UTF-8 sequence as U+FFFD;
     * unknown ids are skipped, and special tokens too when {@code skipSpecialTokens}. */
    public String decode(int[] ids, boolean skipSpecialTokens) {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        for (int id : ids) {
            AddedTokens.Token t = added.byId.get(id);
            String token = t != null ? t.content
                    : id >= 0 && id < bpe.idToToken.length ? bpe.idToToken[id] : null;
            if (token == null || (skipSpecialTokens && added.isSpecial(token))) continue;
            ByteLevel.decodeToken(token, bytes);
        }
        return Utf8.decodeLossy(bytes);
    }

    public String decode(int[] ids) {
        return decode(ids, true);
    }
}
