package org.mobilevlm.core;

/** A prompt or template that cannot be rendered (mirrors {@code mobilevlm.errors.PromptError}). */
public class PromptError extends MobileVLMError {
    public PromptError(String message) {
        super(message);
    }
}
