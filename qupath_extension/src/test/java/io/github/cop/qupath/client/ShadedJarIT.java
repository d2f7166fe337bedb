package io.github.cop.qupath.client;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

import java.net.URL;
import java.net.URLClassLoader;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The extension jar as QuPath loads it: the shaded client (gRPC with its own Netty, protobuf
 * relocated, gRPC's ServiceLoader files merged) plus only what QuPath ships (Guava, Gson, JTS),
 * in a class loader that sees nothing else. One real session through it must give the same
 * cells as the unshaded classes. Run by Failsafe after {@code package} builds the jar.
 */
@Timeout(value = 5, unit = TimeUnit.MINUTES)
class ShadedJarIT {

    static Path shadedJar() {
        Path jar = Path.of(System.getProperty("cop.shaded.jar", "target/qupath-extension-cop-client-0.1.0-SNAPSHOT-all.jar"));
        assertTrue(Files.isRegularFile(jar), "the shaded jar is built by `mvn package`: " + jar);
        return jar;
    }

    /** Where a class QuPath provides was loaded from on this test's class path. */
    static URL jarOf(String className) throws Exception {
        return Class.forName(className).getProtectionDomain().getCodeSource().getLocation();
    }

    static URLClassLoader asQuPathLoadsIt() throws Exception {
        List<URL> urls = new ArrayList<>(List.of(
                shadedJar().toUri().toURL(),
                // this test's own classes, for ShadedJarDriver (it uses the client API only)
                ShadedJarDriver.class.getProtectionDomain().getCodeSource().getLocation()));
        for (String provided : List.of("com.google.common.collect.ImmutableList",
                "com.google.common.util.concurrent.internal.InternalFutureFailureAccess",
                "com.google.gson.Gson", "org.locationtech.jts.geom.Geometry")) {
            urls.add(jarOf(provided));
        }
        return new URLClassLoader("qupath-like", urls.toArray(URL[]::new), ClassLoader.getPlatformClassLoader());
    }

    @Test
    void theShadedJarRunsASessionWithProtobufRelocatedAndNothingElseOnTheClassPath() throws Exception {
        RealServerTest.TestImage image = RealServerTest.findImage();
        try (LocalServer server = RealServer.start(RealServer::loopback, "");
             URLClassLoader loader = asQuPathLoadsIt()) {
            Class<?> client = loader.loadClass("io.github.cop.qupath.client.CopClient");
            assertEquals(shadedJar().toUri().toURL(), client.getProtectionDomain().getCodeSource().getLocation());
            assertThrows(ClassNotFoundException.class, () -> loader.loadClass("com.google.protobuf.Message"));
            loader.loadClass("io.github.cop.qupath.shaded.protobuf.Message");
            assertThrows(ClassNotFoundException.class, () -> loader.loadClass("io.netty.channel.Channel"));

            int port = server.address().port();
            Object[] clicks = clickArguments(image.clicks());
            @SuppressWarnings("unchecked")
            Map<String, Long> shaded = (Map<String, Long>) loader.loadClass(ShadedJarDriver.class.getName())
                    .getMethod("run", String.class, int.class, String.class, Object[].class)
                    .invoke(null, "127.0.0.1", port, image.file().toString(), clicks);
            Map<String, Long> plain = ShadedJarDriver.run("127.0.0.1", port, image.file().toString(), clicks);
            assertFalse(shaded.isEmpty(), "the session through the shaded jar found no cells");
            assertEquals(plain, shaded, "cells per class: shaded jar vs plain class path");
        }
    }

    static Object[] clickArguments(List<PromptPoint> clicks) {
        List<Object> out = new ArrayList<>();
        for (PromptPoint p : clicks) {
            out.add(p.x());
            out.add(p.y());
            out.add(p.className());
        }
        return out.toArray();
    }
}
