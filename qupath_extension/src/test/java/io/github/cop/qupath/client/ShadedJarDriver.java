package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.PixelEncoding;

import javax.imageio.ImageIO;
import java.awt.image.BufferedImage;
import java.io.File;
import java.util.Map;
import java.util.TreeMap;

/**
 * One segmentation session written against nothing but the client core's public API and the JDK,
 * so that {@link ShadedJarIT} can load it in a class loader that holds only the extension's
 * shaded jar and what QuPath itself provides. It never names a protobuf or gRPC type.
 */
public final class ShadedJarDriver {

    private ShadedJarDriver() {
    }

    /**
     * @param clicks x, y, class name, repeated
     * @return cells per class name, sorted by name
     */
    public static Map<String, Long> run(String host, int port, String imagePath, Object... clicks) throws Exception {
        BufferedImage image = ImageIO.read(new File(imagePath));
        SegmentationJob.Builder job = SegmentationJob.builder()
                .imageId("shaded-jar-" + new File(imagePath).getName())
                .imageSize(image.getWidth(), image.getHeight())
                .pixelSource(PixelSource.clientPixels(PixelEncoding.PNG))
                .options(SegmentationOptions.defaults().withDownsample(1));
        for (int i = 0; i < clicks.length; i += 3) {
            job.addClick(new PromptPoint((Double) clicks[i], (Double) clicks[i + 1], (String) clicks[i + 2], 0xC80000));
        }
        try (CopClient client = CopClient.create(ConnectionSettings.forAddress(new ServerAddress(host, port)))) {
            client.connect();
            SegmentationResult result = client.segment(job.build(), new BufferedImageTileSource(image), null);
            Map<String, Long> counts = new TreeMap<>();
            for (CellDetection d : result.detections()) {
                counts.merge(d.className(), 1L, Long::sum);
            }
            return counts;
        }
    }
}
