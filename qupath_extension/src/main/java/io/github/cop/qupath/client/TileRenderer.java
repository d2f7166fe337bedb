package io.github.cop.qupath.client;

import java.awt.Color;
import java.awt.Graphics2D;
import java.awt.RenderingHints;
import java.awt.image.BufferedImage;
import java.io.IOException;

/**
 * Produces the exact RGB tile the server asked for from a {@link TileSource}: reads the part
 * inside the image, pads the rest with white, and rescales when the source returns a size
 * other than the one planned (image servers round differently at the edges).
 */
public final class TileRenderer {

    private TileRenderer() {
    }

    /**
     * @param plan   the tile's geometry
     * @param source where to read the inside part
     * @param downsample the downsample the server asked for (passed to the source)
     * @return an opaque {@link BufferedImage#TYPE_INT_RGB} image of {@code outWidth x outHeight}
     * @throws IOException when the source fails
     */
    public static BufferedImage render(TileGeometry plan, TileSource source, double downsample) throws IOException {
        BufferedImage out = new BufferedImage(plan.outWidth(), plan.outHeight(), BufferedImage.TYPE_INT_RGB);
        Graphics2D g = out.createGraphics();
        try {
            if (!plan.isFullyInside()) {
                g.setColor(Color.WHITE);
                g.fillRect(0, 0, plan.outWidth(), plan.outHeight());
            }
            if (!plan.touchesImage()) {
                return out;
            }
            // A scan coarser than the working resolution is enlarged (downsample < 1): read it at full
            // resolution and enlarge it below with bilinear interpolation, as the Python server does, rather
            // than leave enlarging to the source (QuPath's readRegion enlarges by pixel replication).
            double readDownsample = Math.max(1.0, downsample);
            BufferedImage part = source.read(plan.clipX(), plan.clipY(), plan.clipWidth(), plan.clipHeight(), readDownsample);
            if (part == null) {
                throw new IOException("The image returned no pixels for level-0 box (" + plan.clipX() + ", " + plan.clipY()
                        + ", " + plan.clipWidth() + " x " + plan.clipHeight() + ") at downsample " + downsample);
            }
            boolean sameSize = part.getWidth() == plan.destWidth() && part.getHeight() == plan.destHeight();
            if (part.getColorModel().hasAlpha()) {
                // Transparent pixels (outside a slide's scanned area) become white, like the padding.
                g.setColor(Color.WHITE);
                g.fillRect(plan.destX(), plan.destY(), plan.destWidth(), plan.destHeight());
            }
            if (sameSize) {
                g.drawImage(part, plan.destX(), plan.destY(), null);
            } else {
                g.setRenderingHint(RenderingHints.KEY_INTERPOLATION, RenderingHints.VALUE_INTERPOLATION_BILINEAR);
                g.drawImage(part, plan.destX(), plan.destY(), plan.destWidth(), plan.destHeight(), null);
            }
            return out;
        } finally {
            g.dispose();
        }
    }
}
