package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.PixelEncoding;
import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.Test;

import javax.imageio.ImageIO;
import java.awt.image.BufferedImage;
import java.io.ByteArrayInputStream;
import java.io.IOException;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The two wire encodings are lossless and laid out as the contract says. */
class PixelEncoderTest {

    @Test
    @DisplayName("RAW_RGB is row-major R, G, B, three bytes a pixel")
    void rawLayout() {
        BufferedImage img = new BufferedImage(2, 2, BufferedImage.TYPE_INT_RGB);
        img.setRGB(0, 0, 0x010203);
        img.setRGB(1, 0, 0x040506);
        img.setRGB(0, 1, 0x0708F9);
        img.setRGB(1, 1, 0xFAFBFC);
        byte[] b = PixelEncoder.encode(img, PixelEncoding.RAW_RGB);
        assertEquals(12, b.length);
        int[] expected = {1, 2, 3, 4, 5, 6, 7, 8, 0xF9, 0xFA, 0xFB, 0xFC};
        for (int i = 0; i < 12; i++) {
            assertEquals(expected[i], b[i] & 0xFF, "byte " + i);
        }
    }

    @Test
    @DisplayName("RAW_RGB of any image type (sub-images, BGR, ARGB) gives the same bytes")
    void rawOfOtherTypes() {
        BufferedImage big = TestImages.coordinates(64, 64, 1);
        BufferedImage sub = big.getSubimage(10, 20, 16, 8);
        BufferedImage bgr = new BufferedImage(16, 8, BufferedImage.TYPE_3BYTE_BGR);
        bgr.getGraphics().drawImage(sub, 0, 0, null);
        byte[] a = PixelEncoder.rawRgb(sub);
        byte[] c = PixelEncoder.rawRgb(bgr);
        assertEquals(16 * 8 * 3, a.length);
        org.junit.jupiter.api.Assertions.assertArrayEquals(a, c);
        int first = TestImages.colourAt(10, 20, 1);
        assertEquals(first >> 16 & 0xFF, a[0] & 0xFF);
    }

    @Test
    @DisplayName("PNG decodes to exactly the pixels encoded")
    void pngIsLossless() throws IOException {
        BufferedImage img = TestImages.coordinates(300, 200, 1);
        byte[] png = PixelEncoder.encode(img, PixelEncoding.PNG);
        BufferedImage back = ImageIO.read(new ByteArrayInputStream(png));
        assertEquals(300, back.getWidth());
        for (int y = 0; y < 200; y += 3) {
            for (int x = 0; x < 300; x += 3) {
                assertEquals(img.getRGB(x, y), back.getRGB(x, y) | 0xFF000000, "pixel " + x + "," + y);
            }
        }
    }

    @Test
    @DisplayName("PNG is exact at awkward sizes (one pixel, one column, odd widths) and for any image type")
    void pngAwkwardSizes() throws IOException {
        int[][] sizes = {{1, 1}, {1, 7}, {7, 1}, {3, 2}, {257, 3}};
        for (int[] wh : sizes) {
            BufferedImage img = new BufferedImage(wh[0], wh[1], BufferedImage.TYPE_3BYTE_BGR);
            for (int y = 0; y < wh[1]; y++) {
                for (int x = 0; x < wh[0]; x++) {
                    img.setRGB(x, y, (x * 37 + y * 91) * 0x010203 & 0xFFFFFF);
                }
            }
            BufferedImage back = ImageIO.read(new ByteArrayInputStream(PixelEncoder.png(img)));
            assertEquals(wh[0], back.getWidth());
            assertEquals(wh[1], back.getHeight());
            for (int y = 0; y < wh[1]; y++) {
                for (int x = 0; x < wh[0]; x++) {
                    assertEquals(img.getRGB(x, y) & 0xFFFFFF, back.getRGB(x, y) & 0xFFFFFF, wh[0] + "x" + wh[1] + " at " + x + "," + y);
                }
            }
        }
    }

    @Test
    @DisplayName("PNG is worth sending: a smooth, noisy image (like tissue) takes well under RAW_RGB's 3 bytes a pixel")
    void pngCompresses() {
        java.util.Random random = new java.util.Random(7);
        BufferedImage img = new BufferedImage(512, 512, BufferedImage.TYPE_INT_RGB);
        for (int y = 0; y < 512; y++) {
            for (int x = 0; x < 512; x++) {
                int base = (int) (128 + 60 * Math.sin(x / 40.0) * Math.cos(y / 55.0));
                int n = random.nextInt(7) - 3;
                img.setRGB(x, y, (base + n) << 16 | (base / 2 + n) << 8 | Math.min(255, base + 60 + n));
            }
        }
        double bytesPerPixel = PixelEncoder.png(img).length / (512.0 * 512.0);
        assertTrue(bytesPerPixel < 2.0, "PNG took " + bytesPerPixel + " bytes a pixel");
    }

    @Test
    void refusesUnknownEncodings() {
        BufferedImage img = new BufferedImage(1, 1, BufferedImage.TYPE_INT_RGB);
        assertThrows(IllegalArgumentException.class, () -> PixelEncoder.encode(img, PixelEncoding.PIXEL_ENCODING_UNSPECIFIED));
    }
}
