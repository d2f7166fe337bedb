package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.Gating;
import io.github.cop.qupath.proto.v1.Parameters;

/**
 * The model options of a run. Zero means "the server's default" everywhere, as on the wire,
 * so that a preference left at 0 follows whatever the loaded model is made for.
 *
 * @param workingMpp          working resolution in microns per pixel (0: the model's default)
 * @param downsample          explicit working downsample from level 0; wins over {@code workingMpp} (0: none)
 * @param gating              HSG gating variant
 * @param maxIterations       FPR safety bound per class (0: default)
 * @param halo                tile overlap in working pixels (0: default)
 * @param chain               seed tiles from cells found in their neighbours
 * @param detectionsPerBatch  detections per server message (0: the server's default)
 */
public record SegmentationOptions(double workingMpp, double downsample, GatingMode gating, int maxIterations,
                                  int halo, boolean chain, int detectionsPerBatch) {

    /** How HSG gates similarity; mirrors {@code cop.v1.Gating} without exposing the proto type to callers. */
    public enum GatingMode {
        /** The server's default (product gating). */
        DEFAULT,
        /** Gate by the product of the high- and low-resolution similarities. */
        PRODUCT,
        /** The candidate-gating variant. */
        CANDIDATE
    }

    /** Rejects negative or non-finite values before they reach the server. */
    public SegmentationOptions {
        if (!(workingMpp >= 0) || Double.isInfinite(workingMpp)) {
            throw new IllegalArgumentException("The working resolution must be >= 0 microns per pixel, not " + workingMpp);
        }
        if (!(downsample >= 0) || Double.isInfinite(downsample)) {
            throw new IllegalArgumentException("The working downsample must be >= 0, not " + downsample);
        }
        if (downsample > 0 && downsample < 1) {
            throw new IllegalArgumentException("The working downsample must be at least 1 (level 0), not " + downsample);
        }
        if (gating == null) {
            gating = GatingMode.DEFAULT;
        }
        if (maxIterations < 0 || halo < 0 || detectionsPerBatch < 0) {
            throw new IllegalArgumentException("maxIterations, halo and detectionsPerBatch must be >= 0");
        }
    }

    /** @return every option at the server's default */
    public static SegmentationOptions defaults() {
        return new SegmentationOptions(0, 0, GatingMode.DEFAULT, 0, 0, false, 0);
    }

    /** @param mpp working microns per pixel @return a copy */
    public SegmentationOptions withWorkingMpp(double mpp) {
        return new SegmentationOptions(mpp, downsample, gating, maxIterations, halo, chain, detectionsPerBatch);
    }

    /** @param d working downsample @return a copy */
    public SegmentationOptions withDownsample(double d) {
        return new SegmentationOptions(workingMpp, d, gating, maxIterations, halo, chain, detectionsPerBatch);
    }

    /** @param g gating @return a copy */
    public SegmentationOptions withGating(GatingMode g) {
        return new SegmentationOptions(workingMpp, downsample, g, maxIterations, halo, chain, detectionsPerBatch);
    }

    /** @param n FPR bound @return a copy */
    public SegmentationOptions withMaxIterations(int n) {
        return new SegmentationOptions(workingMpp, downsample, gating, n, halo, chain, detectionsPerBatch);
    }

    /** @param h halo in working pixels @return a copy */
    public SegmentationOptions withHalo(int h) {
        return new SegmentationOptions(workingMpp, downsample, gating, maxIterations, h, chain, detectionsPerBatch);
    }

    /** @param c whether to chain across tiles @return a copy */
    public SegmentationOptions withChain(boolean c) {
        return new SegmentationOptions(workingMpp, downsample, gating, maxIterations, halo, c, detectionsPerBatch);
    }

    /** @param n detections per batch @return a copy */
    public SegmentationOptions withDetectionsPerBatch(int n) {
        return new SegmentationOptions(workingMpp, downsample, gating, maxIterations, halo, chain, n);
    }

    Parameters toProto() {
        Gating g = switch (gating) {
            case DEFAULT -> Gating.GATING_UNSPECIFIED;
            case PRODUCT -> Gating.PRODUCT;
            case CANDIDATE -> Gating.CANDIDATE;
        };
        return Parameters.newBuilder()
                .setWorkingMpp(workingMpp)
                .setDownsample(downsample)
                .setGating(g)
                .setMaxIterations(maxIterations)
                .setHalo(halo)
                .setChain(chain)
                .setDetectionsPerBatch(detectionsPerBatch)
                .build();
    }
}
