package org.mobilevlm.core;

/** One exchange: the user's text and, for past turns, the assistant's answer (null: awaited). */
public final class Turn {
    public final String user;
    public final String assistant;

    public Turn(String user, String assistant) {
        this.user = user;
        this.assistant = assistant;
    }

    public Turn(String user) {
        this(user, null);
    }
}
