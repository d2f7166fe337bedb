package io.github.cop.qupath.client;

import java.nio.file.Path;
import java.time.Duration;
import java.util.Objects;
import java.util.Optional;

/**
 * How to reach one server, and how long to wait for it at each step.
 *
 * <p>Every wait has a bound so that nothing in QuPath can hang on a server that is down, busy
 * or not a Chain-of-Prompts server at all:
 * <ul>
 *   <li>{@code infoTimeout}: the deadline of {@code GetInfo}, the call made on connect; short,
 *       because the server answers it without touching the model.</li>
 *   <li>{@code idleTimeout}: during a session, the longest the client waits for any message
 *       from the server while it is not itself busy reading a tile. The server reports
 *       progress after every tile, so this only needs to exceed the time of one tile on the
 *       slowest model and device.</li>
 *   <li>{@code sessionDeadline}: the gRPC deadline of the whole {@code Segment} call, a last
 *       resort for runs that are alive but never finish.</li>
 * </ul>
 *
 * @param address          where the server listens
 * @param token            the value given to {@code cop serve --token}; empty when the server has none
 * @param useTls           whether to use TLS (needed when the server was started with a certificate)
 * @param trustedCertificate a PEM file of the certificate (or its CA) to trust, for self-signed
 *                         servers; empty to use the system's trust store
 * @param infoTimeout      deadline of GetInfo
 * @param idleTimeout      longest silence from the server during a session
 * @param sessionDeadline  deadline of a whole Segment call
 * @param tileThreads      how many tiles are read and encoded in parallel
 */
public record ConnectionSettings(
        ServerAddress address,
        Optional<String> token,
        boolean useTls,
        Optional<Path> trustedCertificate,
        Duration infoTimeout,
        Duration idleTimeout,
        Duration sessionDeadline,
        int tileThreads) {

    /** Checks the values once, so that a preference typo is reported at the start of a run. */
    public ConnectionSettings {
        Objects.requireNonNull(address, "address");
        token = Objects.requireNonNull(token, "token").map(String::strip).filter(t -> !t.isEmpty());
        Objects.requireNonNull(trustedCertificate, "trustedCertificate");
        requirePositive(infoTimeout, "infoTimeout");
        requirePositive(idleTimeout, "idleTimeout");
        requirePositive(sessionDeadline, "sessionDeadline");
        if (tileThreads < 1 || tileThreads > 64) {
            throw new IllegalArgumentException("tileThreads must be between 1 and 64, not " + tileThreads);
        }
    }

    /**
     * Defaults for a server at {@code address}: no token, plain text, 10 s to answer GetInfo,
     * 5 minutes of silence at most, 24 hours per session, two tile threads.
     *
     * @param address where the server listens
     * @return the settings
     */
    public static ConnectionSettings forAddress(ServerAddress address) {
        return new ConnectionSettings(address, Optional.empty(), false, Optional.empty(),
                Duration.ofSeconds(10), Duration.ofMinutes(5), Duration.ofHours(24), 2);
    }

    /** @param t the token, or null/blank for none @return a copy with that token */
    public ConnectionSettings withToken(String t) {
        return new ConnectionSettings(address, Optional.ofNullable(t), useTls, trustedCertificate,
                infoTimeout, idleTimeout, sessionDeadline, tileThreads);
    }

    /** @param tls whether to use TLS @param certificate PEM to trust, or null for the system store @return a copy */
    public ConnectionSettings withTls(boolean tls, Path certificate) {
        return new ConnectionSettings(address, token, tls, Optional.ofNullable(certificate),
                infoTimeout, idleTimeout, sessionDeadline, tileThreads);
    }

    /** @param d the GetInfo deadline @return a copy */
    public ConnectionSettings withInfoTimeout(Duration d) {
        return new ConnectionSettings(address, token, useTls, trustedCertificate, d, idleTimeout, sessionDeadline, tileThreads);
    }

    /** @param d the longest silence allowed during a session @return a copy */
    public ConnectionSettings withIdleTimeout(Duration d) {
        return new ConnectionSettings(address, token, useTls, trustedCertificate, infoTimeout, d, sessionDeadline, tileThreads);
    }

    /** @param d the deadline of a whole session @return a copy */
    public ConnectionSettings withSessionDeadline(Duration d) {
        return new ConnectionSettings(address, token, useTls, trustedCertificate, infoTimeout, idleTimeout, d, tileThreads);
    }

    /** @param n tiles read and encoded in parallel @return a copy */
    public ConnectionSettings withTileThreads(int n) {
        return new ConnectionSettings(address, token, useTls, trustedCertificate, infoTimeout, idleTimeout, sessionDeadline, n);
    }

    private static void requirePositive(Duration d, String name) {
        Objects.requireNonNull(d, name);
        if (d.isZero() || d.isNegative()) {
            throw new IllegalArgumentException(name + " must be positive, not " + d);
        }
    }
}
