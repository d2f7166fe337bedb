package io.github.cop.qupath.client;

import org.locationtech.jts.geom.Polygon;

import java.util.Map;
import java.util.Objects;

/**
 * One cell found by the server: a valid polygon in level-0 pixels, its class (index and name,
 * so that callers never index the class list themselves), its score, and the measurements the
 * server computed (area, perimeter, stain intensities, ...), in the server's units and names.
 *
 * @param polygon      the outline, level 0, valid
 * @param classIndex   the wire index of its class
 * @param className    the class name, exactly as sent (e.g. "Tumor: Positive")
 * @param score        the decoder's score
 * @param measurements measurement name to value, in the server's order
 */
public record CellDetection(Polygon polygon, int classIndex, String className, float score,
                            Map<String, Double> measurements) {

    /** Copies the measurements so a detection is a value that can cross threads. */
    public CellDetection {
        Objects.requireNonNull(polygon, "polygon");
        Objects.requireNonNull(className, "className");
        measurements = java.util.Collections.unmodifiableMap(new java.util.LinkedHashMap<>(measurements));
    }
}
