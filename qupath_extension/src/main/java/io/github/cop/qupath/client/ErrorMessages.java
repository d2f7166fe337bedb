package io.github.cop.qupath.client;

import io.github.cop.qupath.client.CopException.Kind;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;

import java.net.ConnectException;
import java.net.NoRouteToHostException;
import java.net.UnknownHostException;
import java.nio.channels.UnresolvedAddressException;

/**
 * Turns gRPC failures into {@link CopException}s whose messages tell the user what to do.
 *
 * <p>All user-facing wording about connection problems lives here, so that the QuPath layer
 * only displays {@link CopException#getMessage()} and the tests can check each case once.
 */
public final class ErrorMessages {

    /** How the user starts a server by hand; appended wherever nothing answered. */
    static final String HOW_TO_START =
            "Start it in a terminal with:  cop serve --host %s --port %d%s"
            + "  (or set 'Local server command' in Preferences > Chain-of-Prompts so that QuPath starts it),"
            + " or correct 'Server address' in Preferences > Chain-of-Prompts.";

    /** Where in the conversation with the server a failure happened; it changes the advice. */
    public enum Phase {
        /** GetInfo, on connect. */
        CONNECT,
        /** The Segment stream. */
        SESSION
    }

    private ErrorMessages() {
    }

    /**
     * @param error    what gRPC reported (a {@link StatusRuntimeException} or anything else)
     * @param settings the connection that was used (for the address and whether a token was sent)
     * @param phase    where it happened
     * @return the user-facing exception
     */
    public static CopException translate(Throwable error, ConnectionSettings settings, Phase phase) {
        Status status = Status.fromThrowable(error);
        String address = settings.address().toString();
        String detail = describe(status);
        return switch (status.getCode()) {
            case UNAVAILABLE -> unavailable(status, settings, phase, error);
            case DEADLINE_EXCEEDED -> new CopException(Kind.TIMEOUT, phase == Phase.CONNECT
                    ? "No answer from " + address + " within " + seconds(settings.infoTimeout())
                      + ". The port may belong to another program, or the server is stuck; check that 'cop serve' runs there"
                      + " and that the address in Preferences > Chain-of-Prompts is right."
                    : "The session ran past its deadline of " + settings.sessionDeadline().toHours()
                      + " h and was stopped. Select smaller regions or a coarser working resolution.", error);
            case UNAUTHENTICATED -> new CopException(Kind.UNAUTHENTICATED, settings.token().isPresent()
                    ? "The server at " + address + " rejected the token (" + detail + "). Set 'Token' in Preferences >"
                      + " Chain-of-Prompts to the value given to 'cop serve --token'."
                    : "The server at " + address + " requires a token (" + detail + "). Set 'Token' in Preferences >"
                      + " Chain-of-Prompts to the value given to 'cop serve --token'.", error);
            case UNIMPLEMENTED -> new CopException(Kind.NOT_A_COP_SERVER, "The gRPC server at " + address
                    + " does not offer the Chain-of-Prompts service (cop.v1.Cop): " + detail
                    + ". The port probably belongs to another program; check 'Server address' in Preferences > Chain-of-Prompts.",
                    error);
            case RESOURCE_EXHAUSTED -> new CopException(Kind.TOO_LARGE, "The server refused a message as too large: "
                    + detail + ". Use a coarser working resolution or smaller tiles (Preferences > Chain-of-Prompts).", error);
            case INVALID_ARGUMENT, OUT_OF_RANGE -> new CopException(Kind.INVALID_REQUEST,
                    "The server refused the request: " + detail, error);
            case FAILED_PRECONDITION -> new CopException(looksLikeProtocol(detail) ? Kind.PROTOCOL_MISMATCH : Kind.INVALID_REQUEST,
                    "The server refused the request: " + detail
                    + (looksLikeProtocol(detail) ? ". Install matching versions of the extension and the server." : ""), error);
            case PERMISSION_DENIED -> new CopException(Kind.PERMISSION_DENIED, "The server may not read that file: " + detail
                    + ". Choose 'Send pixels from QuPath' in Preferences > Chain-of-Prompts, or start the server with a"
                    + " --slide-root folder that contains the image.", error);
            case NOT_FOUND -> new CopException(Kind.NOT_FOUND, "The server cannot find the image: " + detail
                    + ". The server reads paths on its own machine: choose 'Send pixels from QuPath' in Preferences >"
                    + " Chain-of-Prompts when it does not share QuPath's files.", error);
            // The client's own cancels never get here (the session reports them itself): this is the server's.
            case CANCELLED -> new CopException(Kind.SERVER_STOPPED, "The server at " + address + " cancelled the session ("
                    + detail + "). It may have been stopped or restarted; nothing was added. Run the command again once"
                    + " it is back.", error);
            case ABORTED -> new CopException(Kind.SERVER_STOPPED, "The server at " + address + " aborted the session: "
                    + detail + ". It may be shutting down; run the command again once it is back.", error);
            case INTERNAL, UNKNOWN, DATA_LOSS -> phase == Phase.CONNECT
                    ? new CopException(Kind.NOT_A_COP_SERVER, "Something answered at " + address
                      + ", but not as a Chain-of-Prompts server (" + detail + "). Check 'Server address' in Preferences >"
                      + " Chain-of-Prompts; " + String.format(HOW_TO_START, settings.address().host(),
                              settings.address().port(), ""), error)
                    : new CopException(Kind.INTERNAL, "The server failed during the session: " + detail
                      + ". Its log says more; the command can be run again.", error);
            default -> new CopException(Kind.INTERNAL, "Unexpected error from the server at " + address + ": " + detail, error);
        };
    }

    private static CopException unavailable(Status status, ConnectionSettings settings, Phase phase, Throwable error) {
        ServerAddress a = settings.address();
        String address = a.toString();
        Throwable cause = status.getCause();
        boolean nothingListening = hasCause(cause, ConnectException.class) || hasCause(cause, NoRouteToHostException.class);
        boolean unknownHost = hasCause(cause, UnknownHostException.class) || hasCause(cause, UnresolvedAddressException.class);
        String tokenHint = settings.token().isPresent() ? " --token <your token>" : "";
        if (unknownHost) {
            return new CopException(Kind.SERVER_UNREACHABLE, "The server host '" + a.host()
                    + "' is unknown. Correct 'Server address' in Preferences > Chain-of-Prompts (tried " + address + ").", error);
        }
        if (phase == Phase.SESSION && !nothingListening) {
            return new CopException(Kind.SERVER_STOPPED, "The connection to the server at " + address
                    + " was lost during the session (" + describe(status) + "). The server may have stopped;"
                    + " nothing was added to the image. Start it again and rerun the command.", error);
        }
        if (nothingListening) {
            return new CopException(Kind.SERVER_UNREACHABLE, "Cannot reach the Chain-of-Prompts server at " + address
                    + ": nothing is listening there (" + rootMessage(cause) + "). "
                    + String.format(HOW_TO_START, a.host(), a.port(), tokenHint), error);
        }
        // Connected, but the peer did not speak gRPC over HTTP/2 (an HTTP/1 server, TLS mismatch...).
        String tlsHint = settings.useTls()
                ? " TLS is on in Preferences: turn it off if the server was started without --tls-cert."
                : " If the server was started with --tls-cert, turn on TLS in Preferences > Chain-of-Prompts.";
        return new CopException(Kind.NOT_A_COP_SERVER, "Something answered at " + address
                + ", but not as a Chain-of-Prompts server (" + describe(status) + "). The port probably belongs to another"
                + " program: check 'Server address' in Preferences > Chain-of-Prompts." + tlsHint, error);
    }

    /**
     * The message for a server whose protocol major version is not the client's.
     *
     * @param settings      the connection used
     * @param serverMajor   what the server reported (0: nothing)
     * @param serverVersion the server's version string
     * @param clientMajor   the client's protocol major version
     * @return the exception to throw
     */
    public static CopException protocolMismatch(ConnectionSettings settings, int serverMajor, String serverVersion,
                                                int clientMajor) {
        String server = serverVersion == null || serverVersion.isBlank() ? "" : " (server version " + serverVersion + ")";
        String newer = serverMajor > clientMajor
                ? "Update this QuPath extension to a version for protocol " + serverMajor + "."
                : "Update the server (pip install -U cop-server) to one that speaks protocol " + clientMajor + ".";
        return new CopException(Kind.PROTOCOL_MISMATCH, "The server at " + settings.address() + " speaks protocol version "
                + serverMajor + server + ", but this extension speaks version " + clientMajor + ". " + newer);
    }

    static String describe(Status status) {
        String d = status.getDescription();
        if (d == null || d.isBlank()) {
            d = status.getCause() != null ? rootMessage(status.getCause()) : "no details";
        }
        return status.getCode() + ": " + d;
    }

    static String seconds(java.time.Duration d) {
        long ms = d.toMillis();
        return ms % 1000 == 0 ? (ms / 1000) + " s" : String.format(java.util.Locale.ROOT, "%.1f s", ms / 1000.0);
    }

    private static boolean looksLikeProtocol(String detail) {
        return detail.toLowerCase(java.util.Locale.ROOT).contains("protocol");
    }

    private static boolean hasCause(Throwable t, Class<? extends Throwable> type) {
        for (Throwable c = t; c != null; c = c.getCause()) {
            if (type.isInstance(c)) {
                return true;
            }
            if (c.getCause() == c) {
                break;
            }
        }
        return false;
    }

    private static String rootMessage(Throwable t) {
        if (t == null) {
            return "no details";
        }
        Throwable root = t;
        while (root.getCause() != null && root.getCause() != root) {
            root = root.getCause();
        }
        String m = root.getMessage();
        return m == null || m.isBlank() ? root.getClass().getSimpleName() : m;
    }

    /** @param e any throwable @return whether it is a gRPC status error (as opposed to a bug on our side) */
    static boolean isStatusError(Throwable e) {
        return e instanceof StatusRuntimeException || e instanceof io.grpc.StatusException;
    }
}
