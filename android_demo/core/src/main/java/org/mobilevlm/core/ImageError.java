package org.mobilevlm.core;

/** An image that cannot be read or decoded (mirrors {@code mobilevlm.errors.ImageError}). */
public class ImageError extends MobileVLMError {
    public ImageError(String message) {
        super(message);
    }
}
