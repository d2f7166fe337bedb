package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.Ring;
import org.locationtech.jts.geom.Coordinate;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.GeometryFactory;
import org.locationtech.jts.geom.LinearRing;
import org.locationtech.jts.geom.Polygon;
import org.locationtech.jts.geom.GeometryCollection;
import org.locationtech.jts.geom.util.GeometryFixer;

import java.util.ArrayList;
import java.util.List;

/**
 * Converts between JTS polygons (what QuPath's {@code GeometryTools} speaks) and the wire's
 * {@code Polygon}/{@code Ring}. Coordinates pass through unchanged: both sides are level-0
 * pixels, so there is no transform to get wrong here.
 */
public final class ProtoGeometry {

    private ProtoGeometry() {
    }

    /**
     * Splits any polygonal geometry into the wire's polygons, repairing invalid input first:
     * QuPath lets users draw self-intersecting shapes, and the server rightly refuses those as
     * malformed, so they are fixed here (JTS {@link GeometryFixer}) rather than rejected.
     *
     * @param geometry a Polygon, MultiPolygon or collection containing polygons (level 0)
     * @return the non-empty polygons, possibly none
     */
    public static List<io.github.cop.qupath.proto.v1.Polygon> toProto(Geometry geometry) {
        List<io.github.cop.qupath.proto.v1.Polygon> out = new ArrayList<>();
        for (Polygon p : polygonsOf(geometry)) {
            io.github.cop.qupath.proto.v1.Polygon.Builder b = io.github.cop.qupath.proto.v1.Polygon.newBuilder()
                    .setExterior(toRing(p.getExteriorRing()));
            for (int i = 0; i < p.getNumInteriorRing(); i++) {
                b.addHoles(toRing(p.getInteriorRingN(i)));
            }
            out.add(b.build());
        }
        return out;
    }

    /**
     * The valid, non-empty polygons of a geometry, repaired if needed.
     *
     * @param geometry any geometry
     * @return its polygons
     */
    public static List<Polygon> polygonsOf(Geometry geometry) {
        List<Polygon> out = new ArrayList<>();
        if (geometry == null || geometry.isEmpty()) {
            return out;
        }
        Geometry g = geometry.isValid() ? geometry : GeometryFixer.fix(geometry);
        collect(g, out);
        return out;
    }

    private static void collect(Geometry g, List<Polygon> out) {
        if (g instanceof Polygon p) {
            if (!p.isEmpty() && p.getArea() > 0) {
                out.add(p);
            }
        } else if (g instanceof GeometryCollection) { // MultiPolygon too; lines and points carry no area
            for (int i = 0; i < g.getNumGeometries(); i++) {
                collect(g.getGeometryN(i), out);
            }
        }
    }

    /**
     * Reads a wire polygon. The result may be invalid (the server promises valid polygons, but
     * the client does not trust that blindly); {@link #repair} makes it valid.
     *
     * @param polygon the wire polygon
     * @param factory the factory to build with
     * @return the JTS polygon
     * @throws IllegalArgumentException when a ring has fewer than 3 distinct points or an odd coordinate count
     */
    public static Polygon toJts(io.github.cop.qupath.proto.v1.Polygon polygon, GeometryFactory factory) {
        LinearRing shell = toLinearRing(polygon.getExterior(), factory, "exterior");
        LinearRing[] holes = new LinearRing[polygon.getHolesCount()];
        for (int i = 0; i < holes.length; i++) {
            holes[i] = toLinearRing(polygon.getHoles(i), factory, "hole " + i);
        }
        return factory.createPolygon(shell, holes);
    }

    /**
     * Makes a polygon valid, keeping the largest polygon when the repair splits it.
     *
     * @param p any polygon
     * @return a valid polygon, or null when nothing with area remains
     */
    public static Polygon repair(Polygon p) {
        if (p.isValid()) {
            return p;
        }
        Polygon best = null;
        for (Polygon part : polygonsOf(GeometryFixer.fix(p))) {
            if (best == null || part.getArea() > best.getArea()) {
                best = part;
            }
        }
        return best;
    }

    private static Ring toRing(org.locationtech.jts.geom.LineString ring) {
        Ring.Builder b = Ring.newBuilder();
        Coordinate[] cs = ring.getCoordinates();
        for (Coordinate c : cs) {
            b.addXy(c.x).addXy(c.y);
        }
        return b.build();
    }

    private static LinearRing toLinearRing(Ring ring, GeometryFactory factory, String what) {
        int n = ring.getXyCount();
        if (n % 2 != 0) {
            throw new IllegalArgumentException("The " + what + " ring has an odd number of coordinates (" + n + ")");
        }
        int points = n / 2;
        boolean closed = points > 0 && ring.getXy(0) == ring.getXy(n - 2) && ring.getXy(1) == ring.getXy(n - 1);
        int size = closed ? points : points + 1;
        if (size < 4) {
            throw new IllegalArgumentException("The " + what + " ring has only " + points + " points");
        }
        Coordinate[] cs = new Coordinate[size];
        for (int i = 0; i < points; i++) {
            cs[i] = new Coordinate(ring.getXy(2 * i), ring.getXy(2 * i + 1));
        }
        if (!closed) {
            cs[size - 1] = new Coordinate(cs[0]);
        }
        return factory.createLinearRing(cs);
    }
}
