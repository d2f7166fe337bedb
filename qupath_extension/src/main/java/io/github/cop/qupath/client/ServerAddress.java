package io.github.cop.qupath.client;

import java.util.Objects;

/**
 * Where the Chain-of-Prompts server listens: a host name or IP literal and a TCP port.
 *
 * <p>Kept as a value of its own (rather than a bare string) because every error message a user
 * sees about connecting names the exact address that was tried, and the local-server launcher
 * substitutes the same host and port into the command that starts the server.
 *
 * @param host host name, IPv4 literal or IPv6 literal without brackets
 * @param port TCP port, 1..65535
 */
public record ServerAddress(String host, int port) {

    /** The port {@code cop serve} listens on unless told otherwise. */
    public static final int DEFAULT_PORT = 50051;

    /** Validates the parts, so that a bad preference fails where it is read, not deep in Netty. */
    public ServerAddress {
        Objects.requireNonNull(host, "host");
        if (host.isBlank()) {
            throw new IllegalArgumentException("The server address has no host name: write it as host:port, e.g. 127.0.0.1:50051");
        }
        if (port < 1 || port > 65535) {
            throw new IllegalArgumentException("The server port must be between 1 and 65535, not " + port);
        }
        host = host.strip();
    }

    /**
     * Reads {@code host:port}, {@code host} (port {@value #DEFAULT_PORT}) or {@code [v6]:port},
     * the forms a user types into a preference field.
     *
     * @param text the address as typed
     * @return the parsed address
     * @throws IllegalArgumentException with a message that shows the expected form
     */
    public static ServerAddress parse(String text) {
        if (text == null || text.isBlank()) {
            throw new IllegalArgumentException("No server address is set: write it as host:port, e.g. 127.0.0.1:50051");
        }
        String s = text.strip();
        int schemeEnd = s.indexOf("://");
        if (schemeEnd >= 0) {
            s = s.substring(schemeEnd + 3);
        }
        if (s.endsWith("/")) {
            s = s.substring(0, s.length() - 1);
        }
        String host;
        String portText = null;
        if (s.startsWith("[")) {
            int close = s.indexOf(']');
            if (close < 0) {
                throw new IllegalArgumentException("Unclosed '[' in server address '" + text + "'");
            }
            host = s.substring(1, close);
            String rest = s.substring(close + 1);
            if (rest.startsWith(":")) {
                portText = rest.substring(1);
            } else if (!rest.isEmpty()) {
                throw new IllegalArgumentException("Cannot read server address '" + text + "': expected [v6-address]:port");
            }
        } else {
            int colon = s.lastIndexOf(':');
            if (colon >= 0 && s.indexOf(':') == colon) {
                host = s.substring(0, colon);
                portText = s.substring(colon + 1);
            } else {
                host = s; // no port, or a bare IPv6 literal
            }
        }
        int port = DEFAULT_PORT;
        if (portText != null) {
            try {
                port = Integer.parseInt(portText.strip());
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("Cannot read the port in server address '" + text
                        + "': write it as host:port, e.g. 127.0.0.1:50051", e);
            }
        }
        return new ServerAddress(host, port);
    }

    /** Whether the server is on this machine, where a plain-text connection without a token is the normal case. */
    public boolean isLoopback() {
        String h = host.toLowerCase(java.util.Locale.ROOT);
        return h.equals("localhost") || h.startsWith("127.") || h.equals("::1");
    }

    /** {@code host:port}, with brackets around an IPv6 literal: the form to show users and to type back. */
    @Override
    public String toString() {
        return host.indexOf(':') >= 0 ? "[" + host + "]:" + port : host + ":" + port;
    }
}
