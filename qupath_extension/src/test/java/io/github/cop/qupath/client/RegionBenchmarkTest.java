package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.PixelEncoding;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.condition.EnabledIfSystemProperty;

import javax.imageio.ImageIO;
import java.awt.Graphics2D;
import java.awt.image.BufferedImage;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

/**
 * A benchmark, not a test of behaviour (off unless {@code -Dcop.bench=true}): a ~4000 x 4000
 * region (a mosaic of 16 MoNuSeg 1000 x 1000 tiles, 0.25 um/px, so the server works at its
 * CPU model's 0.25 um/px, downsample 1) through the Java client and through the Python client, on the
 * same server, in both pixel encodings. Prints wall times, their ratio, cells, and bytes per tile.
 *
 * <pre>mvn -f qupath_extension/pom.xml test -Dtest=RegionBenchmarkTest -Dcop.bench=true</pre>
 */
@EnabledIfSystemProperty(named = "cop.bench", matches = "true")
@Timeout(value = 90, unit = TimeUnit.MINUTES)
class RegionBenchmarkTest {

    static final int SIDE = 4000;

    @Test
    void javaVersusPythonOnA4000Region() throws Exception {
        Path dir = RealServer.sharedData().resolve("he_untyped/MoNuSeg/test/image");
        Assumptions.assumeTrue(Files.isDirectory(dir), "MoNuSeg images are not in " + dir);
        List<Path> tiles;
        try (Stream<Path> s = Files.list(dir)) {
            tiles = s.filter(p -> p.toString().endsWith(".tif")).sorted().toList();
        }
        BufferedImage mosaic = new BufferedImage(SIDE, SIDE, BufferedImage.TYPE_INT_RGB);
        Graphics2D g = mosaic.createGraphics();
        for (int i = 0; i < 16; i++) {
            g.drawImage(ImageIO.read(tiles.get(i % tiles.size()).toFile()), (i % 4) * 1000, (i / 4) * 1000, null);
        }
        g.dispose();
        Path file = Files.createTempFile("cop-bench-4000", ".png");
        ImageIO.write(mosaic, "png", file.toFile());
        // One click per class on nuclei of the first tile (the same as RealServerTest's).
        List<PromptPoint> clicks = List.of(new PromptPoint(468.2, 329.9, "Tumor: Positive", 0xC80000),
                new PromptPoint(681.9, 721.3, "Stroma", 0x00A000));

        List<String> report = new ArrayList<>();
        try (LocalServer server = RealServer.start(RealServer::loopback, "--cache-gb 0");
             CopClient client = CopClient.create(RealServer.loopback(server.address().port()))) {
            client.connect();
            for (PixelEncoding e : List.of(PixelEncoding.RAW_RGB, PixelEncoding.PNG)) {
                String name = e == PixelEncoding.RAW_RGB ? "RAW_RGB" : "PNG";
                SegmentationResult java = client.segment(SegmentationJob.builder()
                        .imageId("bench-java-" + name).imageSize(SIDE, SIDE).pixelSizeMicrons(0.25)
                        .pixelSource(PixelSource.clientPixels(e)).addClicks(clicks).build(),
                        new BufferedImageTileSource(mosaic), null);
                PythonClientRun py = PythonClientRun.run(server, file, clicks, "bench-python-" + name, name, 0.25, 0);
                TransferStats.PerEncoding t = java.transfer().byEncoding().get(e);
                double javaS = java.wallTime().toMillis() / 1000.0;
                report.add(String.format(Locale.ROOT,
                        "%-7s Java %6.1f s (%d cells, %d tiles, %.0f bytes/tile, %.2f bytes/px, read %.2f s, encode %.2f s)"
                                + " | Python %6.1f s (%d cells, %d tiles, %.0f bytes/tile) | Java/Python %.2f | server %s",
                        name, javaS, java.detections().size(), t.tiles(), t.bytesPerTile(), t.bytesPerPixel(),
                        t.readNanos() / 1e9, t.encodeNanos() / 1e9, py.seconds,
                        py.counts.values().stream().mapToLong(Long::longValue).sum(), py.tiles,
                        py.tiles == 0 ? 0.0 : py.bytes / (double) py.tiles, javaS / py.seconds, java.summary().seconds()));
            }
        } finally {
            Files.deleteIfExists(file);
        }
        String text = String.join("\n", report);
        System.out.println("[benchmark 4000 x 4000]\n" + text);
        Files.writeString(Path.of("target", "cop-region-benchmark.txt"), text + "\n");
    }
}
