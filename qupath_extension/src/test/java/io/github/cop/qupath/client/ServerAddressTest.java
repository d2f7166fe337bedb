package io.github.cop.qupath.client;

import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.ValueSource;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The server address preference accepts what users type and says what it expected otherwise. */
class ServerAddressTest {

    @ParameterizedTest(name = "\"{0}\" -> {1}:{2}")
    @CsvSource(delimiter = ';', value = {
            "127.0.0.1:50051; 127.0.0.1; 50051",
            "  gpu-box.lab:6000 ; gpu-box.lab; 6000",
            "localhost; localhost; 50051",
            "grpc://10.0.0.7:7000/; 10.0.0.7; 7000",
            "[::1]:5000; ::1; 5000",
            "::1; ::1; 50051",
    })
    void parsesTheFormsUsersType(String text, String host, int port) {
        ServerAddress a = ServerAddress.parse(text);
        assertEquals(host, a.host());
        assertEquals(port, a.port());
    }

    @ParameterizedTest
    @ValueSource(strings = {"", "  ", "host:notaport", "host:0", "host:70000", ":5000", "[::1"})
    @DisplayName("a bad address is refused with a message that shows the expected form")
    void refusesBadAddresses(String text) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> ServerAddress.parse(text));
        assertFalse(e.getMessage().isBlank());
    }

    @Test
    void printsBackInTheFormItReads() {
        assertEquals("127.0.0.1:50051", ServerAddress.parse("127.0.0.1").toString());
        assertEquals("[::1]:5000", ServerAddress.parse("[::1]:5000").toString());
        assertEquals(ServerAddress.parse("[::1]:5000"), ServerAddress.parse(ServerAddress.parse("[::1]:5000").toString()));
    }

    @Test
    void knowsLoopbackFromRemote() {
        assertTrue(ServerAddress.parse("localhost").isLoopback());
        assertTrue(ServerAddress.parse("127.0.0.1:1").isLoopback());
        assertTrue(ServerAddress.parse("[::1]:1").isLoopback());
        assertFalse(ServerAddress.parse("10.1.2.3").isLoopback());
    }
}
