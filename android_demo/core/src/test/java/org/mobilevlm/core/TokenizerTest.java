package org.mobilevlm.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import org.junit.BeforeClass;
import org.junit.Test;

/** The Java tokenizer gives the {@code tokenizers} library's ids and texts on the golden corpus. */
public class TokenizerTest {
    private static Tokenizer tokenizer;
    private static Map<String, Object> golden;

    @BeforeClass
    public static void load() {
        tokenizer = Golden.tokenizer();
        golden = Golden.map("tokens.json");
    }

    @Test
    public void encodingGivesThePythonIdsForEveryCorpusString() {
        int checked = 0;
        for (Object o : (java.util.List<?>) golden.get("encode")) {
            Map<?, ?> e = (Map<?, ?>) o;
            String text = (String) e.get("text");
            assertArrayEquals("ids of " + PyRepr.repr(text), Golden.ints(e.get("ids")), tokenizer.encode(text, false));
            checked++;
        }
        assertTrue(checked > 25);
    }

    @Test
    public void decodingGivesThePythonTextIncludingBrokenUtf8AndSkippedSpecials() {
        for (Object o : (java.util.List<?>) golden.get("decode")) {
            Map<?, ?> e = (Map<?, ?>) o;
            int[] ids = Golden.ints(e.get("ids"));
            assertEquals("text of " + java.util.Arrays.toString(ids), e.get("text"), tokenizer.decode(ids));
        }
    }

    @Test
    public void promptsGetTheImageMarkerAndTheSameIds() {
        for (Object o : (java.util.List<?>) golden.get("prompts")) {
            Map<?, ?> e = (Map<?, ?>) o;
            assertArrayEquals((String) e.get("text"), Golden.ints(e.get("ids")), tokenizer.encodePrompt((String) e.get("text")));
        }
    }

    @Test
    public void vocabularySizeBosAndTokenLookupsAgree() {
        Map<?, ?> facts = (Map<?, ?>) golden.get("facts");
        assertEquals(((Long) facts.get("vocab_size")).intValue(), tokenizer.vocabSize());
        assertEquals(facts.get("bos_token_id"), tokenizer.bosTokenId() == null ? null : (long) tokenizer.bosTokenId());
        for (Map.Entry<?, ?> e : ((Map<?, ?>) facts.get("token_to_id")).entrySet()) {
            Integer id = tokenizer.tokenToId((String) e.getKey());
            assertEquals((String) e.getKey(), e.getValue(), id == null ? null : (long) id);
        }
    }

    @Test
    public void aLoneSurrogateIsAPromptError() {
        PromptError e = assertThrows(PromptError.class, () -> tokenizer.encode("ab\ud800c", false));
        assertEquals("the text is not valid Unicode (surrogates not allowed at 2)", e.getMessage());
    }

    @Test
    public void aMissingOrBrokenTokenizerFileIsATokenizerError() throws Exception {
        Path missing = Path.of("no-such-tokenizer.json");
        assertEquals("no-such-tokenizer.json: no such tokenizer file",
                assertThrows(TokenizerError.class, () -> Tokenizer.fromFile(missing)).getMessage());
        Path broken = Files.createTempFile("tokenizer", ".json");
        Files.writeString(broken, "{\"model\": {\"type\": \"Unigram\"}}");
        String message = assertThrows(TokenizerError.class, () -> Tokenizer.fromFile(broken)).getMessage();
        assertTrue(message, message.startsWith(broken + ": not a valid tokenizer.json (model type 'Unigram'"));
        Files.delete(broken);
    }

    @Test
    public void utf8DecodingReplacesEachMaximalInvalidSubpart() {
        byte[] b = {(byte) 0xe2, (byte) 0x82, 'a', (byte) 0xf0, (byte) 0x9f, (byte) 0x98, (byte) 0xc0, (byte) 0xed, (byte) 0xa0, (byte) 0x80};
        assertEquals("\ufffda\ufffd\ufffd\ufffd\ufffd\ufffd", Utf8.decodeLossy(b, b.length));
        assertNull(tokenizer.tokenToId("definitely not a token"));
    }
}
