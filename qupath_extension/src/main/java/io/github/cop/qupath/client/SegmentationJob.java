package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.Click;
import io.github.cop.qupath.proto.v1.ClientPixels;
import io.github.cop.qupath.proto.v1.SegmentRequest;
import io.github.cop.qupath.proto.v1.ServerPath;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.Polygon;

import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

/**
 * Everything one segmentation run needs, independent of QuPath: which image (id, size, pixel
 * size), where its pixels come from, the regions, the clicks with their classes, and options.
 *
 * <p>Built once and immutable, so the QuPath layer can gather it on the UI thread and hand it
 * to a background thread without sharing mutable state. {@link Builder#build()} rejects what the
 * server would refuse (no click, a click outside the image) with a message for the user, so the
 * common mistakes never cost a round trip.
 */
public final class SegmentationJob {

    private final String imageId;
    private final long width;
    private final long height;
    private final double mpp;
    private final PixelSource pixelSource;
    private final List<Polygon> regions;
    private final List<PromptPoint> clicks;
    private final ClassMapping classes;
    private final SegmentationOptions options;

    private SegmentationJob(Builder b, List<Polygon> regions, ClassMapping classes) {
        this.imageId = b.imageId;
        this.width = b.width;
        this.height = b.height;
        this.mpp = b.mpp;
        this.pixelSource = b.pixelSource;
        this.regions = List.copyOf(regions);
        this.clicks = List.copyOf(b.clicks);
        this.classes = classes;
        this.options = b.options;
    }

    /** @return a new builder */
    public static Builder builder() {
        return new Builder();
    }

    /** @return the stable id that keys the server's encoding cache (e.g. the image URI) */
    public String imageId() {
        return imageId;
    }

    /** @return level-0 width in pixels */
    public long width() {
        return width;
    }

    /** @return level-0 height in pixels */
    public long height() {
        return height;
    }

    /** @return level-0 microns per pixel, 0 when unknown */
    public double mpp() {
        return mpp;
    }

    /** @return where the pixels come from */
    public PixelSource pixelSource() {
        return pixelSource;
    }

    /** @return region polygons in level 0; empty means the whole image */
    public List<Polygon> regions() {
        return regions;
    }

    /** @return the clicks */
    public List<PromptPoint> clicks() {
        return clicks;
    }

    /** @return the classes, numbered as on the wire */
    public ClassMapping classes() {
        return classes;
    }

    /** @return the model options */
    public SegmentationOptions options() {
        return options;
    }

    /**
     * The request message that opens the session.
     *
     * @param protocolMajor the client's protocol major version
     * @return the message
     */
    public SegmentRequest toProto(int protocolMajor) {
        SegmentRequest.Builder b = SegmentRequest.newBuilder()
                .setProtocolMajor(protocolMajor)
                .setImageId(imageId)
                .setWidth(width)
                .setHeight(height)
                .setMpp(mpp)
                .addAllClasses(classes.toProto())
                .setParams(options.toProto());
        if (pixelSource instanceof PixelSource.ClientPixels cp) {
            b.setClientPixels(ClientPixels.newBuilder().addAllEncodings(cp.encodings()));
        } else if (pixelSource instanceof PixelSource.ServerFile sf) {
            b.setServerPath(ServerPath.newBuilder().setPath(sf.path()));
        }
        for (Polygon p : regions) {
            b.addAllRegions(ProtoGeometry.toProto(p));
        }
        for (PromptPoint c : clicks) {
            b.addClicks(Click.newBuilder().setX(c.x()).setY(c.y())
                    .setClassIndex(classes.indexOf(c.className()).orElseThrow()));
        }
        return b.build();
    }

    /** Collects the parts of a job; {@link #build()} checks them together. */
    public static final class Builder {
        private String imageId;
        private long width;
        private long height;
        private double mpp;
        private PixelSource pixelSource = PixelSource.clientPixels(
                io.github.cop.qupath.proto.v1.PixelEncoding.PNG, io.github.cop.qupath.proto.v1.PixelEncoding.RAW_RGB);
        private final List<Geometry> regions = new ArrayList<>();
        private final List<PromptPoint> clicks = new ArrayList<>();
        private SegmentationOptions options = SegmentationOptions.defaults();

        private Builder() {
        }

        /** @param id a stable id for the image (its URI, or QuPath's server path) @return this */
        public Builder imageId(String id) {
            this.imageId = id;
            return this;
        }

        /** @param w level-0 width @param h level-0 height @return this */
        public Builder imageSize(long w, long h) {
            this.width = w;
            this.height = h;
            return this;
        }

        /** @param micronsPerPixel level-0 pixel size; NaN, 0 or negative mean unknown @return this */
        public Builder pixelSizeMicrons(double micronsPerPixel) {
            this.mpp = Double.isFinite(micronsPerPixel) && micronsPerPixel > 0 ? micronsPerPixel : 0;
            return this;
        }

        /** @param source where the server gets pixels @return this */
        public Builder pixelSource(PixelSource source) {
            this.pixelSource = Objects.requireNonNull(source, "source");
            return this;
        }

        /** @param region a region in level 0 (any polygonal geometry; repaired if invalid) @return this */
        public Builder addRegion(Geometry region) {
            regions.add(Objects.requireNonNull(region, "region"));
            return this;
        }

        /** @param click one click @return this */
        public Builder addClick(PromptPoint click) {
            clicks.add(Objects.requireNonNull(click, "click"));
            return this;
        }

        /** @param all clicks @return this */
        public Builder addClicks(java.util.Collection<PromptPoint> all) {
            all.forEach(this::addClick);
            return this;
        }

        /** @param o model options @return this */
        public Builder options(SegmentationOptions o) {
            this.options = Objects.requireNonNull(o, "options");
            return this;
        }

        /**
         * @return the job
         * @throws IllegalArgumentException with a user-facing message when the job cannot run
         */
        public SegmentationJob build() {
            if (imageId == null || imageId.isBlank()) {
                throw new IllegalArgumentException("The image has no id (open an image first)");
            }
            if (width <= 0 || height <= 0) {
                throw new IllegalArgumentException("The image size must be positive, not " + width + " x " + height);
            }
            if (clicks.isEmpty()) {
                throw new IllegalArgumentException("There is no classified point. With the Points tool, click one cell of"
                        + " each type and set the point's class (right-click > Set classification).");
            }
            ClassMapping.Builder classes = ClassMapping.builder();
            for (PromptPoint c : clicks) {
                if (c.x() < 0 || c.y() < 0 || c.x() >= width || c.y() >= height) {
                    throw new IllegalArgumentException(String.format(java.util.Locale.ROOT,
                            "The %s point at (%.1f, %.1f) lies outside the %d x %d image.",
                            c.className(), c.x(), c.y(), width, height));
                }
                classes.add(c.className(), c.rgb());
            }
            List<Polygon> polygons = new ArrayList<>();
            boolean hadRegions = !regions.isEmpty();
            for (Geometry g : regions) {
                polygons.addAll(ProtoGeometry.polygonsOf(g));
            }
            if (hadRegions && polygons.isEmpty()) {
                throw new IllegalArgumentException("The selected annotations have no area (lines and points cannot be"
                        + " regions): select area annotations, or nothing to use the whole image.");
            }
            return new SegmentationJob(this, polygons, classes.build());
        }
    }
}
