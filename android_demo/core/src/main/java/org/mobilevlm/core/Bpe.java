package org.mobilevlm.core;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.PriorityQueue;

/**
 * The BPE model of a tokenizer.json: a word (byte-level characters) starts as one symbol per
 * character and the pair of adjacent symbols with the lowest merge rank is merged, leftmost first
 * among equal ranks, until no listed pair remains: the order of the {@code tokenizers} library's
 * {@code Word::merge_all}, whose results this reproduces id for id.
 */
final class Bpe {
    final Map<String, Integer> vocab;
    final String[] idToToken;
    /** (left id, right id) packed in a long -> {rank, merged id}. */
    private final Map<Long, int[]> merges;
    private final boolean ignoreMerges;
    private final Map<String, int[]> cache = new HashMap<>();

    Bpe(Map<String, Integer> vocab, List<String[]> pairs, boolean ignoreMerges) {
        this.vocab = vocab;
        int max = -1;
        for (int id : vocab.values()) max = Math.max(max, id);
        idToToken = new String[max + 1];
        for (Map.Entry<String, Integer> e : vocab.entrySet()) idToToken[e.getValue()] = e.getKey();
        merges = new HashMap<>(pairs.size() * 2);
        for (int rank = 0; rank < pairs.size(); rank++) {
            String[] p = pairs.get(rank);
            Integer a = vocab.get(p[0]);
            Integer b = vocab.get(p[1]);
            Integer merged = vocab.get(p[0] + p[1]);
            if (a == null || b == null || merged == null) {
                throw new TokenizerError("merge " + PyRepr.repr(p[0] + " " + p[1])
                        + " names a token that is not in the vocabulary");
            }
            merges.putIfAbsent(key(a, b), new int[] {rank, merged});
        }
        this.ignoreMerges = ignoreMerges;
    }

    private static long key(int a, int b) {
        return ((long) a << 32) | (b & 0xffffffffL);
    }

    /** Ids of one pre-tokenized word. */
    int[] tokenize(String word) {
        int[] hit = cache.get(word);
        if (hit != null) return hit;
        int[] ids = merge(word);
        if (cache.size() < 100_000) cache.put(word, ids);
        return ids;
    }

    private int[] merge(String word) {
        if (ignoreMerges && vocab.containsKey(word)) {
            return new int[] {vocab.get(word)};
        }
        // symbols: ids with prev/next links; a merged-away symbol has len 0
        List<Integer> start = new ArrayList<>();
        for (int k = 0; k < word.length(); ) {
            int cp = word.codePointAt(k);
            String c = new String(Character.toChars(cp));
            k += c.length();
            if (vocab.containsKey(c)) start.add(vocab.get(c)); // no unk token: unknown chars drop
        }
        int n = start.size();
        int[] id = new int[n];
        int[] prev = new int[n];
        int[] next = new int[n];
        boolean[] gone = new boolean[n];
        for (int k = 0; k < n; k++) {
            id[k] = start.get(k);
            prev[k] = k - 1;
            next[k] = k + 1 < n ? k + 1 : -1;
        }
        // queue entries {rank, pos, new id}: lowest rank first, then lowest position
        PriorityQueue<int[]> queue = new PriorityQueue<>(
                (x, y) -> x[0] != y[0] ? Integer.compare(x[0], y[0]) : Integer.compare(x[1], y[1]));
        for (int k = 0; k + 1 < n; k++) {
            int[] m = merges.get(key(id[k], id[k + 1]));
            if (m != null) queue.add(new int[] {m[0], k, m[1]});
        }
        while (!queue.isEmpty()) {
            int[] top = queue.poll();
            int pos = top[1];
            if (gone[pos] || next[pos] == -1) continue;
            int right = next[pos];
            int[] now = merges.get(key(id[pos], id[right]));
            if (now == null || now[1] != top[2]) continue; // a stale entry
            id[pos] = top[2];
            gone[right] = true;
            next[pos] = next[right];
            if (next[right] != -1) prev[next[right]] = pos;
            if (prev[pos] >= 0) {
                int[] m = merges.get(key(id[prev[pos]], id[pos]));
                if (m != null) queue.add(new int[] {m[0], prev[pos], m[1]});
            }
            if (next[pos] != -1) {
                int[] m = merges.get(key(id[pos], id[next[pos]]));
                if (m != null) queue.add(new int[] {m[0], pos, m[1]});
            }
        }
        int count = 0;
        for (int k = 0; k < n; k++) if (!gone[k]) count++;
        int[] out = new int[count];
        for (int k = 0, o = 0; k < n; k++) if (!gone[k]) out[o++] = id[k];
        return out;
    }
}
