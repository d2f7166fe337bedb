package io.github.cop.qupath.client;

/**
 * The coordinate arithmetic of one requested tile: the level-0 box the server asked for, the
 * part of it that lies inside the image, and where that part lands in the output pixels.
 *
 * <p>The server may ask for boxes that extend beyond the image (tiles at the right and bottom
 * edges, halos); the contract says to pad with white. Reading only the inside part and placing
 * it at the right offset keeps every output pixel aligned with level 0: output pixel (u, v)
 * covers level-0 {@code [x + u * sx, x + (u + 1) * sx) x [y + v * sy, ...)} with
 * {@code sx = width / outWidth}, which is the downsample when the sizes agree.
 *
 * @param x          requested level-0 left (may be negative)
 * @param y          requested level-0 top (may be negative)
 * @param width      requested level-0 width
 * @param height     requested level-0 height
 * @param outWidth   output width in pixels
 * @param outHeight  output height in pixels
 * @param clipX      level-0 left of the part inside the image
 * @param clipY      level-0 top of the part inside the image
 * @param clipWidth  level-0 width of the part inside the image (0 when none)
 * @param clipHeight level-0 height of the part inside the image (0 when none)
 * @param destX      output column where the inside part starts
 * @param destY      output row where the inside part starts
 * @param destWidth  output columns the inside part covers
 * @param destHeight output rows the inside part covers
 */
public record TileGeometry(long x, long y, long width, long height, int outWidth, int outHeight,
                           int clipX, int clipY, int clipWidth, int clipHeight,
                           int destX, int destY, int destWidth, int destHeight) {

    /**
     * Plans a tile.
     *
     * @param x           requested level-0 left
     * @param y           requested level-0 top
     * @param width       requested level-0 width (> 0)
     * @param height      requested level-0 height (> 0)
     * @param outWidth    output width (> 0)
     * @param outHeight   output height (> 0)
     * @param imageWidth  level-0 image width
     * @param imageHeight level-0 image height
     * @return the plan
     */
    public static TileGeometry plan(long x, long y, long width, long height, int outWidth, int outHeight,
                                    long imageWidth, long imageHeight) {
        if (width <= 0 || height <= 0 || outWidth <= 0 || outHeight <= 0) {
            throw new IllegalArgumentException("Tile sizes must be positive: level-0 " + width + " x " + height
                    + ", output " + outWidth + " x " + outHeight);
        }
        long cx0 = Math.max(x, 0);
        long cy0 = Math.max(y, 0);
        long cx1 = Math.min(x + width, imageWidth);
        long cy1 = Math.min(y + height, imageHeight);
        if (cx1 <= cx0 || cy1 <= cy0) {
            return new TileGeometry(x, y, width, height, outWidth, outHeight, 0, 0, 0, 0, 0, 0, 0, 0);
        }
        double sx = outWidth / (double) width;
        double sy = outHeight / (double) height;
        int dx0 = clamp(Math.round((cx0 - x) * sx), outWidth);
        int dy0 = clamp(Math.round((cy0 - y) * sy), outHeight);
        int dx1 = clamp(Math.round((cx1 - x) * sx), outWidth);
        int dy1 = clamp(Math.round((cy1 - y) * sy), outHeight);
        // A sliver of image narrower than one output pixel still gets one pixel, so it is not lost.
        if (dx1 <= dx0) {
            dx1 = Math.min(dx0 + 1, outWidth);
            dx0 = dx1 - 1;
        }
        if (dy1 <= dy0) {
            dy1 = Math.min(dy0 + 1, outHeight);
            dy0 = dy1 - 1;
        }
        return new TileGeometry(x, y, width, height, outWidth, outHeight,
                Math.toIntExact(cx0), Math.toIntExact(cy0), Math.toIntExact(cx1 - cx0), Math.toIntExact(cy1 - cy0),
                dx0, dy0, dx1 - dx0, dy1 - dy0);
    }

    /** @return whether any of the tile lies inside the image (otherwise it is all padding) */
    public boolean touchesImage() {
        return clipWidth > 0 && clipHeight > 0;
    }

    /** @return whether the whole output is image pixels, without padding */
    public boolean isFullyInside() {
        return touchesImage() && destX == 0 && destY == 0 && destWidth == outWidth && destHeight == outHeight;
    }

    /**
     * Maps a level-0 point to output pixel coordinates of this tile.
     *
     * @param level0X level-0 x
     * @param level0Y level-0 y
     * @return {x, y} in output pixels (continuous; pixel (u, v) covers [u, u+1) x [v, v+1))
     */
    public double[] toOutput(double level0X, double level0Y) {
        return new double[]{(level0X - x) * outWidth / (double) width, (level0Y - y) * outHeight / (double) height};
    }

    /**
     * Maps output pixel coordinates of this tile back to level 0.
     *
     * @param u output x
     * @param v output y
     * @return {x, y} in level 0
     */
    public double[] toLevel0(double u, double v) {
        return new double[]{x + u * width / (double) outWidth, y + v * height / (double) outHeight};
    }

    private static int clamp(long v, int max) {
        return (int) Math.max(0, Math.min(max, v));
    }
}
