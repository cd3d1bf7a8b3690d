package org.mobilevlm.core;

import java.nio.file.Path;

/**
 * Base class of user errors: bad input, not a bug in the library (mirrors {@code
 * mobilevlm.errors.MobileVLMError}). The message names the file or the limit in one line, so a
 * front end shows it as it is; the CLI maps these to exit code 2.
 *
 * <p>The names follow the Python side's ({@code BundleError}, {@code ImageError}, ...) so that an
 * error reads the same on both; they are unchecked exceptions, not {@link java.lang.Error}s.
 */
public class MobileVLMError extends RuntimeException {
    public MobileVLMError(String message) {
        super(message);
    }

    /** The one-line message convention: {@code <path>: <problem>}. */
    public static String at(Object path, String problem) {
        return (path instanceof Path ? path.toString() : String.valueOf(path)) + ": " + problem;
    }
}
