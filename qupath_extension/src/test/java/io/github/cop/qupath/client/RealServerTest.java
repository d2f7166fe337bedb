package io.github.cop.qupath.client;

import io.github.cop.qupath.client.CopException.Kind;
import io.github.cop.qupath.proto.v1.PixelEncoding;
import io.github.cop.qupath.proto.v1.ServerInfo;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.TestMethodOrder;
import org.junit.jupiter.api.Timeout;
import org.locationtech.jts.geom.Envelope;
import org.locationtech.jts.geom.GeometryFactory;
import org.locationtech.jts.geom.Point;

import javax.imageio.ImageIO;
import java.awt.image.BufferedImage;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The client core against the real Python server ({@code cop serve}, the default CPU model),
 * started by the test on a free loopback port, with pixels read from a real H&amp;E image file.
 *
 * <p>The image is MoNuSeg's TCGA-2Z-A9J9-01A-01-TS1 (1000 x 1000, 40x) from the shared data
 * folder ({@code ../shared/data}, or {@code -Dcop.shared.data}) when present, otherwise scikit-image's ihc.png from the server's own
 * virtual environment, each with one click per class on a nucleus of that kind. Working at
 * downsample 1 makes the input identical for both clients (no resampling), so the Java and the
 * Python client must agree exactly.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
@Timeout(value = 5, unit = TimeUnit.MINUTES)
class RealServerTest {

    /** A real image file and one click per class on it. */
    record TestImage(Path file, List<PromptPoint> clicks) {
    }

    private LocalServer server;
    private CopClient client;
    private TestImage image;
    private BufferedImage pixels;

    static TestImage findImage() {
        Path monuseg = RealServer.sharedData().resolve("he_untyped/MoNuSeg/test/image/TCGA-2Z-A9J9-01A-01-TS1.tif");
        if (Files.isRegularFile(monuseg)) {
            return new TestImage(monuseg, List.of(
                    new PromptPoint(468.2, 329.9, "Tumor: Positive", 0xC80000),
                    new PromptPoint(681.9, 721.3, "Stroma", 0x00A000)));
        }
        try (Stream<Path> s = Files.walk(RealServer.repoRoot().resolve(".venv/lib"), 6)) {
            Path ihc = s.filter(p -> p.endsWith(Path.of("skimage", "data", "ihc.png"))).findFirst().orElse(null);
            if (ihc != null) {
                return new TestImage(ihc, List.of(
                        new PromptPoint(313.0, 362.0, "Epithelial: Positive", 0xC80000),
                        new PromptPoint(236.0, 273.0, "Stroma", 0x00A000)));
            }
        } catch (IOException ignored) {
            // fall through
        }
        throw new AssertionError("No test image: neither " + monuseg + " nor scikit-image's ihc.png in .venv");
    }

    @BeforeAll
    void startServer() throws Exception {
        server = RealServer.start(RealServer::loopback, "");
        client = CopClient.create(RealServer.loopback(server.address().port()));
        image = findImage();
        pixels = ImageIO.read(image.file().toFile());
        assertNotNull(pixels, "Java's ImageIO cannot read " + image.file());
    }

    @AfterAll
    void stopServer() {
        if (client != null) {
            client.close();
        }
        if (server != null) {
            server.close();
        }
    }

    private SegmentationJob.Builder job(String imageId, int width, int height) {
        return SegmentationJob.builder()
                .imageId(imageId)
                .imageSize(width, height)
                .addClicks(image.clicks())
                .options(SegmentationOptions.defaults().withDownsample(1));
    }

    @Test
    @Order(1)
    @DisplayName("GetInfo: the real server speaks this protocol and runs the CPU default model")
    void connects() throws Exception {
        ServerInfo info = client.connect();
        assertEquals(CopClient.PROTOCOL_MAJOR, info.getProtocolMajor());
        assertEquals("he-watershed", info.getLoadedModel());
        assertTrue(info.getMaxTileSide() >= info.getNativeTile());
    }

    @Test
    @Order(2)
    @DisplayName("a full session from real pixels: valid level-0 polygons, the clicked cells in their classes,"
            + " and exactly the Python client's cells")
    void fullSessionMatchesThePythonClient() throws Exception {
        int w = pixels.getWidth();
        int h = pixels.getHeight();
        List<ProgressUpdate> progress = new ArrayList<>();
        SegmentationResult r = client.segment(
                job("java:" + image.file().getFileName(), w, h)
                        .pixelSource(PixelSource.clientPixels(PixelEncoding.RAW_RGB)).build(),
                new BufferedImageTileSource(pixels),
                new SessionListener() {
                    @Override
                    public void onProgress(ProgressUpdate p) {
                        progress.add(p);
                    }
                });

        List<String> classes = image.clicks().stream().map(PromptPoint::className).toList();
        assertTrue(r.detections().size() > 50, "found only " + r.detections().size() + " cells");
        Envelope bounds = new Envelope(0, w, 0, h);
        for (CellDetection d : r.detections()) {
            assertTrue(d.polygon().isValid(), "invalid polygon " + d.polygon());
            assertTrue(d.polygon().getArea() > 0);
            assertTrue(bounds.contains(d.polygon().getEnvelopeInternal()), "outside the image: " + d.polygon());
            assertTrue(classes.contains(d.className()), d.className());
            assertTrue(d.measurements().containsKey("Area px^2"), d.measurements().keySet().toString());
        }
        GeometryFactory f = new GeometryFactory();
        for (PromptPoint click : image.clicks()) {
            Point p = f.createPoint(new org.locationtech.jts.geom.Coordinate(click.x(), click.y()));
            List<String> found = r.detections().stream().filter(d -> d.polygon().covers(p)).map(CellDetection::className).toList();
            assertEquals(List.of(click.className()), found, "the clicked cell at " + click.x() + "," + click.y());
        }
        for (String c : classes) {
            assertEquals(r.count(c), r.summary().countsByClass().get(c), "summary agrees with the cells received for " + c);
        }
        assertTrue(r.transfer().tiles() > 0);
        assertEquals(3.0, r.transfer().byEncoding().get(PixelEncoding.RAW_RGB).bytesPerPixel());
        assertTrue(!progress.isEmpty() && progress.get(progress.size() - 1).tilesDone() > 0);

        // The Python client, same server, same file, same clicks; another image id so nothing is cached.
        PythonClientRun py = PythonClientRun.run(server, image.file(), image.clicks(), "python:" + image.file().getFileName(),
                "RAW_RGB", 0, 1.0);
        assertEquals(sha256(PixelEncoder.rawRgb(pixels)), py.sha256, "both clients sent the same pixels");
        Map<String, Long> javaCounts = new LinkedHashMap<>();
        classes.forEach(c -> javaCounts.put(c, r.count(c)));
        assertEquals(py.counts, javaCounts, "cells per class, Java client vs Python client");
        List<Double> javaAreas = r.detections().stream().map(d -> d.polygon().getArea()).sorted().toList();
        assertEquals(py.areas.size(), javaAreas.size());
        for (int i = 0; i < javaAreas.size(); i++) {
            assertEquals(py.areas.get(i), javaAreas.get(i), 1e-6, "area " + i);
        }
        System.out.printf(Locale.ROOT, "[real server] %s: %d cells %s; Java %.1f s, Python %.1f s; %s%n",
                image.file().getFileName(), r.detections().size(), javaCounts, r.wallTime().toMillis() / 1000.0,
                py.seconds, r.transfer());
    }

    @Test
    @Order(3)
    @DisplayName("PNG and RAW_RGB tiles give the same cells (both encodings are lossless)")
    void pngAndRawAgree() throws Exception {
        BufferedImage crop = pixels.getSubimage(0, 0, 384, 384);
        Map<PixelEncoding, List<Double>> areas = new LinkedHashMap<>();
        for (PixelEncoding e : List.of(PixelEncoding.PNG, PixelEncoding.RAW_RGB)) {
            SegmentationResult r = client.segment(
                    SegmentationJob.builder().imageId("crop-" + e).imageSize(384, 384)
                            .addClick(new PromptPoint(100.5, 100.5, "Nucleus", 0x0000FF))
                            .options(SegmentationOptions.defaults().withDownsample(1))
                            .pixelSource(PixelSource.clientPixels(e)).build(),
                    new BufferedImageTileSource(crop), null);
            assertEquals(Map.of(e, r.transfer().tiles()), Map.of(e, r.transfer().byEncoding().get(e).tiles()),
                    "the server asked for the offered encoding");
            areas.put(e, r.detections().stream().map(d -> d.polygon().getArea()).sorted().toList());
        }
        assertEquals(areas.get(PixelEncoding.RAW_RGB), areas.get(PixelEncoding.PNG));
    }

    @Test
    @Order(4)
    @DisplayName("cancel mid-run ends the session promptly, and the next session works")
    void cancelMidRun() throws Exception {
        int[] tilesSent = {0};
        SegmentationRun run = client.start(job("cancel:" + image.file().getFileName(), pixels.getWidth(), pixels.getHeight())
                        .pixelSource(PixelSource.clientPixels(PixelEncoding.RAW_RGB)).build(),
                new BufferedImageTileSource(pixels), new SessionListener() {
                    @Override
                    public synchronized void onTileSent(PixelEncoding e, int bytes, long r, long enc) {
                        tilesSent[0]++;
                    }
                });
        long waitStart = System.nanoTime();
        while (tilesSent[0] < 2 && !run.isDone() && System.nanoTime() - waitStart < TimeUnit.SECONDS.toNanos(60)) {
            Thread.sleep(20);
        }
        long t0 = System.nanoTime();
        run.cancel();
        CopException e = assertThrows(CopException.class, run::await);
        double seconds = (System.nanoTime() - t0) / 1e9;
        assertEquals(Kind.CANCELLED, e.kind(), e.getMessage());
        assertTrue(seconds < SegmentSession.CANCEL_GRACE.toSeconds() + 1.0, "cancel took " + seconds + " s");

        BufferedImage crop = pixels.getSubimage(0, 0, 256, 256);
        long t1 = System.nanoTime();
        SegmentationResult next = client.segment(SegmentationJob.builder().imageId("after-cancel").imageSize(256, 256)
                .addClick(new PromptPoint(100.5, 100.5, "Nucleus", 0x0000FF))
                .options(SegmentationOptions.defaults().withDownsample(1))
                .pixelSource(PixelSource.clientPixels(PixelEncoding.RAW_RGB)).build(), new BufferedImageTileSource(crop), null);
        assertTrue(next.detections().size() > 0);
        System.out.printf(Locale.ROOT, "[real server] cancel returned in %.2f s; next session %.1f s%n", seconds,
                (System.nanoTime() - t1) / 1e9);
    }

    @Test
    @Order(5)
    @DisplayName("a client claiming another protocol version is refused by the server, and told so")
    void protocolMismatchRefusedByServer() throws Exception {
        try (CopClient future = CopClient.createSpeakingProtocol(RealServer.loopback(server.address().port()),
                CopClient.PROTOCOL_MAJOR + 1)) {
            CopException e = assertThrows(CopException.class, () -> future.segment(
                    job("v2", pixels.getWidth(), pixels.getHeight()).build(), new BufferedImageTileSource(pixels), null));
            assertEquals(Kind.PROTOCOL_MISMATCH, e.kind(), e.getMessage());
            assertTrue(e.getMessage().contains("protocol"), e.getMessage());
        }
    }

    @Test
    @Order(6)
    @DisplayName("a request the server finds invalid comes back with the server's explanation")
    void invalidRequestExplained() {
        CopException e = assertThrows(CopException.class, () -> client.segment(
                job("bad-halo", pixels.getWidth(), pixels.getHeight())
                        .options(SegmentationOptions.defaults().withDownsample(1).withHalo(100_000)).build(),
                new BufferedImageTileSource(pixels), null));
        assertEquals(Kind.INVALID_REQUEST, e.kind());
        assertTrue(e.getMessage().contains("halo"), e.getMessage());
    }

    @Test
    @Order(7)
    @DisplayName("token: missing is refused with where to set it, the right one works; the stopped server is 'down'")
    void tokenAndServerDown() throws Exception {
        String token = "t-" + Long.toHexString(System.nanoTime());
        int port;
        try (LocalServer guarded = RealServer.start(p -> RealServer.loopback(p).withToken(token), "")) {
            port = guarded.address().port();
            try (CopClient anonymous = CopClient.create(RealServer.loopback(port))) {
                CopException e = assertThrows(CopException.class, anonymous::connect);
                assertEquals(Kind.UNAUTHENTICATED, e.kind());
                assertTrue(e.getMessage().contains("requires a token"), e.getMessage());
            }
            try (CopClient wrong = CopClient.create(RealServer.loopback(port).withToken("nope"))) {
                assertEquals(Kind.UNAUTHENTICATED, assertThrows(CopException.class, wrong::connect).kind());
            }
            try (CopClient right = CopClient.create(RealServer.loopback(port).withToken(token))) {
                assertEquals(CopClient.PROTOCOL_MAJOR, right.connect().getProtocolMajor());
            }
        }
        try (CopClient late = CopClient.create(RealServer.loopback(port))) {
            long t0 = System.nanoTime();
            CopException e = assertThrows(CopException.class, late::connect);
            assertEquals(Kind.SERVER_UNREACHABLE, e.kind(), e.getMessage());
            assertTrue(e.getMessage().contains("cop serve --host 127.0.0.1 --port " + port), e.getMessage());
            assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(5));
        }
    }

    static String sha256(byte[] data) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
    }

    @Test
    @Order(8)
    @DisplayName("the server process is still alive after every error above")
    void serverSurvived() throws Exception {
        assertTrue(server.isAlive(), server.recentOutput());
        assertEquals(CopClient.PROTOCOL_MAJOR, client.connect().getProtocolMajor());
    }

    @Test
    @Order(9)
    @DisplayName("the connector starts a local server only when none answers, reuses it, and stops it on close")
    void connectorStartsALocalServerWhenNeeded() throws Exception {
        String command = RealServer.quote(RealServer.copExecutable()) + " serve --host {host} --port {port}";
        int port = ConnectionErrorsTest.freePort();
        ConnectionSettings settings = RealServer.loopback(port);
        LocalServer started;
        try (ServerConnector connector = new ServerConnector()) {
            try (CopClient first = connector.connect(settings, Optional.of(command), Duration.ofSeconds(90))) {
                assertEquals(CopClient.PROTOCOL_MAJOR, first.serverInfo().getProtocolMajor());
            }
            started = connector.startedServer().orElseThrow();
            try (CopClient second = connector.connect(settings, Optional.of(command), Duration.ofSeconds(90))) {
                assertEquals(started, connector.startedServer().orElseThrow(), "the running server is reused");
                assertEquals(started.info().getServerVersion(), second.serverInfo().getServerVersion());
            }
            try (ServerConnector other = new ServerConnector();
                 CopClient existing = other.connect(RealServer.loopback(server.address().port()), Optional.of(command),
                         Duration.ofSeconds(90))) {
                assertTrue(other.startedServer().isEmpty(), "nothing is started when a server answers");
                assertEquals(CopClient.PROTOCOL_MAJOR, existing.serverInfo().getProtocolMajor());
            }
        }
        assertTrue(!started.isAlive(), "closing the connector stops the server it started");
    }
}
