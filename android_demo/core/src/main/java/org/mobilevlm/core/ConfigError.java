package org.mobilevlm.core;

/** A model configuration with a field of the wrong type or value (mirrors {@code mobilevlm.errors.ConfigError}). */
public class ConfigError extends MobileVLMError {
    public ConfigError(String message) {
        super(message);
    }
}
