package org.mobilevlm.core;

/** What one turn returns: the text, the generated token ids and the stats. */
public final class Answer {
    public final String text;
    public final int[] tokens;
    public final GenerationStats stats;

    public Answer(String text, int[] tokens, GenerationStats stats) {
        this.text = text;
        this.tokens = tokens;
        this.stats = stats;
    }
}
