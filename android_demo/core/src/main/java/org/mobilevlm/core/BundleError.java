package org.mobilevlm.core;

/** A bundle directory that is missing, incomplete, corrupted or of another format version (mirrors {@code mobilevlm.errors.BundleError}). */
public class BundleError extends MobileVLMError {
    public BundleError(String message) {
        super(message);
    }
}
