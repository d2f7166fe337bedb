package io.github.cop.qupath.client;

import io.github.cop.qupath.client.CopException.Kind;
import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Every way connecting can go wrong ends quickly in a message that names the address tried and
 * the fix. None of these may hang: each is bounded by the GetInfo deadline.
 */
@Timeout(value = 30, unit = TimeUnit.SECONDS)
class ConnectionErrorsTest {

    static int freePort() throws IOException {
        try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            return s.getLocalPort();
        }
    }

    static CopException connectFails(ConnectionSettings settings) throws Exception {
        try (CopClient client = CopClient.create(settings)) {
            return assertThrows(CopException.class, client::connect);
        }
    }

    @Test
    @DisplayName("server down: says nothing listens at the address, and how to start the server there")
    void nothingListening() throws Exception {
        int port = freePort();
        long t0 = System.nanoTime();
        CopException e = connectFails(ConnectionSettings.forAddress(new ServerAddress("127.0.0.1", port)));
        long ms = (System.nanoTime() - t0) / 1_000_000;
        assertEquals(Kind.SERVER_UNREACHABLE, e.kind());
        assertTrue(e.getMessage().contains("127.0.0.1:" + port), e.getMessage());
        assertTrue(e.getMessage().contains("nothing is listening"), e.getMessage());
        assertTrue(e.getMessage().contains("cop serve --host 127.0.0.1 --port " + port), e.getMessage());
        assertTrue(e.getMessage().contains("Preferences > Chain-of-Prompts"), e.getMessage());
        assertTrue(ms < 5000, "took " + ms + " ms");
    }

    @Test
    @DisplayName("server down with a token set: the suggested command includes --token")
    void nothingListeningWithToken() throws Exception {
        int port = freePort();
        CopException e = connectFails(ConnectionSettings.forAddress(new ServerAddress("127.0.0.1", port)).withToken("s3cret"));
        assertTrue(e.getMessage().contains("--port " + port + " --token <your token>"), e.getMessage());
        assertTrue(!e.getMessage().contains("s3cret"), "the token itself is never shown");
    }

    @Test
    @DisplayName("wrong port (an HTTP/1 web server): says something answered, but not a Chain-of-Prompts server")
    void wrongPortWebServer() throws Exception {
        try (FakeHttpServer http = new FakeHttpServer()) {
            CopException e = connectFails(ConnectionSettings.forAddress(new ServerAddress("127.0.0.1", http.port()))
                    .withInfoTimeout(Duration.ofSeconds(5)));
            assertEquals(Kind.NOT_A_COP_SERVER, e.kind(), e.getMessage());
            assertTrue(e.getMessage().contains("127.0.0.1:" + http.port()), e.getMessage());
            assertTrue(e.getMessage().contains("not as a Chain-of-Prompts server"), e.getMessage());
        }
    }

    @Test
    @DisplayName("wrong port (a program that accepts and never answers): the deadline ends the wait")
    void wrongPortSilentProgram() throws Exception {
        try (ServerSocket silent = new ServerSocket(0, 5, InetAddress.getLoopbackAddress())) {
            List<Socket> held = new ArrayList<>();
            Thread acceptor = new Thread(() -> {
                try {
                    while (true) {
                        held.add(silent.accept());
                    }
                } catch (IOException ignored) {
                    // closed
                }
            });
            acceptor.setDaemon(true);
            acceptor.start();
            long t0 = System.nanoTime();
            CopException e = connectFails(ConnectionSettings.forAddress(new ServerAddress("127.0.0.1", silent.getLocalPort()))
                    .withInfoTimeout(Duration.ofMillis(1500)));
            long ms = (System.nanoTime() - t0) / 1_000_000;
            assertEquals(Kind.TIMEOUT, e.kind(), e.getMessage());
            assertTrue(e.getMessage().contains("No answer from 127.0.0.1:" + silent.getLocalPort() + " within 1.5 s"),
                    e.getMessage());
            assertTrue(ms < 4000, "took " + ms + " ms");
            for (Socket s : held) {
                s.close();
            }
        }
    }

    @Test
    @DisplayName("a gRPC server without the Chain-of-Prompts service is named as such")
    void otherGrpcService() throws Exception {
        io.grpc.Server other = io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder
                .forAddress(new java.net.InetSocketAddress("127.0.0.1", 0)).build().start();
        try {
            CopException e = connectFails(ConnectionSettings.forAddress(new ServerAddress("127.0.0.1", other.getPort())));
            assertEquals(Kind.NOT_A_COP_SERVER, e.kind());
            assertTrue(e.getMessage().contains("does not offer the Chain-of-Prompts service"), e.getMessage());
        } finally {
            other.shutdownNow();
        }
    }

    @Test
    @DisplayName("protocol mismatch: both versions and the component to update are named")
    void protocolMismatch() throws Exception {
        try (FakeCopServer server = new FakeCopServer(FakeCopServer.info(CopClient.PROTOCOL_MAJOR + 1), null)) {
            CopException e = connectFails(server.settings());
            assertEquals(Kind.PROTOCOL_MISMATCH, e.kind());
            assertTrue(e.getMessage().contains("speaks protocol version " + (CopClient.PROTOCOL_MAJOR + 1)), e.getMessage());
            assertTrue(e.getMessage().contains("this extension speaks version " + CopClient.PROTOCOL_MAJOR), e.getMessage());
            assertTrue(e.getMessage().contains("Update this QuPath extension"), e.getMessage());
        }
    }

    @Test
    @DisplayName("an older server (protocol 0: field missing) is told to update")
    void olderServer() throws Exception {
        try (FakeCopServer server = new FakeCopServer(FakeCopServer.info(0), null)) {
            CopException e = connectFails(server.settings());
            assertEquals(Kind.PROTOCOL_MISMATCH, e.kind());
            assertTrue(e.getMessage().contains("Update the server"), e.getMessage());
        }
    }

    @Test
    @DisplayName("token missing: says the server requires one and where to set it")
    void tokenMissing() throws Exception {
        try (FakeCopServer server = new FakeCopServer(FakeCopServer.info(CopClient.PROTOCOL_MAJOR), "s3cret")) {
            CopException e = connectFails(server.settings());
            assertEquals(Kind.UNAUTHENTICATED, e.kind());
            assertTrue(e.getMessage().contains("requires a token"), e.getMessage());
            assertTrue(e.getMessage().contains("'Token' in Preferences > Chain-of-Prompts"), e.getMessage());
        }
    }

    @Test
    @DisplayName("wrong token: says it was rejected; the right one connects")
    void tokenWrongThenRight() throws Exception {
        try (FakeCopServer server = new FakeCopServer(FakeCopServer.info(CopClient.PROTOCOL_MAJOR), "s3cret")) {
            CopException e = connectFails(server.settings().withToken("guess"));
            assertEquals(Kind.UNAUTHENTICATED, e.kind());
            assertTrue(e.getMessage().contains("rejected the token"), e.getMessage());
            try (CopClient ok = CopClient.create(server.settings().withToken("s3cret"))) {
                assertEquals("fake", ok.connect().getLoadedModel());
            }
        }
    }

    @Test
    @DisplayName("TLS against a plain-text server: a clear message that suggests the TLS preference")
    void tlsMismatch() throws Exception {
        try (FakeCopServer server = new FakeCopServer()) {
            CopException e = connectFails(server.settings().withTls(true, null));
            assertTrue(e.kind() == Kind.NOT_A_COP_SERVER || e.kind() == Kind.SERVER_UNREACHABLE, e.kind() + " " + e.getMessage());
            assertTrue(e.getMessage().contains(server.address().toString()), e.getMessage());
        }
    }

    @Test
    @DisplayName("an unknown host name is named, and the wait is bounded")
    void unknownHost() throws Exception {
        CopException e = connectFails(ConnectionSettings.forAddress(new ServerAddress("no-such-host.invalid", 50051))
                .withInfoTimeout(Duration.ofSeconds(5)));
        assertTrue(e.kind() == Kind.SERVER_UNREACHABLE || e.kind() == Kind.TIMEOUT, e.kind() + " " + e.getMessage());
        assertTrue(e.getMessage().contains("no-such-host.invalid"), e.getMessage());
    }

    /** A minimal HTTP/1.1 server: answers anything with 400, like a web app on the wrong port. */
    static final class FakeHttpServer implements AutoCloseable {
        private final ServerSocket socket = new ServerSocket(0, 5, InetAddress.getLoopbackAddress());

        FakeHttpServer() throws IOException {
            Thread t = new Thread(() -> {
                while (!socket.isClosed()) {
                    try (Socket s = socket.accept()) {
                        s.getInputStream().read(new byte[1024]);
                        OutputStream out = s.getOutputStream();
                        out.write("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                                .getBytes(StandardCharsets.US_ASCII));
                        out.flush();
                    } catch (IOException ignored) {
                        // next
                    }
                }
            });
            t.setDaemon(true);
            t.start();
        }

        int port() {
            return socket.getLocalPort();
        }

        @Override
        public void close() throws IOException {
            socket.close();
        }
    }
}
