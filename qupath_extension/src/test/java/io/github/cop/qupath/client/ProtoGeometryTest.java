package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.Polygon;
import io.github.cop.qupath.proto.v1.Ring;
import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.Test;
import org.locationtech.jts.geom.Coordinate;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.GeometryFactory;
import org.locationtech.jts.io.ParseException;
import org.locationtech.jts.io.WKTReader;

import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Regions go out and detections come back as valid level-0 polygons, coordinates untouched. */
class ProtoGeometryTest {

    private final GeometryFactory f = new GeometryFactory();

    private Geometry wkt(String s) throws ParseException {
        return new WKTReader(f).read(s);
    }

    @Test
    @DisplayName("a polygon with a hole goes out and comes back equal, coordinates untouched")
    void roundTripWithHole() throws ParseException {
        Geometry g = wkt("POLYGON ((10.5 20.25, 110.5 20.25, 110.5 120, 10.5 120, 10.5 20.25), (30 40, 30 60, 50 60, 30 40))");
        List<Polygon> wire = ProtoGeometry.toProto(g);
        assertEquals(1, wire.size());
        assertEquals(1, wire.get(0).getHolesCount());
        assertEquals(10.5, wire.get(0).getExterior().getXy(0));
        assertEquals(20.25, wire.get(0).getExterior().getXy(1));
        assertTrue(g.equalsExact(ProtoGeometry.toJts(wire.get(0), f)));
    }

    @Test
    @DisplayName("a multipolygon region becomes one wire polygon per part")
    void multiPolygonSplits() throws ParseException {
        assertEquals(2, ProtoGeometry.toProto(wkt("MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)), ((5 5, 6 5, 6 6, 5 5)))")).size());
    }

    @Test
    @DisplayName("a self-intersecting region (a figure of eight drawn by hand) is repaired, not refused")
    void bowTieRegionIsRepaired() throws ParseException {
        List<Polygon> wire = ProtoGeometry.toProto(wkt("POLYGON ((0 0, 10 10, 10 0, 0 10, 0 0))"));
        assertEquals(2, wire.size());
        for (Polygon p : wire) {
            assertTrue(ProtoGeometry.toJts(p, f).isValid());
        }
    }

    @Test
    @DisplayName("lines, points and empty geometries carry no region")
    void nonAreasAreIgnored() throws ParseException {
        assertTrue(ProtoGeometry.toProto(wkt("LINESTRING (0 0, 5 5)")).isEmpty());
        assertTrue(ProtoGeometry.toProto(wkt("POLYGON EMPTY")).isEmpty());
        assertTrue(ProtoGeometry.toProto(wkt("GEOMETRYCOLLECTION (POINT (1 1), POLYGON ((0 0, 1 0, 1 1, 0 0)))")).size() == 1);
    }

    @Test
    @DisplayName("open rings from the server (no repeated closing point) are closed")
    void openRingsAreClosed() {
        Polygon p = Polygon.newBuilder().setExterior(Ring.newBuilder().addAllXy(List.of(0.0, 0.0, 4.0, 0.0, 4.0, 3.0))).build();
        org.locationtech.jts.geom.Polygon j = ProtoGeometry.toJts(p, f);
        assertEquals(4, j.getExteriorRing().getNumPoints());
        assertEquals(new Coordinate(0, 0), j.getExteriorRing().getCoordinateN(3));
        assertEquals(6.0, j.getArea());
    }

    @Test
    void malformedRingsAreRefused() {
        assertThrows(IllegalArgumentException.class, () -> ProtoGeometry.toJts(Polygon.newBuilder()
                .setExterior(Ring.newBuilder().addAllXy(List.of(0.0, 0.0, 1.0))).build(), f));
        assertThrows(IllegalArgumentException.class, () -> ProtoGeometry.toJts(Polygon.newBuilder()
                .setExterior(Ring.newBuilder().addAllXy(List.of(0.0, 0.0, 1.0, 1.0))).build(), f));
    }

    @Test
    @DisplayName("repair keeps the largest piece of a split polygon, and gives up on a polygon without area")
    void repair() throws ParseException {
        org.locationtech.jts.geom.Polygon bowTie = (org.locationtech.jts.geom.Polygon) wkt("POLYGON ((0 0, 10 10, 10 0, 0 10, 0 0))");
        org.locationtech.jts.geom.Polygon fixed = ProtoGeometry.repair(bowTie);
        assertTrue(fixed.isValid());
        assertEquals(25.0, fixed.getArea(), 1e-9);
        assertNull(ProtoGeometry.repair((org.locationtech.jts.geom.Polygon) wkt("POLYGON ((0 0, 5 5, 10 10, 0 0))")));
    }
}
