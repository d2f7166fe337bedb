package io.github.cop.qupath.client;

import io.github.cop.qupath.client.CopException.Kind;
import io.github.cop.qupath.proto.v1.Accepted;
import io.github.cop.qupath.proto.v1.ClassCount;
import io.github.cop.qupath.proto.v1.ClientMessage;
import io.github.cop.qupath.proto.v1.Detection;
import io.github.cop.qupath.proto.v1.DetectionBatch;
import io.github.cop.qupath.proto.v1.PixelEncoding;
import io.github.cop.qupath.proto.v1.Polygon;
import io.github.cop.qupath.proto.v1.Progress;
import io.github.cop.qupath.proto.v1.Ring;
import io.github.cop.qupath.proto.v1.SegmentRequest;
import io.github.cop.qupath.proto.v1.ServerMessage;
import io.github.cop.qupath.proto.v1.Summary;
import io.github.cop.qupath.proto.v1.TileData;
import io.github.cop.qupath.proto.v1.TileRequest;
import io.grpc.Status;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.awt.image.BufferedImage;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The session driver against a scripted server on a real socket: how the client answers tile
 * requests, gathers detections, and ends (summary, server error, cancel, timeout, crash, limits).
 */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class SessionWithFakeServerTest {

    private static final int W = 1000;
    private static final int H = 800;

    private FakeCopServer server;
    private CopClient client;

    @BeforeEach
    void start() throws Exception {
        server = new FakeCopServer();
        client = CopClient.create(server.settings().withIdleTimeout(Duration.ofSeconds(20)));
    }

    @AfterEach
    void stop() throws Exception {
        client.close();
        server.close();
    }

    static SegmentationJob job(PixelEncoding... encodings) {
        return SegmentationJob.builder()
                .imageId("test-image")
                .imageSize(W, H)
                .pixelSizeMicrons(0.25)
                .pixelSource(PixelSource.clientPixels(encodings))
                .addClick(new PromptPoint(100.5, 100.5, "Tumor: Positive", 0xC80000))
                .addClick(new PromptPoint(500.5, 400.5, "Stroma", 0x00C800))
                .build();
    }

    static ServerMessage accepted(int tiles) {
        return ServerMessage.newBuilder().setAccepted(Accepted.newBuilder().setSessionId("s1").setTilesTotal(tiles)
                .setDownsample(1).setTileSide(512).setHalo(32)).build();
    }

    static Detection square(double x, double y, double side, int classIndex) {
        Ring ring = Ring.newBuilder().addAllXy(List.of(x, y, x + side, y, x + side, y + side, x, y + side)).build();
        return Detection.newBuilder().setPolygon(Polygon.newBuilder().setExterior(ring)).setClassIndex(classIndex)
                .setScore(0.9f).putMeasurements("Area px^2", side * side).build();
    }

    static ServerMessage summary(long... counts) {
        Summary.Builder s = Summary.newBuilder().putSeconds("total", 0.1);
        for (int i = 0; i < counts.length; i++) {
            s.addCounts(ClassCount.newBuilder().setClassIndex(i).setCount(counts[i]));
        }
        return ServerMessage.newBuilder().setSummary(s).build();
    }

    static ServerMessage tileRequest(long id, long x, long y, long w, long h, double d, PixelEncoding e) {
        return ServerMessage.newBuilder().setTileRequest(TileRequest.newBuilder().setRequestId(id).setX(x).setY(y)
                .setWidth(w).setHeight(h).setDownsample(d)
                .setOutWidth((int) Math.round(w / d)).setOutHeight((int) Math.round(h / d)).setEncoding(e)).build();
    }

    @Test
    @DisplayName("the request carries the image, the clicks with class indices and the class names unchanged")
    void theOpeningRequestDescribesTheJob() throws Exception {
        List<SegmentRequest> seen = new CopyOnWriteArrayList<>();
        server.setScript(call -> {
            seen.add(call.next().getStart());
            call.send(accepted(0));
            call.send(summary(0, 0));
            call.complete();
        });
        client.segment(job(PixelEncoding.PNG), new BufferedImageTileSource(TestImages.coordinates(W, H, 1)), null);
        SegmentRequest r = seen.get(0);
        assertEquals(CopClient.PROTOCOL_MAJOR, r.getProtocolMajor());
        assertEquals("test-image", r.getImageId());
        assertEquals(W, r.getWidth());
        assertEquals(H, r.getHeight());
        assertEquals(0.25, r.getMpp());
        assertEquals(List.of(PixelEncoding.PNG), r.getClientPixels().getEncodingsList());
        assertEquals("Tumor: Positive", r.getClasses(0).getName());
        assertEquals(0xC80000, r.getClasses(0).getRgb());
        assertEquals("Stroma", r.getClasses(1).getName());
        assertEquals(1, r.getClicks(1).getClassIndex());
        assertEquals(500.5, r.getClicks(1).getX());
        assertEquals(0, r.getRegionsCount(), "no region means the whole image");
    }

    @ParameterizedTest
    @EnumSource(value = PixelEncoding.class, names = {"PNG", "RAW_RGB"})
    @DisplayName("each tile request is answered with exactly the pixels of its level-0 box, padded white outside the image")
    void tileAnswersCarryTheRequestedPixels(PixelEncoding encoding) throws Exception {
        BufferedImage image = TestImages.coordinates(W, H, 2);
        List<TileData> answers = new CopyOnWriteArrayList<>();
        server.setScript(call -> {
            call.next();
            call.send(accepted(3));
            call.send(tileRequest(1, 100, 50, 256, 128, 1, encoding));       // inside, level 0
            answers.add(call.next().getTile());
            call.send(tileRequest(2, 900, 700, 256, 256, 2, encoding));      // beyond the corner, downsample 2
            answers.add(call.next().getTile());
            call.send(tileRequest(3, -64, -32, 128, 64, 1, encoding));       // before the origin
            answers.add(call.next().getTile());
            call.send(summary(0, 0));
            call.complete();
        });
        SegmentationResult result = client.segment(job(encoding), new BufferedImageTileSource(image), null);

        TileData a = answers.get(0);
        assertEquals(1, a.getRequestId());
        assertEquals(encoding, a.getEncoding());
        BufferedImage t1 = TestImages.decode(a);
        assertEquals(256, t1.getWidth());
        assertEquals(128, t1.getHeight());
        for (int v = 0; v < 128; v += 7) {
            for (int u = 0; u < 256; u += 5) {
                assertEquals(TestImages.colourAt(100 + u, 50 + v, 2), t1.getRGB(u, v) & 0xFFFFFF, "pixel " + u + "," + v);
            }
        }
        BufferedImage t2 = TestImages.decode(answers.get(1));
        assertEquals(128, t2.getWidth());
        // output pixel (u, v) covers level 0 [900 + 2u, 902 + 2u): one 2x2 block of the pattern
        assertEquals(TestImages.colourAt(900, 700, 2), t2.getRGB(0, 0) & 0xFFFFFF);
        assertEquals(TestImages.colourAt(998, 798, 2), t2.getRGB(49, 49) & 0xFFFFFF);
        assertEquals(0xFFFFFF, t2.getRGB(50, 10) & 0xFFFFFF, "right of the image is white");
        assertEquals(0xFFFFFF, t2.getRGB(10, 50) & 0xFFFFFF, "below the image is white");
        BufferedImage t3 = TestImages.decode(answers.get(2));
        assertEquals(0xFFFFFF, t3.getRGB(63, 31) & 0xFFFFFF, "above-left of the origin is white");
        assertEquals(TestImages.colourAt(0, 0, 2), t3.getRGB(64, 32) & 0xFFFFFF, "level-0 (0,0) lands at (64,32)");

        TransferStats.PerEncoding stats = result.transfer().byEncoding().get(encoding);
        assertEquals(3, stats.tiles());
        if (encoding == PixelEncoding.RAW_RGB) {
            assertEquals(3.0, stats.bytesPerPixel());
        }
    }

    @Test
    @DisplayName("detections spread over many messages all arrive, in order, with their classes and measurements")
    void detectionsAreCollectedAcrossManyBatches() throws Exception {
        int batches = 250;
        int perBatch = 8;
        server.setScript(call -> {
            call.next();
            call.send(accepted(1));
            for (int b = 0; b < batches; b++) {
                DetectionBatch.Builder batch = DetectionBatch.newBuilder();
                for (int i = 0; i < perBatch; i++) {
                    int n = b * perBatch + i;
                    batch.addDetections(square(n % 90 * 10, n / 90 * 10, 8, n % 2));
                }
                call.send(ServerMessage.newBuilder().setDetections(batch).build());
                call.send(ServerMessage.newBuilder().setProgress(Progress.newBuilder().setTilesDone(1).setTilesTotal(1)
                        .setCells((long) (b + 1) * perBatch)).build());
            }
            call.send(summary(1000, 1000));
            call.complete();
        });
        AtomicInteger batchesSeen = new AtomicInteger();
        List<ProgressUpdate> progress = new CopyOnWriteArrayList<>();
        SegmentationResult r = client.segment(job(PixelEncoding.PNG), (x, y, w, h, d) -> {
            throw new AssertionError("no tile was requested");
        }, new SessionListener() {
            @Override
            public void onDetections(List<CellDetection> batch) {
                assertEquals(perBatch, batch.size());
                batchesSeen.incrementAndGet();
            }

            @Override
            public void onProgress(ProgressUpdate p) {
                progress.add(p);
            }
        });
        assertEquals(batches * perBatch, r.detections().size());
        assertEquals(batches, batchesSeen.get());
        assertEquals(batches, progress.size());
        assertEquals(2000, progress.get(batches - 1).cells());
        for (int n = 0; n < r.detections().size(); n++) {
            CellDetection d = r.detections().get(n);
            assertEquals(n % 90 * 10, d.polygon().getEnvelopeInternal().getMinX(), "order of detection " + n);
            assertEquals(n % 2 == 0 ? "Tumor: Positive" : "Stroma", d.className());
            assertEquals(64.0, d.measurements().get("Area px^2"));
            assertTrue(d.polygon().isValid());
        }
        assertEquals(1000L, r.summary().countsByClass().get("Tumor: Positive"));
        assertEquals(1000L, r.summary().countsByClass().get("Stroma"));
    }

    @Test
    @DisplayName("a self-intersecting polygon from the server is repaired, an empty one dropped, and both counted")
    void invalidPolygonsAreRepairedOrDropped() throws Exception {
        Ring bowTie = Ring.newBuilder().addAllXy(List.of(0.0, 0.0, 10.0, 10.0, 10.0, 0.0, 0.0, 10.0)).build();
        Ring line = Ring.newBuilder().addAllXy(List.of(0.0, 0.0, 5.0, 5.0, 10.0, 10.0)).build();
        server.setScript(call -> {
            call.next();
            call.send(accepted(1));
            call.send(ServerMessage.newBuilder().setDetections(DetectionBatch.newBuilder()
                    .addDetections(Detection.newBuilder().setPolygon(Polygon.newBuilder().setExterior(bowTie)))
                    .addDetections(Detection.newBuilder().setPolygon(Polygon.newBuilder().setExterior(line)))
                    .addDetections(square(20, 20, 5, 1))).build());
            call.send(summary(2, 1));
            call.complete();
        });
        SegmentationResult r = client.segment(job(PixelEncoding.PNG), (x, y, w, h, d) -> null, null);
        assertEquals(2, r.detections().size());
        assertEquals(1, r.repairedPolygons());
        assertEquals(1, r.droppedPolygons());
        r.detections().forEach(d -> assertTrue(d.polygon().isValid()));
    }

    @Test
    @DisplayName("a cell of a class index the run does not have is a protocol error, not a silent mislabel")
    void unknownClassIndexIsAProtocolError() throws Exception {
        server.setScript(call -> {
            call.next();
            call.send(accepted(1));
            call.send(ServerMessage.newBuilder().setDetections(DetectionBatch.newBuilder().addDetections(square(0, 0, 5, 7)))
                    .build());
            call.clientDone.await(10, TimeUnit.SECONDS);
        });
        CopException e = assertThrows(CopException.class,
                () -> client.segment(job(PixelEncoding.PNG), (x, y, w, h, d) -> null, null));
        assertEquals(Kind.INTERNAL, e.kind());
        assertTrue(e.getMessage().contains("class index 7"), e.getMessage());
        assertTrue(e.getMessage().contains("2 classes"), e.getMessage());
        assertTrue(server.nextCall().clientDone.await(5, TimeUnit.SECONDS), "the client ends the call");
    }

    @Test
    @DisplayName("a tile request beyond the server's own tile limit is refused with the sizes in the message")
    void oversizedTileRequestIsRefused() throws Exception {
        server.setScript(call -> {
            call.next();
            call.send(accepted(1));
            call.send(tileRequest(1, 0, 0, 4096, 4096, 1, PixelEncoding.PNG));
            call.clientDone.await(10, TimeUnit.SECONDS);
        });
        CopException e = assertThrows(CopException.class,
                () -> client.segment(job(PixelEncoding.PNG), new BufferedImageTileSource(TestImages.coordinates(W, H, 1)), null));
        assertEquals(Kind.TOO_LARGE, e.kind());
        assertTrue(e.getMessage().contains("4096 x 4096"), e.getMessage());
        assertTrue(e.getMessage().contains("2048 pixels a side"), e.getMessage());
    }

    @Test
    @DisplayName("a tile that would exceed the server's message limit is not sent, and the user is told the limit")
    void tileOverTheMessageLimitIsNotSent() throws Exception {
        server.setInfo(FakeCopServer.info(CopClient.PROTOCOL_MAJOR).toBuilder().setMaxMessageBytes(100_000).build());
        client.close();
        client = CopClient.create(server.settings());
        server.setScript(call -> {
            call.next();
            call.send(accepted(1));
            call.send(tileRequest(1, 0, 0, 512, 512, 1, PixelEncoding.RAW_RGB));
            ClientMessage m = call.received.poll(10, TimeUnit.SECONDS);
            if (m != null && m.hasTile()) {
                throw new AssertionError("the oversized tile was sent");
            }
            call.clientDone.await(10, TimeUnit.SECONDS);
        });
        CopException e = assertThrows(CopException.class,
                () -> client.segment(job(PixelEncoding.RAW_RGB), new BufferedImageTileSource(TestImages.coordinates(W, H, 1)), null));
        assertEquals(Kind.TOO_LARGE, e.kind());
        assertTrue(e.getMessage().contains("100000 bytes"), e.getMessage());
        assertTrue(e.getMessage().contains("Offer PNG"), e.getMessage());
    }

    @Test
    @DisplayName("cancel sends Cancel, ends the session within the grace period, and a new session then works")
    void cancelStopsPromptlyAndTheNextSessionWorks() throws Exception {
        List<Boolean> sawCancelMessage = new CopyOnWriteArrayList<>();
        server.setScript(call -> {
            call.next();
            call.send(accepted(1000));
            for (long id = 1; !call.isCancelled(); id++) {
                call.send(tileRequest(id, 0, 0, 64, 64, 1, PixelEncoding.RAW_RGB));
                ClientMessage m = call.next();
                if (m.hasCancel()) {
                    sawCancelMessage.add(true);
                    call.fail(Status.CANCELLED.withDescription("cancelled by the client"));
                    return;
                }
                Thread.sleep(20);
            }
        });
        CountingSource source = new CountingSource(TestImages.coordinates(W, H, 1));
        SegmentationRun run = client.start(job(PixelEncoding.RAW_RGB), source, null);
        while (source.reads.get() < 5) {
            Thread.sleep(5);
        }
        long t0 = System.nanoTime();
        run.cancel();
        CopException e = assertThrows(CopException.class, run::await);
        long ms = (System.nanoTime() - t0) / 1_000_000;
        assertEquals(Kind.CANCELLED, e.kind());
        assertTrue(ms < 1500, "cancel took " + ms + " ms");
        assertEquals(List.of(true), sawCancelMessage);
        int readsAtCancel = source.reads.get();
        Thread.sleep(200);
        assertTrue(source.reads.get() <= readsAtCancel + 1, "no more tiles are read after the cancel");

        server.setScript(call -> {
            call.next();
            call.send(accepted(0));
            call.send(summary(0, 0));
            call.complete();
        });
        assertEquals(0, client.segment(job(PixelEncoding.RAW_RGB), source, null).detections().size());
    }

    @Test
    @DisplayName("a server that ignores Cancel has its call cancelled after the grace period")
    void cancelIsForcedWhenTheServerIgnoresIt() throws Exception {
        server.setScript(call -> {
            call.next();
            call.send(accepted(1));
            call.clientDone.await(20, TimeUnit.SECONDS);
        });
        SegmentationRun run = client.start(job(PixelEncoding.PNG), (x, y, w, h, d) -> null, null);
        FakeCopServer.Call call = server.nextCall();
        Thread.sleep(100);
        long t0 = System.nanoTime();
        run.cancel();
        CopException e = assertThrows(CopException.class, run::await);
        long ms = (System.nanoTime() - t0) / 1_000_000;
        assertEquals(Kind.CANCELLED, e.kind());
        assertTrue(ms < SegmentSession.CANCEL_GRACE.toMillis() + 1500, "took " + ms + " ms");
        assertTrue(call.clientDone.await(5, TimeUnit.SECONDS));
        assertTrue(call.cancelledByClient, "the server saw the call cancelled");
    }

    @Test
    @DisplayName("a server that goes silent is detected by the idle timeout; the message names the setting")
    void silenceEndsInATimeout() throws Exception {
        client.close();
        client = CopClient.create(server.settings().withIdleTimeout(Duration.ofMillis(400)));
        server.setScript(call -> {
            call.next();
            call.send(accepted(1));
            call.clientDone.await(20, TimeUnit.SECONDS);
        });
        long t0 = System.nanoTime();
        CopException e = assertThrows(CopException.class,
                () -> client.segment(job(PixelEncoding.PNG), (x, y, w, h, d) -> null, null));
        long ms = (System.nanoTime() - t0) / 1_000_000;
        assertEquals(Kind.TIMEOUT, e.kind());
        assertTrue(e.getMessage().contains("Idle timeout"), e.getMessage());
        assertTrue(ms < 3000, "took " + ms + " ms");
    }

    @Test
    @DisplayName("time spent reading a slow tile does not count as server silence")
    void slowTileReadsAreNotSilence() throws Exception {
        client.close();
        client = CopClient.create(server.settings().withIdleTimeout(Duration.ofMillis(300)));
        server.setScript(call -> {
            call.next();
            call.send(accepted(1));
            call.send(tileRequest(1, 0, 0, 32, 32, 1, PixelEncoding.PNG));
            call.next();
            call.send(summary(0, 0));
            call.complete();
        });
        TileSource slow = (x, y, w, h, d) -> {
            try {
                Thread.sleep(900);
            } catch (InterruptedException e) {
                throw new java.io.InterruptedIOException();
            }
            return new BufferedImage(w, h, BufferedImage.TYPE_INT_RGB);
        };
        assertEquals(1, client.segment(job(PixelEncoding.PNG), slow, null).transfer().tiles());
    }

    @Test
    @DisplayName("a tile that cannot be read stops the session with the box and the reason")
    void unreadableTileStopsTheSession() throws Exception {
        server.setScript(call -> {
            call.next();
            call.send(accepted(1));
            call.send(tileRequest(1, 10, 20, 30, 40, 1, PixelEncoding.PNG));
            call.clientDone.await(10, TimeUnit.SECONDS);
        });
        CopException e = assertThrows(CopException.class, () -> client.segment(job(PixelEncoding.PNG), (x, y, w, h, d) -> {
            throw new java.io.IOException("disk on fire");
        }, null));
        assertEquals(Kind.TILE_READ_FAILED, e.kind());
        assertTrue(e.getMessage().contains("(10, 20, 30 x 40)"), e.getMessage());
        assertTrue(e.getMessage().contains("disk on fire"), e.getMessage());
    }

    @Test
    @DisplayName("the server's refusal reaches the user in the server's own words")
    void serverRefusalKeepsItsMessage() throws Exception {
        server.setScript(call -> {
            call.next();
            call.fail(Status.INVALID_ARGUMENT.withDescription("click 0 at (5, 5) is outside the image"));
        });
        CopException e = assertThrows(CopException.class,
                () -> client.segment(job(PixelEncoding.PNG), (x, y, w, h, d) -> null, null));
        assertEquals(Kind.INVALID_REQUEST, e.kind());
        assertTrue(e.getMessage().contains("click 0 at (5, 5) is outside the image"), e.getMessage());
    }

    @Test
    @DisplayName("the server's protocol refusal during a session is reported as a version mismatch")
    void protocolRefusalInSession() throws Exception {
        server.setScript(call -> {
            call.next();
            call.fail(Status.FAILED_PRECONDITION.withDescription("protocol mismatch: the client speaks protocol 2"));
        });
        CopException e = assertThrows(CopException.class,
                () -> client.segment(job(PixelEncoding.PNG), (x, y, w, h, d) -> null, null));
        assertEquals(Kind.PROTOCOL_MISMATCH, e.kind());
    }

    @Test
    @DisplayName("a server that crashes mid-session is reported as stopped, with nothing added")
    void crashMidSession() throws Exception {
        server.setScript(call -> {
            call.next();
            call.send(accepted(10));
            Thread.sleep(100);
            server.crash();
        });
        CopException e = assertThrows(CopException.class,
                () -> client.segment(job(PixelEncoding.PNG), (x, y, w, h, d) -> null, null));
        assertTrue(e.kind() == Kind.SERVER_STOPPED || e.kind() == Kind.SERVER_UNREACHABLE, e.kind() + ": " + e.getMessage());
        assertTrue(e.getMessage().contains(server.address().toString()), e.getMessage());
    }

    @Test
    @DisplayName("a stream that ends without a summary is an error: results may be missing")
    void endWithoutSummary() throws Exception {
        server.setScript(call -> {
            call.next();
            call.send(accepted(1));
            call.complete();
        });
        CopException e = assertThrows(CopException.class,
                () -> client.segment(job(PixelEncoding.PNG), (x, y, w, h, d) -> null, null));
        assertEquals(Kind.INTERNAL, e.kind());
        assertTrue(e.getMessage().contains("without a summary"), e.getMessage());
    }

    @Test
    @DisplayName("server-path mode is refused before any call when the server reads no files")
    void serverPathNeedsASlideRoot() {
        SegmentationJob j = SegmentationJob.builder().imageId("x").imageSize(W, H)
                .pixelSource(PixelSource.serverFile("/data/slide.svs"))
                .addClick(new PromptPoint(1, 1, "A", 0)).build();
        CopException e = assertThrows(CopException.class, () -> client.start(j, null, null));
        assertEquals(Kind.PERMISSION_DENIED, e.kind());
        assertTrue(e.getMessage().contains("--slide-root"), e.getMessage());
    }

    @Test
    @DisplayName("a listener that throws stops the session instead of losing detections silently")
    void failingListenerStopsTheSession() throws Exception {
        server.setScript(call -> {
            call.next();
            call.send(accepted(1));
            call.send(ServerMessage.newBuilder().setDetections(DetectionBatch.newBuilder().addDetections(square(0, 0, 5, 0)))
                    .build());
            call.clientDone.await(10, TimeUnit.SECONDS);
        });
        CopException e = assertThrows(CopException.class, () -> client.segment(job(PixelEncoding.PNG),
                (x, y, w, h, d) -> null, new SessionListener() {
                    @Override
                    public void onDetections(List<CellDetection> batch) {
                        throw new IllegalStateException("hierarchy locked");
                    }
                }));
        assertEquals(Kind.INTERNAL, e.kind());
        assertTrue(e.getMessage().contains("hierarchy locked"), e.getMessage());
    }

    @Test
    @DisplayName("await with a timeout cancels the session when the time runs out")
    void awaitTimeoutCancels() throws Exception {
        server.setScript(call -> {
            call.next();
            call.send(accepted(1));
            call.clientDone.await(20, TimeUnit.SECONDS);
        });
        SegmentationRun run = client.start(job(PixelEncoding.PNG), (x, y, w, h, d) -> null, null);
        CopException e = assertThrows(CopException.class, () -> run.await(Duration.ofMillis(200)));
        assertEquals(Kind.TIMEOUT, e.kind());
        assertTrue(server.nextCall().clientDone.await(SegmentSession.CANCEL_GRACE.toMillis() + 3000, TimeUnit.MILLISECONDS));
        assertTrue(run.isDone() || waitDone(run));
    }

    private static boolean waitDone(SegmentationRun run) throws InterruptedException {
        for (int i = 0; i < 100 && !run.isDone(); i++) {
            Thread.sleep(50);
        }
        return run.isDone();
    }

    /** Counts reads, to see that reading stops after a cancel. */
    static final class CountingSource implements TileSource {
        final AtomicInteger reads = new AtomicInteger();
        private final BufferedImageTileSource inner;

        CountingSource(BufferedImage image) {
            inner = new BufferedImageTileSource(image);
        }

        @Override
        public BufferedImage read(int x, int y, int w, int h, double d) {
            reads.incrementAndGet();
            return inner.read(x, y, w, h, d);
        }
    }

    @Test
    @DisplayName("detections are not duplicated or lost when the same session is awaited twice")
    void awaitIsIdempotent() throws Exception {
        server.setScript(call -> {
            call.next();
            call.send(accepted(1));
            call.send(ServerMessage.newBuilder().setDetections(DetectionBatch.newBuilder().addDetections(square(0, 0, 5, 0)))
                    .build());
            call.send(summary(1, 0));
            call.complete();
        });
        SegmentationRun run = client.start(job(PixelEncoding.PNG), (x, y, w, h, d) -> null, null);
        SegmentationResult a = run.await();
        SegmentationResult b = run.await();
        assertEquals(1, a.detections().size());
        assertEquals(a, b);
        assertFalse(a.detections().isEmpty());
        assertEquals(new ArrayList<>(a.detections()), b.detections());
    }
}
