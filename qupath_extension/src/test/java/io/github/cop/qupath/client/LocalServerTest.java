package io.github.cop.qupath.client;

import io.github.cop.qupath.client.CopException.Kind;
import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Starting a local server fails with the command, the address and the server's last words. */
@Timeout(value = 30, unit = TimeUnit.SECONDS)
class LocalServerTest {

    private static ConnectionSettings at(int port) {
        return ConnectionSettings.forAddress(new ServerAddress("127.0.0.1", port));
    }

    @Test
    @DisplayName("the command is split like a shell would, without running one")
    void splitsCommands() {
        assertEquals(List.of("/opt/my cop/bin/cop", "serve", "--slide-root", "/data/it's", "a\"b"),
                LocalServer.splitCommand("'/opt/my cop/bin/cop' serve   --slide-root \"/data/it's\" a\\\"b"));
        assertEquals(List.of("", "x"), LocalServer.splitCommand("'' x"));
        assertThrows(IllegalArgumentException.class, () -> LocalServer.splitCommand("cop 'serve"));
    }

    @Test
    @DisplayName("placeholders take the connection's values; a token is passed on unless the command has one")
    void expandsPlaceholders() {
        ConnectionSettings s = at(6001).withToken("t0k");
        assertEquals(List.of("cop", "serve", "--host", "127.0.0.1", "--port", "6001", "--token", "t0k"),
                LocalServer.expandCommand("cop serve --host {host} --port {port}", s));
        assertEquals(List.of("cop", "serve", "--port", "6001", "--token={token}".replace("{token}", "t0k")),
                LocalServer.expandCommand("cop serve --port {port} --token={token}", s));
        assertThrows(IllegalArgumentException.class, () -> LocalServer.expandCommand(" ", s));
    }

    @Test
    @DisplayName("a command that does not exist: names it and says where to set the full path")
    void missingProgram() throws Exception {
        CopException e = assertThrows(CopException.class, () -> LocalServer.start(
                "/nonexistent/cop serve --port {port}", at(ConnectionErrorsTest.freePort()), Map.of(), Duration.ofSeconds(5)));
        assertEquals(Kind.LAUNCH_FAILED, e.kind());
        assertTrue(e.getMessage().contains("/nonexistent/cop serve --port"), e.getMessage());
        assertTrue(e.getMessage().contains("Local server command"), e.getMessage());
    }

    @Test
    @DisplayName("a server that exits at once: gives its exit code and its last output")
    void exitsAtOnce() throws Exception {
        CopException e = assertThrows(CopException.class, () -> LocalServer.start(
                "sh -c 'echo port {port} is taken >&2; exit 3'", at(ConnectionErrorsTest.freePort()), Map.of(),
                Duration.ofSeconds(10)));
        assertEquals(Kind.LAUNCH_FAILED, e.kind());
        assertTrue(e.getMessage().contains("exited with code 3"), e.getMessage());
        assertTrue(e.getMessage().contains("is taken"), e.getMessage());
    }

    @Test
    @DisplayName("a server that never answers: gives up after the startup timeout and stops the process")
    void neverAnswers() throws Exception {
        int port = ConnectionErrorsTest.freePort();
        long t0 = System.nanoTime();
        CopException e = assertThrows(CopException.class, () -> LocalServer.start(
                "sh -c 'echo loading; exec sleep 60'", at(port), Map.of(), Duration.ofMillis(1500)));
        long ms = (System.nanoTime() - t0) / 1_000_000;
        assertEquals(Kind.LAUNCH_FAILED, e.kind());
        assertTrue(e.getMessage().contains("did not answer at 127.0.0.1:" + port + " within 1.5 s"), e.getMessage());
        assertTrue(e.getMessage().contains("loading"), e.getMessage());
        assertTrue(ms < 15000, "took " + ms + " ms");
    }

    @Test
    @DisplayName("the connector starts nothing without a command, and reports a command that fails")
    void connectorPolicy() throws Exception {
        int port = ConnectionErrorsTest.freePort();
        try (ServerConnector connector = new ServerConnector()) {
            CopException none = assertThrows(CopException.class,
                    () -> connector.connect(at(port), java.util.Optional.empty(), Duration.ofSeconds(5)));
            assertEquals(Kind.SERVER_UNREACHABLE, none.kind());
            CopException failing = assertThrows(CopException.class, () -> connector.connect(at(port),
                    java.util.Optional.of("sh -c 'echo no model here; exit 2'"), Duration.ofSeconds(5)));
            assertEquals(Kind.LAUNCH_FAILED, failing.kind());
            assertTrue(failing.getMessage().contains("no model here"), failing.getMessage());
            assertTrue(connector.startedServer().isEmpty());
        }
    }

    @Test
    @DisplayName("a remote address is never 'started': the connection error is reported as is")
    void connectorNeverStartsForRemoteAddresses() throws Exception {
        try (ServerConnector connector = new ServerConnector()) {
            ConnectionSettings remote = ConnectionSettings.forAddress(new ServerAddress("192.0.2.1", 50051))
                    .withInfoTimeout(Duration.ofMillis(800));
            CopException e = assertThrows(CopException.class,
                    () -> connector.connect(remote, java.util.Optional.of("sh -c 'exit 9'"), Duration.ofSeconds(5)));
            assertTrue(e.kind() == Kind.TIMEOUT || e.kind() == Kind.SERVER_UNREACHABLE, e.kind() + " " + e.getMessage());
            assertTrue(connector.startedServer().isEmpty());
        }
    }
}
