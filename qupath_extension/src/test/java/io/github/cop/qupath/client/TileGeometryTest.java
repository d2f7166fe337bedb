package io.github.cop.qupath.client;

import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.Test;

import java.awt.image.BufferedImage;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Coordinate and downsample transforms of tile requests: which level-0 pixels are read, where
 * they land in the tile, and what is padding.
 */
class TileGeometryTest {

    @Test
    @DisplayName("a tile inside the image reads its own box and fills the whole output")
    void insideTile() {
        TileGeometry g = TileGeometry.plan(1024, 2048, 1024, 1024, 512, 512, 10_000, 10_000);
        assertTrue(g.isFullyInside());
        assertEquals(List.of(1024, 2048, 1024, 1024), List.of(g.clipX(), g.clipY(), g.clipWidth(), g.clipHeight()));
        assertEquals(List.of(0, 0, 512, 512), List.of(g.destX(), g.destY(), g.destWidth(), g.destHeight()));
    }

    @Test
    @DisplayName("at downsample 2, level-0 x maps to output x / 2 and back")
    void downsampleMapsBothWays() {
        TileGeometry g = TileGeometry.plan(1000, 500, 400, 200, 200, 100, 10_000, 10_000);
        assertArrayEquals(new double[]{0, 0}, g.toOutput(1000, 500));
        assertArrayEquals(new double[]{50.25, 25.5}, g.toOutput(1100.5, 551));
        assertArrayEquals(new double[]{1100.5, 551}, g.toLevel0(50.25, 25.5));
        // the centre of output pixel (0,0) is the centre of the 2x2 level-0 block it covers
        assertArrayEquals(new double[]{1001, 501}, g.toLevel0(0.5, 0.5));
    }

    @Test
    @DisplayName("a tile over the bottom-right corner reads only the inside and places it at the origin")
    void cornerTile() {
        TileGeometry g = TileGeometry.plan(9800, 9900, 512, 512, 256, 256, 10_000, 10_000);
        assertTrue(g.touchesImage());
        assertFalse(g.isFullyInside());
        assertEquals(List.of(9800, 9900, 200, 100), List.of(g.clipX(), g.clipY(), g.clipWidth(), g.clipHeight()));
        assertEquals(List.of(0, 0, 100, 50), List.of(g.destX(), g.destY(), g.destWidth(), g.destHeight()));
    }

    @Test
    @DisplayName("a halo before the origin is padding; level-0 (0,0) lands at the halo's width")
    void negativeOrigin() {
        TileGeometry g = TileGeometry.plan(-64, -32, 1088, 1056, 544, 528, 5000, 5000);
        assertEquals(List.of(0, 0, 1024, 1024), List.of(g.clipX(), g.clipY(), g.clipWidth(), g.clipHeight()));
        assertEquals(List.of(32, 16, 512, 512), List.of(g.destX(), g.destY(), g.destWidth(), g.destHeight()));
    }

    @Test
    @DisplayName("a tile wholly outside the image reads nothing")
    void outside() {
        TileGeometry g = TileGeometry.plan(6000, 0, 512, 512, 512, 512, 5000, 5000);
        assertFalse(g.touchesImage());
    }

    @Test
    @DisplayName("a sliver of image thinner than one output pixel still gets one pixel")
    void sliver() {
        TileGeometry g = TileGeometry.plan(4999, 0, 512, 512, 128, 128, 5000, 5000);
        assertEquals(1, g.clipWidth());
        assertEquals(1, g.destWidth());
        assertEquals(0, g.destX());
    }

    @Test
    void refusesEmptyTiles() {
        assertThrows(IllegalArgumentException.class, () -> TileGeometry.plan(0, 0, 0, 10, 10, 10, 100, 100));
        assertThrows(IllegalArgumentException.class, () -> TileGeometry.plan(0, 0, 10, 10, 0, 10, 100, 100));
    }

    @Test
    @DisplayName("the renderer asks the source for the inside box at the tile's downsample, and pads the rest white")
    void rendererReadsTheClippedBox() throws IOException {
        List<String> reads = new ArrayList<>();
        TileSource source = (x, y, w, h, d) -> {
            reads.add(x + "," + y + "," + w + "," + h + "@" + d);
            BufferedImage img = new BufferedImage((int) Math.round(w / d), (int) Math.round(h / d), BufferedImage.TYPE_INT_RGB);
            for (int v = 0; v < img.getHeight(); v++) {
                for (int u = 0; u < img.getWidth(); u++) {
                    img.setRGB(u, v, 0x102030);
                }
            }
            return img;
        };
        TileGeometry g = TileGeometry.plan(-20, 90, 60, 40, 30, 20, 100, 100);
        BufferedImage tile = TileRenderer.render(g, source, 2.0);
        assertEquals(List.of("0,90,40,10@2.0"), reads);
        assertEquals(30, tile.getWidth());
        assertEquals(20, tile.getHeight());
        assertEquals(0xFFFFFF, tile.getRGB(9, 0) & 0xFFFFFF, "left of x=0 is padding");
        assertEquals(0x102030, tile.getRGB(10, 0) & 0xFFFFFF, "level-0 x=0 starts at output x=10");
        assertEquals(0x102030, tile.getRGB(29, 4) & 0xFFFFFF);
        assertEquals(0xFFFFFF, tile.getRGB(15, 5) & 0xFFFFFF, "below y=100 is padding");
    }

    @Test
    @DisplayName("a source that returns another size than planned is rescaled to the exact output size")
    void rendererRescalesOddSizes() throws IOException {
        TileSource off = (x, y, w, h, d) -> new BufferedImage(w / 2 + 1, h / 2 - 1, BufferedImage.TYPE_INT_RGB);
        BufferedImage tile = TileRenderer.render(TileGeometry.plan(0, 0, 100, 100, 50, 50, 1000, 1000), off, 2.0);
        assertEquals(50, tile.getWidth());
        assertEquals(50, tile.getHeight());
        assertEquals(0, tile.getRGB(49, 49) & 0xFFFFFF, "filled with the source's pixels, no white seam");
    }

    @Test
    @DisplayName("a scan coarser than the working resolution is read at full resolution and enlarged smoothly")
    void coarseScansAreEnlargedByTheRenderer() throws IOException {
        List<Double> asked = new ArrayList<>();
        TileSource halves = (x, y, w, h, d) -> {
            asked.add(d);
            BufferedImage img = new BufferedImage((int) Math.round(w / d), (int) Math.round(h / d), BufferedImage.TYPE_INT_RGB);
            for (int i = 0; i < img.getWidth(); i++) {
                for (int j = 0; j < img.getHeight(); j++) {
                    img.setRGB(i, j, i < img.getWidth() / 2 ? 0x000000 : 0xFFFFFF);  // black left half, white right
                }
            }
            return img;
        };
        BufferedImage tile = TileRenderer.render(TileGeometry.plan(0, 0, 10, 10, 20, 20, 100, 100), halves, 0.5);
        assertEquals(List.of(1.0), asked, "the source reads level 0, never enlarges");
        assertEquals(20, tile.getWidth());
        assertEquals(20, tile.getHeight());
        int edge = tile.getRGB(10, 10) & 0xFF;
        assertTrue(edge > 0 && edge < 255, "bilinear across the black/white edge, not pixel replication: " + edge);
    }

    @Test
    @DisplayName("transparent source pixels become white, like padding")
    void transparentBecomesWhite() throws IOException {
        TileSource clear = (x, y, w, h, d) -> new BufferedImage(w, h, BufferedImage.TYPE_INT_ARGB);
        BufferedImage tile = TileRenderer.render(TileGeometry.plan(0, 0, 8, 8, 8, 8, 100, 100), clear, 1.0);
        assertEquals(0xFFFFFF, tile.getRGB(3, 3) & 0xFFFFFF);
    }
}
