package io.github.cop.qupath.client;

import java.util.Objects;

/**
 * One click: a point on one cell, in level-0 pixel coordinates, and the class the user gave it.
 *
 * <p>QuPath's pixel convention holds: x to the right, y down, pixel (i, j) covering
 * [j, j+1) x [i, i+1), so the centre of the top-left pixel is (0.5, 0.5).
 *
 * @param x         level-0 x
 * @param y         level-0 y
 * @param className the QuPath class name, derived classes included ("Tumor: Positive")
 * @param rgb       the class colour, 0xRRGGBB
 */
public record PromptPoint(double x, double y, String className, int rgb) {

    /** Rejects what the server would refuse anyway, with a message that names the point. */
    public PromptPoint {
        Objects.requireNonNull(className, "className");
        if (!Double.isFinite(x) || !Double.isFinite(y)) {
            throw new IllegalArgumentException("A click has a non-finite coordinate (" + x + ", " + y + ")");
        }
        if (className.isBlank()) {
            throw new IllegalArgumentException("The click at (" + x + ", " + y + ") has no class");
        }
    }
}
