package org.mobilevlm.core;

/** Receives each final piece of an answer as it is produced (on the generating thread). */
@FunctionalInterface
public interface TokenListener {
    void onText(String piece);
}
