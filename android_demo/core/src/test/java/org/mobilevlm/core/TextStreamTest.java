package org.mobilevlm.core;

import static org.junit.Assert.assertEquals;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** Streamed pieces are the Python TextStream's: nothing half a character, nothing of a stop string. */
public class TextStreamTest {
    @Test
    public void piecesFinishAndStopsAgreeWithPython() {
        Tokenizer tokenizer = Golden.tokenizer();
        for (Map<String, Object> e : Golden.list("streams.json")) {
            TextStream stream = new TextStream(tokenizer, Golden.strings(e.get("stops")));
            List<String> pieces = new ArrayList<>();
            for (int id : Golden.ints(e.get("ids"))) {
                pieces.add(stream.push(id));
                if (stream.stopped()) break;
            }
            String name = e.get("stops") + " " + e.get("text");
            assertEquals(name, e.get("pieces"), pieces);
            assertEquals(name, e.get("finish"), stream.finish());
            assertEquals(name, e.get("text"), stream.text());
            assertEquals(name, e.get("stopped"), stream.stopped());
        }
    }
}
