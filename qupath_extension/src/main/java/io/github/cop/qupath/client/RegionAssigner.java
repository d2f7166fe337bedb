package io.github.cop.qupath.client;

import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.Point;
import org.locationtech.jts.geom.prep.PreparedGeometry;
import org.locationtech.jts.geom.prep.PreparedGeometryFactory;
import org.locationtech.jts.index.strtree.STRtree;

import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * Decides which region each detection belongs to, so that detections become children of the
 * annotation they fall in.
 *
 * <p>A detection belongs to the region that contains its interior point (a point guaranteed to
 * lie inside the polygon, unlike the centroid of a crescent-shaped cell). When regions overlap
 * (an annotation drawn inside another) the smallest containing region wins, because the user
 * drew it to be more specific (equal areas: the first region given). Detections in no region are returned separately; the server clips
 * to the regions, so these are rare (a cell straddling two touching regions).
 *
 * @param <R> the caller's region handle (a QuPath {@code PathObject})
 */
public final class RegionAssigner<R> {

    private record Entry<R>(R handle, PreparedGeometry geometry, double area, int order) {
    }

    private final List<Entry<R>> entries = new ArrayList<>();
    private final STRtree index = new STRtree();

    /**
     * @param regions region handle to its level-0 geometry, in the caller's order
     */
    public RegionAssigner(Map<R, ? extends Geometry> regions) {
        for (Map.Entry<R, ? extends Geometry> e : regions.entrySet()) {
            Geometry g = Objects.requireNonNull(e.getValue(), "geometry");
            if (g.isEmpty()) {
                continue;
            }
            Entry<R> entry = new Entry<>(e.getKey(), PreparedGeometryFactory.prepare(g), g.getArea(), entries.size());
            entries.add(entry);
            index.insert(g.getEnvelopeInternal(), entry);
        }
        index.build();
    }

    /**
     * The outcome: detections per region (every region present, possibly with none) and those in no region.
     *
     * @param byRegion   region handle to its detections, in the constructor's region order
     * @param unassigned detections in no region
     * @param <R>        the region handle type
     */
    public record Assignment<R>(Map<R, List<CellDetection>> byRegion, List<CellDetection> unassigned) {
    }

    /**
     * @param detections the detections to place
     * @return where each one goes
     */
    public Assignment<R> assign(Collection<CellDetection> detections) {
        Map<R, List<CellDetection>> byRegion = new LinkedHashMap<>();
        for (Entry<R> e : entries) {
            byRegion.put(e.handle(), new ArrayList<>());
        }
        List<CellDetection> unassigned = new ArrayList<>();
        for (CellDetection d : detections) {
            Entry<R> best = regionOf(d.polygon());
            if (best == null) {
                unassigned.add(d);
            } else {
                byRegion.get(best.handle()).add(d);
            }
        }
        return new Assignment<>(byRegion, unassigned);
    }

    private Entry<R> regionOf(Geometry polygon) {
        Point anchor = polygon.getInteriorPoint();
        Entry<R> best = null;
        @SuppressWarnings("unchecked")
        List<Entry<R>> candidates = index.query(anchor.getEnvelopeInternal());
        for (Entry<R> e : candidates) {
            if (e.geometry().covers(anchor) && (best == null || e.area() < best.area()
                    || (e.area() == best.area() && e.order() < best.order()))) {
                best = e;
            }
        }
        return best;
    }
}
