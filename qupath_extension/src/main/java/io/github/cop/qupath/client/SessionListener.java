package io.github.cop.qupath.client;

import java.util.List;

/**
 * Hears a session as it runs. Called on gRPC and tile threads, never on a UI thread: a QuPath
 * implementation hands what it needs to the JavaFX thread itself. Calls for one session never
 * overlap for {@link #onDetections}, and they must return quickly; an exception thrown here
 * stops the session with an error, because a listener that failed may have lost detections.
 */
public interface SessionListener {

    /** A listener that ignores everything. */
    SessionListener NONE = new SessionListener() {
    };

    /** @param start what the server accepted to do */
    default void onAccepted(SessionStart start) {
    }

    /** @param progress tiles done / total, cells so far */
    default void onProgress(ProgressUpdate progress) {
    }

    /** @param batch detections of one server message, already converted and validated */
    default void onDetections(List<CellDetection> batch) {
    }

    /**
     * @param encoding    the encoding the tile was sent in
     * @param bytes       bytes of pixel data
     * @param readNanos   time spent reading the tile from the image
     * @param encodeNanos time spent encoding it
     */
    default void onTileSent(io.github.cop.qupath.proto.v1.PixelEncoding encoding, int bytes, long readNanos,
                            long encodeNanos) {
    }
}
