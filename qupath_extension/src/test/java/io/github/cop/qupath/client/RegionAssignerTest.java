package io.github.cop.qupath.client;

import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.Test;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.GeometryFactory;
import org.locationtech.jts.geom.Polygon;
import org.locationtech.jts.io.ParseException;
import org.locationtech.jts.io.WKTReader;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** Detections become children of the region they fall in; nested regions prefer the inner one. */
class RegionAssignerTest {

    private final WKTReader wkt = new WKTReader(new GeometryFactory());

    private CellDetection cell(String polygon) throws ParseException {
        return new CellDetection((Polygon) wkt.read(polygon), 0, "A", 1f, Map.of());
    }

    @Test
    @DisplayName("each detection goes to the smallest region that contains it; those in none are set apart")
    void assigns() throws ParseException {
        Map<String, Geometry> regions = new LinkedHashMap<>();
        regions.put("tissue", wkt.read("POLYGON ((0 0, 1000 0, 1000 1000, 0 1000, 0 0))"));
        regions.put("tumour", wkt.read("POLYGON ((100 100, 300 100, 300 300, 100 300, 100 100))"));
        regions.put("empty", wkt.read("POLYGON ((2000 2000, 2100 2000, 2100 2100, 2000 2000))"));
        CellDetection inTumour = cell("POLYGON ((150 150, 160 150, 160 160, 150 160, 150 150))");
        CellDetection inTissue = cell("POLYGON ((500 500, 510 500, 510 510, 500 510, 500 500))");
        CellDetection outside = cell("POLYGON ((1500 1500, 1510 1500, 1510 1510, 1500 1510, 1500 1500))");
        RegionAssigner.Assignment<String> a = new RegionAssigner<>(regions).assign(List.of(inTumour, inTissue, outside));
        assertEquals(List.of("tissue", "tumour", "empty"), List.copyOf(a.byRegion().keySet()));
        assertEquals(List.of(inTissue), a.byRegion().get("tissue"));
        assertEquals(List.of(inTumour), a.byRegion().get("tumour"));
        assertEquals(List.of(), a.byRegion().get("empty"));
        assertEquals(List.of(outside), a.unassigned());
    }

    @Test
    @DisplayName("a crescent-shaped cell is placed by a point inside it, not by its centroid (which lies outside)")
    void crescent() throws ParseException {
        Map<String, Geometry> regions = new LinkedHashMap<>();
        regions.put("left", wkt.read("POLYGON ((0 0, 12 0, 12 100, 0 100, 0 0))"));
        regions.put("right", wkt.read("POLYGON ((12 0, 100 0, 100 100, 12 100, 12 0))"));
        // a C shape whose centroid falls in its opening (right region), while the cell lies mostly left
        CellDetection c = cell("POLYGON ((0 0, 20 0, 20 4, 4 4, 4 16, 20 16, 20 20, 0 20, 0 0))");
        assertEquals(1, new RegionAssigner<>(regions).assign(List.of(c)).byRegion().get("left").size());
    }
}
