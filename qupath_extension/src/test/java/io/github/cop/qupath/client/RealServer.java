package io.github.cop.qupath.client;

import org.junit.jupiter.api.Assertions;
import org.junit.jupiter.api.Assumptions;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;

/**
 * Finds and starts the real Python server ({@code cop serve}) for the integration tests.
 *
 * <p>Which program: the system property {@code cop.server.cmd}, else the environment variable
 * {@code COP_SERVER_CMD}, else {@code <repo>/.venv/bin/cop}. When it does not exist the tests
 * cannot say anything about the client against the server, so: in CI ({@code CI=true}) that is a
 * failure with a message saying how to install it; on a developer machine the tests are skipped
 * with the same message (the server may not be installed yet).
 */
final class RealServer {

    private RealServer() {
    }

    static Path repoRoot() {
        String p = System.getProperty("cop.repo.root");
        return (p == null || p.isBlank() ? Path.of("..") : Path.of(p)).toAbsolutePath().normalize();
    }

    /** @return the evaluation images folder: -Dcop.shared.data, else ../shared/data beside the repository */
    static Path sharedData() {
        String p = System.getProperty("cop.shared.data");
        return (p == null || p.isBlank() ? repoRoot().resolve("../shared/data") : Path.of(p)).toAbsolutePath().normalize();
    }

    static boolean inCi() {
        return "true".equalsIgnoreCase(System.getenv("CI"));
    }

    /** @return the cop executable, or a skipped/failed test when there is none */
    static Path copExecutable() {
        String configured = System.getProperty("cop.server.cmd");
        if (configured == null || configured.isBlank()) {
            configured = System.getenv("COP_SERVER_CMD");
        }
        Path exe = configured == null || configured.isBlank()
                ? repoRoot().resolve(".venv/bin/cop") : Path.of(configured).toAbsolutePath();
        if (!Files.isExecutable(exe)) {
            String message = "The Python server program " + exe + " is missing, so the client cannot be tested against"
                    + " it. Install it with: python3 -m venv .venv && .venv/bin/pip install -e '.[test]' (at the"
                    + " repository root), or point -Dcop.server.cmd / $COP_SERVER_CMD at a cop executable.";
            if (inCi()) {
                Assertions.fail(message);
            }
            System.out.println("[skipped] " + message);
            Assumptions.abort(message + " (skipped because CI is not set)");
        }
        return exe;
    }

    /** @return the Python interpreter next to the cop program (its virtual environment) */
    static Path python(Path cop) {
        Path py = cop.resolveSibling("python");
        if (!Files.isExecutable(py)) {
            String message = "No Python interpreter next to " + cop + " to run the Python client with";
            if (inCi()) {
                Assertions.fail(message);
            }
            Assumptions.abort(message);
        }
        return py;
    }

    static String quote(Path p) {
        return "'" + p.toString().replace("'", "'\\''") + "'";
    }

    /**
     * Starts {@code cop serve} on a free loopback port.
     *
     * @param settingsFor makes the connection settings for the chosen port
     * @param extraArgs   more arguments for cop serve (e.g. "--max-sessions 2")
     */
    static LocalServer start(java.util.function.IntFunction<ConnectionSettings> settingsFor, String extraArgs)
            throws IOException, CopException, InterruptedException {
        Path cop = copExecutable();
        ConnectionSettings s = settingsFor.apply(ConnectionErrorsTest.freePort());
        String template = quote(cop) + " serve --host {host} --port {port} " + extraArgs;
        return LocalServer.start(template, s, Map.of("PYTHONUNBUFFERED", "1"), Duration.ofSeconds(90));
    }

    static ConnectionSettings loopback(int port) {
        return ConnectionSettings.forAddress(new ServerAddress("127.0.0.1", port))
                .withInfoTimeout(Duration.ofSeconds(10))
                .withIdleTimeout(Duration.ofMinutes(3));
    }
}
