package io.github.cop.qupath.client;

import java.util.Objects;

/**
 * A failure the user can act on. The message is written for the person in front of QuPath: it
 * says what happened, where (the server address), and what to do next. The {@link Kind} lets
 * code (and tests) react without parsing the message.
 */
public final class CopException extends Exception {

    private static final long serialVersionUID = 1L;

    /** What went wrong, coarse enough to choose a reaction (retry, fix a preference, give up). */
    public enum Kind {
        /** Nothing answered at the address (server not started, wrong host, firewall). */
        SERVER_UNREACHABLE,
        /** Something answered, but it is not a Chain-of-Prompts server (wrong port, other service). */
        NOT_A_COP_SERVER,
        /** The server's protocol major version differs from the client's. */
        PROTOCOL_MISMATCH,
        /** The server wants a token, or rejected the one given. */
        UNAUTHENTICATED,
        /** The server refused the request as invalid (no clicks, bad polygon, ...). */
        INVALID_REQUEST,
        /** A message or tile exceeded a size limit. */
        TOO_LARGE,
        /** The server may not read the slide path (outside its --slide-root). */
        PERMISSION_DENIED,
        /** The server cannot find the slide path. */
        NOT_FOUND,
        /** A deadline or the idle timeout passed. */
        TIMEOUT,
        /** The user (or a caller) cancelled the session. */
        CANCELLED,
        /** A tile could not be read from the image on the client side. */
        TILE_READ_FAILED,
        /** The server went away or aborted during the session (shutdown, crash). */
        SERVER_STOPPED,
        /** The local server process could not be started. */
        LAUNCH_FAILED,
        /** The server broke the protocol, or an unexpected error on either side. */
        INTERNAL
    }

    private final Kind kind;

    /**
     * @param kind    what went wrong
     * @param message the message to show the user
     */
    public CopException(Kind kind, String message) {
        this(kind, message, null);
    }

    /**
     * @param kind    what went wrong
     * @param message the message to show the user
     * @param cause   the underlying error, kept for the log
     */
    public CopException(Kind kind, String message, Throwable cause) {
        super(Objects.requireNonNull(message, "message"), cause);
        this.kind = Objects.requireNonNull(kind, "kind");
    }

    /** @return what went wrong */
    public Kind kind() {
        return kind;
    }
}
