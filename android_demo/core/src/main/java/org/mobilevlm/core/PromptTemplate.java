package org.mobilevlm.core;

import java.util.ArrayList;
import java.util.List;

/**
 * A chat format: conversation turns to the exact text the LLM was trained on, the image
 * placeholder in the first user turn, and the strings that end an answer (mirrors {@code
 * mobilevlm.generation.prompts}: {@code v1}, MobileVLM's Vicuna format, and {@code chatml}).
 */
public abstract class PromptTemplate {
    public static final String IMAGE_PLACEHOLDER = "<image>";

    public final String name;
    public final String defaultSystem;
    public final List<String> stopStrings;

    PromptTemplate(String name, String defaultSystem, List<String> stopStrings) {
        this.name = name;
        this.defaultSystem = defaultSystem;
        this.stopStrings = List.copyOf(stopStrings);
    }

    /** The template {@code name}, or a PromptError naming the known ones. */
    public static PromptTemplate get(String name) {
        if ("v1".equals(name)) return VICUNA_V1;
        if ("chatml".equals(name)) return CHATML;
        throw new PromptError("unknown prompt template " + PyRepr.repr(name)
                + " (expected one of v1, chatml)");
    }

    /** The text up to where the assistant speaks next; {@code system} null: the default. */
    public String render(List<Turn> turns, String system, boolean withImage) {
        if (turns.isEmpty() || turns.get(turns.size() - 1).assistant != null) {
            throw new PromptError("the last turn must be a user message awaiting an answer");
        }
        for (Turn turn : turns) {
            if (turn.user.contains(IMAGE_PLACEHOLDER)) {
                throw new PromptError("the prompt must not contain '" + IMAGE_PLACEHOLDER
                        + "': the template places the image");
            }
        }
        List<String> users = new ArrayList<>();
        for (Turn t : turns) users.add(t.user);
        if (withImage) users.set(0, IMAGE_PLACEHOLDER + "\n" + users.get(0));
        StringBuilder text = new StringBuilder();
        format(text, system == null ? defaultSystem : system, users, turns);
        return text.toString();
    }

    abstract void format(StringBuilder text, String system, List<String> users, List<Turn> turns);

    static final PromptTemplate VICUNA_V1 = new PromptTemplate("v1",
            "A chat between a curious user and an artificial intelligence assistant. "
                    + "The assistant gives helpful, detailed, and polite answers to the user's questions.",
            List.of("</s>")) {
        @Override
        void format(StringBuilder text, String system, List<String> users, List<Turn> turns) {
            text.append(system).append(' ');
            for (int k = 0; k < users.size(); k++) {
                String answer = turns.get(k).assistant;
                text.append("USER: ").append(users.get(k)).append(' ');
                text.append(answer == null ? "ASSISTANT:" : "ASSISTANT: " + answer + "</s>");
            }
        }
    };

    static final PromptTemplate CHATML = new PromptTemplate("chatml", "You are a helpful assistant.",
            List.of("<|im_end|>")) {
        @Override
        void format(StringBuilder text, String system, List<String> users, List<Turn> turns) {
            if (!system.isEmpty()) text.append("<|im_start|>system\n").append(system).append("<|im_end|>\n");
            for (int k = 0; k < users.size(); k++) {
                text.append("<|im_start|>user\n").append(users.get(k))
                        .append("<|im_end|>\n<|im_start|>assistant\n");
                String answer = turns.get(k).assistant;
                if (answer != null) text.append(answer).append("<|im_end|>\n");
            }
        }
    };
}
