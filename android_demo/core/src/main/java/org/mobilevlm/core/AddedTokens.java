package org.mobilevlm.core;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The added tokens of a tokenizer.json ({@code <|im_start|>} and the like): found in the text
 * before any pre-tokenization, leftmost and then longest first, each becoming its own id, as the
 * {@code tokenizers} library's AddedVocabulary splits a text (with its lstrip, rstrip and
 * single_word rules).
 */
final class AddedTokens {
    static final class Token {
        final int id;
        final String content;
        final boolean special;
        final boolean normalized;
        final boolean lstrip;
        final boolean rstrip;
        final boolean singleWord;

        Token(int id, String content, boolean special, boolean normalized, boolean lstrip,
                boolean rstrip, boolean singleWord) {
            this.id = id;
            this.content = content;
            this.special = special;
            this.normalized = normalized;
            this.lstrip = lstrip;
            this.rstrip = rstrip;
            this.singleWord = singleWord;
        }
    }

    /** A piece of text: an added token's id, or -1 for text still to tokenize. */
    static final class Piece {
        final String text;
        final int id;

        Piece(String text, int id) {
            this.text = text;
            this.id = id;
        }
    }

    final List<Token> tokens = new ArrayList<>();
    final Map<String, Token> byContent = new HashMap<>();
    final Map<Integer, Token> byId = new HashMap<>();

    void add(Token t) {
        tokens.add(t);
        byContent.put(t.content, t);
        byId.put(t.id, t);
    }

    boolean isSpecial(String content) {
        Token t = byContent.get(content);
        return t != null && t.special;
    }

    /** {@code text} cut at the added tokens whose {@code normalized} flag is {@code normalized}. */
    List<Piece> split(String text, boolean normalized) {
        List<Piece> out = new ArrayList<>();
        int from = 0; // start of the text not yet emitted
        int at = 0;
        while (at < text.length()) {
            Token best = null;
            for (Token t : tokens) {
                if (t.normalized == normalized && !t.content.isEmpty() && text.startsWith(t.content, at)
                        && (best == null || t.content.length() > best.content.length())) {
                    best = t;
                }
            }
            if (best == null) {
                at += Character.charCount(text.codePointAt(at));
                continue;
            }
            int start = at;
            int stop = at + best.content.length();
            if (best.singleWord && ((start > 0 && isWordChar(text.codePointBefore(start)))
                    || (stop < text.length() && isWordChar(text.codePointAt(stop))))) {
                at += Character.charCount(text.codePointAt(at));
                continue;
            }
            if (best.lstrip) {
                while (start > from && Character.isWhitespace(text.codePointBefore(start))) {
                    start -= Character.charCount(text.codePointBefore(start));
                }
            }
            if (best.rstrip) {
                while (stop < text.length() && Character.isWhitespace(text.codePointAt(stop))) {
                    stop += Character.charCount(text.codePointAt(stop));
                }
            }
            if (start > from) out.add(new Piece(text.substring(from, start), -1));
            out.add(new Piece(text.substring(start, stop), best.id));
            from = at = stop;
        }
        if (from < text.length()) out.add(new Piece(text.substring(from), -1));
        return out;
    }

    private static boolean isWordChar(int c) {
        return Character.isLetterOrDigit(c);
    }
}
