package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.Gating;
import io.github.cop.qupath.proto.v1.PixelEncoding;
import io.github.cop.qupath.proto.v1.SegmentRequest;
import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.Test;
import org.locationtech.jts.geom.GeometryFactory;
import org.locationtech.jts.io.WKTReader;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** A job refuses the common mistakes before any network call, in words for the user. */
class SegmentationJobTest {

    private static SegmentationJob.Builder base() {
        return SegmentationJob.builder().imageId("img").imageSize(2000, 1000);
    }

    @Test
    @DisplayName("no classified point: tells the user how to make one")
    void noClicks() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> base().build());
        assertTrue(e.getMessage().contains("Points tool"), e.getMessage());
    }

    @Test
    @DisplayName("a point outside the image names its class and position")
    void clickOutside() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> base().addClick(new PromptPoint(2000, 10, "Tumor", 0)).build());
        assertTrue(e.getMessage().contains("Tumor point at (2000.0, 10.0)"), e.getMessage());
    }

    @Test
    @DisplayName("regions without area (lines) are refused rather than silently meaning the whole image")
    void regionsWithoutArea() throws Exception {
        var line = new WKTReader(new GeometryFactory()).read("LINESTRING (0 0, 10 10)");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> base().addClick(new PromptPoint(5, 5, "A", 0)).addRegion(line).build());
        assertTrue(e.getMessage().contains("no area"), e.getMessage());
    }

    @Test
    @DisplayName("the request carries options, source, regions and clicks as the contract defines them")
    void toProto() throws Exception {
        var region = new WKTReader(new GeometryFactory()).read("POLYGON ((0 0, 100 0, 100 100, 0 100, 0 0))");
        SegmentationJob job = base()
                .pixelSizeMicrons(Double.NaN)
                .pixelSource(PixelSource.clientPixelsFor(ServerAddress.parse("10.0.0.1:1")))
                .addRegion(region)
                .addClick(new PromptPoint(5, 6, "B", 0x00FF00))
                .addClick(new PromptPoint(7, 8, "A", 0xFF0000))
                .addClick(new PromptPoint(9, 9, "B", 0x00FF00))
                .options(SegmentationOptions.defaults().withWorkingMpp(0.5).withGating(SegmentationOptions.GatingMode.CANDIDATE)
                        .withMaxIterations(50).withChain(true).withDetectionsPerBatch(100))
                .build();
        SegmentRequest r = job.toProto(1);
        assertEquals(0.0, r.getMpp(), "an unknown pixel size is sent as 0");
        assertEquals(PixelEncoding.PNG, r.getClientPixels().getEncodings(0), "PNG first to a remote server");
        assertEquals(2, r.getClassesCount());
        assertEquals(0, r.getClicks(0).getClassIndex());
        assertEquals(1, r.getClicks(1).getClassIndex());
        assertEquals(0, r.getClicks(2).getClassIndex());
        assertEquals(1, r.getRegionsCount());
        assertEquals(0.5, r.getParams().getWorkingMpp());
        assertEquals(Gating.CANDIDATE, r.getParams().getGating());
        assertEquals(50, r.getParams().getMaxIterations());
        assertTrue(r.getParams().getChain());
        assertEquals(100, r.getParams().getDetectionsPerBatch());
        assertEquals(PixelEncoding.RAW_RGB,
                PixelSource.clientPixelsFor(ServerAddress.parse("127.0.0.1")) instanceof PixelSource.ClientPixels cp
                        ? cp.encodings().get(0) : null, "RAW_RGB first on this machine");
    }

    @Test
    void optionsRefuseNonsense() {
        assertThrows(IllegalArgumentException.class, () -> SegmentationOptions.defaults().withDownsample(0.5));
        assertThrows(IllegalArgumentException.class, () -> SegmentationOptions.defaults().withWorkingMpp(-1));
        assertThrows(IllegalArgumentException.class, () -> SegmentationOptions.defaults().withWorkingMpp(Double.NaN));
        assertThrows(IllegalArgumentException.class, () -> SegmentationOptions.defaults().withHalo(-3));
    }
}
