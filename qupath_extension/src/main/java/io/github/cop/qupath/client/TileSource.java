package io.github.cop.qupath.client;

import java.awt.image.BufferedImage;
import java.io.IOException;

/**
 * Reads pixels of the image being segmented, for client-pixel mode.
 *
 * <p>The session driver calls this for the part of each requested tile that lies inside the
 * image; padding beyond the image edge, rescaling to the exact size the server asked for and
 * encoding are done by the driver ({@link TileRenderer}), so that an implementation is one call
 * (in QuPath: {@code ImageServer.readRegion}). Implementations must be safe to call from
 * several threads at once.
 */
@FunctionalInterface
public interface TileSource {

    /**
     * Reads the level-0 box {@code [x, x + width) x [y, y + height)} at a downsample.
     *
     * @param x          level-0 left, inside the image
     * @param y          level-0 top, inside the image
     * @param width      level-0 width, the box inside the image
     * @param height     level-0 height, the box inside the image
     * @param downsample level-0 pixels per output pixel, at least 1 (the renderer enlarges coarse scans itself)
     * @return the pixels, about {@code width / downsample} by {@code height / downsample} (any other
     *         size is rescaled); any image type that {@link java.awt.Graphics2D} can draw
     * @throws IOException when the pixels cannot be read
     */
    BufferedImage read(int x, int y, int width, int height, double downsample) throws IOException;
}
