package org.mobilevlm.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.fail;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** chatml and v1 render every golden conversation to Python's text, and refuse what it refuses. */
public class PromptTemplateTest {
    @Test
    public void renderedPromptsAndErrorsAreIdentical() {
        for (Map<String, Object> e : Golden.list("prompts.json")) {
            List<Turn> turns = new ArrayList<>();
            for (Object t : (List<?>) e.get("turns")) {
                List<?> pair = (List<?>) t;
                turns.add(new Turn((String) pair.get(0), (String) pair.get(1)));
            }
            String name = e.get("template") + " " + e.get("turns");
            try {
                String text = PromptTemplate.get((String) e.get("template"))
                        .render(turns, (String) e.get("system"), (Boolean) e.get("with_image"));
                if (e.containsKey("error")) fail(name + ": expected " + e.get("error"));
                assertEquals(name, e.get("text"), text);
            } catch (PromptError err) {
                assertEquals(name, e.get("error"), err.getMessage());
            }
        }
    }

    @Test
    public void stopStringsAreTheTemplates() {
        assertEquals(List.of("<|im_end|>"), PromptTemplate.get("chatml").stopStrings);
        assertEquals(List.of("</s>"), PromptTemplate.get("v1").stopStrings);
    }
}
