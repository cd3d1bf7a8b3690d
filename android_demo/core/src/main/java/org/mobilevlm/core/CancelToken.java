package org.mobilevlm.core;

/**
 * Stops a generation after its current token: the decode loop polls it before every token, so
 * a UI thread can {@link #cancel} while another thread generates. One token per answer.
 */
public final class CancelToken {
    private volatile boolean cancelled;

    public void cancel() {
        cancelled = true;
    }

    public boolean isCancelled() {
        return cancelled;
    }
}
