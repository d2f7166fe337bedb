package io.github.cop.qupath.client;

import java.awt.Graphics2D;
import java.awt.RenderingHints;
import java.awt.image.BufferedImage;
import java.util.Objects;

/**
 * A {@link TileSource} over an image held in memory at level 0: for scripts that segment a
 * plain image file outside QuPath, and for tests that need exact, known pixels.
 */
public final class BufferedImageTileSource implements TileSource {

    private final BufferedImage image;

    /** @param image the whole image at level 0 */
    public BufferedImageTileSource(BufferedImage image) {
        this.image = Objects.requireNonNull(image, "image");
    }

    /** @return the image's width */
    public int width() {
        return image.getWidth();
    }

    /** @return the image's height */
    public int height() {
        return image.getHeight();
    }

    @Override
    public BufferedImage read(int x, int y, int width, int height, double downsample) {
        if (x < 0 || y < 0 || x + width > image.getWidth() || y + height > image.getHeight()) {
            throw new IllegalArgumentException("Box (" + x + ", " + y + ", " + width + " x " + height
                    + ") is not inside the " + image.getWidth() + " x " + image.getHeight() + " image");
        }
        BufferedImage part = image.getSubimage(x, y, width, height);
        int outW = (int) Math.max(1, Math.round(width / downsample));
        int outH = (int) Math.max(1, Math.round(height / downsample));
        BufferedImage out = new BufferedImage(outW, outH, BufferedImage.TYPE_INT_RGB);
        Graphics2D g = out.createGraphics();
        try {
            if (outW != width || outH != height) {
                g.setRenderingHint(RenderingHints.KEY_INTERPOLATION, RenderingHints.VALUE_INTERPOLATION_BILINEAR);
            }
            g.drawImage(part, 0, 0, outW, outH, null);
        } finally {
            g.dispose();
        }
        return out;
    }
}
