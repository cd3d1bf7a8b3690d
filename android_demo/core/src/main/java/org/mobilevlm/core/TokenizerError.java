package org.mobilevlm.core;

/** A tokenizer file that is missing or cannot be used (mirrors {@code mobilevlm.errors.TokenizerError}). */
public class TokenizerError extends MobileVLMError {
    public TokenizerError(String message) {
        super(message);
    }
}
