package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.PixelEncoding;
import io.github.cop.qupath.proto.v1.TileData;

import javax.imageio.ImageIO;
import java.awt.image.BufferedImage;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.UncheckedIOException;

/** Images whose every pixel says where it came from, so a misplaced tile cannot pass unnoticed. */
final class TestImages {

    private TestImages() {
    }

    /**
     * The colour of level-0 pixel (x, y) in {@link #coordinates}: R and G are the low bytes of x
     * and y over a block size, B mixes the high bits, so any shift of a block changes the colour.
     */
    static int colourAt(int x, int y, int block) {
        int bx = x / block;
        int by = y / block;
        int r = bx & 0xFF;
        int g = by & 0xFF;
        int b = ((bx >> 8) & 0x0F) << 4 | ((by >> 8) & 0x0F) | 0x08;
        return r << 16 | g << 8 | b;
    }

    /** An image where every {@code block x block} square has its own colour. */
    static BufferedImage coordinates(int width, int height, int block) {
        BufferedImage img = new BufferedImage(width, height, BufferedImage.TYPE_INT_RGB);
        for (int y = 0; y < height; y++) {
            for (int x = 0; x < width; x++) {
                img.setRGB(x, y, colourAt(x, y, block));
            }
        }
        return img;
    }

    /** Decodes the pixels of a TileData the way the server does. */
    static BufferedImage decode(TileData tile) {
        if (tile.getEncoding() == PixelEncoding.RAW_RGB) {
            byte[] d = tile.getData().toByteArray();
            if (d.length != tile.getWidth() * tile.getHeight() * 3) {
                throw new AssertionError("RAW_RGB tile holds " + d.length + " bytes for " + tile.getWidth() + " x "
                        + tile.getHeight());
            }
            BufferedImage img = new BufferedImage(tile.getWidth(), tile.getHeight(), BufferedImage.TYPE_INT_RGB);
            for (int i = 0, p = 0; p < d.length; i++, p += 3) {
                img.setRGB(i % tile.getWidth(), i / tile.getWidth(),
                        (d[p] & 0xFF) << 16 | (d[p + 1] & 0xFF) << 8 | (d[p + 2] & 0xFF));
            }
            return img;
        }
        try {
            BufferedImage img = ImageIO.read(new ByteArrayInputStream(tile.getData().toByteArray()));
            if (img == null) {
                throw new AssertionError("Not a PNG");
            }
            return img;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
