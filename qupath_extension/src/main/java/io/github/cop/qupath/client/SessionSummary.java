package io.github.cop.qupath.client;

import io.github.cop.qupath.proto.v1.ClassCount;
import io.github.cop.qupath.proto.v1.Summary;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The server's closing report of a session.
 *
 * @param countsByClass cells per class name (every class of the run, zeros included)
 * @param seconds       time per stage (read, encode, cop, decode, stitch, redecode, total)
 * @param cacheHits     tiles whose encoding came from the server's cache
 * @param tilesEncoded  tiles the model encoded in this session
 * @param stitching     stitching counters (cut_by_tile_edge, redecoded, duplicates_dropped, ...)
 * @param warnings      things the user should know
 */
public record SessionSummary(Map<String, Long> countsByClass, Map<String, Double> seconds, long cacheHits,
                             long tilesEncoded, Map<String, Long> stitching, List<String> warnings) {

    /** Immutable copies, insertion order kept. */
    public SessionSummary {
        countsByClass = java.util.Collections.unmodifiableMap(new LinkedHashMap<>(countsByClass));
        seconds = java.util.Collections.unmodifiableMap(new LinkedHashMap<>(seconds));
        stitching = java.util.Collections.unmodifiableMap(new LinkedHashMap<>(stitching));
        warnings = List.copyOf(warnings);
    }

    /** @return the total number of cells over all classes */
    public long totalCells() {
        return countsByClass.values().stream().mapToLong(Long::longValue).sum();
    }

    static SessionSummary of(Summary s, ClassMapping classes) {
        Map<String, Long> counts = new LinkedHashMap<>();
        for (String name : classes.names()) {
            counts.put(name, 0L);
        }
        for (ClassCount c : s.getCountsList()) {
            String name = classes.contains(c.getClassIndex()) ? classes.name(c.getClassIndex())
                    : "class #" + c.getClassIndex();
            counts.merge(name, c.getCount(), Long::sum);
        }
        return new SessionSummary(counts, new java.util.TreeMap<>(s.getSecondsMap()), s.getCacheHits(),
                s.getTilesEncoded(), new java.util.TreeMap<>(s.getStitchingMap()), s.getWarningsList());
    }
}
