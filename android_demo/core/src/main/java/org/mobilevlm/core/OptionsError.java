package org.mobilevlm.core;

/** A generation option that is out of range (mirrors {@code mobilevlm.errors.OptionsError}). */
public class OptionsError extends MobileVLMError {
    public OptionsError(String message) {
        super(message);
    }
}
