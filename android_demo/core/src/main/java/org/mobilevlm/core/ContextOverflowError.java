package org.mobilevlm.core;

/** A prompt (with its image tokens) longer than the model's context (mirrors {@code mobilevlm.errors.ContextOverflowError}). */
public class ContextOverflowError extends MobileVLMError {
    public ContextOverflowError(String message) {
        super(message);
    }
}
