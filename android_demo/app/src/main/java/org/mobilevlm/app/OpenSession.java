package org.mobilevlm.app;

import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/** A session with the options it was made with (which must outlive it) and how it opened. */
final class OpenSession implements AutoCloseable {
    final OrtSession session;
    /** The model file it was made from. */
    final Path model;
    private final OrtSession.SessionOptions options;
    /** What runs it, for the screen, e.g. "QNN, whole graph (vision_qnn_ctx.onnx)". */
    final String description;
    /** Why the ways tried before this one did not open (empty: the first did). */
    final List<String> notes;

    OpenSession(OrtSession session, Path model, OrtSession.SessionOptions options,
            String description, List<String> notes) {
        this.session = session;
        this.model = model;
        this.options = options;
        this.description = description;
        this.notes = Collections.unmodifiableList(new ArrayList<>(notes));
    }

    @Override
    public void close() throws OrtException {
        try {
            session.close();
        } finally {
            options.close();
        }
    }
}
